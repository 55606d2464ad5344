"""Assembles a gateway from a config: upstreams, pipeline (policy, metrics, audit) and auth."""

from __future__ import annotations

from collections.abc import Generator

import httpx2

from mcp_hub.auth.config import AuthConfig
from mcp_hub.auth.gateway_auth import GatewayAuth, check_bind
from mcp_hub.auth.identity import anonymous_consumer
from mcp_hub.config import GatewayConfig, SseUpstreamConfig, StreamableHttpUpstreamConfig
from mcp_hub.gateway import Gateway, build_upstreams
from mcp_hub.upstreams.mcp import McpUpstream


class _CredentialAuth(httpx2.Auth):
    """Adds a gateway-owned upstream credential to every request of an upstream's HTTP client."""

    def __init__(self, credentials: object) -> None:
        self.credentials = credentials

    async def async_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        from mcp_hub.auth.identity import anonymous

        headers = await self.credentials.headers(anonymous(), None, {})  # type: ignore[attr-defined]
        request.headers.update(headers)
        yield request


def build_gateway(config: GatewayConfig, *, config_path: str | None = None, check_listen: bool = False) -> Gateway:
    """A ready-to-run gateway for `config` (nothing is started yet)."""
    auth_config = AuthConfig.model_validate(config.auth)
    if check_listen:
        check_bind(auth_config, config.listen.host)
    auth = GatewayAuth(auth_config) if auth_config.enabled else None
    upstreams = build_upstreams(config)
    for name, cfg in config.upstreams.items():
        if cfg.credentials is None or auth is None and not cfg.credentials:
            continue
        credentials = (auth or GatewayAuth(auth_config)).credentials(cfg.credentials)
        if credentials.belongs_to_caller:
            raise ValueError(
                f"upstreams.{name}.credentials: the caller's own credential needs session_scope: per_consumer, "
                "which MCP upstreams do not support yet"
            )
        if isinstance(cfg, StreamableHttpUpstreamConfig | SseUpstreamConfig):
            upstream = upstreams[name]
            assert isinstance(upstream, McpUpstream)
            upstream.http_auth = _CredentialAuth(credentials)
    gateway = Gateway(config, upstreams=upstreams, default_consumer=anonymous_consumer(auth_config))
    gateway.auth = auth
    return gateway
