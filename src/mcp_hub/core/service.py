"""The request service: every MCP method a route serves, through one resolver and one ACL decision.

Each request's target is resolved once on the route's view (`CatalogView.resolve_*`, which refuses
what the route does not expose), the ACL decides once on it (`Access`), and the request goes to the
upstream that serves it under its original identity. A hidden target and a missing one get the
same answer; the audit log says which it was. `tools/call` has its own module (`core/calls.py`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_hub import tracing
from mcp_hub.catalog.view import Target
from mcp_hub.core.calls import MAX_ROUNDS, CallAnswer, Caller, ToolCalls, ToolRequest, fulfil
from mcp_hub.core.economy import Economy
from mcp_hub.core.tasks import declares_tasks, missing_extension
from mcp_hub.upstreams.base import CallContext, Upstream, UpstreamUnavailable

if TYPE_CHECKING:
    from mcp_hub.core.hub import Gateway, Route

T = TypeVar("T")


@dataclass(slots=True)
class InputAnswers:
    """A 2026-07-28 caller's answers to a round of input requests, and the state that came with the round."""

    input_responses: dict[str, Any] | None
    request_state: str | None
# JSON-RPC error code of an unknown resource: Invalid Params, with the URI in `data` (SEP-2164; the
# earlier -32002 is retired).
RESOURCE_NOT_FOUND = types.INVALID_PARAMS


class RequestService:
    """What every entry calls: listings, prompts, resources, completion, subscriptions and tool calls."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.calls = ToolCalls(gateway)
        # The catalog's token budget and its compact form (core/economy.py); the metric is read at scrape time.
        self.economy = Economy(gateway)
        gateway.meter.metrics.watch_catalogs(self.economy.samples)

    # -- listings --------------------------------------------------------------------------------

    async def list(self, route: Route, caller: Caller, kind: str) -> list[Any]:
        """The items of one kind (tool, prompt, resource, template) the caller may see on the route."""
        await self.prepare(route, caller)
        return self.visible(route, caller, kind)

    def visible(self, route: Route, caller: Caller, kind: str) -> list[Any]:
        """`list` for a caller whose per-consumer upstreams are prepared already."""
        gw, view, consumer = self.gateway, route.view, caller.consumer
        if kind == "tool":  # the whole catalog the ACL shows, or its compact form past the budget
            return self.economy.listed(route, consumer, gw.visible_tools(view, consumer))
        pick = {"prompt": gw.visible_prompts, "resource": gw.visible_resources, "template": gw.visible_templates}[kind]
        return pick(view, consumer)

    async def prepare(self, route: Route, caller: Caller) -> None:
        """Let per-consumer upstreams open this caller's session, so a listing knows their items."""
        upstreams = self.gateway.upstreams
        needy = [upstreams[n] for n in route.upstreams if getattr(upstreams.get(n), "per_consumer", False)]
        if not needy:
            return
        ctx = context_for(caller)
        async with anyio.create_task_group() as tg:
            for upstream in needy:
                tg.start_soon(upstream.prepare, ctx)
        if self.gateway.refresh_pending:
            self.gateway.rebuild()

    # -- one target ------------------------------------------------------------------------------

    def admit_target(self, caller: Caller, method: str, shown: str, target: Target | None) -> Target:
        """The ACL decision for a resolved target; a hidden target is refused as a missing one."""
        allowed = target is not None and self.gateway.access.allows(caller.consumer, target)
        tracing.current().decided(allowed, target.upstream if target is not None else None)
        if target is None or not allowed:
            self.gateway.meter.audit_denied(caller.consumer, method, shown, exists=target is not None)
            raise not_found(method, shown)
        return target

    async def call_tool(self, route: Route, caller: Caller, request: ToolRequest) -> CallAnswer:
        role = self.economy.meta_role(route, caller.consumer, request.name)
        if role is not None:  # a meta-tool of the caller's compact catalog (its `call` comes back to `calls.call`)
            await self.prepare(route, caller)
            return await self.economy.answer(route, caller, request, role, self.calls)
        if route.view.resolve_tool(request.name) is None:
            # A per-consumer upstream lists its items once this caller's session is open: a call may come first.
            await self.prepare(route, caller)
        return await self.calls.call(route, caller, request)

    async def get_prompt(
        self, route: Route, caller: Caller, name: str, arguments: dict[str, str] | None,
        answers: InputAnswers | None = None,
    ) -> types.GetPromptResult | types.InputRequiredResult:
        target = self.admit_target(caller, "prompts/get", name, route.view.resolve_prompt(name))
        return await self._asking(route, caller, "prompts/get", name, target, answers,
                                  lambda up, ctx: up.get_prompt(target.original, arguments, ctx))

    async def read_resource(
        self, route: Route, caller: Caller, uri: str, answers: InputAnswers | None = None
    ) -> types.ReadResourceResult | types.InputRequiredResult:
        target = self.admit_target(caller, "resources/read", uri, route.view.resolve_uri(uri))
        result = await self._asking(route, caller, "resources/read", uri, target, answers,
                                    lambda up, ctx: up.read_resource(target.original, ctx))
        if isinstance(result, types.ReadResourceResult) and uri != target.original:
            # a namespaced URI: answer under the name the client asked for
            result.contents = [c.model_copy(update={"uri": uri}) for c in result.contents]
        return result

    async def _asking(
        self, route: Route, caller: Caller, method: str, shown: str, target: Target, answers: InputAnswers | None,
        send: Callable[[Upstream, CallContext], Awaitable[Any]],
    ) -> Any:
        """A request other than tools/call whose upstream may answer `input_required`: a handshake-era caller's
        peer answers the rounds; a 2026-07-28 caller gets them as they came, with the state sealed."""
        ctx = context_for(caller)
        if caller.modern and answers is not None and answers.request_state:
            ctx.request_state = await self.calls.states.take(answers.request_state, method=method, target=shown,
                                                       consumer=caller.consumer.name, route=route.path)
            ctx.input_responses = answers.input_responses
        for _ in range(MAX_ROUNDS):
            result = await self._forward(caller, method, shown, target, lambda up, ctx=ctx: send(up, ctx))
            if not isinstance(result, types.InputRequiredResult):
                return result
            if caller.modern:
                dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
                return types.InputRequiredResult.model_validate(self.calls.states.wrap(
                    dumped, method=method, target=shown, consumer=caller.consumer.name, route=route.path),
                    by_name=False)
            responses = await fulfil(result, caller.peer)
            ctx = dataclasses.replace(ctx, input_responses=responses, request_state=result.request_state)
        raise MCPError(code=types.INTERNAL_ERROR, message=f"upstream {target.upstream!r} kept asking for input")

    # -- tasks (the io.modelcontextprotocol/tasks extension: core/tasks.py) -------------------------

    def serves_tasks(self, route: Route) -> bool:
        """Whether the route serves tasks (and advertises the extension): an upstream of it does."""
        return self.calls.tasks.route_serves(route.upstreams)

    def _task_context(self, route: Route, caller: Caller, method: str) -> CallContext:
        """A tasks/* request's context, once the route serves tasks and the caller declared the extension."""
        if not self.serves_tasks(route):
            raise MCPError(code=types.METHOD_NOT_FOUND, message="Method not found", data=method)
        if not declares_tasks(caller.capabilities, caller.modern):
            raise missing_extension(caller.modern)
        return dataclasses.replace(context_for(caller), client_capabilities=caller.capabilities,
                                   client_info=caller.client_info)

    async def get_task(self, route: Route, caller: Caller, task_id: str) -> dict[str, Any]:
        return await self.calls.tasks.get(route.path, self._task_context(route, caller, "tasks/get"), task_id)

    async def update_task(
        self, route: Route, caller: Caller, task_id: str, responses: dict[str, Any] | None
    ) -> dict[str, Any]:
        ctx = self._task_context(route, caller, "tasks/update")
        return await self.calls.tasks.update(route.path, ctx, task_id, responses)

    async def cancel_task(self, route: Route, caller: Caller, task_id: str) -> dict[str, Any]:
        return await self.calls.tasks.cancel(route.path, self._task_context(route, caller, "tasks/cancel"), task_id)

    def resolve_subscription(self, route: Route, caller: Caller, uri: str) -> Target:
        return self.admit_target(caller, "resources/subscribe", uri, route.view.resolve_uri(uri))

    async def subscribe_upstream(self, caller: Caller, uri: str, target: Target) -> None:
        """Subscribe the upstream to a resource (once, for its first watcher on a route)."""
        await self._forward(caller, "resources/subscribe", uri, target, lambda up: up.subscribe(target.original))

    async def complete(self, route: Route, caller: Caller, params: types.CompleteRequestParams) -> types.CompleteResult:
        """Completion for a prompt's or a resource template's argument; an object the caller may not see
        completes to nothing, as a missing one does."""
        view, ref = route.view, params.ref
        if isinstance(ref, types.PromptReference):
            method_target, shown = view.resolve_prompt(ref.name), ref.name
        else:
            method_target, shown = view.resolve_template(ref.uri), ref.uri
        try:
            target = self.admit_target(caller, "completion/complete", shown, method_target)
            if target.upstream not in self.gateway.upstreams:
                raise not_found("completion/complete", shown)
        except MCPError:
            return types.CompleteResult(completion=types.Completion(values=[]))
        forwarded = params
        if isinstance(ref, types.PromptReference):
            forwarded = params.model_copy(update={"ref": ref.model_copy(update={"name": target.original})})
        return await self._forward(caller, "completion/complete", target.original, target,
                                   lambda up: up.complete(forwarded, context_for(caller)))

    async def _forward(
        self, caller: Caller, method: str, shown: str, target: Target,
        send: Callable[[Upstream], Awaitable[T]],
    ) -> T:
        """Send an admitted request to its upstream, and audit it."""
        upstream = self.gateway.upstreams.get(target.upstream)
        if upstream is None:  # removed by a reload since the view was built: gone, as far as the caller knows
            raise not_found(method, shown)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await send(await upstream.for_caller(caller.modern))
        except UpstreamUnavailable as exc:
            outcome = "unavailable"
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
        except MCPError:
            outcome = "error"
            raise
        finally:
            self.gateway.meter.audit_request(caller.consumer, method, shown, target.upstream, outcome,
                                             (time.perf_counter() - started) * 1000)


def not_found(method: str, shown: str) -> MCPError:
    """The one answer for a target that is missing, hidden from the caller, or gone."""
    if method == "prompts/get":
        return MCPError(code=types.INVALID_PARAMS, message=f"Unknown prompt: {shown}")
    return MCPError(code=RESOURCE_NOT_FOUND, message=f"Resource not found: {shown}", data={"uri": shown})


def context_for(caller: Caller) -> CallContext:
    """What an upstream may use from a caller's request other than a tool call."""
    ctx = CallContext(
        consumer=caller.consumer, peer=caller.peer, notify=caller.notify, access_token=caller.access_token,
        request_headers=caller.request_headers,
        headers=dict(caller.consumer.forwarded_claims),  # auth.claim_to_header, for HTTP upstreams
    )
    if (outgoing := tracing.current().traceparent()) is not None:  # tracing on: the request span is the parent
        ctx.traceparent = ctx.headers["traceparent"] = outgoing
    return ctx
