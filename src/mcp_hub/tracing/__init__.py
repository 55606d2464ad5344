"""OpenTelemetry tracing: spans per MCP request, W3C trace context in and out (off by default).

`start_tracing` picks the implementation once, at start: `Tracing()` when tracing is off, whose
every span is the one `NO_SPAN` (its methods do nothing, so the request path pays a few no-op calls
and builds nothing), or `OtelTracing` (tracing/otel.py) when the config or the `OTEL_*` variables
ask for it. The entries start a request span (`Tracing.request`, or the SDK middleware of
`Tracing.sdk_middleware`) and make it the request's current span; the core opens children of
`current()` (admission, the upstream call, settle) and records the decision, tokens, cost and
outcome on it. The upstream is sent the upstream-call span's context (`Span.traceparent`), so its
own spans nest under the gateway's.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from mcp_hub.config.errors import ConfigError
from mcp_hub.config.tracing import TracingConfig
from mcp_hub.tracing import otel
from mcp_hub.tracing.spans import (
    CONSUMER,
    DECISION,
    NO_SPAN,
    OFF,
    OUTCOME,
    TOOL,
    UPSTREAM,
    Span,
    Tracing,
    current,
)

# The ways of export the gateway has: OTLP/HTTP with protobuf bodies.
_EXPORTERS = ("otlp", "otlp_proto_http")
_PROTOCOLS = ("http/protobuf",)
INSTALL_HINT = "pip install 'mcp-hub[otel]'"


def wanted(config: TracingConfig, env: Mapping[str, str]) -> bool:
    """Whether tracing is on, from the config and the `OTEL_*` variables (ConfigError for a way of export
    the gateway does not have)."""
    if config.enabled is False:
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    names = [n.strip() for n in exporter.split(",") if n.strip()]
    unknown = [n for n in names if n not in (*_EXPORTERS, "none")]
    on = config.enabled is True or config.endpoint is not None
    if not on:
        if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return False
        if names:
            on = any(n in _EXPORTERS for n in names)
        else:
            on = bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if not on:
        return False
    problems = []
    if unknown:
        problems.append(f"OTEL_TRACES_EXPORTER={exporter}: the gateway exports traces over OTLP/HTTP only "
                        "(otlp; none turns tracing off)")
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(var, "").strip()
        if protocol:
            if protocol not in _PROTOCOLS:
                problems.append(f"{var}={protocol}: the gateway exports traces over OTLP/HTTP with protobuf "
                                "bodies only (http/protobuf)")
            break
    if problems:
        raise ConfigError(problems)
    return True


def start_tracing(config: TracingConfig, env: Mapping[str, str] | None = None) -> Tracing:
    """The gateway's tracing, chosen once: `OFF`, or OpenTelemetry export set up from the config and the
    `OTEL_*` variables. ConfigError when tracing is asked for and cannot run (the `otel` extra missing)."""
    env = os.environ if env is None else env
    if not wanted(config, env):
        return OFF
    problem = otel.missing_packages()
    if problem is not None:
        raise ConfigError([f"tracing: OpenTelemetry tracing is asked for (`tracing:` or the OTEL_* variables) but its "
                           f"packages are not installed ({problem}): {INSTALL_HINT}"])
    return otel.OtelTracing(config, env)


__all__ = [
    "CONSUMER", "DECISION", "NO_SPAN", "OFF", "OUTCOME", "TOOL", "UPSTREAM", "Span", "Tracing", "current",
    "start_tracing", "wanted",
]
