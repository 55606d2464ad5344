"""Tracing on: OpenTelemetry spans, exported over OTLP/HTTP by a batch processor.

The gateway keeps a tracer provider of its own and never installs a global one: the MCP SDK's own
client and server spans stay no-ops, so the trace context an upstream receives is the one the
gateway puts in the request (its upstream-call span), not one the SDK would inject in its place.
Spans are parented explicitly, never through OpenTelemetry's ambient context. The SDK and the
exporter (the `otel` extra) are imported only when tracing is on.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mcp.shared.exceptions import MCPError
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mcp_hub import __version__
from mcp_hub.config.tracing import TracingConfig
from mcp_hub.tracing import spans as names
from mcp_hub.tracing.spans import _CURRENT, Consumerish, SdkMiddleware, SettledCall, Span, Tracing

logger = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
# The packages of the `otel` extra, by the module each provides.
_PACKAGES = {"opentelemetry.sdk": "opentelemetry-sdk",
             "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http"}


def missing_packages() -> str | None:
    """The `otel` extra's packages that are not installed (None: all are)."""
    missing = []
    for module, package in _PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            missing.append(package)
    return ", ".join(missing) or None


class OtelSpan(Span):
    """An OpenTelemetry span of the gateway's; a request span (`request=True`) is the current span inside
    its `with` block."""

    __slots__ = ("_span", "_tracer", "_request", "_token")
    live = True

    def __init__(self, span: Any, tracer: Any, request: bool = False) -> None:
        self._span = span
        self._tracer = tracer
        self._request = request
        self._token: Any = None

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def update(self, attributes: Mapping[str, Any]) -> None:
        self._span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def child(self, name: str, attributes: Mapping[str, Any] | None = None, *, client: bool = False) -> Span:
        span = self._tracer.start_span(
            name, context=trace.set_span_in_context(self._span), kind=SpanKind.CLIENT if client else SpanKind.INTERNAL,
            attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        )
        return OtelSpan(span, self._tracer)

    def traceparent(self) -> str | None:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier.get("traceparent")

    def fail(self, error_type: str, message: str | None = None) -> None:
        self._span.set_attribute(names.ERROR_TYPE, error_type)
        self._span.set_status(Status(StatusCode.ERROR, message))

    def settling(self, record: SettledCall) -> Span:
        return _Settling(self, record)

    def decided(self, allowed: bool, upstream: str | None = None) -> None:
        self.update({names.DECISION: "allow" if allowed else "deny", names.UPSTREAM: upstream})
        if not allowed:
            self.set(names.OUTCOME, "denied")

    def end(self) -> None:
        self._span.end()

    def __enter__(self) -> Span:
        if self._request:
            self._token = _CURRENT.set(self)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if isinstance(exc, MCPError):
            self.fail(str(exc.error.code), exc.error.message)
        elif exc is not None and isinstance(exc, Exception):
            self.fail(type(exc).__qualname__)
        self._span.end()


class _Settling(Span):
    """The `settle` child of a request span, which on its end records the settled call on the request span."""

    __slots__ = ("_parent", "_record", "_child")
    live = True

    def __init__(self, parent: OtelSpan, record: SettledCall) -> None:
        self._parent = parent
        self._record = record
        self._child = parent.child("settle")

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self._child.__exit__(kind, exc, tb)
        record, span = self._record, self._parent
        outcome = getattr(record.outcome, "value", record.outcome)
        span.update({
            names.CONSUMER: record.consumer.name, names.GROUPS: list(record.consumer.groups),
            names.UPSTREAM: record.upstream, names.DECISION: "allow" if record.allowed else "deny",
            names.RULE: record.rule or None, names.TOKENS_IN: record.tokens_in, names.TOKENS_OUT: record.tokens_out,
            names.COST: record.cost, names.OUTCOME: outcome,
        })
        if outcome not in ("ok", "input_required"):
            span.fail(str(outcome), record.error)


class OtelTracing(Tracing):
    """Spans through an OpenTelemetry tracer provider of the gateway's own, exported over OTLP/HTTP."""

    enabled = True

    def __init__(self, config: TracingConfig, env: Mapping[str, str]) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource  # noqa: PLC0415
        from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
        from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased  # noqa: PLC0415

        # The resource: OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (read by the SDK), the config's name above them.
        resource = Resource.create({SERVICE_VERSION: __version__})
        if config.service_name is not None:
            resource = resource.merge(Resource({SERVICE_NAME: config.service_name}))
        elif str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "mcp-hub"}))
        # Unset: the SDK reads OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default: parent-based, always on).
        sampler = ParentBased(TraceIdRatioBased(config.sample_ratio)) if config.sample_ratio is not None else None
        # Unset endpoint and headers: the exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT / _HEADERS itself.
        headers = {k: v.get_secret_value() for k, v in config.headers.items()} or None
        self.exporter = OTLPSpanExporter(endpoint=config.traces_url(), headers=headers)
        self.provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
        # The batch processor's queue, batch size and delay come from OTEL_BSP_* when set.
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("mcp-hub", __version__)
        self._stopped = False

    def request(
        self, method: str, traceparent: str | None, *, target: str | None = None,
        consumer: Consumerish | None = None, route: str | None = None, request_id: Any = None,
        protocol_version: str | None = None,
    ) -> Span:
        parent = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
        attributes: dict[str, Any] = {names.METHOD: method, names.ROUTE: route, names.PROTOCOL_VERSION: protocol_version}
        if request_id is not None:
            attributes[names.REQUEST_ID] = str(request_id)
        if consumer is not None:
            attributes[names.CONSUMER] = consumer.name
            attributes[names.GROUPS] = list(consumer.groups)
        if method == "tools/call":
            attributes[names.OPERATION] = "execute_tool"
            attributes[names.TOOL] = target
        else:
            attributes[names.TARGET] = target
        span = self.tracer.start_span(
            f"{method} {target}" if target else method, context=parent, kind=SpanKind.SERVER,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        return OtelSpan(span, self.tracer, request=True)

    def sdk_middleware(
        self, route: str, describe: Callable[[Any], tuple[Consumerish | None, str | None]]
    ) -> list[SdkMiddleware]:
        async def traced(ctx: Any, call_next: Any) -> Any:
            if ctx.request_id is None:  # a notification: no request to trace
                return await call_next(ctx)
            consumer, header = describe(ctx)
            meta = ctx.meta if isinstance(ctx.meta, Mapping) else {}
            params = ctx.params if isinstance(ctx.params, Mapping) else {}
            target = params.get("name", params.get("uri"))
            with self.request(
                ctx.method, _first_traceparent(meta.get("traceparent"), header),
                target=target if isinstance(target, str) else None, consumer=consumer, route=route,
                request_id=ctx.request_id, protocol_version=ctx.protocol_version,
            ):
                return await call_next(ctx)

        return [traced]

    def shutdown(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.provider.shutdown()  # the batch processor exports what is pending first


def _first_traceparent(*candidates: Any) -> str | None:
    """The first well-formed W3C traceparent among the candidates (the request's `_meta`, then its header)."""
    for value in candidates:
        if isinstance(value, str) and trace.get_current_span(_PROPAGATOR.extract({"traceparent": value})
                                                             ).get_span_context().is_valid:
            return value
    return None
