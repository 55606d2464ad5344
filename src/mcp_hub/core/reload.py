"""Keeping a running gateway in step with its config file: SIGHUP, file changes, `POST /admin/reload`.

The registry of runtime OpenAPI registrations (admin layer) is reached through the gateway's
`openapi_registry` attribute, so this module needs nothing above core. With shared sessions
(`sessions:`), the transport layer puts a `replica_bus` on the gateway: a reload done here is
announced to the other replicas, which reload too (`reload_checked(..., announce=False)`), and a
change of the registrations one of them made is applied with `reload_registrations`.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import anyio

from mcp_hub.config import ConfigError, load_config
from mcp_hub.core.economy import check_config as check_catalog
from mcp_hub.core.hub import Gateway

logger = logging.getLogger(__name__)


class ConfigSourceError(Exception):
    """A source of configuration besides the file (e.g. the registration store) cannot be read or used."""


async def reload_checked(gateway: Gateway, path: str | Path, *, announce: bool = True) -> dict[str, list[str]]:
    """Load the config file again, re-read the OpenAPI registrations, and switch to both.

    Raises `ConfigError` (or `ValueError`, `ConfigSourceError`) and changes nothing when either is unusable.
    `announce`: tell the other replicas (when sessions are shared) to reload too.
    """
    config = load_config(path)
    check_catalog(config)  # counters load, meta-tool names differ: checked as at start
    for key, value in (getattr(gateway, "listen_overrides", None) or {}).items():
        setattr(config.listen, key, value)  # command-line options win over the file, as at start
    registry: Any = getattr(gateway, "openapi_registry", None)
    restart: list[str] = []
    if registry is None:
        summary = await gateway.reload(config)
    else:
        admin, old_admin = config.admin, gateway.config.admin
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
        _registered_routes(gateway, registry)
    bus: Any = getattr(gateway, "replica_bus", None)
    if announce and bus is not None:
        await bus.announce("reload")
    return summary


async def reload_registrations(gateway: Gateway) -> dict[str, list[str]] | None:
    """Another replica registered or removed an OpenAPI upstream: read the store again and serve what it
    holds (upstreams started and stopped, clients told of the change). None without a registry."""
    registry: Any = getattr(gateway, "openapi_registry", None)
    if registry is None:
        return None
    await registry.load()
    summary = await gateway.reload(gateway.config)
    _registered_routes(gateway, registry)
    return summary


def _registered_routes(gateway: Gateway, registry: Any) -> None:
    """Virtual servers are rebuilt from the config; put back the registrations that asked for them."""
    extra = False
    for registration in registry.registrations.values():
        for path_ in registration.routes:
            route = gateway.routes.get(path_)
            if route is not None and registration.name in gateway.upstreams and registration.name not in route.upstreams:
                route.upstreams.append(registration.name)
                extra = True
    if extra:
        gateway.rebuild()


async def reload_from_file(gateway: Gateway, path: str | Path) -> dict[str, list[str]] | None:
    """Load the config file again and switch to it; an invalid file is refused and logged."""
    try:
        return await reload_checked(gateway, path)
    except (ConfigError, ValueError, ConfigSourceError) as exc:
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
