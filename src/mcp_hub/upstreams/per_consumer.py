"""An HTTP MCP upstream reached with each caller's own credential: one upstream session per consumer.

Used when the upstream credential belongs to the caller (passthrough, token exchange): the gateway
cannot share one session, since the upstream identifies the user by the credential on that session.
Sessions open on a consumer's first request, are reused while in use, and close after being idle.
The catalog comes from the first session that connects (the upstream offers every user the same
tools; what each user may do with them is the upstream's business).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp.server.auth.provider import AccessToken

from mcp_hub.auth.credentials import UpstreamCredentials
from mcp_hub.auth.identity import Consumer
from mcp_hub.upstreams.base import CallContext, Upstream, UpstreamCatalog, UpstreamState, UpstreamUnavailable
from mcp_hub.upstreams.mcp import McpUpstream, McpUpstreamConfig

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Caller:
    """What the credential needs from the consumer's latest request."""

    consumer: Consumer
    token: AccessToken | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Session:
    upstream: McpUpstream
    caller: _Caller
    scope: anyio.CancelScope
    last_used: float = field(default_factory=time.monotonic)
    in_use: int = 0


class PerConsumerUpstream(Upstream):
    """One `McpUpstream` per consumer, created on demand with that consumer's credential."""

    kind = "mcp/per-consumer"
    per_consumer = True

    def __init__(
        self,
        name: str,
        config: McpUpstreamConfig,
        credentials: UpstreamCredentials,
        *,
        idle_ttl: float = 600.0,
        max_sessions: int = 1000,
    ) -> None:
        super().__init__(name)
        self.config = config
        self.credentials = credentials
        self.idle_ttl = idle_ttl
        self.max_sessions = max_sessions
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._tg: TaskGroup | None = None
        self.prefix = config.prefix

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["sessions"] = len(self._sessions)
        return out

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Nothing to connect to until a caller arrives; "up" means ready to open callers' sessions.
        self._set_state(UpstreamState.UP)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            while True:
                await anyio.sleep(min(30.0, self.idle_ttl / 2))
                self._close_idle()

    def _close_idle(self) -> None:
        now = time.monotonic()
        for key, session in list(self._sessions.items()):
            if session.in_use == 0 and now - session.last_used > self.idle_ttl:
                session.scope.cancel()
                self._sessions.pop(key, None)

    async def _open(self, upstream: McpUpstream) -> anyio.CancelScope:
        """Start a consumer's session in this upstream's task group; return the scope that ends it."""
        assert self._tg is not None
        scope = anyio.CancelScope()

        async def runner(*, task_status: TaskStatus[None]) -> None:
            with scope:
                await upstream.run(task_status=task_status)

        await self._tg.start(runner)
        return scope

    async def session_for(self, ctx: CallContext) -> McpUpstream:
        """The consumer's session, opened on first use with the credential of this request."""
        key = ctx.consumer.name
        session = self._sessions.get(key)
        if session is not None and session.upstream.state == UpstreamState.UP:
            session.caller.token = ctx.access_token or session.caller.token
            session.caller.headers = ctx.request_headers or session.caller.headers
            session.last_used = time.monotonic()
            return session.upstream
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            session = self._sessions.get(key)
            if session is not None and session.upstream.state == UpstreamState.UP:
                return session.upstream
            if session is not None:  # down: replace it with a fresh one carrying the new credential
                session.scope.cancel()
                self._sessions.pop(key, None)
            if len(self._sessions) >= self.max_sessions:
                self._close_idle()
                if len(self._sessions) >= self.max_sessions:
                    raise UpstreamUnavailable(f"upstream {self.name!r} has too many open sessions")
            if self._tg is None:
                raise UpstreamUnavailable(f"upstream {self.name!r} is not running")
            try:
                # Fail before connecting when this caller has no credential for the upstream.
                await self.credentials.headers(ctx.consumer, ctx.access_token, ctx.request_headers or {})
            except Exception as exc:  # noqa: BLE001 - the credential error is the message the caller needs
                raise UpstreamUnavailable(f"upstream {self.name!r}: {exc}") from None
            caller = _Caller(ctx.consumer, ctx.access_token, ctx.request_headers or {})
            upstream = McpUpstream(self.name, self.config)
            upstream.credential_headers = functools.partial(self._caller_headers, caller)
            scope = await self._open(upstream)
            self._sessions[key] = _Session(upstream, caller, scope)
            if upstream.state != UpstreamState.UP:
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} refused a session for {ctx.consumer.name}: {upstream.last_error}"
                )
            if [t.name for t in self.catalog.tools] != [t.name for t in upstream.catalog.tools]:
                self._set_catalog(UpstreamCatalog(
                    tools=list(upstream.catalog.tools),
                    resources=list(upstream.catalog.resources),
                    resource_templates=list(upstream.catalog.resource_templates),
                    prompts=list(upstream.catalog.prompts),
                ))
            return upstream

    async def _caller_headers(self, caller: _Caller) -> dict[str, str]:
        # Read at each request: the consumer's latest token and headers (tokens get refreshed).
        return await self.credentials.headers(caller.consumer, caller.token, caller.headers)

    async def prepare(self, ctx: CallContext) -> None:
        """Open the caller's session before a listing, so the catalog is known."""
        if ctx.consumer.name not in self._sessions:
            try:
                await self.session_for(ctx)
            except UpstreamUnavailable as exc:
                logger.info("%s", exc)

    async def _with_session(self, ctx: CallContext, send: Callable[[McpUpstream], Awaitable[T]]) -> T:
        """Run `send` on the caller's session, which is kept open while in use."""
        upstream = await self.session_for(ctx)
        session = self._sessions[ctx.consumer.name]
        session.in_use += 1
        try:
            return await send(upstream)
        finally:
            session.in_use -= 1
            session.last_used = time.monotonic()

    @property
    def call_timeout(self) -> float:  # type: ignore[override]
        return self.config.call_timeout

    @property
    def asks_mid_call(self) -> bool:  # type: ignore[override]
        sessions = [s.upstream for s in self._sessions.values()]
        return not sessions or any(s.asks_mid_call for s in sessions)

    async def call(self, name: str, arguments: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        return await self._with_session(ctx, lambda up: up.call(name, arguments, ctx))

    async def read_resource(self, uri: str, ctx: CallContext) -> types.ReadResourceResult | types.InputRequiredResult:
        return await self._with_session(ctx, lambda up: up.read_resource(uri, ctx))

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None, ctx: CallContext
    ) -> types.GetPromptResult | types.InputRequiredResult:
        return await self._with_session(ctx, lambda up: up.get_prompt(name, arguments, ctx))
