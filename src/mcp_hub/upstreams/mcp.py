"""Upstream MCP servers over stdio, SSE and Streamable HTTP, through the SDK's ClientSession.

One long-lived session per upstream (shared by all callers): connect, list the catalog, watch
the connection (EOF or failed pings), reconnect with backoff. Server-to-client traffic that an
upstream sends while serving a call (sampling, elicitation, roots, log messages) goes back to
the downstream peer of that call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskStatus
from mcp.client.session import ClientRequestContext, ClientSession
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import listen
from mcp.shared.dispatcher import CallOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    NAME_BEARING_METHODS,
    encode_header_value,
)
from mcp.shared.jsonrpc_dispatcher import JSONRPCDispatcher
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    CONNECTION_CLOSED,
    LOG_LEVEL_META_KEY,
    PROTOCOL_VERSION_META_KEY,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_hub import __version__, sdk_internals
from mcp_hub.config import SseUpstreamConfig, StdioUpstreamConfig, StreamableHttpUpstreamConfig
from mcp_hub.upstreams.base import (
    CallContext,
    DownstreamPeer,
    Upstream,
    UpstreamCatalog,
    UpstreamState,
    UpstreamUnavailable,
)
from mcp_hub.upstreams.direct import DirectChannel, SessionGone
from mcp_hub.upstreams.wire import Pool, WireError

logger = logging.getLogger(__name__)

McpUpstreamConfig = StdioUpstreamConfig | SseUpstreamConfig | StreamableHttpUpstreamConfig
NotificationListener = Callable[["McpUpstream", types.ServerNotification], Awaitable[None]]
CLIENT_INFO = types.Implementation(name="mcp-hub", version=__version__)
_PAGE_CAP = 200  # a paginator that never ends cannot hang a refresh
# Idle connections are dropped well before common servers' keep-alive timeouts (uvicorn: 5 s): reusing
# one the server is closing fails that POST, and the SDK's transport then ends the whole session.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=2.0)
# How long to wait before trying again to open a session in an era the server refused.
HANDSHAKE_RETRY = 60.0
# The params key a 2026-07-28 request's `Mcp-Name` header mirrors, beyond the SDK's own (SEP-2663: tasks/*).
NAME_PARAMS = {**NAME_BEARING_METHODS, "tasks/get": "taskId", "tasks/update": "taskId", "tasks/cancel": "taskId"}


HeaderSource = Callable[[], Awaitable[dict[str, str]]]
# Headers for the upstream request made by the current call (e.g. forwarded claims). The SDK's HTTP
# transport sends each message in its sender's context, so the HTTP client's auth flow sees them.
CALL_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("mcp_hub_call_headers", default=None)


class UpstreamAuth(httpx2.Auth):
    """Adds an upstream's credential headers (from `source`) and the current call's headers to every
    HTTP request to it."""

    def __init__(self, source: HeaderSource | None = None) -> None:
        self.source = source

    async def async_auth_flow(self, request: httpx2.Request) -> AsyncGenerator[httpx2.Request, httpx2.Response]:
        if self.source is not None:
            request.headers.update(await self.source())
        extra = CALL_HEADERS.get()
        if extra:
            request.headers.update(extra)
        yield request


class _WatchedDispatcher(JSONRPCDispatcher[Any]):
    """A dispatcher that tells when its connection has ended (EOF or transport failure)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ended = anyio.Event()

    async def run(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().run(*args, **kwargs)
        finally:
            self.ended.set()


@dataclass(slots=True)
class _InFlight:
    ctx: CallContext
    seq: int


class McpUpstream(Upstream):
    """An upstream MCP server reached through the SDK client."""

    kind = "mcp"

    def __init__(self, name: str, config: McpUpstreamConfig, *, http_client: httpx2.AsyncClient | None = None):
        super().__init__(name)
        self.config = config
        self.kind = f"mcp/{config.transport}"
        self._session: ClientSession | None = None
        self._dispatcher: _WatchedDispatcher | None = None
        self._kick = anyio.Event()
        self._inflight: dict[int, _InFlight] = {}
        self._seq = 0
        self._notification_listeners: list[NotificationListener] = []
        # Resource URIs the gateway's callers subscribed to: on a 2026-07-28 session they are part of the
        # subscriptions/listen request, which is opened again when the set changes.
        self._resource_subs: set[str] = set()
        self._subs_changed = anyio.Event()
        self._http_client = http_client
        # Where this upstream's credential headers come from (gateway-owned, or a consumer's).
        self.credential_headers: HeaderSource | None = None
        self.protocol_version: str | None = None
        self.capabilities: types.ServerCapabilities | None = None
        self.connects = 0
        self._upstream_session: str | None = None
        # Set while connected over Streamable HTTP (either era): the gateway's direct call path.
        self.direct: DirectChannel | None = None
        # A session of the same server in the other era, for callers of that era (see `for_caller`).
        self._twin: McpUpstream | None = None
        self._twin_lock = anyio.Lock()
        self._twin_retry_at = 0.0
        self._tg: anyio.abc.TaskGroup | None = None

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["connects"] = self.connects
        if self.protocol_version:
            out["protocol"] = self.protocol_version
        if self._twin is not None:
            out["caller_era_session"] = {"protocol": self._twin.protocol_version, "state": self._twin.state.value}
        return out

    async def for_caller(self, modern: bool) -> Upstream:
        """The channel that speaks the caller's era: this connection when it does; else (HTTP upstreams, with
        `match_caller_era`) a session of the same server in the caller's era, opened on first use. A server
        that does not take one is asked again after HANDSHAKE_RETRY; meanwhile this connection serves and
        the gateway bridges the eras."""
        if (self._tg is None or not self.config.match_caller_era or self.protocol_version is None
                or isinstance(self.config, StdioUpstreamConfig)):  # a second process would split the server's state
            return self
        if modern == (self.protocol_version in MODERN_PROTOCOL_VERSIONS):
            return self
        twin = self._twin
        if twin is not None and twin.state == UpstreamState.UP:  # every call but the first: no lock to take
            return twin
        if twin is None and anyio.current_time() < self._twin_retry_at:  # bridging until it is time to ask again
            return self
        async with self._twin_lock:
            if self._twin is None and anyio.current_time() >= self._twin_retry_at:
                era = "2026-07-28" if modern else "legacy"
                twin = McpUpstream(self.name, self.config.model_copy(update={"protocol": era}),
                                   http_client=self._http_client)
                twin.credential_headers = self.credential_headers
                scope = await self._tg.start(_run_scoped, twin)
                if twin.state == UpstreamState.UP:
                    self._twin = twin
                else:  # the server does not speak that era: bridge, and ask again in a while, not on every call
                    scope.cancel()
                    self._twin_retry_at = anyio.current_time() + HANDSHAKE_RETRY
        twin = self._twin
        return twin if twin is not None and twin.state == UpstreamState.UP else self

    # -- connection lifecycle -------------------------------------------------------------------

    def on_notification(self, listener: NotificationListener) -> None:
        self._notification_listeners.append(listener)

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        cfg = self.config
        if isinstance(cfg, StdioUpstreamConfig):
            params = StdioServerParameters(
                command=cfg.command, args=cfg.args, env=cfg.env or None, cwd=cfg.cwd or None,
                # A line that is not UTF-8 becomes one unparsable message, not a dead reader.
                encoding_error_handler="replace",
            )
            # Upstream stderr stays visible to the operator, never mixed into a stdio downstream.
            async with stdio_client(params, errlog=sys.stderr) as streams:
                yield streams
        elif isinstance(cfg, SseUpstreamConfig):
            async with sse_client(
                cfg.url, headers=dict(cfg.headers), timeout=cfg.connect_timeout,
                auth=UpstreamAuth(self.credential_headers),
            ) as streams:
                yield streams
        else:
            client = self._http_client
            async with contextlib.AsyncExitStack() as stack:
                if client is None:
                    client = httpx2.AsyncClient(
                        headers=dict(cfg.headers),
                        auth=UpstreamAuth(self.credential_headers),
                        timeout=httpx2.Timeout(cfg.connect_timeout, read=cfg.call_timeout + 5),
                        follow_redirects=False,
                        limits=UPSTREAM_LIMITS,
                        event_hooks={"response": [self._note_session]},
                    )
                    await stack.enter_async_context(client)
                async with streamable_http_client(cfg.url, http_client=client) as streams:
                    yield streams

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[ClientSession]:
        async with self._transport() as (read_stream, write_stream):
            dispatcher = _WatchedDispatcher(read_stream, write_stream)
            session = ClientSession(
                dispatcher=dispatcher,
                sampling_callback=self._on_sampling,
                elicitation_callback=self._on_elicitation,
                list_roots_callback=self._on_list_roots,
                logging_callback=self._on_log,
                message_handler=self._on_message,
                client_info=CLIENT_INFO,
            )
            async with session:
                with anyio.fail_after(self.config.connect_timeout):
                    if self.config.protocol == "legacy":
                        await session.initialize()
                    elif self.config.protocol == "auto":
                        await sdk_internals.negotiate_auto(session)
                    else:
                        session.adopt(
                            types.DiscoverResult(
                                supported_versions=[self.config.protocol], capabilities=types.ServerCapabilities()
                            )
                        )
                    self.protocol_version = session.protocol_version
                    self.capabilities = session.server_capabilities
                    catalog = await self._list_catalog(session)
                self._dispatcher = dispatcher
                self._session = session
                self.direct = self._direct_channel(session)
                self._set_catalog(catalog)
                try:
                    yield session
                finally:
                    if self.direct is not None:
                        self.direct.pool.close()
                    self.direct = None
                    self._session = None
                    self._dispatcher = None

    async def _note_session(self, response: httpx2.Response) -> None:
        """The session id a handshake-era upstream issued (on its initialize answer), for the direct path."""
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            self._upstream_session = session_id

    def _direct_channel(self, session: ClientSession) -> DirectChannel | None:
        """The lean call path, when this connection can take it: Streamable HTTP through a client of our own
        (no proxy in between), either era."""
        version = session.protocol_version
        cfg = self.config
        if (
            not isinstance(cfg, StreamableHttpUpstreamConfig) or self._http_client is not None or version is None
            or not Pool.usable(cfg.url)
        ):
            return None
        envelope = None
        if version in MODERN_PROTOCOL_VERSIONS:
            capabilities = sdk_internals.client_capabilities(session, version)
            if capabilities is None:
                return None
            envelope = {
                PROTOCOL_VERSION_META_KEY: version,
                CLIENT_INFO_META_KEY: CLIENT_INFO.model_dump(by_alias=True, mode="json", exclude_none=True),
                CLIENT_CAPABILITIES_META_KEY: capabilities.model_dump(by_alias=True, mode="json", exclude_none=True),
            }
        pool = Pool(cfg.url, keepalive_expiry=UPSTREAM_LIMITS.keepalive_expiry or 2.0,
                    max_idle=UPSTREAM_LIMITS.max_keepalive_connections or 64,
                    max_connections=UPSTREAM_LIMITS.max_connections or 512)
        return DirectChannel(pool, envelope, version, headers=dict(cfg.headers), credentials=self.credential_headers,
                             session_id=lambda: self._upstream_session)

    def _set_catalog(self, catalog: UpstreamCatalog) -> None:
        if self.direct is not None:
            self.direct.learn(catalog.tools)
        super()._set_catalog(catalog)

    async def _list_catalog(self, session: ClientSession) -> UpstreamCatalog:
        caps = session.server_capabilities or types.ServerCapabilities()
        catalog = UpstreamCatalog()
        if caps.tools is not None:
            catalog.tools = await self._paged(session.list_tools, "tools")
        if caps.resources is not None:
            catalog.resources = await self._paged(session.list_resources, "resources")
            catalog.resource_templates = await self._paged(session.list_resource_templates, "resource_templates")
        if caps.prompts is not None:
            catalog.prompts = await self._paged(session.list_prompts, "prompts")
        return catalog

    @staticmethod
    async def _paged(fetch: Callable[..., Awaitable[Any]], attr: str) -> list[Any]:
        items: list[Any] = []
        cursor: str | None = None
        for _ in range(_PAGE_CAP):
            params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
            page = await fetch(params=params)
            items.extend(getattr(page, attr))
            cursor = page.next_cursor
            if not cursor:
                break
        return items

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg  # the handshake-era twin, when one is opened, lives and ends with this connection
            try:
                await self._run(task_status)
            finally:
                self._tg = None
                self._twin = None
                tg.cancel_scope.cancel()

    async def _run(self, task_status: TaskStatus[None]) -> None:
        backoff = 0.25
        started = False
        while True:
            self._set_state(UpstreamState.CONNECTING, self.last_error)
            try:
                async with self._connect() as session:
                    self.connects += 1
                    self._set_state(UpstreamState.UP)
                    backoff = 0.25
                    if not started:
                        started = True
                        task_status.started()
                    reason = await self._watch_and_listen(session)
                    logger.warning("upstream %s: connection lost (%s); reconnecting", self.name, reason)
                    self._set_state(UpstreamState.DOWN, f"connection lost: {reason}")
            except Exception as exc:  # noqa: BLE001 - any failure to connect means down-and-retry
                error = _describe(exc)
                logger.warning("upstream %s: %s", self.name, error)
                self._set_state(UpstreamState.DOWN, error)
            if not started:
                started = True
                task_status.started()
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, self.config.reconnect_max_backoff)

    async def _watch_and_listen(self, session: ClientSession) -> str:
        """`_watch`, plus a subscriptions/listen stream on a 2026-07-28 upstream (its only way to say
        that its catalog changed)."""
        if session.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            return await self._watch(session)
        reason = "connection lost"
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal reason
                reason = await self._watch(session)
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(self._listen, session)
        return reason

    async def _listen(self, session: ClientSession) -> None:
        """One subscriptions/listen stream at a time, for the catalog's changes and the subscribed resources;
        opened again (and the catalog read again, for what changed in between) when the subscribed set
        changes."""
        caps = session.server_capabilities or types.ServerCapabilities()
        while True:
            changed = self._subs_changed = anyio.Event()
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_cancel_when, changed, tg.cancel_scope)
                    await self._listen_once(session, caps)
                    tg.cancel_scope.cancel()
            except Exception as exc:  # noqa: BLE001 - no listen stream: the catalog just stays as listed
                logger.info("upstream %s: no change notifications (%s)", self.name, _describe(exc))
                return
            if not changed.is_set():
                return  # the stream ended
            await self._refresh(session)

    async def _listen_once(self, session: ClientSession, caps: types.ServerCapabilities) -> None:
        async with listen(
            session,
            tools_list_changed=bool(caps.tools and caps.tools.list_changed),
            prompts_list_changed=bool(caps.prompts and caps.prompts.list_changed),
            resources_list_changed=bool(caps.resources and caps.resources.list_changed),
            resource_subscriptions=sorted(self._resource_subs),
        ) as subscription:
            async for event in subscription:
                if isinstance(event, ToolsListChanged | PromptsListChanged | ResourcesListChanged):
                    await self._refresh(session)
                elif isinstance(event, ResourceUpdated):
                    notification = types.ResourceUpdatedNotification(
                        params=types.ResourceUpdatedNotificationParams(uri=event.uri)
                    )
                    for listener in self._notification_listeners:
                        with contextlib.suppress(Exception):
                            await listener(self, notification)

    async def _refresh(self, session: ClientSession) -> None:
        try:
            self._set_catalog(await self._list_catalog(session))
        except Exception as exc:  # noqa: BLE001 - a failed refresh keeps the old catalog
            logger.warning("upstream %s: catalog refresh failed: %s", self.name, _describe(exc))

    async def _watch(self, session: ClientSession) -> str:
        """Return when the connection is gone: EOF, or a ping that fails or hangs."""
        assert self._dispatcher is not None
        ended = self._dispatcher.ended
        while True:
            self._kick = anyio.Event()
            with anyio.move_on_after(self.config.health_interval):
                async with anyio.create_task_group() as tg:

                    async def wait(event: anyio.Event) -> None:
                        await event.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(wait, ended)
                    tg.start_soon(wait, self._kick)
            if ended.is_set():
                return "the upstream closed the connection"
            try:
                with anyio.fail_after(min(10.0, self.config.health_interval)):
                    await self._probe(session)
            except TimeoutError:
                return "ping timed out"
            except Exception as exc:  # noqa: BLE001 - a failed ping means the link is gone
                return f"ping failed: {_describe(exc)}"

    async def _probe(self, session: ClientSession) -> None:
        version = session.protocol_version
        if version in MODERN_PROTOCOL_VERSIONS:
            # 2026-07-28 has no ping; server/discover is the cheapest request every modern server serves.
            await session.send_discover(version)
        else:
            await session.send_ping()

    def _require_session(self) -> ClientSession:
        session = self._session
        if session is None or self.state != UpstreamState.UP:
            detail = f": {self.last_error}" if self.last_error else ""
            raise UpstreamUnavailable(f"upstream {self.name!r} is {self.state.value}{detail}")
        return session

    @contextlib.contextmanager
    def _tracked(self, ctx: CallContext) -> Any:
        self._seq += 1
        key = self._seq
        self._inflight[key] = _InFlight(ctx, key)
        try:
            yield
        finally:
            self._inflight.pop(key, None)

    async def _request(self, ctx: CallContext, what: str, send: Callable[[ClientSession], Awaitable[Any]]) -> Any:
        session = self._require_session()
        timeout = ctx.timeout or self.config.call_timeout
        reset = CALL_HEADERS.set(ctx.headers or None)
        try:
            return await self._send_tracked(session, ctx, what, send, limit=timeout)
        finally:
            CALL_HEADERS.reset(reset)

    async def _send_tracked(
        self, session: ClientSession, ctx: CallContext, what: str, send: Callable[[ClientSession], Awaitable[Any]],
        *, limit: float,
    ) -> Any:
        timeout = limit
        with self._tracked(ctx):
            try:
                with anyio.fail_after(timeout):
                    return await send(session)
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"upstream {self.name!r} did not answer {what} within {timeout:g}s"
                ) from None
            except MCPError as exc:
                if exc.error.code == CONNECTION_CLOSED:
                    self._kick.set()
                    raise UpstreamUnavailable(f"upstream {self.name!r} closed the connection during {what}") from None
                raise
            except (httpx2.TransportError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                self._kick.set()
                raise UpstreamUnavailable(f"upstream {self.name!r} failed during {what}: {_describe(exc)}") from None

    # -- requests -------------------------------------------------------------------------------

    @property
    def call_timeout(self) -> float:  # type: ignore[override]
        return self.config.call_timeout

    @property
    def asks_mid_call(self) -> bool:  # type: ignore[override]
        # A handshake-era session carries the server's requests while a call runs; 2026-07-28 has none.
        return self.protocol_version is None or self.protocol_version not in MODERN_PROTOCOL_VERSIONS

    async def call(self, name: str, arguments: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        """One tools/call round: on the direct HTTP channel when this connection has one, else on the SDK
        session. The upstream's requests during the call go to `ctx.peer`; its progress (under the caller's
        token) and log messages to `ctx.notify`."""
        if self.direct is not None and self.state == UpstreamState.UP:
            return await self._call_direct(self.direct, name, arguments, ctx)
        meta = self._request_meta(ctx)
        progress = _progress_to(ctx) if ctx.progress_token is not None else None

        async def send(session: ClientSession) -> dict[str, Any]:
            result = await session.call_tool(
                name, arguments, progress_callback=progress, input_responses=ctx.input_responses,
                request_state=ctx.request_state, allow_input_required=True, allow_claimed=True, meta=meta,
            )
            return result.model_dump(by_alias=True, mode="json", exclude_none=True)

        return await self._request(ctx, f"tools/call {name}", send)

    async def _call_direct(
        self, channel: DirectChannel, name: str, arguments: dict[str, Any] | None, ctx: CallContext
    ) -> dict[str, Any]:
        meta = dict(channel.envelope)
        if channel.modern:
            # The upstream decides what to ask of the caller by what the caller declared, not the gateway.
            if ctx.client_capabilities is not None:
                meta[CLIENT_CAPABILITIES_META_KEY] = ctx.client_capabilities
            if ctx.client_info is not None:
                meta[CLIENT_INFO_META_KEY] = ctx.client_info
            if ctx.log_level:
                meta[LOG_LEVEL_META_KEY] = ctx.log_level
        if ctx.traceparent is not None:
            meta["traceparent"] = ctx.traceparent
        if ctx.progress_token is not None:
            meta["progressToken"] = ctx.progress_token
        extra: dict[str, Any] | None = None
        if ctx.input_responses is not None:
            extra = {"inputResponses": ctx.input_responses}
            if ctx.request_state is not None:
                extra["requestState"] = ctx.request_state
        timeout = ctx.timeout or self.config.call_timeout
        what = f"tools/call {name}"
        try:
            # asyncio's own timeout, not anyio.fail_after: the gateway runs on asyncio, and this is on every call
            # (half the CPU of anyio's scope, whose cancellation it still honours: both cancel the task).
            async with asyncio.timeout(timeout):
                message = await channel.call(
                    name, arguments, meta, ctx.notify, headers=ctx.headers, extra_params=extra,
                    on_request=functools.partial(self._answer_for, ctx),
                )
        except TimeoutError:
            raise UpstreamUnavailable(f"upstream {self.name!r} did not answer {what} within {timeout:g}s") from None
        except SessionGone as exc:
            self._kick.set()  # the watcher's probe finds the session gone and opens a new one
            raise UpstreamUnavailable(f"upstream {self.name!r} failed during {what}: {exc}") from None
        except WireError as exc:
            self._kick.set()
            if exc.closed:  # worded as the session path words it
                raise UpstreamUnavailable(f"upstream {self.name!r} closed the connection during {what}") from None
            raise UpstreamUnavailable(f"upstream {self.name!r} failed during {what}: {exc}") from None
        error = message.get("error")
        if error is not None:
            raise MCPError(code=error.get("code", types.INTERNAL_ERROR), message=str(error.get("message", "")),
                           data=error.get("data"))
        result = message.get("result")
        if not isinstance(result, dict):
            raise MCPError(code=types.INTERNAL_ERROR, message=f"upstream {self.name!r} sent no result")
        if result.get("resultType") not in ("input_required", "task"):  # a task's result comes with tasks/get
            channel.check_output(name, result)
        return result

    @property
    def extensions(self) -> dict[str, dict[str, Any]]:
        capabilities = self.capabilities
        return dict(capabilities.extensions or {}) if capabilities is not None else {}

    async def request(self, method: str, params: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        """Any other JSON-RPC request on the connection held to the upstream, framed for its era: a 2026-07-28
        request carries the envelope (with what the caller declared, like a call on the direct channel) and
        its routing headers; a handshake-era one rides the session. The raw result comes back."""
        session = self._require_session()
        dispatcher = self._dispatcher
        version = session.protocol_version or self.protocol_version
        if dispatcher is None or version is None:
            raise UpstreamUnavailable(f"upstream {self.name!r} is {self.state.value}")
        body = dict(params or {})
        meta: dict[str, Any] = dict(body.get("_meta") or {})
        headers = {MCP_PROTOCOL_VERSION_HEADER: version}
        if version in MODERN_PROTOCOL_VERSIONS:
            capabilities = ctx.client_capabilities
            if capabilities is None:
                own = sdk_internals.client_capabilities(session, version)
                capabilities = own.model_dump(by_alias=True, mode="json", exclude_none=True) if own else {}
            meta[PROTOCOL_VERSION_META_KEY] = version
            meta[CLIENT_INFO_META_KEY] = ctx.client_info or CLIENT_INFO.model_dump(
                by_alias=True, mode="json", exclude_none=True)
            meta[CLIENT_CAPABILITIES_META_KEY] = capabilities
            if ctx.log_level:
                meta[LOG_LEVEL_META_KEY] = ctx.log_level
            headers[MCP_METHOD_HEADER] = method
            name = body.get(NAME_PARAMS.get(method, ""))
            if isinstance(name, str):
                headers[MCP_NAME_HEADER] = encode_header_value(name)
        if ctx.traceparent is not None:
            meta["traceparent"] = ctx.traceparent
        if meta:
            body["_meta"] = meta
        opts: CallOptions = {"headers": headers}

        async def send(_: ClientSession) -> dict[str, Any]:
            return await dispatcher.send_raw_request(method, body, opts)

        return await self._request(ctx, method, send)

    async def _answer_for(self, ctx: CallContext, message: dict[str, Any]) -> dict[str, Any]:
        """A handshake-era upstream's request mid-call on the direct path, put to the call's own caller."""
        method = str(message.get("method"))
        params = message.get("params") if isinstance(message.get("params"), dict) else None
        if ctx.peer is None or not ctx.peer.supports(method):
            return {"error": {"code": types.INVALID_REQUEST, "message": _unsupported(method)}}
        try:
            return {"result": await ctx.peer.request(method, params)}
        except MCPError as exc:
            return {"error": exc.error.model_dump(by_alias=True, mode="json", exclude_none=True)}

    def _request_meta(self, ctx: CallContext) -> dict[str, Any] | None:
        # A 2026-07-28 upstream logs only to requests that opt in; pass the caller's opt-in along.
        meta: dict[str, Any] = {}
        if ctx.log_level and self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            meta[LOG_LEVEL_META_KEY] = ctx.log_level
        if ctx.traceparent is not None:
            meta["traceparent"] = ctx.traceparent
        return meta or None

    async def read_resource(
        self, uri: str, ctx: CallContext
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        async def send(session: ClientSession) -> types.ReadResourceResult | types.InputRequiredResult:
            return await session.read_resource(uri, input_responses=ctx.input_responses,
                                               request_state=ctx.request_state, allow_input_required=True)

        return await self._request(ctx, "resources/read", send)

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None, ctx: CallContext
    ) -> types.GetPromptResult | types.InputRequiredResult:
        async def send(session: ClientSession) -> types.GetPromptResult | types.InputRequiredResult:
            return await session.get_prompt(name, arguments, input_responses=ctx.input_responses,
                                            request_state=ctx.request_state, allow_input_required=True)

        return await self._request(ctx, f"prompts/get {name}", send)

    async def complete(self, params: types.CompleteRequestParams, ctx: CallContext) -> types.CompleteResult:
        async def send(session: ClientSession) -> types.CompleteResult:
            return await session.complete(params.ref, params.argument.model_dump(), context_arguments=(
                params.context.arguments if params.context else None
            ))

        return await self._request(ctx, "completion/complete", send)

    async def subscribe(self, uri: str) -> None:
        if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # 2026-07-28 has no resources/subscribe: the URI joins the subscriptions/listen stream.
            if uri not in self._resource_subs:
                self._resource_subs.add(uri)
                self._subs_changed.set()
            return
        await self._request(CallContext(), "resources/subscribe", lambda s: s.subscribe_resource(uri))

    async def unsubscribe(self, uri: str) -> None:
        if self.protocol_version in MODERN_PROTOCOL_VERSIONS:
            if uri in self._resource_subs:
                self._resource_subs.discard(uri)
                self._subs_changed.set()
            return
        await self._request(CallContext(), "resources/unsubscribe", lambda s: s.unsubscribe_resource(uri))

    # -- server-to-client traffic ---------------------------------------------------------------

    def _peer_for(self, method: str) -> DownstreamPeer:
        """The downstream peer of the call this upstream is serving.

        With several calls in flight on the shared session the request cannot be tied to one of
        them unless they all come from the same consumer; then the newest call's peer answers.
        """
        candidates = [f for f in self._inflight.values() if f.ctx.peer is not None and f.ctx.peer.supports(method)]
        if not candidates:
            raise MCPError(code=types.INVALID_REQUEST, message=_unsupported(method))
        consumers = {f.ctx.consumer.name for f in candidates}
        if len(consumers) > 1:
            raise MCPError(
                code=types.INVALID_REQUEST,
                message=f"{method}: several consumers have calls in flight; set session_scope: per_consumer",
            )
        peer = max(candidates, key=lambda f: f.seq).ctx.peer
        assert peer is not None
        return peer

    async def _relay(self, method: str, params: Any) -> dict[str, Any]:
        peer = self._peer_for(method)
        dumped = params.model_dump(by_alias=True, mode="json", exclude_none=True) if params is not None else None
        return await peer.request(method, dumped)

    async def _on_sampling(
        self, context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult | types.CreateMessageResultWithTools | types.ErrorData:
        try:
            raw = await self._relay("sampling/createMessage", params)
        except MCPError as exc:
            return exc.error
        if params.tools:
            return types.CreateMessageResultWithTools.model_validate(raw, by_name=False)
        return types.CreateMessageResult.model_validate(raw, by_name=False)

    async def _on_elicitation(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        try:
            raw = await self._relay("elicitation/create", params)
        except MCPError as exc:
            return exc.error
        return types.ElicitResult.model_validate(raw, by_name=False)

    async def _on_list_roots(self, context: ClientRequestContext) -> types.ListRootsResult | types.ErrorData:
        try:
            raw = await self._relay("roots/list", None)
        except MCPError as exc:
            return exc.error
        return types.ListRootsResult.model_validate(raw, by_name=False)

    async def _on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        # A session's log message cannot name its call: it goes to the newest call's caller when one consumer
        # has calls in flight.
        candidates = [f for f in self._inflight.values() if f.ctx.notify is not None]
        if len({f.ctx.consumer.name for f in candidates}) == 1:
            notify = max(candidates, key=lambda f: f.seq).ctx.notify
            assert notify is not None
            with contextlib.suppress(Exception):
                await notify({"method": "notifications/message",
                              "params": params.model_dump(by_alias=True, mode="json", exclude_none=True)})

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, Exception):
            logger.debug("upstream %s transport error: %s", self.name, message)
            return
        if isinstance(message, types.ToolListChangedNotification | types.PromptListChangedNotification
                      | types.ResourceListChangedNotification):
            session = self._session
            if session is not None:
                await self._refresh(session)
        for listener in self._notification_listeners:
            with contextlib.suppress(Exception):
                await listener(self, message)


async def _run_scoped(upstream: Upstream, *, task_status: TaskStatus[anyio.CancelScope]) -> None:
    """Run an upstream in a cancel scope of its own, handed to the starter once it has tried to connect."""
    with anyio.CancelScope() as scope:
        await upstream.run(task_status=_Relay(task_status, scope))


class _Relay:
    """A task status that reports a cancel scope when the upstream inside reports it has started."""

    def __init__(self, outer: TaskStatus[anyio.CancelScope], scope: anyio.CancelScope) -> None:
        self._outer, self._scope = outer, scope

    def started(self, value: Any = None) -> None:
        self._outer.started(self._scope)


# What a client that did not declare the capability answers (the SDK client's words), so that the
# upstream sees through the gateway what it would see talking to the caller directly.
_UNSUPPORTED = {"sampling/createMessage": "Sampling not supported", "elicitation/create": "Elicitation not supported",
                "roots/list": "List roots not supported"}


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _unsupported(method: str) -> str:
    return _UNSUPPORTED.get(method, f"{method}: not supported")


def _progress_to(ctx: CallContext) -> Callable[[float, float | None, str | None], Awaitable[None]]:
    """The SDK client's progress callback, as notifications under the caller's own progress token."""

    async def progress(value: float, total: float | None, message: str | None) -> None:
        if ctx.notify is None:
            return
        params: dict[str, Any] = {"progressToken": ctx.progress_token, "progress": value}
        if total is not None:
            params["total"] = total
        if message is not None:
            params["message"] = message
        with contextlib.suppress(Exception):
            await ctx.notify({"method": "notifications/progress", "params": params})

    return progress


def _describe(exc: BaseException) -> str:
    """A one-line reason for an exception, unwrapping exception groups.

    It names what failed, never a secret: the command of a stdio upstream that cannot be started,
    and the URL of an HTTP upstream that cannot be reached, without user, password, query or fragment.
    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCP error {exc.error.code}: {exc.error.message}"
    if isinstance(exc, FileNotFoundError | PermissionError | NotADirectoryError):
        # uvloop raises without the file name: the stdio parameters are found in the failed call's frames.
        params: StdioServerParameters | None = None
        frame = exc.__traceback__
        while frame is not None and params is None:
            params = next((v for v in frame.tb_frame.f_locals.values() if isinstance(v, StdioServerParameters)), None)
            frame = frame.tb_next
        if params is not None and params.cwd and not os.path.isdir(params.cwd):
            return f"working folder {params.cwd} (cwd) does not exist"
        command = params.command if params is not None else exc.filename
        if command is None:
            return f"cannot start the command: {exc.strerror or exc}"
        if isinstance(exc, PermissionError):
            return f"command {command} cannot be run: permission denied"
        return f"command not found: {command} (not on PATH and no such file; install it or fix `command`)"
    if isinstance(exc, httpx2.RequestError):
        try:
            url = str(exc.request.url.copy_with(username=None, password=None, query=None, fragment=None))
        except RuntimeError:  # raised before a request existed
            url = None
        where = f" {url}" if url else ""
        if isinstance(exc, httpx2.ConnectError):
            return f"cannot connect to{where}: {exc}" if where else f"cannot connect: {exc}"
        return f"{type(exc).__name__} from{where}: {exc}" if where else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, TimeoutError):
        return "timed out while connecting"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


def default_env() -> dict[str, str]:
    return dict(os.environ)
