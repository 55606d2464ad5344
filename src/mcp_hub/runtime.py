"""Assembles a gateway from a config (upstreams with their credentials, pipeline, auth, runtime OpenAPI
registrations) and keeps it in step with its config file (SIGHUP, file changes, `POST /admin/reload`)."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

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
from mcp_hub.registry import OpenAPIRegistry, RegistryError, open_store
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


def _admin_config(config: GatewayConfig) -> Any:
    from mcp_hub.admin import AdminConfig

    return AdminConfig.model_validate(config.admin)


def open_registry(config: GatewayConfig, config_path: str | Path | None = None) -> OpenAPIRegistry:
    """The (not yet loaded) registry of runtime OpenAPI registrations `admin.registry` names."""
    admin = _admin_config(config)
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
    auth_config = AuthConfig.model_validate(config.auth)
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
    gateway.config_path = config_path
    # The admin API finds the registry here (the Gateway class knows nothing of registrations).
    gateway.openapi_registry = registry  # type: ignore[attr-defined]
    return gateway


async def reload_checked(gateway: Gateway, path: str | Path) -> dict[str, list[str]]:
    """Load the config file again, re-read the OpenAPI registrations, and switch to both.

    Raises `ConfigError` (or `ValueError`, `RegistryError`) and changes nothing when either is unusable.
    """
    config = load_config(path)
    for key, value in (getattr(gateway, "listen_overrides", None) or {}).items():
        setattr(config.listen, key, value)  # command-line options win over the file, as at start
    registry: OpenAPIRegistry | None = getattr(gateway, "openapi_registry", None)
    restart: list[str] = []
    if registry is None:
        summary = await gateway.reload(config)
    else:
        admin, old_admin = _admin_config(config), _admin_config(gateway.config)
        if admin.registry != old_admin.registry:
            restart.append("admin.registry")  # the store is opened once per process
        if admin.path != old_admin.path or admin.enabled != old_admin.enabled:
            restart.append("admin.path")  # the admin API is mounted once, at start
        saved = (dict(registry.registrations), registry.allowed_base_urls, registry.allowed_spec_urls,
                 registry.spec_dirs)
        try:
            await registry.load()  # other replicas may have registered or removed APIs meanwhile
            registry.configure(admin, path)
            summary = await gateway.reload(config)
        except BaseException:
            (registry.registrations, registry.allowed_base_urls, registry.allowed_spec_urls,
             registry.spec_dirs) = saved
            raise
    summary["restart_required"] = summary.get("restart_required", []) + restart
    if registry is not None:
        # Virtual servers are rebuilt from the config; put back the registrations that asked for them.
        extra = False
        for registration in registry.registrations.values():
            for path_ in registration.routes:
                route = gateway.routes.get(path_)
                if route is not None and registration.name in gateway.upstreams and registration.name not in route.upstreams:
                    route.upstreams.append(registration.name)
                    extra = True
        if extra:
            gateway.rebuild()
    return summary


async def reload_from_file(gateway: Gateway, path: str | Path) -> dict[str, list[str]] | None:
    """Load the config file again and switch to it; an invalid file is refused and logged."""
    try:
        return await reload_checked(gateway, path)
    except (ConfigError, ValueError, RegistryError) as exc:
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
