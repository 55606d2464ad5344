"""The hub: upstreams, routes (virtual servers), their catalog views, lifecycle and reload.

Requests reach it through the request service (`core/service.py`, `core/calls.py`); the
transports that frame them (the SDK server binding, the direct HTTP entry) live in `transport/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
import mcp_types as types
from anyio.abc import TaskStatus
from mcp.server.connection import Connection
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.subscriptions import (
    PromptsListChanged,
    ResourcesListChanged,
    ResourceUpdated,
    ToolsListChanged,
)

from mcp_hub import __version__
from mcp_hub.auth.identity import Consumer, anonymous
from mcp_hub.catalog.view import CatalogView, build_view
from mcp_hub.config import GatewayConfig, ServerRoute
from mcp_hub.core.access import Access
from mcp_hub.core.service import RequestService
from mcp_hub.metering.meter import Meter
from mcp_hub.tracing import OFF, Tracing
from mcp_hub.upstreams.base import Upstream, UpstreamState
from mcp_hub.upstreams.mcp import McpUpstream
from mcp_hub.upstreams.openapi import build_openapi_upstream

logger = logging.getLogger(__name__)

ALL_ROUTE = "/mcp"
CONSUMER_SCOPE_KEY = "mcp_hub.consumer"
ACCESS_TOKEN_SCOPE_KEY = "mcp_hub.access_token"

@dataclass(slots=True)
class DirectStats:
    """tools/call requests served by the direct HTTP entry, and those it left to the SDK's (transport/direct.py)."""

    calls: int = 0
    handed_over: int = 0
    # Why the direct entry is off (None: it is on).
    off: str | None = None


class CollisionError(Exception):
    """Two upstreams offer the same exposed name at start: the config must say which gets which name."""

    def __init__(self, collisions: list[str]) -> None:
        self.collisions = collisions
        super().__init__(
            "name collisions (give one of the upstreams another prefix, or set listen.on_collision: warn):\n  "
            + "\n  ".join(collisions)
        )


@dataclass
class Route:
    """A virtual server: a path, the upstreams it exposes, and its current catalog view."""

    path: str
    upstreams: list[str]
    prefixed: bool
    view: CatalogView
    # The SDK server that frames this route's requests (transport/sdk_server.py binds it).
    server: Any = None
    connections: weakref.WeakKeyDictionary[Connection, Consumer] = field(default_factory=weakref.WeakKeyDictionary)
    # 2026-07-28 callers hear of changes on subscriptions/listen streams: one bus per group set.
    listeners: dict[tuple[str, ...], tuple[InMemorySubscriptionBus, ListenHandler, Consumer]] = field(
        default_factory=dict)
    subscriptions: dict[str, weakref.WeakSet[Connection]] = field(default_factory=dict)


class Gateway:
    """Owns the upstreams, the routes and their views, the ACL (`access`) and the meter."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        upstream_factory: Callable[[GatewayConfig], dict[str, Upstream]] | None = None,
        default_consumer: Consumer | None = None,
    ) -> None:
        self.config = config
        self.access = Access(config.policy)
        self.meter = Meter(config.policy)
        self.service = RequestService(self)
        self.default_consumer = default_consumer or anonymous()
        self.auth: Any = None  # GatewayAuth when callers must authenticate
        self.config_path: str | None = None  # watched for hot reload when set
        self._upstream_factory = upstream_factory or build_upstreams
        self.upstreams: dict[str, Upstream] = self._upstream_factory(config)
        self._scopes: dict[str, anyio.CancelScope] = {}
        # Serialized listings per (view, method, group set, protocol version): transport/listings.py sets it.
        self.wire_cache: Any = None
        # Called after every rebuild (the serialized listings prepare the new views' items).
        self.on_rebuild: list[Callable[[], None]] = []
        self._version = 0
        self.routes: dict[str, Route] = {}
        self.collisions: list[str] = []
        self.refresh_pending = False
        self._tg: anyio.abc.TaskGroup | None = None
        self.direct_stats = DirectStats()
        self.tracing: Tracing = OFF  # runtime.build_gateway starts the configured tracing
        for spec in _route_specs(config):
            self.routes[spec.path] = Route(
                path=spec.path,
                upstreams=spec.upstreams or list(self.upstreams),
                prefixed=spec.prefix,
                view=CatalogView(version=0),
            )
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
        if config.tracing != old.tracing:
            summary["restart_required"].append("tracing")
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
        self.access = Access(config.policy)
        self.meter = self.meter.reconfigured(config.policy)
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
            route.view = build_view(self._version, triples, separator=self.config.listen.separator,
                                    prefixes={name: self.prefix_of(name) for name, _, _ in triples}, previous=old)
            collisions += [f"{route.path}: {c}" for c in route.view.collisions]
            if notify:
                self._notify_changes(route, old, route.view)
        for line in collisions:
            if line not in self.collisions:
                logger.warning("name collision: %s", line)
        self.collisions = collisions
        for listener in self.on_rebuild:
            listener()

    def _on_upstream_change(self, upstream: Upstream) -> None:
        # Coalesce bursts (several upstreams reconnecting at once) into one rebuild.
        if self._tg is None:
            return
        if not self.refresh_pending:
            self.refresh_pending = True
            self._tg.start_soon(self._deferred_rebuild)

    async def _deferred_rebuild(self) -> None:
        await anyio.lowlevel.checkpoint()
        self.refresh_pending = False
        self.rebuild()

    def _notify_changes(self, route: Route, old: CatalogView, new: CatalogView) -> None:
        # A list changed when any item of it did (a description, a schema), not only when names came or went.
        changes: list[tuple[str, Callable[[CatalogView, Consumer], list[Any]]]] = [
            ("notifications/tools/list_changed", self.visible_tools),
            ("notifications/prompts/list_changed", self.visible_prompts),
            ("notifications/resources/list_changed", self.visible_resources),
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
        return self.access.filter(view, "tool", consumer, view.tool_list)

    def visible_prompts(self, view: CatalogView, consumer: Consumer) -> list[types.Prompt]:
        return self.access.filter(view, "prompt", consumer, view.prompt_list)

    def visible_resources(self, view: CatalogView, consumer: Consumer) -> list[types.Resource]:
        return self.access.filter(view, "resource", consumer, view.resource_list)

    def visible_templates(self, view: CatalogView, consumer: Consumer) -> list[types.ResourceTemplate]:
        return [t for t, _, _ in self.access.filter(view, "template", consumer, view.templates)]

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run `fn` in the gateway's task group (work that outlives the request that started it)."""
        assert self._tg is not None, "the gateway is not running"
        self._tg.start_soon(fn)

    def health(self) -> dict[str, Any]:
        ups = {name: u.health() for name, u in self.upstreams.items()}
        status = "ok" if all(u["state"] == "up" for u in ups.values()) else "degraded"
        out: dict[str, Any] = {"status": status, "version": __version__, "upstreams": ups,
                               "tasks": _task_count(),
                               "direct_calls": {"on": self.direct_stats.off is None,
                                                "served": self.direct_stats.calls,
                                                "handed_to_sdk": self.direct_stats.handed_over}}
        if self.direct_stats.off is not None:
            out["direct_calls"]["off"] = self.direct_stats.off
        if self.collisions:
            out["collisions"] = self.collisions
        return out

def _task_count() -> int | None:
    """How many asyncio tasks the process has (a leak shows as a count that keeps growing)."""
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
        for name, raw in config.openapi.items():
            upstreams[name] = build_openapi_upstream(name, raw, base_dir=config.base_dir)
    return upstreams
