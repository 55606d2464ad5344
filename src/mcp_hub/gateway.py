"""The gateway: upstreams, routes (virtual servers) and the SDK low-level servers that serve them.

Each route is an SDK `Server` whose handlers read the route's current `CatalogView`, ask policy,
and forward to the upstream that owns the item under its original name.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import jsonschema
import mcp_types as types
from anyio.abc import TaskStatus
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)
from mcp_types import LOG_LEVEL_META_KEY, SERVER_INFO_META_KEY
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_hub import __version__
from mcp_hub.auth.identity import Consumer, anonymous
from mcp_hub.catalog import CatalogView, Source, build_view
from mcp_hub.config import GatewayConfig, ServerRoute
from mcp_hub.pipeline import CallOutcome, Pipeline, PolicyPipeline
from mcp_hub.relay import Relay
from mcp_hub.upstreams.base import CallContext, DownstreamPeer, Upstream, UpstreamState, UpstreamUnavailable
from mcp_hub.upstreams.mcp import McpUpstream

logger = logging.getLogger(__name__)

ALL_ROUTE = "/mcp"
CONSUMER_SCOPE_KEY = "mcp_hub.consumer"
ACCESS_TOKEN_SCOPE_KEY = "mcp_hub.access_token"

_PEER_REQUESTS: dict[str, tuple[type[Any], type[Any], types.ClientCapabilities]] = {
    "sampling/createMessage": (
        types.CreateMessageRequest,
        types.CreateMessageResult,
        types.ClientCapabilities(sampling=types.SamplingCapability()),
    ),
    "elicitation/create": (
        types.ElicitRequest,
        types.ElicitResult,
        types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    ),
    "roots/list": (types.ListRootsRequest, types.ListRootsResult, types.ClientCapabilities(roots=types.RootsCapability())),
}


class _Peer(DownstreamPeer):
    """The downstream session of one request, as an upstream's relay target."""

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def supports(self, method: str) -> bool:
        return self._ctx.session.can_send_request and self.declares(method)

    def declares(self, method: str) -> bool:
        """Whether the caller declared the capability `method` needs."""
        spec = _PEER_REQUESTS.get(method)
        return spec is not None and self._ctx.session.check_client_capability(spec[2])

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        spec = _PEER_REQUESTS.get(method)
        if spec is None:
            raise MCPError(code=types.METHOD_NOT_FOUND, message=f"cannot relay {method}")
        request_model, result_model, _ = spec
        request = request_model.model_validate({"method": method, "params": params}, by_name=False)
        result_type = types.CreateMessageResultWithTools if method == "sampling/createMessage" and (
            params or {}).get("tools") else result_model
        result = await self._ctx.session.send_request(
            request, result_type, metadata=ServerMessageMetadata(related_request_id=self._ctx.request_id)
        )
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        await self._ctx.session.send_log_message(
            params.level, params.data, params.logger, related_request_id=self._ctx.request_id
        )


def consumer_of(ctx: ServerRequestContext[Any, Any], default: Consumer) -> Consumer:
    """The consumer the auth layer put in the HTTP request's scope (stdio: the default)."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    if scope is not None:
        consumer = scope.get(CONSUMER_SCOPE_KEY)
        if isinstance(consumer, Consumer):
            return consumer
    return default


def _connection(ctx: ServerRequestContext[Any, Any]) -> Connection | None:
    # The SDK hands handlers a per-request session; the connection behind it is what outlives it.
    return getattr(ctx.session, "_connection", None)


_LOG_LEVEL_STATE = "mcp_hub.log_level"


def _log_level(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The log level the caller wants: its request's opt-in (2026-07-28) or its logging/setLevel."""
    meta = ctx.meta if isinstance(ctx.meta, dict) else {}
    requested = meta.get(LOG_LEVEL_META_KEY)
    if requested is not None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return requested
    connection = _connection(ctx)
    # Handshake-era clients get every level unless they asked for less.
    return connection.state.get(_LOG_LEVEL_STATE, "debug") if connection is not None else "debug"


@dataclass(slots=True)
class DirectStats:
    """tools/call requests served on the direct path, and those it handed to the SDK (see fastpath.py)."""

    calls: int = 0
    handed_over: int = 0


class CollisionError(Exception):
    """Two upstreams offer the same exposed name at start: the config must say which gets which name."""

    def __init__(self, collisions: list[str]) -> None:
        self.collisions = collisions
        super().__init__(
            "name collisions (give one of the upstreams another prefix, or set listen.on_collision: warn):\n  "
            + "\n  ".join(collisions)
        )


class _HubServer(Server[Any]):
    """An SDK server that advertises list_changed for everything (the catalog is dynamic)."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(prompts_changed=True, resources_changed=True, tools_changed=True),
            experimental_capabilities,
            extensions,
        )


@dataclass
class Route:
    """A virtual server: a path, the upstreams it exposes, and its current catalog view."""

    path: str
    upstreams: list[str]
    prefixed: bool
    view: CatalogView
    server: Server[Any] | None = None
    connections: weakref.WeakKeyDictionary[Connection, Consumer] = field(default_factory=weakref.WeakKeyDictionary)
    # 2026-07-28 callers hear of changes on subscriptions/listen streams: one bus per group set.
    listeners: dict[tuple[str, ...], tuple[InMemorySubscriptionBus, ListenHandler, Consumer]] = field(
        default_factory=dict)
    subscriptions: dict[str, weakref.WeakSet[Connection]] = field(default_factory=dict)


class Gateway:
    """Owns the upstreams and the routes; serves MCP requests through the policy pipeline."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        pipeline: Pipeline | None = None,
        upstream_factory: Callable[[GatewayConfig], dict[str, Upstream]] | None = None,
        default_consumer: Consumer | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline or PolicyPipeline.from_config(config)
        self.default_consumer = default_consumer or anonymous()
        self.auth: Any = None  # GatewayAuth when callers must authenticate
        self.config_path: str | None = None  # watched for hot reload when set
        self._upstream_factory = upstream_factory or build_upstreams
        self.upstreams: dict[str, Upstream] = self._upstream_factory(config)
        self._scopes: dict[str, anyio.CancelScope] = {}
        self.relay = Relay()
        self._wire_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._version = 0
        self.routes: dict[str, Route] = {}
        self.collisions: list[str] = []
        self._validators: dict[tuple[int, str], Any] = {}
        self._refresh_pending = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.direct_stats = DirectStats()
        for spec in _route_specs(config):
            self.routes[spec.path] = Route(
                path=spec.path,
                upstreams=spec.upstreams or list(self.upstreams),
                prefixed=spec.prefix,
                view=CatalogView(version=0),
            )
        for route in self.routes.values():
            route.server = self._make_server(route)
        for upstream in self.upstreams.values():
            upstream.on_catalog_change(self._on_upstream_change)
            if isinstance(upstream, McpUpstream):
                upstream.on_notification(self._on_upstream_notification)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start every upstream (in parallel), build the catalogs, then serve until cancelled."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            async with anyio.create_task_group() as starting:
                for upstream in self.upstreams.values():
                    starting.start_soon(self._start_upstream, upstream)
            self.rebuild(notify=False)
            if self.collisions and self.config.listen.on_collision == "error":
                raise CollisionError(self.collisions)
            task_status.started()
            await anyio.sleep_forever()

    async def _start_upstream(self, upstream: Upstream) -> None:
        assert self._tg is not None
        await self._tg.start(self._run_upstream, upstream)

    async def _run_upstream(self, upstream: Upstream, *, task_status: TaskStatus[None]) -> None:
        # One cancel scope per upstream, so a reload or a removal stops exactly that one.
        with anyio.CancelScope() as scope:
            self._scopes[upstream.name] = scope
            await upstream.run(task_status=task_status)

    def _stop_upstream(self, name: str) -> None:
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()

    async def add_upstream(self, upstream: Upstream, *, routes: list[str] | None = None) -> None:
        """Register an upstream at run time (e.g. an OpenAPI document), start it, and wait for its first
        connection attempt (the upstream may be down after it: see its state)."""
        if upstream.name in self.upstreams:
            raise ValueError(f"an upstream named {upstream.name!r} exists already")
        self.upstreams[upstream.name] = upstream
        upstream.on_catalog_change(self._on_upstream_change)
        for route in self.routes.values():
            if route.path == ALL_ROUTE or (routes and route.path in routes):
                route.upstreams.append(upstream.name)
        if self._tg is not None:
            await self._start_upstream(upstream)
        self.rebuild()

    def remove_upstream(self, name: str) -> None:
        """Stop an upstream and take its items out of every route."""
        if name not in self.upstreams:
            raise KeyError(name)
        self._stop_upstream(name)
        upstream = self.upstreams.pop(name)
        upstream.state = UpstreamState.STOPPED
        for route in self.routes.values():
            if name in route.upstreams:
                route.upstreams.remove(name)
        self.rebuild()

    async def reload(self, config: GatewayConfig) -> dict[str, list[str]]:
        """Switch to a new (already validated) config without dropping client sessions.

        Upstreams whose config did not change keep running; changed ones are restarted; added and
        removed ones are started and stopped. Clients whose view changed get list_changed. Route
        paths and auth are fixed for the life of the process: changing them is reported as needing
        a restart and the old ones keep serving.
        """
        old = self.config
        summary: dict[str, list[str]] = {"added": [], "removed": [], "changed": [], "unchanged": [],
                                         "restart_required": []}
        new_objects = self._upstream_factory(config)
        for name in list(self.upstreams):
            if name not in new_objects:
                self._stop_upstream(name)
                self.upstreams.pop(name)
                summary["removed"].append(name)
        for name, upstream in new_objects.items():
            if name in self.upstreams and _upstream_config(old, name) == _upstream_config(config, name):
                summary["unchanged"].append(name)
                continue
            if name in self.upstreams:
                self._stop_upstream(name)
                summary["changed"].append(name)
            else:
                summary["added"].append(name)
            self.upstreams[name] = upstream
            upstream.on_catalog_change(self._on_upstream_change)
            if isinstance(upstream, McpUpstream):
                upstream.on_notification(self._on_upstream_notification)
        order = list(new_objects)
        self.upstreams = {name: self.upstreams[name] for name in order}
        if config.auth != old.auth:
            summary["restart_required"].append("auth")
        if config.listen != old.listen:
            summary["restart_required"].append("listen")
        specs = {spec.path: spec for spec in _route_specs(config)}
        for path in set(specs) ^ set(self.routes):
            summary["restart_required"].append(f"servers: {path}")
        for path, route in self.routes.items():
            spec = specs.get(path)
            if spec is not None:
                route.upstreams = list(spec.upstreams or order)
                route.prefixed = spec.prefix
            else:
                route.upstreams = [u for u in route.upstreams if u in self.upstreams]
        self.pipeline = self.pipeline.reconfigured(config)
        self.config = config
        if self._tg is not None:
            async with anyio.create_task_group() as starting:
                for name in summary["added"] + summary["changed"]:
                    starting.start_soon(self._start_upstream, self.upstreams[name])
        self.rebuild()
        logger.info("config reloaded: %s", {k: v for k, v in summary.items() if v})
        return summary

    def prefix_of(self, name: str) -> str:
        upstream = self.upstreams[name]
        prefix = getattr(upstream, "prefix", None)
        if prefix is not None:
            return str(prefix)
        if name in self.config.upstreams or name in self.config.openapi:
            return self.config.upstream_prefix(name)
        return name

    def rebuild(self, *, notify: bool = True) -> None:
        """Rebuild every route's view from the upstreams' current catalogs."""
        self._version += 1
        collisions: list[str] = []
        for route in self.routes.values():
            triples = [
                (name, self.prefix_of(name) if route.prefixed else "", self.upstreams[name].catalog)
                for name in route.upstreams
                if name in self.upstreams
            ]
            old = route.view
            route.view = build_view(self._version, triples, separator=self.config.listen.separator)
            collisions += [f"{route.path}: {c}" for c in route.view.collisions]
            if notify:
                self._notify_changes(route, old, route.view)
        for line in collisions:
            if line not in self.collisions:
                logger.warning("name collision: %s", line)
        self.collisions = collisions
        self._validators = {k: v for k, v in self._validators.items() if k[0] == self._version}

    def _on_upstream_change(self, upstream: Upstream) -> None:
        # Coalesce bursts (several upstreams reconnecting at once) into one rebuild.
        if self._tg is None:
            return
        if not self._refresh_pending:
            self._refresh_pending = True
            self._tg.start_soon(self._deferred_rebuild)

    async def _deferred_rebuild(self) -> None:
        await anyio.lowlevel.checkpoint()
        self._refresh_pending = False
        self.rebuild()

    def _notify_changes(self, route: Route, old: CatalogView, new: CatalogView) -> None:
        changes: list[tuple[str, Callable[[CatalogView, Consumer], list[str]]]] = [
            ("notifications/tools/list_changed", lambda v, c: [t.name for t in self.visible_tools(v, c)]),
            ("notifications/prompts/list_changed", lambda v, c: [p.name for p in self.visible_prompts(v, c)]),
            ("notifications/resources/list_changed", lambda v, c: [str(r.uri) for r in self.visible_resources(v, c)]),
        ]
        for connection, consumer in list(route.connections.items()):
            for method, visible in changes:
                if visible(old, consumer) != visible(new, consumer):
                    self._send_notification(connection, method, None)
        events = {
            "notifications/tools/list_changed": ToolsListChanged(),
            "notifications/prompts/list_changed": PromptsListChanged(),
            "notifications/resources/list_changed": ResourcesListChanged(),
        }
        for bus, _, consumer in list(route.listeners.values()):
            for method, visible in changes:
                if visible(old, consumer) != visible(new, consumer):
                    self._publish(bus, events[method])

    def _publish(self, bus: InMemorySubscriptionBus, event: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(bus.publish, event)

    def _send_notification(self, connection: Connection, method: str, params: dict[str, Any] | None) -> None:
        if self._tg is None or not connection.has_standalone_channel:
            return

        async def send() -> None:
            with contextlib.suppress(Exception):
                await connection.notify(method, params)

        self._tg.start_soon(send)

    async def _on_upstream_notification(self, upstream: McpUpstream, message: types.ServerNotification) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            original = str(message.params.uri)
            for route in self.routes.values():
                for exposed, (_, source) in route.view.resources.items():
                    if source.upstream == upstream.name and source.original == original:
                        for connection in list(route.subscriptions.get(exposed, ())):
                            self._send_notification(
                                connection, "notifications/resources/updated", {"uri": exposed}
                            )
                        for bus, _, _ in list(route.listeners.values()):
                            self._publish(bus, ResourceUpdated(uri=exposed))

    # -- what a consumer sees --------------------------------------------------------------------

    def visible_tools(self, view: CatalogView, consumer: Consumer) -> list[types.Tool]:
        return self.pipeline.filter(view, "tool", consumer, view.tool_list, lambda t: t.name)

    def visible_prompts(self, view: CatalogView, consumer: Consumer) -> list[types.Prompt]:
        return self.pipeline.filter(view, "prompt", consumer, view.prompt_list, lambda p: p.name)

    def visible_resources(self, view: CatalogView, consumer: Consumer) -> list[types.Resource]:
        return self.pipeline.filter(view, "resource", consumer, view.resource_list, lambda r: str(r.uri))

    def health(self) -> dict[str, Any]:
        ups = {name: u.health() for name, u in self.upstreams.items()}
        status = "ok" if all(u["state"] == "up" for u in ups.values()) else "degraded"
        out: dict[str, Any] = {"status": status, "version": __version__, "upstreams": ups,
                               "tasks": _task_count(),
                               "direct_calls": {"served": self.direct_stats.calls,
                                                "handed_to_sdk": self.direct_stats.handed_over}}
        if self.collisions:
            out["collisions"] = self.collisions
        return out

    # -- the SDK server of a route ---------------------------------------------------------------

    def _make_server(self, route: Route) -> Server[Any]:
        gw = self

        def track(ctx: ServerRequestContext[Any, Any]) -> Consumer:
            consumer = consumer_of(ctx, gw.default_consumer)
            connection = _connection(ctx)
            if connection is not None and connection not in route.connections:
                route.connections[connection] = consumer
            return consumer

        async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
            consumer = track(ctx)
            await gw._prepare(route, ctx, consumer)
            return types.ListToolsResult(tools=gw.visible_tools(route.view, consumer))

        async def call_tool(
            ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            consumer = track(ctx)
            return await gw.call_tool(route, ctx, consumer, params)

        async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
            consumer = track(ctx)
            await gw._prepare(route, ctx, consumer)
            return types.ListPromptsResult(prompts=gw.visible_prompts(route.view, consumer))

        async def get_prompt(
            ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
        ) -> types.GetPromptResult:
            consumer = track(ctx)
            view = route.view
            entry = view.prompts.get(params.name)
            if entry is None or not gw.pipeline.allowed(view, "prompt", consumer, params.name, entry[1].upstream):
                gw.pipeline.audit_denied(consumer, "prompts/get", params.name, exists=entry is not None)
                raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {params.name}")
            source = entry[1]
            return await gw._forward(
                consumer, "prompts/get", params.name, source,
                lambda up, cctx: up.get_prompt(source.original, params.arguments, cctx), ctx,
            )

        async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
            consumer = track(ctx)
            await gw._prepare(route, ctx, consumer)
            return types.ListResourcesResult(resources=gw.visible_resources(route.view, consumer))

        async def list_templates(
            ctx: ServerRequestContext[Any, Any], params: Any
        ) -> types.ListResourceTemplatesResult:
            consumer = track(ctx)
            view = route.view
            templates = [
                t for t, _, up in view.templates
                if gw.pipeline.allowed(view, "resource", consumer, t.uri_template, up)
            ]
            return types.ListResourceTemplatesResult(resource_templates=templates)

        def resolve_resource(ctx: ServerRequestContext[Any, Any], uri: str, method: str) -> tuple[Consumer, Source]:
            consumer = track(ctx)
            view = route.view
            source = view.resolve_uri(uri)
            if source is None or source.upstream not in gw.upstreams or not gw.pipeline.allowed(
                view, "resource", consumer, uri, source.upstream
            ):
                gw.pipeline.audit_denied(consumer, method, uri, exists=source is not None)
                raise MCPError(code=-32002, message=f"Resource not found: {uri}", data={"uri": uri})
            return consumer, source

        async def read_resource(
            ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
        ) -> types.ReadResourceResult:
            uri = str(params.uri)
            consumer, source = resolve_resource(ctx, uri, "resources/read")
            result = await gw._forward(
                consumer, "resources/read", uri, source,
                lambda up, cctx: up.read_resource(source.original, cctx), ctx,
            )
            if uri != source.original:  # a namespaced URI: answer under the name the client asked for
                result.contents = [c.model_copy(update={"uri": uri}) for c in result.contents]
            return result

        async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
            uri = str(params.uri)
            consumer, source = resolve_resource(ctx, uri, "resources/subscribe")
            connection = _connection(ctx)
            watchers = route.subscriptions.setdefault(uri, weakref.WeakSet())
            first = not any(True for _ in watchers)
            if connection is not None:
                watchers.add(connection)
            if first:
                await gw._forward(
                    consumer, "resources/subscribe", uri, source,
                    lambda up, cctx: up.subscribe(source.original), ctx,
                )
            return types.EmptyResult()

        async def unsubscribe(
            ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
        ) -> types.EmptyResult:
            uri = str(params.uri)
            connection = _connection(ctx)
            watchers = route.subscriptions.get(uri)
            if watchers is not None and connection is not None:
                watchers.discard(connection)
            return types.EmptyResult()

        async def complete(ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> types.CompleteResult:
            consumer = track(ctx)
            view = route.view
            ref = params.ref
            source: Source | None = None
            forwarded = params
            if isinstance(ref, types.PromptReference):
                entry = view.prompts.get(ref.name)
                if entry is not None and gw.pipeline.allowed(view, "prompt", consumer, ref.name, entry[1].upstream):
                    source = entry[1]
                    forwarded = params.model_copy(update={"ref": ref.model_copy(update={"name": source.original})})
            else:
                owners = [up for t, _, up in view.templates if t.uri_template == ref.uri]
                if owners:
                    source = Source(owners[0], ref.uri)
            if source is None:
                return types.CompleteResult(completion=types.Completion(values=[]))
            return await gw._forward(
                consumer, "completion/complete", source.original, source,
                lambda up, cctx: up.complete(forwarded, cctx), ctx,
            )

        async def listen(
            ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
        ) -> types.SubscriptionsListenResult:
            consumer = track(ctx)
            key = consumer.group_key
            if key not in route.listeners:
                bus = InMemorySubscriptionBus()
                route.listeners[key] = (bus, ListenHandler(bus), consumer)
            return await route.listeners[key][1](ctx, params)

        async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
            connection = _connection(ctx)
            if connection is not None:
                connection.state[_LOG_LEVEL_STATE] = params.level
            return types.EmptyResult()

        server = _HubServer(
            "mcp-hub",
            version=__version__,
            title="mcp-hub gateway",
            instructions=None,
            get_tool_input_schema=lambda name: route.view.input_schema(name),
            on_list_tools=list_tools,
            on_call_tool=call_tool,
            on_list_prompts=list_prompts,
            on_get_prompt=get_prompt,
            on_list_resources=list_resources,
            on_list_resource_templates=list_templates,
            on_read_resource=read_resource,
            on_subscribe_resource=subscribe,
            on_unsubscribe_resource=unsubscribe,
            on_completion=complete,
            on_subscriptions_listen=listen,
        )
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
        # The SDK's default OpenTelemetry middleware costs ~10% of a relayed call even with no exporter;
        # in its place, listings served from a cache of their wire form.
        server.middleware = [self._listing_cache(route, server, track)]
        return server

    def _listing_cache(self, route: Route, server: Server[Any], track: Callable[..., Consumer]) -> Any:
        """Serve tools/prompts/resources listings from their serialized form, built once per catalog
        version, group set and protocol version (the SDK would otherwise dump and re-validate every
        item on every request: ~0.3 s for 5,000 tools)."""
        gw = self
        visible = {
            "tools/list": (types.ListToolsResult, "tools", gw.visible_tools),
            "prompts/list": (types.ListPromptsResult, "prompts", gw.visible_prompts),
            "resources/list": (types.ListResourcesResult, "resources", gw.visible_resources),
        }

        async def middleware(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
            spec = visible.get(ctx.method)
            connection = _connection(ctx)
            if spec is None or ctx.request_id is None or connection is None or not connection.initialize_accepted:
                return await call_next(ctx)
            consumer = track(ctx)
            await gw._prepare(route, ctx, consumer)
            view = route.view
            version = ctx.protocol_version
            key = (id(view), view.version, ctx.method, consumer.group_key, version)
            wire = gw._wire_cache.get(key)
            if wire is None:
                model, field_name, pick = spec
                dumped = model(**{field_name: pick(view, consumer)}).model_dump(
                    by_alias=True, mode="json", exclude_none=True
                )
                wire = _methods.serialize_server_result(ctx.method, version, dumped)
                if len(gw._wire_cache) > 1024:
                    gw._wire_cache = {k: v for k, v in gw._wire_cache.items() if k[1] == view.version}
                gw._wire_cache[key] = wire
            result = dict(wire)
            if version in MODERN_PROTOCOL_VERSIONS:
                result["_meta"] = {**(result.get("_meta") or {}), SERVER_INFO_META_KEY: server.server_info_stamp}
            return result

        return middleware

    async def _prepare(self, route: Route, ctx: ServerRequestContext[Any, Any], consumer: Consumer) -> None:
        """Let per-consumer upstreams open this caller's session, so the listing knows their items."""
        needy = [self.upstreams[n] for n in route.upstreams if getattr(self.upstreams.get(n), "per_consumer", False)]
        if not needy:
            return
        cctx = _call_context(ctx, consumer)
        async with anyio.create_task_group() as tg:
            for upstream in needy:
                tg.start_soon(upstream.prepare, cctx)
        if self._refresh_pending:
            self.rebuild()

    async def _forward(
        self,
        consumer: Consumer,
        method: str,
        target: str,
        source: Source,
        send: Callable[[Upstream, CallContext], Awaitable[Any]],
        ctx: ServerRequestContext[Any, Any],
    ) -> Any:
        upstream = self.upstreams.get(source.upstream)
        if upstream is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown {method.split('/')[0][:-1]}: {target}")
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await send(upstream, _call_context(ctx, consumer))
        except UpstreamUnavailable as exc:
            outcome = "unavailable"
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
        except MCPError:
            outcome = "error"
            raise
        finally:
            self.pipeline.audit_request(
                consumer, method, target, source.upstream, outcome, (time.perf_counter() - started) * 1000
            )

    def _validator(self, view: CatalogView, name: str, schema: dict[str, Any]) -> Any:
        key = (view.version, name)
        validator = self._validators.get(key)
        if validator is None:
            try:
                cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
                validator = cls(schema)
            except Exception:  # noqa: BLE001 - an upstream's broken schema must not block its calls
                validator = False
            self._validators[key] = validator
        return validator

    def check_arguments(self, view: CatalogView, tool: types.Tool, arguments: dict[str, Any] | None) -> str | None:
        """Why the arguments violate the tool's input schema, or None when they fit."""
        validator = self._validator(view, tool.name, tool.input_schema)
        if not validator:
            return None
        errors = sorted(validator.iter_errors(arguments or {}), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "arguments"
        return f"{where}: {first.message}"[:500]

    def open_call(
        self, view: CatalogView, consumer: Consumer, name: str, arguments: dict[str, Any] | None
    ) -> tuple[Any, Source]:
        """A tools/call's record, after the ACL and the argument check; MCPError (recorded) when refused."""
        entry = view.tool(name)
        call = self.pipeline.start_call(view, consumer, name, entry)
        call.arguments = arguments
        if entry is None or not call.allowed:
            self.pipeline.finish_call(call, CallOutcome.DENIED if entry is not None else CallOutcome.UNKNOWN)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        tool, source = entry
        problem = self.check_arguments(view, tool, arguments)
        if problem is not None:
            self.pipeline.finish_call(call, CallOutcome.INVALID)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid arguments for tool {name}: {problem}")
        return call, source

    async def call_tool(
        self,
        route: Route,
        ctx: ServerRequestContext[Any, Any],
        consumer: Consumer,
        params: types.CallToolRequestParams,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """tools/call through ACL, argument check, budgets, the upstream, charging and audit."""
        view = route.view
        name = params.name
        call, source = self.open_call(view, consumer, name, params.arguments)
        upstream = self.upstreams.get(source.upstream)
        wait = getattr(getattr(upstream, "config", None), "call_timeout", 300.0)
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS
        if modern and params.request_state:
            # A 2026-07-28 caller answering the questions of a call it started earlier (already admitted).
            call.finished = True  # this request's record is not the call's: the pending one is
            responses = {
                key: value.model_dump(by_alias=True, mode="json", exclude_none=True)
                if hasattr(value, "model_dump") else value
                for key, value in (params.input_responses or {}).items()
            }
            result, ask, started = await self._collect(
                self.relay.resume(params.request_state, name, consumer.name, responses, wait)
            )
            return ask if ask is not None else await self._finish_call(started, result)
        await self.pipeline.admit(call, params.arguments)
        cctx = _call_context(ctx, consumer, progress=_progress_fn(ctx), log_level=_log_level(ctx))
        if upstream is None:
            return await self._finish_call(call, UpstreamUnavailable(f"upstream {source.upstream!r} was removed"))
        if not modern:
            try:
                result = await upstream.call_tool(source.original, params.arguments, cctx)
            except (UpstreamUnavailable, MCPError) as exc:
                return await self._finish_call(call, exc)
            except BaseException:
                self.pipeline.finish_call(call, CallOutcome.CANCELLED)
                raise
            return await self._finish_call(call, result)

        # 2026-07-28 callers take no requests mid-call: run the upstream call in the background and
        # turn its questions into InputRequiredResult rounds.
        async def run(peer: DownstreamPeer) -> types.CallToolResult:
            cctx.peer = peer
            return await upstream.call_tool(source.original, params.arguments, cctx)

        return await self.relayed_call(call, consumer, _Peer(ctx).declares, run, wait)

    async def relayed_call(
        self, call: Any, consumer: Consumer, capable: Callable[[str], bool],
        run: Callable[[DownstreamPeer], Awaitable[Any]], wait: float,
    ) -> types.CallToolResult | types.InputRequiredResult:
        """A 2026-07-28 caller's call whose upstream may ask questions: `run(peer)` in the background, the
        questions handed out as InputRequiredResult rounds (signed request_state), the end charged."""

        def spawn(fn: Callable[[], Awaitable[None]]) -> None:
            assert self._tg is not None
            self._tg.start_soon(fn)

        try:
            result, ask, _ = await self._collect(
                self.relay.start(call.tool, consumer.name, capable, run, spawn, wait, call)
            )
        except anyio.get_cancelled_exc_class():
            self.pipeline.finish_call(call, CallOutcome.CANCELLED)  # the caller went away while it ran
            raise
        return ask if ask is not None else await self._finish_call(call, result)

    @staticmethod
    async def _collect(step: Awaitable[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
        """A relay step, with upstream failures turned into values `_finish_call` understands."""
        try:
            return await step
        except (UpstreamUnavailable, MCPError) as exc:
            if isinstance(exc, MCPError) and "request_state" in exc.error.message:
                raise
            return exc, None, None

    async def _finish_call(self, call: Any, outcome: Any) -> types.CallToolResult:
        """Charge and audit a finished call; an unavailable upstream becomes an isError result."""
        if isinstance(outcome, UpstreamUnavailable):
            result = types.CallToolResult(content=[types.TextContent(type="text", text=str(outcome))], is_error=True)
            if call is not None:
                await self.pipeline.charge(call, result, CallOutcome.UNAVAILABLE)
            return result
        if isinstance(outcome, MCPError):
            if call is not None:
                self.pipeline.finish_call(call, CallOutcome.ERROR, error=outcome.error.message)
            raise outcome
        if call is not None:
            await self.pipeline.charge(call, outcome, CallOutcome.ERROR_RESULT if outcome.is_error else CallOutcome.OK)
        return outcome


def _call_context(ctx: ServerRequestContext[Any, Any], consumer: Consumer, **extra: Any) -> CallContext:
    """What an upstream may use from this request: the caller, its token and headers, its peer."""
    scope = getattr(ctx.request, "scope", None) or {}
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())} if scope else None
    return CallContext(
        consumer=consumer, peer=_Peer(ctx), access_token=scope.get(ACCESS_TOKEN_SCOPE_KEY), request_headers=headers,
        headers=dict(consumer.forwarded_claims),  # auth.claim_to_header, for HTTP upstreams
        **extra,
    )


def _progress_fn(ctx: ServerRequestContext[Any, Any]) -> Any:
    """Relays upstream progress to the caller when its request carried a progress token."""
    meta = ctx.meta if isinstance(ctx.meta, dict) else {}
    token = meta.get("progress_token", meta.get("progressToken"))
    if token is None:
        return None
    request_id = ctx.request_id

    async def progress(value: float, total: float | None, message: str | None) -> None:
        with contextlib.suppress(Exception):
            await ctx.session.send_progress_notification(token, value, total, message, related_request_id=request_id)

    return progress


def _task_count() -> int | None:
    """How many asyncio tasks the process has (a leak shows as a count that keeps growing)."""
    import asyncio

    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (stdio tests, tools)
        return None


def _route_specs(config: GatewayConfig) -> list[ServerRoute]:
    """`/mcp` (all upstreams, prefixed, unless configured otherwise) first, then the virtual servers."""
    specs = [r for r in config.servers if r.path != ALL_ROUTE]
    main = next((r for r in config.servers if r.path == ALL_ROUTE), ServerRoute(path=ALL_ROUTE))
    return [main, *specs]


def _upstream_config(config: GatewayConfig, name: str) -> Any:
    cfg = config.upstreams.get(name)
    return cfg.model_dump() if cfg is not None else config.openapi.get(name)


def build_upstreams(config: GatewayConfig) -> dict[str, Upstream]:
    """Create (not start) an upstream object for each configured upstream, in config order."""
    upstreams: dict[str, Upstream] = {}
    for name, cfg in config.upstreams.items():
        upstreams[name] = McpUpstream(name, cfg)
    if config.openapi:
        from mcp_hub.upstreams.openapi import build_openapi_upstream

        for name, raw in config.openapi.items():
            upstreams[name] = build_openapi_upstream(name, raw, base_dir=config.base_dir)
    return upstreams
