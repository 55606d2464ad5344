"""Builds the ASGI app: MCP routes (Streamable HTTP), /healthz, /metrics, PRM and the admin API."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.server.sse import SseServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_hub import sdk_internals
from mcp_hub.admin.api import admin_routes
from mcp_hub.admin.monitoring import monitoring_routes
from mcp_hub.auth.identity import Consumer, anonymous
from mcp_hub.auth.metadata import resource_for_path, resource_metadata_url, upstream_resource_routes
from mcp_hub.config import GatewayConfig
from mcp_hub.core.hub import CONSUMER_SCOPE_KEY, Gateway
from mcp_hub.core.reload import watch_config
from mcp_hub.transport.direct import DirectCalls
from mcp_hub.transport.replicas import SessionGate, shared_sessions
from mcp_hub.transport.strict import StrictJson
from mcp_hub.upstreams.base import UpstreamState

LOOPBACK_NAMES = ("localhost",)

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_security(config: GatewayConfig) -> TransportSecuritySettings | None:
    """DNS-rebinding protection: on by default for loopback binds, or when hosts are configured."""
    listen = config.listen
    if listen.allowed_hosts is None and not is_loopback(listen.host):
        return None
    hosts = listen.allowed_hosts or ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    origins = listen.allowed_origins or ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    # An origin allowed to call cross-origin (auth.cors_origins) is an allowed origin here too.
    origins = [*origins, *(o for o in config.auth.cors_origins if o != "*" and o not in origins)]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


def _matches(value: str, patterns: list[str]) -> bool:
    """`value` against patterns where a trailing `:*` stands for any port."""
    for pattern in patterns:
        if pattern == value or (pattern.endswith(":*") and value.startswith(pattern[:-1])):
            return True
        if pattern.endswith(":*") and value == pattern[:-2]:
            return True
    return False


class HostGuard:
    """DNS-rebinding protection for every route (health, metrics, admin, MCP): a request whose Host, or
    Origin when present, is not an allowed one is refused before it reaches anything."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self.hosts = list(security.allowed_hosts)
        self.origins = list(security.allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k: v.decode("latin-1") for k, v in scope.get("headers", ()) if k in (b"host", b"origin")}
            host, origin = headers.get(b"host", ""), headers.get(b"origin")
            if not _matches(host, self.hosts):
                await JSONResponse({"error": "invalid Host header"}, status_code=421)(scope, receive, send)
                return
            # Public metadata is readable from any origin (CORS "*"): nothing there to rebind to.
            public = str(scope.get("path", "")).startswith(PUBLIC_METADATA_PREFIX)
            if origin is not None and not public and not _matches(origin, self.origins):
                await JSONResponse({"error": "invalid Origin header"}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


PUBLIC_METADATA_PREFIX = "/.well-known/oauth-protected-resource"
# What a browser MCP client sends (the 2026-07-28 era adds Mcp-Method, Mcp-Name and Mcp-Param-*, allowed
# when asked for) and what it must be able to read: the challenge of a 401 and the session id.
CORS_ALLOW_HEADERS = ("authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id",
                      "x-api-key", "mcp-method", "mcp-name")
CORS_EXPOSE_HEADERS = "WWW-Authenticate, Mcp-Session-Id, Mcp-Protocol-Version"
CORS_METHODS = "GET, POST, DELETE, OPTIONS"


class Cors:
    """CORS for the MCP routes (origins in `auth.cors_origins`, `*` for any) and the protected resource
    metadata (any origin). Preflights get 204 (403 for an origin not allowed); other responses, 401s
    included, carry Allow-Origin and expose `WWW-Authenticate` and `Mcp-Session-Id`."""

    def __init__(self, app: ASGIApp, origins: list[str], mcp_paths: set[str]) -> None:
        self.app = app
        self.origins = set(origins)
        self.mcp_paths = mcp_paths

    def _allowed(self, path: str, origin: str) -> str | None:
        if path.startswith(PUBLIC_METADATA_PREFIX):
            return "*"
        if path.rstrip("/") in self.mcp_paths or path in self.mcp_paths:
            return origin if ("*" in self.origins or origin in self.origins) else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        path = scope.get("path", "")
        ours = path.startswith(PUBLIC_METADATA_PREFIX) or path.rstrip("/") in self.mcp_paths or path in self.mcp_paths
        if origin is None or not ours:
            await self.app(scope, receive, send)
            return
        allowed = self._allowed(path, origin)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            if allowed is None:
                await JSONResponse({"error": "invalid_request",
                                    "error_description": f"origin {origin} may not call this route "
                                    "(auth.cors_origins)"}, status_code=403)(scope, receive, send)
                return
            requested = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")]
            extra = [h for h in requested if h.startswith("mcp-") and h not in CORS_ALLOW_HEADERS]
            await Response(status_code=204, headers={
                "Access-Control-Allow-Origin": allowed,
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": ", ".join([*CORS_ALLOW_HEADERS, *extra]),
                "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS,
                "Access-Control-Max-Age": "600",
                "Vary": "Origin",
            })(scope, receive, send)
            return
        if allowed is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", allowed.encode("latin-1")),
                    (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_cors)


# Headers that carry a credential: a request that names one twice is ambiguous (different parsers of it
# would take different values), so it is refused before anything reads it.
CREDENTIAL_HEADERS = (b"authorization", b"x-api-key")


class OneCredential:
    """Refuses a request that carries a credential header more than once (400), on every route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = [k for k, _ in scope.get("headers", ()) if k in CREDENTIAL_HEADERS]
            if len(names) != len(set(names)):
                twice = sorted({n.decode() for n in names if names.count(n) > 1})
                await JSONResponse({"error": "invalid_request",
                                    "error_description": f"the {', '.join(twice)} header is given more than once"},
                                   status_code=400)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UpstreamTokenChallenge:
    """On a route whose upstream runs its own OAuth: a request without an Authorization token gets a 401
    whose metadata names the upstream's authorization server, so a client like Claude Code fetches the
    upstream token itself (the gateway identifies the caller by X-Api-Key and passes the token on)."""

    def __init__(self, app: ASGIApp, metadata_url: str) -> None:
        self.app = app
        self.challenge = f'Bearer resource_metadata="{metadata_url}"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            authorization = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
            if not authorization.strip():
                response = JSONResponse(
                    {"error": "invalid_request",
                     "error_description": "this route needs the upstream's token in Authorization"},
                    status_code=401, headers={"WWW-Authenticate": self.challenge},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _route_resource(gateway: Gateway, path: str) -> str:
    """The resource URL of a route: on the origin of auth.resource, else of the listen address."""
    resource = gateway.config.auth.resource
    if resource:
        return resource_for_path(resource, path)
    listen = gateway.config.listen
    return f"http://{listen.host}:{listen.port}{path}"


class _StaticConsumer:
    """ASGI wrapper that names the consumer when auth is off."""

    def __init__(self, app: ASGIApp, consumer: Consumer) -> None:
        self.app = app
        self.consumer = consumer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[CONSUMER_SCOPE_KEY] = self.consumer
        await self.app(scope, receive, send)


def build_app(gateway: Gateway, *, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """The whole HTTP surface of one gateway process."""
    config = gateway.config
    security = transport_security(config)
    managers: list[StreamableHTTPSessionManager] = []
    routes: list[BaseRoute] = []
    protect = _auth_wrapper(gateway)
    direct_on = config.listen.direct_calls and _direct_entry_usable(gateway)
    replicas = shared_sessions(gateway)  # None unless `sessions:` is set
    if not config.listen.direct_calls:
        gateway.direct_stats.off = "listen.direct_calls is false"
    upstream_as = {spec.path: spec.authorization_servers for spec in config.servers if spec.authorization_servers}
    for route in gateway.routes.values():
        assert route.server is not None
        manager = StreamableHTTPSessionManager(
            app=route.server,
            stateless=config.listen.stateless,
            json_response=config.listen.json_response,
            security_settings=security,
            max_request_body_size=config.listen.max_request_body,
        )
        managers.append(manager)
        endpoint: ASGIApp = StreamableHTTPASGIApp(manager)
        if direct_on:
            endpoint = DirectCalls(endpoint, gateway, route.path, manager, json_response=config.listen.json_response,
                                   max_body=config.listen.max_request_body, stats=gateway.direct_stats)
        else:
            endpoint = StrictJson(endpoint, config.listen.max_request_body)
        endpoint = SessionGate(endpoint, gateway, route.path, manager, replicas=replicas,
                               direct=endpoint if isinstance(endpoint, DirectCalls) else None)
        endpoint = protect(endpoint, route.path)
        if route.path in upstream_as:
            resource = _route_resource(gateway, route.path)
            endpoint = UpstreamTokenChallenge(endpoint, resource_metadata_url(resource))
            routes.extend(upstream_resource_routes(resource, upstream_as[route.path], resource_name="mcp-hub"))
        routes.append(Route(route.path, endpoint=endpoint, methods=["GET", "POST", "DELETE"]))
        routes.extend(_sse_routes(route.path, route.server, security, config.listen.max_request_body, protect))
    routes.extend(_auth_routes(gateway))

    metrics = gateway.meter.metrics
    if metrics is not None:
        # Read at scrape time: upstreams and sessions come and go without anyone touching the gauges.
        metrics.watch_upstreams(lambda: {name: up.state == UpstreamState.UP for name, up in gateway.upstreams.items()})
        metrics.watch_sessions(functools.partial(open_sessions, managers, _sse_transports(routes)))
    routes.extend(monitoring_routes(gateway, metrics.render if metrics is not None else None))
    routes.extend(admin_routes(gateway))
    routes.extend(extra_routes or [])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg, contextlib.AsyncExitStack() as stack:
            await tg.start(gateway.run)
            if replicas is not None:
                await tg.start(replicas.run)
            if gateway.config_path:
                tg.start_soon(watch_config, gateway, gateway.config_path)
            for manager in managers:
                await stack.enter_async_context(manager.run())
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    mcp_paths = {p for path in gateway.routes for p in (path, f"{path}/sse", f"{path}/messages")}
    middleware = [Middleware(OneCredential)]
    if security is not None:
        middleware.append(Middleware(HostGuard, security=security))
    # Inside the host guard: a preflight from an origin it refuses never gets CORS headers.
    middleware.append(Middleware(Cors, origins=list(config.auth.cors_origins), mcp_paths=mcp_paths))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware)


def open_sessions(managers: list[StreamableHTTPSessionManager], sse: list[SseServerTransport]) -> int:
    """Open downstream MCP sessions: live Streamable HTTP sessions plus legacy SSE streams (stdio has none)."""
    # Both SDK classes keep their sessions in private dicts, so read them defensively.
    count = 0
    for manager in managers:
        transports = getattr(manager, "_server_instances", None) or {}
        count += sum(1 for t in list(transports.values()) if not getattr(t, "is_terminated", False))
    for transport in sse:
        count += len(getattr(transport, "_read_stream_writers", None) or {})
    return count


def _sse_transports(routes: list[BaseRoute]) -> list[SseServerTransport]:
    """The SSE transports behind the routes: their POST endpoints are bound methods under auth wrappers."""
    found: list[SseServerTransport] = []
    for route in routes:
        app: Any = getattr(route, "endpoint", None)
        for _ in range(8):  # a few wrapper layers at most; each keeps the wrapped app in `.app`
            owner = getattr(app, "__self__", None)
            if isinstance(owner, SseServerTransport):
                if all(owner is not seen for seen in found):
                    found.append(owner)
                break
            app = getattr(app, "app", None)
            if app is None:
                break
    return found


def _direct_entry_usable(gateway: Gateway) -> bool:
    """Whether the installed SDK has what the direct HTTP entry needs; if not, say so in the log and /healthz."""
    missing = sdk_internals.direct_entry_missing()
    if missing:
        gateway.direct_stats.off = f"the installed mcp SDK lacks {', '.join(missing)}"
        logger.warning("direct HTTP entry off, every call goes through the SDK's transport: %s",
                       gateway.direct_stats.off)
        return False
    return True


def _sse_routes(
    path: str, server: Any, security: TransportSecuritySettings | None, max_body: int, protect: Any
) -> list[BaseRoute]:
    """The legacy HTTP+SSE transport (2024-11-05 clients): GET {path}/sse, POST {path}/messages/."""
    transport = SseServerTransport(f"{path}/messages/", security_settings=security, max_request_body_size=max_body)

    async def connect(scope: Scope, receive: Receive, send: Send) -> None:
        async with transport.connect_sse(scope, receive, send) as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    return [
        Route(f"{path}/sse", endpoint=protect(connect, path), methods=["GET"]),
        Route(f"{path}/messages/", endpoint=protect(transport.handle_post_message, path), methods=["POST"]),
    ]


def _route_scopes(gateway: Gateway) -> dict[str, list[str]]:
    """The routes that set their own `required_scopes` (the others take `auth.required_scopes`)."""
    return {spec.path: list(spec.required_scopes) for spec in gateway.config.servers
            if spec.required_scopes is not None}


def _auth_wrapper(gateway: Gateway) -> Any:
    """How each MCP route is protected: the auth gate when auth is on, a fixed consumer when off."""
    auth = getattr(gateway, "auth", None)
    if auth is not None:
        scopes = _route_scopes(gateway)
        return lambda app, path: auth.protect(app, path, scopes.get(path))
    consumer = gateway.default_consumer or anonymous()
    return lambda app, path: _StaticConsumer(app, consumer)


def _auth_routes(gateway: Gateway) -> list[BaseRoute]:
    auth = getattr(gateway, "auth", None)
    return list(auth.routes(list(gateway.routes), _route_scopes(gateway))) if auth is not None else []
