"""Tasks (the `io.modelcontextprotocol/tasks` extension, SEP-2663) through the gateway.

An upstream that supports the extension may answer a `tools/call` with a CreateTaskResult (`resultType:
"task"`, a flat task envelope) and serve the task's later states on `tasks/get` (the result or error
inlined once it is over), its input rounds on `tasks/update`, and `tasks/cancel`. Through the gateway:

- The call is a normal `tools/call` (`core/calls.py`): resolved, decided by the ACL, admitted by the
  meter. Its CreateTaskResult reaches the caller with a task id of the gateway's (random, unguessable)
  in the upstream's place; the table here binds that id to the upstream and its own id, the consumer,
  the route, and the call's record. A task id another consumer (or another route) uses is answered
  exactly as an unknown one: -32602 `Unknown task`.
- `tasks/get`, `tasks/update` and `tasks/cancel` go to the upstream that owns the task, with its own
  id, and come back with the gateway's. The call's record is settled (tokens, budgets, cost, metrics,
  the call's audit line) once, when the task's final state is first delivered: a completed task is
  charged then, a failed or cancelled one is recorded uncharged. A task that expires undelivered is
  recorded as an error, uncharged. The making of the task has an audit line of its own (outcome
  `task_created`, no tokens), and so has each tasks/* request (target: the gateway's task id).
- Only a caller that declared the extension gets tasks: a 2026-07-28 caller whose request declares it
  (its `_meta` clientCapabilities). A handshake-era session cannot carry the task shapes (the SDK
  sieves results to the handshake-era schema), so its callers count as not declaring. What the caller
  declared is what the upstream sees, minus the extension for a caller that did not; if an upstream
  makes a task for such a caller anyway, the gateway waits for the task's end and answers the call
  synchronously. Requests of `tasks/*` from a caller that did not declare it get -32021.
- The gateway advertises the extension on a route when an upstream of it advertises it and is reached
  in 2026-07-28 (`serves_tasks`).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_hub.metering.record import CallOutcome, CallRecord
from mcp_hub.upstreams.base import CallContext, Notify, Upstream, UpstreamUnavailable

if TYPE_CHECKING:
    from mcp_hub.core.hub import Gateway

TASKS_EXTENSION = "io.modelcontextprotocol/tasks"
TERMINAL = frozenset({"completed", "failed", "cancelled"})
TASK_ID_PREFIX = "hubtask-"
# How long the gateway keeps a task whose upstream gives it no TTL (or a longer one), and the slack past a TTL.
MAX_TTL = 24 * 3600.0
TTL_SLACK = 60.0
# How often the table is swept for expired tasks (it is swept as it is used, never in the background).
SWEEP_INTERVAL = 30.0
# A caller that did not declare the extension waits for a task's end; the upstream is polled this often.
POLL_BOUNDS = (0.05, 5.0)
EXPIRED = "the task expired before its result was delivered"

# Answers a task's input requests (`inputRequests` JSON) for a caller that takes requests mid-call.
AnswerInputs = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def declares_tasks(capabilities: dict[str, Any] | None, modern: bool) -> bool:
    """Whether a caller of this era, with these declared capabilities, takes tasks."""
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return modern and isinstance(extensions, dict) and TASKS_EXTENSION in extensions


def for_upstream(capabilities: dict[str, Any] | None, modern: bool) -> dict[str, Any] | None:
    """The capabilities to pass on for a caller: its own, without the extension when it does not take tasks."""
    if capabilities is None or declares_tasks(capabilities, modern):
        return capabilities
    extensions = capabilities.get("extensions")
    if not isinstance(extensions, dict) or TASKS_EXTENSION not in extensions:
        return capabilities
    rest = {k: v for k, v in extensions.items() if k != TASKS_EXTENSION}
    stripped = {k: v for k, v in capabilities.items() if k != "extensions"}
    return {**stripped, "extensions": rest} if rest else stripped


def with_extension(capabilities: dict[str, Any] | None) -> dict[str, Any]:
    extensions = (capabilities or {}).get("extensions")
    return {**(capabilities or {}), "extensions": {**(extensions if isinstance(extensions, dict) else {}),
                                                   TASKS_EXTENSION: {}}}


def serves_tasks(upstream: Upstream | None) -> bool:
    """An upstream that advertises the extension on a 2026-07-28 connection (a handshake-era one has no task shapes)."""
    return upstream is not None and TASKS_EXTENSION in upstream.extensions and not upstream.asks_mid_call


def is_task(result: Any) -> bool:
    return isinstance(result, dict) and result.get("resultType") == "task" and isinstance(result.get("taskId"), str)


def missing_extension(modern: bool) -> MCPError:
    """-32021, with the capability the request needs (SEP-2575)."""
    message = f"Client did not declare required extension {TASKS_EXTENSION!r}"
    if not modern:
        message += " (tasks are served to 2026-07-28 requests)"
    return MCPError(code=types.MISSING_REQUIRED_CLIENT_CAPABILITY, message=message,
                    data={"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}})


def not_found(task_id: str) -> MCPError:
    """The one answer for a task that is unknown, another consumer's, another route's, or gone."""
    return MCPError(code=types.INVALID_PARAMS, message=f"Unknown task: {task_id}")


@dataclass(slots=True)
class RelayedTask:
    """A task an upstream made for a caller, as the gateway knows it."""

    task_id: str  # the gateway's
    upstream_id: str
    upstream: str
    route: str
    consumer: str
    tool: str
    # The call that made it: settled when the task's final state is first delivered.
    record: CallRecord
    expires: float
    delivered: bool = False


class Tasks:
    """The gateway's table of relayed tasks, and the tasks/* requests on them."""

    def __init__(self, gateway: Gateway, *, max_tasks: int = 100_000) -> None:
        self.gateway = gateway
        self.max_tasks = max_tasks
        self._tasks: dict[str, RelayedTask] = {}
        self._by_upstream: dict[tuple[str, str], str] = {}
        self._swept = time.monotonic()

    def __len__(self) -> int:
        return len(self._tasks)

    def route_serves(self, upstream_names: list[str]) -> bool:
        upstreams = self.gateway.upstreams
        return any(serves_tasks(upstreams.get(name)) for name in upstream_names)

    # -- a task is made ----------------------------------------------------------------------------

    async def adopt(
        self, created: dict[str, Any], *, upstream: str, route: str, record: CallRecord
    ) -> dict[str, Any]:
        """Take in an upstream's CreateTaskResult for the caller of `record`: the result the caller gets."""
        await self._sweep()
        upstream_id = str(created["taskId"])
        ttl_ms = created.get("ttlMs")
        ttl = min(ttl_ms / 1000 + TTL_SLACK, MAX_TTL) if isinstance(ttl_ms, int) and ttl_ms > 0 else MAX_TTL
        task_id = TASK_ID_PREFIX + secrets.token_urlsafe(18)
        task = RelayedTask(task_id, upstream_id, upstream, route, record.consumer.name, record.tool, record,
                           time.monotonic() + ttl)
        self._tasks[task_id] = task
        self._by_upstream[(upstream, upstream_id)] = task_id
        return {**created, "taskId": task_id}

    def notifications(self, upstream: str, consumer: str, notify: Notify | None) -> Notify | None:
        """A call's notifications with the task ids of task notifications in the gateway's terms; a notification
        of a task this consumer does not hold (or not yet) is dropped."""
        if notify is None:
            return None

        async def forward(message: dict[str, Any]) -> None:
            method = message.get("method")
            if isinstance(method, str) and method.startswith("notifications/tasks"):
                params = message.get("params")
                upstream_id = params.get("taskId") if isinstance(params, dict) else None
                task_id = self._by_upstream.get((upstream, upstream_id)) if isinstance(upstream_id, str) else None
                task = self._tasks.get(task_id) if task_id is not None else None
                if task is None or task.consumer != consumer or not isinstance(params, dict):
                    return
                message = {**message, "params": {**params, "taskId": task.task_id}}
            await notify(message)

        return forward

    # -- tasks/* -----------------------------------------------------------------------------------

    async def get(self, route: str, ctx: CallContext, task_id: str) -> dict[str, Any]:
        """tasks/get: the upstream's DetailedTask under the gateway's id; its final state, first delivered, settles
        the call that made the task."""
        task, upstream = await self._open(route, ctx, task_id, "tasks/get")
        detailed = await self._send(task, upstream, "tasks/get", {}, ctx)
        answer = {**detailed, "taskId": task.task_id}
        if detailed.get("status") in TERMINAL:
            await self._deliver(task, detailed)
        return answer

    async def update(self, route: str, ctx: CallContext, task_id: str, responses: dict[str, Any] | None) -> dict[str, Any]:
        """tasks/update: the caller's answers to the task's input requests, as it sent them."""
        task, upstream = await self._open(route, ctx, task_id, "tasks/update")
        params: dict[str, Any] = {} if responses is None else {"inputResponses": responses}
        await self._send(task, upstream, "tasks/update", params, ctx)
        return {}

    async def cancel(self, route: str, ctx: CallContext, task_id: str) -> dict[str, Any]:
        task, upstream = await self._open(route, ctx, task_id, "tasks/cancel")
        await self._send(task, upstream, "tasks/cancel", {}, ctx)
        return {}

    async def _open(self, route: str, ctx: CallContext, task_id: str, method: str) -> tuple[RelayedTask, Upstream]:
        """The task `task_id` names, if this consumer made it on this route and its upstream is still there;
        else the one not-found answer (the audit line says which it was)."""
        await self._sweep()
        consumer = ctx.consumer
        task = self._tasks.get(task_id)
        if task is None or task.consumer != consumer.name or task.route != route:
            self.gateway.meter.audit_denied(consumer, method, task_id, exists=task is not None)
            raise not_found(task_id)
        upstream = self.gateway.upstreams.get(task.upstream)
        if upstream is None:  # removed by a reload: the task went with it
            self.gateway.meter.audit_denied(consumer, method, task_id, exists=False)
            raise not_found(task_id)
        return task, await upstream.for_caller(True)

    async def _send(
        self, task: RelayedTask, upstream: Upstream, method: str, params: dict[str, Any], ctx: CallContext
    ) -> dict[str, Any]:
        """One tasks/* request to the task's upstream under its own id, audited; the upstream's words about its
        own id are put in the gateway's, and its not-found is the gateway's."""
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await upstream.request(method, {"taskId": task.upstream_id, **params}, ctx)
        except UpstreamUnavailable as exc:
            outcome = "unavailable"
            raise MCPError(code=types.INTERNAL_ERROR, message=str(exc)) from None
        except MCPError as exc:
            outcome = "error"
            if exc.error.code == types.INVALID_PARAMS and task.upstream_id in exc.error.message:
                raise not_found(task.task_id) from None
            raise MCPError(code=exc.error.code, message=exc.error.message.replace(task.upstream_id, task.task_id),
                           data=_renamed(exc.error.data, task.upstream_id, task.task_id)) from None
        finally:
            self.gateway.meter.audit_request(ctx.consumer, method, task.task_id, task.upstream, outcome,
                                             (time.perf_counter() - started) * 1000)

    async def _deliver(self, task: RelayedTask, detailed: dict[str, Any]) -> None:
        """Settle the call that made the task, the first time its final state reaches the caller."""
        if task.delivered:
            return
        task.delivered = True
        status = detailed.get("status")
        meter = self.gateway.meter
        with anyio.CancelScope(shield=True):
            if status == "completed":
                result = detailed.get("result") if isinstance(detailed.get("result"), dict) else {}
                kind = CallOutcome.ERROR_RESULT if result.get("isError") else CallOutcome.OK
                await meter.settle(task.record, kind, result=result)
            elif status == "failed":
                error = detailed.get("error") if isinstance(detailed.get("error"), dict) else {}
                await meter.settle(task.record, CallOutcome.ERROR, error=str(error.get("message") or "task failed"))
            else:
                await meter.settle(task.record, CallOutcome.CANCELLED)

    async def _sweep(self) -> None:
        """Forget expired tasks (an undelivered one is recorded, uncharged); the oldest go first when full."""
        now = time.monotonic()
        if now - self._swept < SWEEP_INTERVAL and len(self._tasks) < self.max_tasks:
            return
        self._swept = now
        gone = [t for t in self._tasks.values() if t.expires < now]
        overflow = len(self._tasks) - len(gone) - self.max_tasks + 1
        if overflow > 0:
            live = sorted((t for t in self._tasks.values() if t.expires >= now), key=lambda t: t.expires)
            gone += live[:overflow]
        for task in gone:
            self._tasks.pop(task.task_id, None)
            self._by_upstream.pop((task.upstream, task.upstream_id), None)
            if not task.delivered:
                task.delivered = True
                with anyio.CancelScope(shield=True):
                    await self.gateway.meter.settle(task.record, CallOutcome.ERROR, error=EXPIRED)

    # -- a caller that does not take tasks ---------------------------------------------------------

    async def run_to_end(
        self, upstream: Upstream, created: dict[str, Any], ctx: CallContext, wait: float,
        answer_inputs: AnswerInputs | None,
    ) -> dict[str, Any]:
        """The final result of a task an upstream made for a caller that does not take tasks: polled to its end
        (its input requests put to the caller when it can take them), as a synchronous call would have
        answered; the task is cancelled when the caller cannot wait or answer."""
        upstream_id = str(created["taskId"])
        ctx = dataclasses.replace(ctx, client_capabilities=with_extension(ctx.client_capabilities))
        interval = created.get("pollIntervalMs")
        pause = min(max(interval / 1000, POLL_BOUNDS[0]), POLL_BOUNDS[1]) if isinstance(interval, int) else 0.2
        finished = False
        answered: set[str] = set()  # request keys answered already (an upstream may show them until it moves on)
        try:
            with anyio.fail_after(wait):
                while True:
                    detailed = await upstream.request("tasks/get", {"taskId": upstream_id}, ctx)
                    status = detailed.get("status")
                    if status == "completed":
                        finished = True
                        result = detailed.get("result")
                        return result if isinstance(result, dict) else {"content": []}
                    if status == "failed":
                        finished = True
                        error = detailed.get("error") if isinstance(detailed.get("error"), dict) else {}
                        raise MCPError(code=int(error.get("code", types.INTERNAL_ERROR)),
                                       message=str(error.get("message") or "the task failed"), data=error.get("data"))
                    if status == "cancelled":
                        finished = True
                        raise MCPError(code=types.INTERNAL_ERROR, message=f"upstream {upstream.name!r} cancelled the task")
                    requests = detailed.get("inputRequests")
                    asked = {k: v for k, v in requests.items() if k not in answered} if isinstance(requests, dict) else {}
                    if status == "input_required" and asked:
                        if answer_inputs is None:
                            raise MCPError(code=types.INVALID_REQUEST,
                                           message="the task asks for input the caller cannot give")
                        responses = await answer_inputs(asked)
                        answered.update(responses)
                        await upstream.request("tasks/update", {"taskId": upstream_id, "inputResponses": responses},
                                               ctx)
                        continue
                    await anyio.sleep(pause)
        except TimeoutError:
            raise UpstreamUnavailable(f"upstream {upstream.name!r} did not finish the task within {wait:g}s") from None
        finally:
            if not finished:
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    try:
                        await upstream.request("tasks/cancel", {"taskId": upstream_id}, ctx)
                    except (MCPError, UpstreamUnavailable):
                        pass


def _renamed(data: Any, old: str, new: str) -> Any:
    """JSON `data` with every mention of the upstream's task id in the gateway's."""
    if data is None:
        return None
    return json.loads(json.dumps(data).replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1]))
