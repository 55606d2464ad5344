"""Assembles a gateway from a config (upstreams with their credentials, pipeline, auth) and keeps it
in step with its config file (SIGHUP and file changes)."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import anyio
import httpx2

from mcp_hub.auth.config import AuthConfig
from mcp_hub.auth.gateway_auth import GatewayAuth, check_bind
from mcp_hub.auth.identity import anonymous, anonymous_consumer
from mcp_hub.config import (
    ConfigError,
    GatewayConfig,
    SseUpstreamConfig,
    StreamableHttpUpstreamConfig,
    load_config,
)
from mcp_hub.gateway import Gateway, build_upstreams
from mcp_hub.upstreams.base import Upstream
from mcp_hub.upstreams.mcp import McpUpstream

logger = logging.getLogger(__name__)


class _CredentialAuth(httpx2.Auth):
    """Adds a gateway-owned upstream credential to every request of an upstream's HTTP client."""

    def __init__(self, credentials: Any) -> None:
        self.credentials = credentials

    async def async_auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.headers.update(await self.credentials.headers(anonymous(), None, {}))
        yield request


def upstream_factory(auth_config: AuthConfig, auth: GatewayAuth | None) -> Callable[[GatewayConfig], dict[str, Upstream]]:
    """Builds upstream objects for a config, with gateway-owned credentials attached."""
    credential_source = auth or GatewayAuth(auth_config)

    def build(config: GatewayConfig) -> dict[str, Upstream]:
        upstreams = build_upstreams(config)
        for name, cfg in config.upstreams.items():
            if not cfg.credentials:
                continue
            credentials = credential_source.credentials(cfg.credentials)
            if credentials.belongs_to_caller:
                raise ConfigError([
                    f"upstreams.{name}.credentials: a caller-owned credential (passthrough, exchange) needs one "
                    "upstream session per consumer, which MCP upstreams do not support yet"
                ])
            upstream = upstreams[name]
            if isinstance(cfg, StreamableHttpUpstreamConfig | SseUpstreamConfig) and isinstance(upstream, McpUpstream):
                upstream.http_auth = _CredentialAuth(credentials)
        return upstreams

    return build


def build_gateway(config: GatewayConfig, *, config_path: str | None = None, check_listen: bool = False) -> Gateway:
    """A ready-to-run gateway for `config` (nothing is started yet)."""
    auth_config = AuthConfig.model_validate(config.auth)
    if check_listen:
        check_bind(auth_config, config.listen.host)
    auth = GatewayAuth(auth_config) if auth_config.enabled else None
    gateway = Gateway(
        config, upstream_factory=upstream_factory(auth_config, auth), default_consumer=anonymous_consumer(auth_config)
    )
    gateway.auth = auth
    gateway.config_path = config_path
    return gateway


async def reload_from_file(gateway: Gateway, path: str | Path) -> dict[str, list[str]] | None:
    """Load the config file again and switch to it; an invalid file is refused and logged."""
    try:
        config = load_config(path)
        return await gateway.reload(config)
    except (ConfigError, ValueError) as exc:
        logger.error("config reload refused, the old config keeps serving: %s", exc)
        return None


async def watch_config(gateway: Gateway, path: str | Path, *, interval: float = 1.0) -> None:
    """Reload on SIGHUP and whenever the file's modification time or size changes."""
    path = Path(path)

    def stamp() -> tuple[float, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_mtime, st.st_size

    async def on_signal() -> None:
        with anyio.open_signal_receiver(signal.SIGHUP) as signals:
            async for _ in signals:
                logger.info("SIGHUP: reloading %s", path)
                await reload_from_file(gateway, path)

    async def on_change() -> None:
        last = stamp()
        while True:
            await anyio.sleep(interval)
            current = stamp()
            if current is not None and current != last:
                last = current
                logger.info("%s changed: reloading", path)
                await reload_from_file(gateway, path)

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_signal)
        tg.start_soon(on_change)
