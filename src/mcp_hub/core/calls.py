"""The one `tools/call` path: resolve, decide, check arguments, admit, call the upstream, settle.

Both entries (the SDK's server binding and the direct HTTP entry) describe the request and its
caller, call `ToolCalls.call`, and frame the answer; everything between, the upstream's
`input_required` rounds and the error texts included, is here once.

A caller of the handshake era takes requests mid-call: an upstream's questions (its own requests
mid-call, or a 2026-07-28 upstream's `input_required` rounds) are put to it through `Caller.peer`.
A 2026-07-28 caller takes none: its call is relayed (`core/relay.py`), the questions handed out
as this gateway's own InputRequiredResult rounds while the upstream call waits.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_hub import tracing
from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog.schemas import first_error
from mcp_hub.catalog.view import CatalogView, Target
from mcp_hub.core.access import Access
from mcp_hub.core.relay import Relay
from mcp_hub.core.states import SealedStates
from mcp_hub.core.tasks import Tasks, declares_tasks, for_upstream, is_task
from mcp_hub.metering.meter import Meter
from mcp_hub.metering.record import CallOutcome, CallRecord
from mcp_hub.upstreams.base import CallContext, DownstreamPeer, Notify, Upstream, UpstreamUnavailable

if TYPE_CHECKING:
    from mcp_hub.core.hub import Gateway, Route

logger = logging.getLogger(__name__)

# Rounds of an upstream's input requests one call may take before the gateway gives up on it.
MAX_ROUNDS = 8
# A relayed call waits this much past the upstream's call timeout, so that the upstream's own timeout,
# worded the same on every path, is what the caller hears.
RELAY_GRACE = 1.0
LOG_LEVELS = {level: rank for rank, level in enumerate(
    ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"))}


@dataclass(slots=True)
class ToolRequest:
    """A `tools/call` as its entry read it."""

    name: str
    arguments: dict[str, Any] | None = None
    progress_token: Any = None
    # The level the caller wants log messages at; None: none.
    log_level: str | None = None
    # A 2026-07-28 caller answering this gateway's input requests of a call it started earlier.
    request_state: str | None = None
    input_responses: dict[str, Any] | None = None
    # The caller's W3C trace context (`_meta.traceparent`, else its HTTP header), when well-formed.
    traceparent: str | None = None


@dataclass(slots=True)
class Caller:
    """The downstream side of one request, as the framing that received it knows it."""

    consumer: Consumer
    # 2026-07-28: no requests mid-call; an upstream's questions become InputRequiredResult rounds.
    modern: bool
    # Answers an upstream's questions mid-call (handshake-era callers that can take requests).
    peer: DownstreamPeer | None
    # Whether the caller declared the capability a server-to-client request needs.
    declares: Callable[[str], bool]
    # Progress and log notifications back to the caller.
    notify: Notify | None = None
    access_token: Any = None
    request_headers: dict[str, str] | None = None
    # The capabilities and client info the caller declared (JSON), passed on to 2026-07-28 upstreams.
    capabilities: dict[str, Any] | None = None
    client_info: dict[str, Any] | None = None


async def _nothing() -> None:
    return None


@dataclass(slots=True)
class CallAnswer:
    """What a call gives its caller, and the recording of it that the entry runs once the answer is out."""

    result: dict[str, Any] | None = None
    error: MCPError | None = None
    settle: Callable[[], Awaitable[None]] = _nothing


class _Asking:
    """A relayed call's next input requests for its 2026-07-28 caller (the call is not over)."""

    __slots__ = ("result",)

    def __init__(self, result: dict[str, Any]) -> None:
        self.result = result


class _TaskMade:
    """A task the upstream made for the call: the caller's CreateTaskResult; the call's record is the task's now
    (settled when its final state is delivered: core/tasks.py)."""

    __slots__ = ("result", "upstream", "started")

    def __init__(self, result: dict[str, Any], upstream: str, started: float) -> None:
        self.result, self.upstream, self.started = result, upstream, started


class ToolCalls:
    """The gateway's tools/call service."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.relay = Relay()
        self.states = SealedStates()
        self.tasks = Tasks(gateway)

    @property
    def access(self) -> Access:
        return self.gateway.access

    @property
    def meter(self) -> Meter:
        return self.gateway.meter

    async def open(self, view: CatalogView, caller: Caller, request: ToolRequest) -> tuple[CallRecord, Target]:
        """A call's record after the one ACL decision and the argument check; a refusal is settled and raised
        as the same error whether the tool is hidden or missing."""
        consumer, name = caller.consumer, request.name
        target = view.resolve_tool(name)
        if target is None:
            record = CallRecord(consumer, name, None, False, "no such tool")
            await self.meter.settle(record, CallOutcome.UNKNOWN)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        decision = self.access.decide(consumer, "tool", target.name, target.upstream)
        record = CallRecord(consumer, name, target.upstream, decision.allowed, decision.rule,
                            arguments=request.arguments)
        if not decision.allowed:
            self.meter.denied(consumer, "tool")
            await self.meter.settle(record, CallOutcome.DENIED)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {name}")
        problem = first_error(target.item.input_schema, request.arguments or {})
        if problem is not None:
            await self.meter.settle(record, CallOutcome.INVALID)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid arguments for tool {name}: {problem}")
        return record, target

    async def call(self, route: Route, caller: Caller, request: ToolRequest) -> CallAnswer:
        """A tools/call from start to answer; MCPError for refusals before the upstream is asked."""
        record, target = await self.open(route.view, caller, request)
        upstream = self.gateway.upstreams.get(target.upstream)
        wait = upstream.call_timeout + RELAY_GRACE if upstream is not None else 0.0
        upstream_state: str | None = None
        resumed = caller.modern and bool(request.request_state)
        if resumed and not self.states.is_sealed(request.request_state):
            # The gateway's own rounds (core/relay.py): the call waiting for these answers has its own record.
            record.finished = True
            return await self._outcome(None, await self.relay.resume(
                request.request_state or "", request.name, caller.consumer.name, _plain(request.input_responses),
                wait))
        if resumed:
            # A round of an upstream's own input requests, relayed as they came: admitted when the call started.
            try:
                upstream_state = await self.states.take(request.request_state or "", method="tools/call",
                                                  target=request.name, consumer=caller.consumer.name, route=route.path)
            except MCPError as exc:
                await self.meter.settle(record, CallOutcome.ERROR, error=exc.error.message)
                raise
        else:
            with tracing.current().child("admission"):  # budgets and rate limits (the ACL decided in `open`)
                await self.meter.admit(record)
        if upstream is None:
            return await self._outcome(record, UpstreamUnavailable(f"upstream {target.upstream!r} was removed"))
        ctx = CallContext(
            consumer=caller.consumer,
            peer=None if caller.modern else caller.peer,
            notify=self.tasks.notifications(target.upstream, caller.consumer.name,
                                            _at_level(request.log_level, caller.notify)),
            progress_token=request.progress_token,
            log_level=request.log_level,
            headers=_headers_for(caller, request),
            traceparent=request.traceparent,
            access_token=caller.access_token,
            request_headers=caller.request_headers,
            client_capabilities=for_upstream(caller.capabilities, caller.modern),
            client_info=caller.client_info,
            # (a 2026-07-28 caller's answers go on as sent, with a state or without: the upstream judges them)
            input_responses=request.input_responses if caller.modern else None,
            request_state=upstream_state,
        )
        outcome: Any
        leg = tracing.current().child("upstream", client=True)  # the upstream call's span (NO_SPAN: tracing off)
        if (outgoing := leg.traceparent()) is not None:  # tracing on: the upstream's parent is the gateway's span
            leg.update({tracing.UPSTREAM: target.upstream, tracing.TOOL: target.original})
            ctx.traceparent = ctx.headers["traceparent"] = outgoing
        try:
            upstream = await upstream.for_caller(caller.modern)
            if caller.modern:
                outcome = await self._for_modern_caller(upstream, target.original, request.arguments, ctx, caller,
                                                        record, wait)
                if isinstance(outcome, dict) and outcome.get("resultType") == "input_required":
                    # The upstream's own round, passed through: its requests unchanged, its state sealed.
                    outcome = self.states.wrap(outcome, method="tools/call", target=request.name,
                                               consumer=caller.consumer.name, route=route.path)
            else:
                outcome = await self.rounds(upstream, target.original, request.arguments, ctx)
            if is_task(outcome):
                outcome = await self._task(upstream, outcome, route, caller, record, ctx, wait)
        except (UpstreamUnavailable, MCPError) as exc:
            outcome = exc
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.meter.settle(record, CallOutcome.CANCELLED)
            raise
        finally:
            leg.end()
        return await self._outcome(record, outcome)

    async def rounds(
        self, upstream: Upstream, name: str, arguments: dict[str, Any] | None, ctx: CallContext,
        first: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Call the upstream, answering its `input_required` rounds through `ctx.peer` until it answers."""
        result = first if first is not None else await upstream.call(name, arguments, ctx)
        for _ in range(MAX_ROUNDS):
            if result.get("resultType") != "input_required":
                return result
            asked = types.InputRequiredResult.model_validate(result, by_name=False)
            responses = await fulfil(asked, ctx.peer)
            ctx = dataclasses.replace(ctx, input_responses=responses, request_state=asked.request_state)
            result = await upstream.call(name, arguments, ctx)
        raise MCPError(code=types.INTERNAL_ERROR, message=f"upstream {upstream.name!r} kept asking for input")

    async def _for_modern_caller(
        self, upstream: Upstream, name: str, arguments: dict[str, Any] | None, ctx: CallContext, caller: Caller,
        record: CallRecord, wait: float,
    ) -> dict[str, Any] | _Asking:
        if not upstream.asks_mid_call:
            # A 2026-07-28 upstream: its input_required rounds go to the caller as they are (see `call`).
            return await upstream.call(name, arguments, ctx)

        # A handshake-era upstream may ask mid-call: the call goes on in the background, its questions relayed.
        async def run(peer: DownstreamPeer) -> dict[str, Any]:
            return await self.rounds(upstream, name, arguments, dataclasses.replace(ctx, peer=peer))

        try:
            result, ask, _ = await self.relay.start(
                record.tool, caller.consumer.name, caller.declares, run, self.gateway.spawn, wait, record,
                per_consumer=self.gateway.config.listen.max_pending_per_consumer)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self.meter.settle(record, CallOutcome.CANCELLED)  # the caller went away while it ran
            raise
        if ask is not None:
            return _Asking(ask.model_dump(by_alias=True, mode="json", exclude_none=True))
        return result

    async def _task(
        self, upstream: Upstream, created: dict[str, Any], route: Route, caller: Caller, record: CallRecord,
        ctx: CallContext, wait: float,
    ) -> _TaskMade | dict[str, Any]:
        """An upstream's CreateTaskResult: the caller's task under the gateway's id; for a caller that does not
        take tasks, the task's final result, waited for (its input requests put to a caller that takes them)."""
        if declares_tasks(caller.capabilities, caller.modern):
            result = await self.tasks.adopt(created, upstream=upstream.name, route=route.path, record=record)
            return _TaskMade(result, upstream.name, record.started)
        peer = ctx.peer

        async def answer(requests: dict[str, Any]) -> dict[str, Any]:
            asked = types.InputRequiredResult.model_validate({"inputRequests": requests}, by_name=False)
            return await fulfil(asked, peer)

        return await self.tasks.run_to_end(upstream, created, ctx, wait, answer if peer is not None else None)

    async def _outcome(self, record: CallRecord | None, outcome: Any) -> CallAnswer:
        """The answer for an outcome, with its settlement; `record` None: the relay's pending call owns it."""
        if isinstance(outcome, tuple):  # a relay step: (result or failure, ask, the pending call's record)
            result, ask, record = outcome
            if ask is not None:
                return CallAnswer(result=ask.model_dump(by_alias=True, mode="json", exclude_none=True))
            outcome = result
        if isinstance(outcome, _Asking):
            return CallAnswer(result=outcome.result)
        if isinstance(outcome, _TaskMade):
            return CallAnswer(result=outcome.result, settle=self._task_audit(record, outcome))
        if isinstance(outcome, UpstreamUnavailable):
            result = {"content": [{"type": "text", "text": str(outcome)}], "isError": True}
            return CallAnswer(result=result, settle=self._settler(record, CallOutcome.UNAVAILABLE, result=result))
        if isinstance(outcome, MCPError):
            return CallAnswer(error=outcome,
                              settle=self._settler(record, CallOutcome.ERROR, error=outcome.error.message))
        if isinstance(outcome, BaseException):  # not an upstream's failure: a fault of the gateway's own
            if record is not None:
                await self.meter.settle(record, CallOutcome.ERROR, error=type(outcome).__name__)
            raise outcome
        if outcome.get("resultType") == "input_required":
            kind = CallOutcome.INPUT_REQUIRED
        else:
            kind = CallOutcome.ERROR_RESULT if outcome.get("isError") else CallOutcome.OK
        return CallAnswer(result=outcome, settle=self._settler(record, kind, result=outcome))

    def _task_audit(self, record: CallRecord | None, made: _TaskMade) -> Callable[[], Awaitable[None]]:
        """The audit line of a call that made a task (the call's own line, with its charge, comes at delivery)."""

        async def audit() -> None:
            if record is not None:
                self.meter.audit_request(record.consumer, "tools/call", record.tool, made.upstream, "task_created",
                                         (time.perf_counter() - made.started) * 1000)

        return audit

    def _settler(self, record: CallRecord | None, outcome: CallOutcome, **kwargs: Any) -> Callable[[], Awaitable[None]]:
        if record is None:
            return _nothing

        async def settle() -> None:
            await self.meter.settle(record, outcome, **kwargs)

        return settle


async def fulfil(asked: types.InputRequiredResult, peer: DownstreamPeer | None) -> dict[str, Any]:
    """Answer a 2026-07-28 upstream's input requests through the caller."""
    responses: dict[str, Any] = {}
    for key, request in (asked.input_requests or {}).items():
        if peer is None or not peer.supports(request.method):
            raise MCPError(code=types.INVALID_REQUEST, message=f"{request.method}: the caller cannot answer it")
        params = request.params.model_dump(by_alias=True, mode="json", exclude_none=True) if request.params else None
        responses[key] = await peer.request(request.method, params)
    return responses


def _at_level(level: str | None, notify: Notify | None) -> Notify | None:
    """The caller's notifications, with log messages below its level (or all, with none) dropped."""
    if notify is None:
        return None
    floor = LOG_LEVELS.get(level, 0) if level is not None else None

    async def forward(message: dict[str, Any]) -> None:
        if message.get("method") == "notifications/message":
            params = message.get("params") if isinstance(message.get("params"), dict) else {}
            if floor is None or LOG_LEVELS.get(str(params.get("level")), 0) < floor:
                return
        await notify(message)

    return forward


TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def traceparent_of(*candidates: Any) -> str | None:
    """The first well-formed W3C `traceparent` among the candidates (anything else is dropped, never sent on)."""
    for value in candidates:
        if isinstance(value, str) and TRACEPARENT.match(value):
            return value
    return None


def _headers_for(caller: Caller, request: ToolRequest) -> dict[str, str]:
    """Extra HTTP headers of the upstream request: `auth.claim_to_header`, and the caller's trace context."""
    headers = dict(caller.consumer.forwarded_claims)
    if request.traceparent is not None:
        headers["traceparent"] = request.traceparent
    return headers


def _plain(responses: dict[str, Any] | None) -> dict[str, Any]:
    return {
        key: value.model_dump(by_alias=True, mode="json", exclude_none=True) if hasattr(value, "model_dump") else value
        for key, value in (responses or {}).items()
    }
