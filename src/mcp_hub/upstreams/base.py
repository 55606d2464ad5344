"""The one small interface every kind of upstream implements."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskStatus

from mcp_hub.auth.identity import Consumer, anonymous
from mcp_hub.catalog.view import UpstreamCatalog


class UpstreamState(enum.StrEnum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    STOPPED = "stopped"


class UpstreamUnavailable(Exception):
    """The upstream cannot serve the request now (down, reconnecting, timed out)."""


# Sends one JSON-RPC notification (progress, log message) to the caller of a call.
Notify = Callable[[dict[str, Any]], Awaitable[None]]


class DownstreamPeer(ABC):
    """The downstream client that made a call: where an upstream's requests and notes go back to."""

    @abstractmethod
    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        """Send a server-to-client request (sampling, elicitation, roots) and return the raw result."""

    @abstractmethod
    def supports(self, method: str) -> bool:
        """Whether the caller declared the capability `method` needs."""


@dataclass(slots=True)
class CallContext:
    """What an upstream may use from the downstream request it serves."""

    consumer: Consumer = field(default_factory=anonymous)
    # Who answers the upstream's questions during the call (None: nobody can).
    peer: DownstreamPeer | None = None
    # Progress and log notifications for the caller (progress under `progress_token`, the caller's own).
    notify: Notify | None = None
    progress_token: Any = None
    # Extra request headers decided for this call (credentials, forwarded claims). HTTP upstreams only.
    headers: dict[str, str] = field(default_factory=dict)
    # The caller's own credential for the upstream, when the upstream passes it through.
    caller_token: str | None = None
    timeout: float | None = None
    # The log level the caller opted in to (None: no log messages wanted).
    log_level: str | None = None
    # The caller's verified token and request headers, for credentials that belong to the caller.
    access_token: Any = None
    request_headers: dict[str, str] | None = None
    # The caller's W3C trace context, passed on in `_meta` and as an HTTP header.
    traceparent: str | None = None
    # What the caller declared (its client capabilities and info, as JSON): a 2026-07-28 upstream sees them.
    client_capabilities: dict[str, Any] | None = None
    client_info: dict[str, Any] | None = None
    # A retry of a call that answered `input_required`: the caller's answers and the upstream's state.
    input_responses: dict[str, Any] | None = None
    request_state: str | None = None


class Upstream(ABC):
    """A source of tools, resources and prompts that the gateway merges into its catalog.

    `run` is long-lived: it connects, keeps `catalog` and `state` current, reconnects after a
    failure, and returns only when cancelled. It calls `task_status.started()` once its first
    connection attempt has finished, successful or not, so the gateway can start with an upstream
    that is down.
    """

    kind: str = "upstream"

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = UpstreamState.CONNECTING
        self.last_error: str | None = None
        self.catalog = UpstreamCatalog()
        self._listeners: list[Callable[[Upstream], None]] = []
        self.changed = anyio.Event()

    def on_catalog_change(self, listener: Callable[[Upstream], None]) -> None:
        self._listeners.append(listener)

    def _set_catalog(self, catalog: UpstreamCatalog) -> None:
        self.catalog = catalog
        for listener in self._listeners:
            listener(self)

    def _set_state(self, state: UpstreamState, error: str | None = None) -> None:
        changed = state != self.state
        self.state = state
        self.last_error = error
        if changed:
            for listener in self._listeners:
                listener(self)

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "state": self.state.value, "tools": len(self.catalog.tools)}
        if self.last_error:
            out["error"] = self.last_error
        return out

    @abstractmethod
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    # Seconds a call may take; the relay of a 2026-07-28 caller waits as long.
    call_timeout: float = 300.0
    # Whether the upstream may put requests to the caller while it serves a call (a handshake-era session).
    asks_mid_call: bool = False

    async def for_caller(self, modern: bool) -> Upstream:
        """The channel to this upstream in the caller's era (2026-07-28 when `modern`) where it speaks it."""
        return self

    @abstractmethod
    async def call(self, name: str, arguments: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        """One `tools/call` round: the upstream's CallToolResult, or its InputRequiredResult (with
        `resultType: input_required`), as JSON. UpstreamUnavailable when it cannot answer, MCPError for
        its JSON-RPC errors."""

    async def request(self, method: str, params: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        """One JSON-RPC request of a method this interface has no call for (an extension's, e.g. `tasks/get`),
        sent in the era of this channel to the upstream: the raw result. UpstreamUnavailable when it cannot
        answer, MCPError for its JSON-RPC error."""
        raise UpstreamUnavailable(f"upstream {self.name!r} serves no {method}")

    @property
    def extensions(self) -> dict[str, dict[str, Any]]:
        """The extensions (SEP-2133) the upstream advertises, identifier -> settings, on the connection held to it."""
        return {}

    async def read_resource(self, uri: str, ctx: CallContext) -> types.ReadResourceResult | types.InputRequiredResult:
        raise UpstreamUnavailable(f"upstream {self.name!r} serves no resources")

    async def get_prompt(
        self, name: str, arguments: dict[str, str] | None, ctx: CallContext
    ) -> types.GetPromptResult | types.InputRequiredResult:
        raise UpstreamUnavailable(f"upstream {self.name!r} serves no prompts")

    async def prepare(self, ctx: CallContext) -> None:
        """Called before a listing for this caller (per-consumer upstreams open its session)."""
        return None

    async def complete(self, params: types.CompleteRequestParams, ctx: CallContext) -> types.CompleteResult:
        return types.CompleteResult(completion=types.Completion(values=[]))

    async def subscribe(self, uri: str) -> None:
        raise UpstreamUnavailable(f"upstream {self.name!r} does not support subscriptions")

    async def unsubscribe(self, uri: str) -> None:
        return None
