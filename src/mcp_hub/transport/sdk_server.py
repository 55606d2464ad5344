"""The SDK server binding: each route is an SDK low-level `Server` whose handlers only frame requests.

A handler reads the request off the SDK's context, describes its caller (`Caller`), calls the
request service, and returns what it answers. Listings are served from their serialized form,
kept per view, group set and protocol version (transport/listings.py; the SDK would dump and
re-validate every item of every listing: about 0.3 s for 5,000 tools, 1.5 s for 1,851 OpenAPI tools).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.models import InitializationOptions
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp.shared.message import ServerMessageMetadata
from mcp_types import LOG_LEVEL_META_KEY
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from mcp_hub import __version__, sdk_internals
from mcp_hub.auth.identity import Consumer
from mcp_hub.core.calls import Caller, ToolRequest, traceparent_of
from mcp_hub.core.hub import ACCESS_TOKEN_SCOPE_KEY, CONSUMER_SCOPE_KEY, Gateway, Route
from mcp_hub.core.service import InputAnswers
from mcp_hub.core.tasks import TASKS_EXTENSION
from mcp_hub.transport.listings import LISTINGS, listings_of
from mcp_hub.upstreams.base import DownstreamPeer

# Server-to-client requests the gateway relays, with their models and the capability each needs.
PEER_REQUESTS: dict[str, tuple[type[Any], type[Any], types.ClientCapabilities]] = {
    "sampling/createMessage": (
        types.CreateMessageRequest, types.CreateMessageResult,
        types.ClientCapabilities(sampling=types.SamplingCapability()),
    ),
    "elicitation/create": (
        types.ElicitRequest, types.ElicitResult, types.ClientCapabilities(elicitation=types.ElicitationCapability()),
    ),
    "roots/list": (types.ListRootsRequest, types.ListRootsResult, types.ClientCapabilities(roots=types.RootsCapability())),
}
_LOG_LEVEL_STATE = "mcp_hub.log_level"


class _Peer(DownstreamPeer):
    """The downstream session of one request, as an upstream's questions see it."""

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self._ctx = ctx

    def supports(self, method: str) -> bool:
        return self._ctx.session.can_send_request and self.declares(method)

    def declares(self, method: str) -> bool:
        """Whether the caller declared the capability `method` needs."""
        spec = PEER_REQUESTS.get(method)
        return spec is not None and self._ctx.session.check_client_capability(spec[2])

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        spec = PEER_REQUESTS.get(method)
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

    async def notify(self, message: dict[str, Any]) -> None:
        """A progress or log notification of this request's call, on the request's own stream."""
        ctx, params = self._ctx, message.get("params") or {}
        with contextlib.suppress(Exception):
            if message.get("method") == "notifications/progress":
                await ctx.session.send_progress_notification(
                    params.get("progressToken"), params.get("progress", 0), params.get("total"),
                    params.get("message"), related_request_id=ctx.request_id,
                )
            elif message.get("method") == "notifications/message":
                await ctx.session.send_log_message(
                    params.get("level", "info"), params.get("data"), params.get("logger"),
                    related_request_id=ctx.request_id,
                )


class _HubServer(Server[Any]):
    """An SDK server that advertises list_changed for everything (the catalog is dynamic), and the extensions
    its route serves at the moment (`route_extensions`)."""

    route_extensions: Any = None

    def get_capabilities(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
        *,
        protocol_version: str | None = None,
    ) -> types.ServerCapabilities:
        current = dict(extensions if extensions is not None else self.extensions)
        if self.route_extensions is not None:
            current.update(self.route_extensions())
        return super().get_capabilities(notification_options, experimental_capabilities,
                                        current if current or extensions is not None else None,
                                        protocol_version=protocol_version)

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


def bind_servers(gateway: Gateway) -> None:
    """Give every route of the gateway its SDK server."""
    for route in gateway.routes.values():
        if route.server is None:
            route.server = make_server(gateway, route)


def make_server(gateway: Gateway, route: Route) -> Server[Any]:
    """The SDK server of one route: handlers that frame requests for the request service."""
    service = gateway.service

    def caller(ctx: ServerRequestContext[Any, Any]) -> Caller:
        consumer = _consumer_of(ctx, gateway.default_consumer)
        connection = sdk_internals.connection_of(ctx.session)
        if connection is not None and connection not in route.connections:
            route.connections[connection] = consumer  # it hears of list changes
        scope = getattr(ctx.request, "scope", None) or {}
        peer = _Peer(ctx)
        declared = connection.client_params if connection is not None else None
        # What the client declared: the handshake's, or this 2026-07-28 request's envelope (client info optional).
        capabilities = connection.client_capabilities if connection is not None else None
        return Caller(
            consumer=consumer,
            modern=ctx.protocol_version in MODERN_PROTOCOL_VERSIONS,
            peer=peer,
            declares=peer.declares,
            notify=peer.notify,
            access_token=scope.get(ACCESS_TOKEN_SCOPE_KEY),
            request_headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())},
            capabilities=_dump(capabilities),
            client_info=_dump(declared.client_info) if declared is not None else None,
        )

    async def list_tools(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=await service.list(route, caller(ctx), "tool"))

    async def list_prompts(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=await service.list(route, caller(ctx), "prompt"))

    async def list_resources(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=await service.list(route, caller(ctx), "resource"))

    async def list_templates(ctx: ServerRequestContext[Any, Any], params: Any) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=await service.list(route, caller(ctx), "template"))

    async def call_tool(ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams) -> dict[str, Any]:
        meta = ctx.meta if isinstance(ctx.meta, dict) else {}
        request = ToolRequest(
            name=params.name, arguments=params.arguments,
            progress_token=meta.get("progress_token", meta.get("progressToken")), log_level=_log_level(ctx),
            request_state=params.request_state, input_responses=_raw_responses(ctx),
            traceparent=traceparent_of(meta.get("traceparent"), _header(ctx, b"traceparent")),
        )
        answer = await service.call_tool(route, caller(ctx), request)
        await answer.settle()
        if answer.error is not None:
            raise answer.error
        assert answer.result is not None
        # An upstream of the handshake era sends no resultType; the SDK's sieve wants one on every result
        # and drops it for handshake-era callers.
        return {**answer.result, "resultType": answer.result.get("resultType", "complete")}

    async def get_prompt(
        ctx: ServerRequestContext[Any, Any], params: types.GetPromptRequestParams
    ) -> types.GetPromptResult | types.InputRequiredResult:
        return await service.get_prompt(route, caller(ctx), params.name, params.arguments,
                                        InputAnswers(_raw_responses(ctx), params.request_state))

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        return await service.read_resource(route, caller(ctx), str(params.uri),
                                           InputAnswers(_raw_responses(ctx), params.request_state))

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams) -> types.EmptyResult:
        uri = str(params.uri)
        who = caller(ctx)
        target = service.resolve_subscription(route, who, uri)
        connection = sdk_internals.connection_of(ctx.session)
        watchers = route.subscriptions.setdefault(uri, weakref.WeakSet())
        first = not any(True for _ in watchers)
        if connection is not None:
            watchers.add(connection)
        if first:
            await service.subscribe_upstream(who, uri, target)
        gate = _shared_gate(gateway, route)
        if gate is not None and connection is not None and connection.session_id:
            await gate.on_subscription(connection.session_id, uri, True, ctx.request_id)
        return types.EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        connection = sdk_internals.connection_of(ctx.session)
        watchers = route.subscriptions.get(str(params.uri))
        if watchers is not None and connection is not None:
            watchers.discard(connection)
        gate = _shared_gate(gateway, route)
        if gate is not None and connection is not None and connection.session_id:
            await gate.on_subscription(connection.session_id, str(params.uri), False, ctx.request_id)
        return types.EmptyResult()

    async def complete(ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams) -> types.CompleteResult:
        return await service.complete(route, caller(ctx), params)

    async def listen(
        ctx: ServerRequestContext[Any, Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        consumer = caller(ctx).consumer
        key = consumer.group_key
        if key not in route.listeners:
            bus = InMemorySubscriptionBus()
            route.listeners[key] = (bus, ListenHandler(bus), consumer)
        return await route.listeners[key][1](ctx, params)

    async def get_task(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        _check_task_name(ctx, params.task_id)
        return await service.get_task(route, caller(ctx), params.task_id)

    async def update_task(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        _check_task_name(ctx, params.task_id)
        return await service.update_task(route, caller(ctx), params.task_id, _raw_responses(ctx))

    async def cancel_task(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> dict[str, Any]:
        _check_task_name(ctx, params.task_id)
        return await service.cancel_task(route, caller(ctx), params.task_id)

    async def set_level(ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams) -> types.EmptyResult:
        connection = sdk_internals.connection_of(ctx.session)
        if connection is not None:
            connection.state[_LOG_LEVEL_STATE] = params.level
            gate = _shared_gate(gateway, route)
            if gate is not None and connection.session_id:
                await gate.on_level(connection.session_id, params.level, ctx.request_id)
        return types.EmptyResult()

    server = _HubServer(
        "mcp-hub",
        version=__version__,
        title="mcp-hub gateway",
        instructions=None,
        get_tool_input_schema=lambda name: route.view.input_schema(name),
        on_list_tools=list_tools,
        on_call_tool=call_tool,  # type: ignore[arg-type]
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
    # The tasks extension (core/tasks.py): served, and advertised, while an upstream of the route serves it.
    server.add_request_handler("tasks/get", TaskParams, get_task)
    server.add_request_handler("tasks/update", TaskParams, update_task)
    server.add_request_handler("tasks/cancel", TaskParams, cancel_task)
    server.route_extensions = lambda: {TASKS_EXTENSION: {}} if service.serves_tasks(route) else {}
    # The SDK's default OpenTelemetry middleware costs ~10% of a relayed call even with no exporter;
    # in its place, listings served from a cache of their wire form.
    server.middleware = [_listing_cache(gateway, route, server, caller)]
    # Tracing on: a span per request, outermost (tracing off adds nothing here).
    server.middleware[:0] = gateway.tracing.sdk_middleware(
        route.path, lambda ctx: (_consumer_of(ctx, gateway.default_consumer), _header(ctx, b"traceparent")))
    return server


def _listing_cache(gateway: Gateway, route: Route, server: Server[Any], caller: Any) -> Any:
    """Serve tools/prompts/resources listings from their serialized form (transport/listings.py), and note
    each handshake-era session with the protocol version it negotiated, from which the direct entry
    answers its later listings (transport/direct.py). A session is noted once it is initialized, and it
    then hears of list changes (`route.connections`)."""
    listings = listings_of(gateway)

    async def middleware(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        connection = sdk_internals.connection_of(ctx.session)
        if connection is not None and not connection.initialize_accepted:
            return await call_next(ctx)
        if connection is not None and connection.session_id and (ctx.method == "notifications/initialized" or ctx.method in LISTINGS):
            consumer = _consumer_of(ctx, gateway.default_consumer)
            if connection not in route.connections:
                route.connections[connection] = consumer  # it hears of list changes
            if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
                listings.note_session(route.path, connection.session_id, ctx.protocol_version)
        if ctx.method not in LISTINGS or ctx.request_id is None:
            return await call_next(ctx)
        return await listings.answer_dict(route, caller(ctx), ctx.method, ctx.protocol_version, server)

    return middleware


class TaskParams(types.RequestParams):
    """The params of tasks/get, tasks/update and tasks/cancel (tasks/update's `inputResponses` are read raw)."""

    task_id: str


def _check_task_name(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """SEP-2663 routing header: an `Mcp-Name` naming another task than the body's is refused (-32020)."""
    name = _header(ctx, MCP_NAME_HEADER.encode())
    if name is not None and decode_header_value(name) != task_id:
        raise MCPError(code=types.HEADER_MISMATCH, message="Mcp-Name header does not match params.taskId")


def _shared_gate(gateway: Gateway, route: Route) -> Any:
    """The route's shared-session entry (transport/replicas.py) when sessions are shared, else None."""
    bus = getattr(gateway, "replica_bus", None)
    return bus.entries.get(route.path) if bus is not None else None


def _header(ctx: ServerRequestContext[Any, Any], name: bytes) -> str | None:
    """One header of the HTTP request behind a handler's request (None over stdio)."""
    scope = getattr(ctx.request, "scope", None) or {}
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def _raw_responses(ctx: ServerRequestContext[Any, Any]) -> dict[str, Any] | None:
    """A 2026-07-28 caller's input responses as it sent them (passed on unchanged, not re-typed)."""
    responses = ctx.params.get("inputResponses") if isinstance(ctx.params, Mapping) else None
    return dict(responses) if isinstance(responses, Mapping) else None


def _dump(model: Any) -> dict[str, Any] | None:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True) if model is not None else None


def _consumer_of(ctx: ServerRequestContext[Any, Any], default: Consumer) -> Consumer:
    """The consumer the auth layer put in the HTTP request's scope (stdio: the default)."""
    scope = getattr(ctx.request, "scope", None)
    if scope is not None:
        consumer = scope.get(CONSUMER_SCOPE_KEY)
        if isinstance(consumer, Consumer):
            return consumer
    return default


def _log_level(ctx: ServerRequestContext[Any, Any]) -> str | None:
    """The log level the caller wants: its request's opt-in (2026-07-28) or its logging/setLevel."""
    meta = ctx.meta if isinstance(ctx.meta, dict) else {}
    requested = meta.get(LOG_LEVEL_META_KEY)
    if requested is not None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
        return requested
    connection = sdk_internals.connection_of(ctx.session)
    # Handshake-era clients get every level unless they asked for less.
    return connection.state.get(_LOG_LEVEL_STATE, "debug") if connection is not None else "debug"
