"""Assembles a gateway from a config (upstreams with their credentials, pipeline, auth, runtime OpenAPI
registrations) and keeps it in step with its config file (SIGHUP, file changes, `POST /admin/reload`).

`prepare` is everything `serve` checks before it starts anything; `mcp-hub check` runs the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import fnmatch
import functools
import gc
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.routing import BaseRoute

from mcp_hub.admin.registry import OpenAPIRegistry, RegistryError, open_store
from mcp_hub.auth.errors import CredentialConfigError
from mcp_hub.auth.gateway_auth import GatewayAuth, check_bind
from mcp_hub.auth.identity import anonymous, anonymous_consumer
from mcp_hub.auth.metadata import api_key_only_routes
from mcp_hub.config import (
    ConfigError,
    GatewayConfig,
    SseUpstreamConfig,
    StreamableHttpUpstreamConfig,
)
from mcp_hub.config.auth import AuthConfig
from mcp_hub.core.hub import Gateway, build_upstreams
from mcp_hub.tracing import start_tracing
from mcp_hub.transport.app import build_app
from mcp_hub.transport.coalesce import CoalescingHTTPProtocol
from mcp_hub.transport.sdk_server import bind_servers
from mcp_hub.upstreams.base import Upstream, UpstreamState
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
            try:
                credentials = credential_source.credentials(cfg.credentials)
            except CredentialConfigError as exc:  # an unset variable, an unreadable file: safe to show
                raise ConfigError([f"upstreams.{name}.credentials: {exc.description}"]) from None
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
    source = config_path or "<embedded default>"
    if check_listen:
        try:
            check_bind(auth_config, config.listen.host)
        except ValueError as exc:
            raise ConfigError([f"listen.host: {exc}"], source) from None
    auth = GatewayAuth(auth_config) if auth_config.enabled else None
    registry = registry or open_registry(config, config_path)
    try:
        gateway = Gateway(
            config,
            upstream_factory=upstream_factory(auth_config, auth, registry),
            default_consumer=anonymous_consumer(auth_config),
        )
    except ConfigError as exc:
        raise ConfigError(exc.problems, exc.source or source) from None
    gateway.auth = auth
    try:  # chosen once, before the routes' servers are built: with tracing off they get no tracing middleware
        gateway.tracing = start_tracing(config.tracing)
    except ConfigError as exc:
        raise ConfigError(exc.problems, source) from None
    bind_servers(gateway)
    gateway.config_path = config_path
    # The admin API finds the registry here (the Gateway class knows nothing of registrations).
    gateway.openapi_registry = registry  # type: ignore[attr-defined]
    return gateway


async def prepare(config: GatewayConfig, config_path: str | None = None, *, check_listen: bool = True) -> Gateway:
    """Everything `serve` checks before it starts anything, and the gateway it would run.

    Reads the runtime OpenAPI registrations, refuses an open bind without auth, and builds every
    upstream with its credentials (an unset variable or unreadable secret file is a `ConfigError`).
    `mcp-hub check` calls this too, so the two never disagree about a config.
    """
    registry = await load_registry(config, config_path)
    return build_gateway(config, config_path=config_path, check_listen=check_listen, registry=registry)


async def check_config(config: GatewayConfig, config_path: str | None = None) -> Gateway:
    """`prepare`, then release what it opened (nothing was started): raises `ConfigError` like `serve`."""
    gateway = await prepare(config, config_path)
    gateway.tracing.shutdown()
    if gateway.auth is not None:
        await gateway.auth.aclose()
    return gateway


def unmatched_allow_patterns(gateway: Gateway) -> list[str]:
    """Tool allow patterns of `groups` that match no tool on any route, with a close name when there is one.

    Such a pattern gives its group nothing, usually because of a missing prefix (`get_current_time`
    for `time__get_current_time`) or a typo. Only meaningful once the upstreams were started.
    """
    names = sorted({tool.name for route in gateway.routes.values() for tool in route.view.tool_list})
    down = sorted(name for name, up in gateway.upstreams.items() if up.state != UpstreamState.UP)
    out: list[str] = []
    for group, policy in gateway.config.policy.groups.items():
        for index, pattern in enumerate(policy.tools.allow):
            if any(fnmatch.fnmatchcase(name, pattern) for name in names):
                continue
            line = f"groups.{group}.tools.allow[{index}]: {pattern!r} matches no tool"
            close = difflib.get_close_matches(pattern, names, n=1, cutoff=0.6)
            if close:
                line += f" (did you mean {close[0]}?)"
            if down:
                line += f"; upstreams not up, whose tools are unknown: {', '.join(down)}"
            out.append(line)
    return out


def warn_unmatched_allow_patterns(gateway: Gateway) -> list[str]:
    """Log each allow pattern that matches no tool (see `unmatched_allow_patterns`); returns the lines."""
    lines = unmatched_allow_patterns(gateway)
    for line in lines:
        logger.warning("allow pattern gives its group no tool: %s", line)
    return lines


def extra_routes(gateway: Gateway) -> list[BaseRoute]:
    """HTTP routes beside the ones `transport.app.build_app` makes for a gateway.

    With API keys as the only way in, clients that meet a 401 and try OAuth discovery anyway (Claude
    Code does on every 401 without a configured Authorization header) get answers that say a key is
    needed and how to send it, instead of bare 404s that end in "client registration failed".
    """
    methods = gateway.config.auth.methods
    if methods and "oauth" not in methods:
        return api_key_only_routes()
    return []


class GatewayServer(uvicorn.Server):
    """uvicorn's server, with the app's lifespan (the gateway starting its upstreams) entered here
    rather than by uvicorn: a start-up failure (a name collision) reaches the caller as the exception
    itself, not as a logged traceback and uvicorn's exit code. `ready` runs once the gateway is up,
    before the socket accepts connections."""

    def __init__(self, settings: uvicorn.Config, lifespan: Any, ready: Callable[[], None]) -> None:
        super().__init__(settings)
        self._lifespan = lifespan
        self._ready = ready
        self._stack = contextlib.AsyncExitStack()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self._stack.enter_async_context(self._lifespan)
        try:
            settle_heap()
            self._ready()
            await super().startup(sockets)
        except BaseException:
            await self._stack.aclose()
            raise

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            await self._stack.aclose()


def settle_heap() -> None:
    """Once the gateway is up: what start-up built (config, catalog, SDK models, imported modules) moves out of
    the cyclic collector's sight, and its youngest generation is collected less often.

    A relayed call allocates a few hundred short-lived containers; at the default threshold (700) the
    collector ran every few calls and each full pass walked the whole start-up heap again, about 7% of
    the gateway's CPU on the call path. Objects built later are still collected as usual."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, second, third)


GC_THRESHOLD = 20_000


def serve_http(gateway: Gateway, sock: socket.socket, ready: Callable[[], None]) -> None:
    """Serve the gateway's HTTP app on an already bound socket until a signal stops it.

    Raises what keeps the gateway from starting (e.g. `CollisionError`, maybe in an exception group).
    """
    app = build_app(gateway, extra_routes=extra_routes(gateway))
    # One send per answer (transport/coalesce.py).
    settings = uvicorn.Config(app, log_level="warning", lifespan="off", http=CoalescingHTTPProtocol)
    server = GatewayServer(settings, app.router.lifespan_context(app), ready)
    try:
        with asyncio.Runner(loop_factory=settings.get_loop_factory()) as runner:
            runner.run(server.serve(sockets=[sock]))
    finally:
        gateway.tracing.shutdown()  # export the spans still queued
