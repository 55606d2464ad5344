"""`tracing:`, OpenTelemetry traces of the gateway's requests, exported over OTLP/HTTP (off by default).

    tracing:
      enabled: true
      endpoint: http://otel-collector:4318          # the collector's OTLP/HTTP base URL
      headers: {Authorization: "Bearer ${OTEL_TOKEN}"}
      service_name: mcp-hub-eu
      sample_ratio: 0.25

Every key may be left out in favour of the standard `OTEL_*` environment variables (docs/tracing.md
says which win and which the OpenTelemetry SDK reads by itself).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

# Header names (RFC 9110 tokens): a typo'd name with a space or colon would otherwise only fail at export.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class TracingConfig(BaseModel):
    """OpenTelemetry tracing: a span per MCP request, W3C trace context in and out, OTLP/HTTP export."""

    # Header values are credentials: errors name the key, never the value.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    enabled: bool | None = Field(
        default=None,
        description="true: trace; false: never trace (whatever the `OTEL_*` variables say); unset: trace when "
        "`endpoint` is set here, or `OTEL_TRACES_EXPORTER` names `otlp`, or (with `OTEL_TRACES_EXPORTER` unset) "
        "`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set. Needs the `otel` extra "
        "(`pip install 'mcp-hub[otel]'`). A change takes a restart.",
    )
    endpoint: str | None = Field(
        default=None,
        description="The collector's OTLP/HTTP base URL (`http://collector:4318`); `/v1/traces` is appended unless "
        "the path ends with it already. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is), else "
        "`OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`), else `http://localhost:4318/v1/traces`.",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Headers of every export request (an `Authorization` for a hosted collector; use `${VAR}` for "
        "secrets: they are never logged). Empty: `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else "
        "`OTEL_EXPORTER_OTLP_HEADERS`.",
    )
    service_name: str | None = Field(
        default=None, min_length=1,
        description="The `service.name` of the gateway's spans. Unset: `OTEL_SERVICE_NAME`, else `mcp-hub`.",
    )
    sample_ratio: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="Share of new traces recorded (0 to 1); a request that comes with a caller's trace context "
        "follows the caller's sampling decision. Unset: `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, else "
        "every trace.",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials: put them in `headers`")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name in value:
            if not name or not set(name) <= _TOKEN_CHARS:
                raise ValueError(f"{name!r} is not a valid HTTP header name")
        return value

    def traces_url(self) -> str | None:
        """The export URL `endpoint` gives (None: the `OTEL_*` variables decide)."""
        if self.endpoint is None:
            return None
        base = self.endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"
