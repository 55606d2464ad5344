"""Assembles a gateway from a config (upstreams with their credentials, pipeline, auth, runtime OpenAPI
registrations) and keeps it in step with its config file (SIGHUP, file changes, `POST /admin/reload`)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

from mcp_hub.admin.registry import OpenAPIRegistry, RegistryError, open_store
from mcp_hub.auth.gateway_auth import GatewayAuth, check_bind
from mcp_hub.auth.identity import anonymous, anonymous_consumer
from mcp_hub.config import (
    ConfigError,
    GatewayConfig,
    SseUpstreamConfig,
    StreamableHttpUpstreamConfig,
)
from mcp_hub.config.auth import AuthConfig
from mcp_hub.core.hub import Gateway, build_upstreams
from mcp_hub.transport.sdk_server import bind_servers
from mcp_hub.upstreams.base import Upstream
from mcp_hub.upstreams.mcp import McpUpstream
from mcp_hub.upstreams.per_consumer import PerConsumerUpstream

logger = logging.getLogger(__name__)


def upstream_factory(
    auth_config: AuthConfig, auth: GatewayAuth | None, registry: OpenAPIRegistry | None = None
) -> Callable[[GatewayConfig], dict[str, Upstream]]:
    """Builds upstream objects for a config, with gateway-owned credentials attached, followed by the
    runtime OpenAPI registrations `registry` holds (so a reload keeps them)."""
    credential_source = auth or GatewayAuth(auth_config)

    def build(config: GatewayConfig) -> dict[str, Upstream]:
        upstreams = build_upstreams(config)
        for name, cfg in config.upstreams.items():
            if not cfg.credentials and cfg.session_scope == "shared":
                continue
            credentials = credential_source.credentials(cfg.credentials)
            if credentials.belongs_to_caller or cfg.session_scope == "per_consumer":
                if credentials.belongs_to_caller and not isinstance(
                    cfg, StreamableHttpUpstreamConfig | SseUpstreamConfig
                ):
                    raise ConfigError([
                        f"upstreams.{name}.credentials: a caller-owned credential (passthrough, exchange) "
                        "needs an HTTP upstream (sse or streamable-http)"
                    ])
                # The upstream knows the user by the credential on the session (or the operator asked for
                # isolation, e.g. a stdio server that keeps per-user state): one session per consumer.
                upstreams[name] = PerConsumerUpstream(name, cfg, credentials)
                continue
            upstream = upstreams[name]
            if isinstance(cfg, StreamableHttpUpstreamConfig | SseUpstreamConfig) and isinstance(upstream, McpUpstream):
                upstream.credential_headers = functools.partial(credentials.headers, anonymous(), None, {})
        if registry is not None:
            upstreams.update(registry.upstreams(taken=set(upstreams)))
        return upstreams

    return build


def open_registry(config: GatewayConfig, config_path: str | Path | None = None) -> OpenAPIRegistry:
    """The (not yet loaded) registry of runtime OpenAPI registrations `admin.registry` names."""
    admin = config.admin
    try:
        store = open_store(admin.registry, config_path=config_path)
    except RegistryError as exc:
        raise ConfigError([f"admin.registry: {exc}"]) from None
    registry = OpenAPIRegistry(store)
    registry.configure(admin, config_path)
    return registry


async def load_registry(config: GatewayConfig, config_path: str | Path | None = None) -> OpenAPIRegistry:
    """Open the registry and read its registrations: done before serving, so they survive restarts."""
    registry = open_registry(config, config_path)
    try:
        await registry.load()
    except RegistryError as exc:
        raise ConfigError([f"admin.registry: cannot load the OpenAPI registrations: {exc}"]) from None
    return registry


def build_gateway(
    config: GatewayConfig,
    *,
    config_path: str | None = None,
    check_listen: bool = False,
    registry: OpenAPIRegistry | None = None,
) -> Gateway:
    """A ready-to-run gateway for `config` (nothing is started yet).

    `registry` holds runtime OpenAPI registrations (see `load_registry`); without one, an empty
    registry on the configured store is attached, so the admin API can still register.
    """
    auth_config = config.auth
    if check_listen:
        check_bind(auth_config, config.listen.host)
    auth = GatewayAuth(auth_config) if auth_config.enabled else None
    registry = registry or open_registry(config, config_path)
    gateway = Gateway(
        config,
        upstream_factory=upstream_factory(auth_config, auth, registry),
        default_consumer=anonymous_consumer(auth_config),
    )
    gateway.auth = auth
    bind_servers(gateway)
    gateway.config_path = config_path
    # The admin API finds the registry here (the Gateway class knows nothing of registrations).
    gateway.openapi_registry = registry  # type: ignore[attr-defined]
    return gateway
