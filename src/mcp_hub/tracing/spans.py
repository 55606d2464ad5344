"""The spans the request path sees: `Span` (whose methods, as they are here, do nothing: tracing off),
`current()`, and `Tracing`, the off implementation every other one extends."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

# Attribute names: the MCP semantic conventions where they name the thing, the gateway's own otherwise.
METHOD = "mcp.method.name"
REQUEST_ID = "jsonrpc.request.id"
PROTOCOL_VERSION = "mcp.protocol.version"
TOOL = "gen_ai.tool.name"
OPERATION = "gen_ai.operation.name"
TOKENS_IN = "gen_ai.usage.input_tokens"
TOKENS_OUT = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"
TARGET = "mcp_hub.target"
CONSUMER = "mcp_hub.consumer"
GROUPS = "mcp_hub.groups"
ROUTE = "mcp_hub.route"
UPSTREAM = "mcp_hub.upstream"
DECISION = "mcp_hub.acl.decision"
RULE = "mcp_hub.acl.rule"
COST = "mcp_hub.cost"
OUTCOME = "mcp_hub.outcome"


class SettledCall(Protocol):
    """What a settled call's record tells its request span (metering's CallRecord)."""

    consumer: Any
    tool: str
    upstream: str | None
    allowed: bool
    rule: str
    tokens_in: int
    tokens_out: int
    cost: float
    outcome: Any
    error: str | None


class Span:
    """A span of a request's trace. This class is the one of tracing off: every method does nothing."""

    __slots__ = ()
    # Whether spans are made at all (tracing on), sampled or not.
    live = False

    def set(self, key: str, value: Any) -> None:
        """One attribute (None: left out)."""

    def update(self, attributes: Mapping[str, Any]) -> None:
        """Several attributes (None values left out)."""

    def child(self, name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False) -> Span:
        """A started child span (`client`: a call out of the gateway); end it, or use it in a `with`."""
        return self

    def traceparent(self) -> str | None:
        """This span's context as a W3C `traceparent`, for the next hop (None when tracing is off)."""
        return None

    def fail(self, error_type: str, message: str | None = None) -> None:
        """Mark the span failed."""

    def settling(self, record: SettledCall) -> Span:
        """The `settle` child of a call's settlement; on its end the record's decision, tokens, cost and
        outcome go on this span."""
        return self

    def decided(self, allowed: bool, upstream: str | None = None) -> None:
        """The ACL decision of a request other than tools/call (and the upstream it goes to)."""

    def end(self) -> None:
        """End the span (once)."""

    def __enter__(self) -> Span:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        return None


NO_SPAN = Span()
_CURRENT: ContextVar[Span] = ContextVar("mcp_hub_request_span", default=NO_SPAN)


def current() -> Span:
    """The current request's span (`NO_SPAN` outside a traced request, and always with tracing off)."""
    return _CURRENT.get()


class Consumerish(Protocol):
    name: str
    groups: Any


# An SDK server middleware: (request context, next) -> result.
SdkMiddleware = Callable[[Any, Any], Any]


class Tracing:
    """Tracing off: no spans, no middleware, nothing to flush."""

    enabled = False

    def request(
        self, method: str, traceparent: str | None, *, target: str | None = None,
        consumer: Consumerish | None = None, route: str | None = None, request_id: Any = None,
        protocol_version: str | None = None,
    ) -> Span:
        """The span of one MCP request, child of the caller's `traceparent` when it sent one. Used as a
        `with` block, it is the current span inside it."""
        return NO_SPAN

    def sdk_middleware(
        self, route: str, describe: Callable[[Any], tuple[Consumerish | None, str | None]]
    ) -> list[SdkMiddleware]:
        """Middleware for an SDK server that gives each request its span; `describe(ctx)` is the
        request's consumer and its HTTP `traceparent` header. None with tracing off."""
        return []

    def shutdown(self) -> None:
        """Export what is pending and stop (with tracing off: nothing)."""


OFF = Tracing()
