"""The gateway's config file as typed models: upstreams, routes, listen, and every section's own model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from mcp_hub.config.admin import AdminConfig
from mcp_hub.config.auth import AuthConfig, UpstreamCredentialConfig
from mcp_hub.config.catalog import CatalogConfig
from mcp_hub.config.openapi import OpenAPIUpstreamConfig
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.config.sessions import SessionsConfig
from mcp_hub.config.tracing import TracingConfig

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"


class _Model(BaseModel):
    # hide_input_in_errors: headers, env and credentials hold secrets; an error names the key, never the value.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)


class _UpstreamCommon(_Model):
    prefix: str | None = Field(
        default=None, description="Prefix of exposed tool and prompt names; defaults to the upstream's name."
    )
    protocol: Literal["auto", "legacy", "2026-07-28"] = Field(
        default="auto",
        description="The era of the gateway's own session: auto probes 2026-07-28 and falls back to the initialize "
        "handshake; legacy forces the handshake; 2026-07-28 forces per-request envelopes.",
    )
    match_caller_era: bool = Field(
        default=True,
        description="Talk to an HTTP upstream in each caller's era where the server speaks it (a second session of "
        "the other era, opened on first use); false sends every call in `protocol`'s era and bridges the other "
        "era's callers (input_required rounds for handshake callers, relayed mid-call requests for 2026-07-28 ones).",
    )
    connect_timeout: float = Field(default=30.0, gt=0, description="Seconds to connect and list the catalog.")
    call_timeout: float = Field(default=300.0, gt=0, description="Seconds a call may take before it fails.")
    health_interval: float = Field(default=15.0, gt=0, description="Seconds between liveness pings.")
    reconnect_max_backoff: float = Field(default=30.0, gt=0, description="Upper bound of the reconnect delay.")
    session_scope: Literal["shared", "per_consumer"] = Field(
        default="shared",
        description="shared: one upstream session for all callers; per_consumer: one per consumer.",
    )
    credentials: UpstreamCredentialConfig | None = Field(
        default=None, description="How the gateway authenticates to this upstream (one of four `mode`s, below)."
    )


class StdioUpstreamConfig(_UpstreamCommon):
    transport: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class _HttpUpstreamConfig(_UpstreamCommon):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class SseUpstreamConfig(_HttpUpstreamConfig):
    transport: Literal["sse"]


class StreamableHttpUpstreamConfig(_HttpUpstreamConfig):
    transport: Literal["streamable-http"]


UpstreamConfig = Annotated[
    StdioUpstreamConfig | SseUpstreamConfig | StreamableHttpUpstreamConfig, Field(discriminator="transport")
]


class ServerRoute(_Model):
    """A virtual server: a path that exposes a chosen set of upstreams."""

    path: str = Field(pattern=r"^/[A-Za-z0-9/_.-]*$")
    upstreams: list[str] | None = Field(default=None, description="Upstreams exposed here; all when absent.")
    prefix: bool = Field(default=True, description="false exposes the upstreams' own names.")
    authorization_servers: list[str] | None = Field(
        default=None,
        description="For an upstream that runs its own OAuth (the GitHub remote MCP pattern): callers identify "
        "to the gateway with X-Api-Key and bring the upstream's token in Authorization; this route's protected "
        "resource metadata names these authorization servers, with the route as the resource.",
    )
    required_scopes: list[str] | None = Field(
        default=None,
        description="OAuth scopes a token needs on this route (403 insufficient_scope without them); default "
        "`auth.required_scopes`. Published as this route's `scopes_supported` and in its challenges' `scope=`.",
    )
    catalog: CatalogConfig | None = Field(
        default=None, description="This route's catalog budget and meta-tools, over the top-level `catalog:` "
        "(docs/catalog.md).")


class ListenConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    stateless: bool = Field(default=False, description="Stateless Streamable HTTP: replicas need no affinity.")
    json_response: bool = False
    direct_calls: bool = Field(
        default=True,
        description="Frame tools/call POSTs with the gateway's direct HTTP entry instead of the SDK's server session "
        "(the same call path behind both; see docs/architecture.md); false leaves every request to the SDK's entry.",
    )
    separator: str = Field(default="__", pattern=r"^[A-Za-z0-9_-]{1,3}$")
    max_request_body: int = Field(default=4 * 1024 * 1024, gt=0)
    allowed_hosts: list[str] | None = Field(
        default=None, description="Host headers accepted (DNS-rebinding protection); loopback by default."
    )
    allowed_origins: list[str] | None = None
    max_sessions_per_consumer: int | None = Field(
        default=64, ge=1,
        description="Open Streamable HTTP sessions one consumer may hold (across replicas with `sessions:`); one "
        "more is refused with HTTP 429. null: no limit.",
    )
    max_pending_per_consumer: int = Field(
        default=32, ge=1,
        description="How many of one consumer's calls may wait for its input at once (2026-07-28 callers answering "
        "an upstream's questions in rounds); one more is refused (JSON-RPC error -32029 naming this key).",
    )
    on_collision: Literal["error", "warn"] = Field(
        default="error",
        description="Two upstreams offering one exposed name at start: refuse to start, or warn and keep "
        "the first (config order). At run time a new collision is always a warning.",
    )


class GatewayConfig(_Model):
    """The whole config file."""

    include: list[str] = Field(default_factory=list, description="Connectors (by name or path) to merge in.")
    listen: ListenConfig = Field(default_factory=ListenConfig)
    upstreams: dict[Annotated[str, Field(pattern=NAME_PATTERN)], UpstreamConfig] = Field(default_factory=dict)
    openapi: dict[Annotated[str, Field(pattern=NAME_PATTERN)], OpenAPIUpstreamConfig] = Field(default_factory=dict)
    servers: list[ServerRoute] = Field(default_factory=list)
    auth: AuthConfig = Field(default_factory=AuthConfig, description="How callers authenticate and how their tokens become consumers and groups.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="The admin API.")
    sessions: SessionsConfig | None = Field(
        default=None, description="Shared sessions on Redis (`redis://host:port`): replicas serve each other's sessions "
        "behind a load balancer without affinity (docs/deploy.md). Absent: sessions stay in their process.")
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="OpenTelemetry traces of every MCP request, exported over OTLP/HTTP (off by default; docs/tracing.md).")
    catalog: CatalogConfig | None = Field(
        default=None, description="Token budget of every route's tool catalog, and the compact catalog's meta-tools "
        "(docs/catalog.md).")
    # Policy keys (default_acl, groups, ...) sit at the top level; parse_config validates them as one model.
    policy: PolicyConfig = Field(default_factory=PolicyConfig, exclude=True)
    # The folder relative paths in the config (OpenAPI documents) are resolved against.
    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        known = set(self.upstreams) | set(self.openapi)
        clash = set(self.upstreams) & set(self.openapi)
        if clash:
            raise ValueError(f"names used by both upstreams and openapi: {', '.join(sorted(clash))}")
        paths: set[str] = set()
        for route in self.servers:
            if route.path in paths:
                raise ValueError(f"servers: path {route.path} is defined twice")
            paths.add(route.path)
            for name in route.upstreams or []:
                if name not in known:
                    raise ValueError(f"servers: {route.path} names unknown upstream {name!r}")
        return self

    def upstream_prefix(self, name: str) -> str:
        cfg = self.upstreams.get(name) or self.openapi.get(name)
        prefix = cfg.prefix if cfg is not None else None
        return name if prefix is None else prefix


