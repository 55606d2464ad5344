"""A server of the Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663, the v2 wire), as a server author writes one.

An `MCPServer` with an `Extension`: the extension serves `tasks/get`, `tasks/update` and `tasks/cancel`,
and its `tools/call` interceptor turns a call of a task-supporting tool into a task when the request
declares the extension (in the session's capabilities or the request's `_meta` clientCapabilities),
answering a flat CreateTaskResult at once while the work goes on in the background. A request that does
not declare it gets the tool run synchronously, or -32021 for a tool that requires a task. The tools are
the fixtures of the conformance suite's tasks-* scenarios (0.2.0-alpha.12):

- `greet` (no tasks), `slow_compute` (optional), `failing_job`, `protocol_error_job` (required);
- `confirm_delete` and `multi_input` (required): the task asks the client through `input_required`
  (`inputRequests` on tasks/get, answers through tasks/update, several at once answered one by one);
- `test_tool_with_task` (required): an InputRequiredResult round first, then a task on the retry.

With `--tasks-for-everyone` it misbehaves: tasks for every client, declared or not (a gateway must then
answer a caller that did not declare the extension without one).

    python -m tests.servers.tasks_server --port 3920          # http://127.0.0.1:3920/mcp
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Extension, MCPServer, MethodBinding, require_client_extension
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import decode_header_value
from mcp_types import (
    HEADER_MISMATCH,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    CallToolRequestParams,
    CallToolResult,
    ElicitRequest,
    ElicitRequestFormParams,
    RequestParams,
    TextContent,
)

from tests.servers._common import build_parser, serve

TASKS = "io.modelcontextprotocol/tasks"
TTL_MS = 300_000
POLL_INTERVAL_MS = 200
TERMINAL = ("completed", "failed", "cancelled")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(text: str, *, is_error: bool = False) -> dict[str, Any]:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=is_error).model_dump(
        by_alias=True, mode="json", exclude_none=True)


def _elicit(message: str, properties: dict[str, Any]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    request = ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))
    return request.model_dump(by_alias=True, mode="json", exclude_none=True)


def _accepted(answer: Any) -> dict[str, Any] | None:
    """The content of an accepted elicitation answer (None: declined, cancelled or malformed)."""
    if isinstance(answer, dict) and answer.get("action") == "accept" and isinstance(answer.get("content"), dict):
        return answer["content"]
    return None


class TaskFailed(Exception):
    """A protocol-level failure of a task's work: the task ends `failed` with this JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Task:
    """One task: its state as tasks/get shows it, and the work behind it."""

    task_id: str
    status: str = "working"
    created_at: str = field(default_factory=_now)
    last_updated_at: str = field(default_factory=_now)
    status_message: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    # Input requests still waiting for an answer, and the answers taken so far in this round.
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None

    def touch(self, status: str | None = None) -> None:
        if status is not None:
            self.status = status
        self.last_updated_at = _now()

    def envelope(self) -> dict[str, Any]:
        out = {"taskId": self.task_id, "status": self.status, "createdAt": self.created_at,
               "lastUpdatedAt": self.last_updated_at, "ttlMs": TTL_MS, "pollIntervalMs": POLL_INTERVAL_MS}
        if self.status_message is not None:
            out["statusMessage"] = self.status_message
        return out

    def detailed(self) -> dict[str, Any]:
        """The DetailedTask of tasks/get: the result or error inlined once the task is over."""
        out = self.envelope()
        if self.status == "input_required":
            out["inputRequests"] = dict(self.pending)
        elif self.status == "completed" and self.result is not None:
            out["result"] = self.result
        elif self.status == "failed" and self.error is not None:
            out["error"] = self.error
        return out

    async def ask(self, requests: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Park the task in input_required until every request has its answer (they may come one by one)."""
        self.pending, self.answers = dict(requests), {}
        self.answered = asyncio.Event()
        self.touch("input_required")
        await self.answered.wait()
        self.touch("working")
        return self.answers

    def answer(self, responses: dict[str, Any]) -> None:
        for key, value in responses.items():
            if key in self.pending:  # an answer to nothing asked is ignored
                self.answers[key] = value
                del self.pending[key]
        if self.status == "input_required" and not self.pending:
            self.answered.set()


Job = Callable[[dict[str, Any], Task], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class TaskTool:
    job: Job
    support: str  # "optional": synchronous for clients without the extension; "required": -32021 for them


class TaskIdParams(RequestParams):
    task_id: str


class TaskUpdateParams(TaskIdParams):
    # Passed to the work as sent (answers to elicitation, sampling or roots requests alike).
    input_responses: dict[str, Any] | None = None


class TasksExtension(Extension):
    """The tasks extension: tasks/get, tasks/update, tasks/cancel, and task creation in tools/call."""

    identifier = TASKS

    def __init__(self) -> None:
        self.jobs: dict[str, TaskTool] = {}
        self.tasks: dict[str, Task] = {}
        # A misbehaving server (--tasks-for-everyone): tasks even for clients that did not declare the extension.
        self.for_everyone = False

    def task_tool(self, name: str, support: str) -> Callable[[Job], Job]:
        def register(job: Job) -> Job:
            self.jobs[name] = TaskTool(job, support)
            return job

        return register

    def methods(self) -> list[MethodBinding]:
        return [
            MethodBinding("tasks/get", TaskIdParams, self._get),
            MethodBinding("tasks/update", TaskUpdateParams, self._update),
            MethodBinding("tasks/cancel", TaskIdParams, self._cancel),
        ]

    # -- tools/call ------------------------------------------------------------------------------

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        tool = self.jobs.get(params.name)
        if tool is None:
            return await call_next(ctx)
        if not _declares(ctx) and not self.for_everyone:
            if tool.support == "required":
                require_client_extension(ctx, TASKS)  # raises -32021 with requiredCapabilities
            return await call_next(ctx)
        arguments = dict(params.arguments or {})
        if params.name == "test_tool_with_task":
            # An input_required round first (SEP-2322); the retry with the answer becomes the task.
            responses = params.input_responses or {}
            answer = responses.get("user_name")
            content = _accepted(answer.model_dump(by_alias=True, mode="json") if answer is not None else None)
            if content is None:
                return {"resultType": "input_required",
                        "inputRequests": {"user_name": _elicit("What is your name?", {"name": {"type": "string"}})}}
            arguments["name"] = content.get("name")
        return self._start(tool.job, arguments)

    def _start(self, job: Job, arguments: dict[str, Any]) -> dict[str, Any]:
        task = Task(task_id=str(uuid.uuid4()))
        self.tasks[task.task_id] = task  # durable before the CreateTaskResult goes out
        task.runner = asyncio.get_running_loop().create_task(self._run(task, job, arguments))
        return {"resultType": "task", **task.envelope()}

    async def _run(self, task: Task, job: Job, arguments: dict[str, Any]) -> None:
        try:
            result = await job(arguments, task)
        except asyncio.CancelledError:
            task.touch("cancelled")
            return
        except TaskFailed as exc:
            task.error = {"code": exc.code, "message": str(exc)}
            task.touch("failed")
            return
        except Exception as exc:  # noqa: BLE001 - any crash of the work is a protocol-level failure
            task.error = {"code": INTERNAL_ERROR, "message": f"{type(exc).__name__}: {exc}"}
            task.touch("failed")
            return
        if task.status not in TERMINAL:
            task.result = result
            task.touch("completed")

    # -- tasks/* ---------------------------------------------------------------------------------

    def _task(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> Task:
        if not _declares(ctx):
            require_client_extension(ctx, TASKS)  # raises -32021
        _check_name_header(ctx, task_id)
        task = self.tasks.get(task_id)
        if task is None:
            raise MCPError(code=INVALID_PARAMS, message=f"Task not found: {task_id}")
        return task

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        return self._task(ctx, params.task_id).detailed()

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: TaskUpdateParams) -> dict[str, Any]:
        task = self._task(ctx, params.task_id)
        if params.input_responses is None:
            raise MCPError(code=INVALID_PARAMS, message="tasks/update needs inputResponses")
        task.answer(params.input_responses)
        return {}

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskIdParams) -> dict[str, Any]:
        task = self._task(ctx, params.task_id)
        if task.status not in TERMINAL:  # cancelling a finished task is acknowledged the same way
            task.touch("cancelled")
            if task.runner is not None:
                task.runner.cancel()
        return {}


def _declares(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request declares the extension: the session's capabilities, or the request's own
    `_meta` clientCapabilities (2026-07-28 requests carry them per request)."""
    with contextlib.suppress(MCPError):
        require_client_extension(ctx, TASKS)
        return True
    meta = ctx.meta if isinstance(ctx.meta, dict) else {}
    declared = meta.get("io.modelcontextprotocol/clientCapabilities")
    extensions = declared.get("extensions") if isinstance(declared, dict) else None
    return isinstance(extensions, dict) and TASKS in extensions


def _check_name_header(ctx: ServerRequestContext[Any, Any], task_id: str) -> None:
    """SEP-2663 routing headers: an `Mcp-Name` that names another task than the body is refused (-32020)."""
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is None:
        return
    name = headers.get("mcp-name")
    if name is not None and decode_header_value(name) != task_id:
        raise MCPError(code=HEADER_MISMATCH, message="Mcp-Name header does not match params.task_id")


tasks = TasksExtension()
mcp: MCPServer[Any] = MCPServer(
    "mcp-tasks-test-server",
    version="1.0.0",
    instructions="Serves the io.modelcontextprotocol/tasks extension with the conformance scenarios' fixtures.",
    log_level="WARNING",
    extensions=[tasks],
)


# --- tools -----------------------------------------------------------------------------------


@mcp.tool()
def greet(name: str) -> CallToolResult:
    """Says hello (never a task)."""
    return CallToolResult(content=[TextContent(type="text", text=f"Hello, {name}!")])


@mcp.tool()
async def slow_compute(seconds: float = 1.0, label: str = "") -> CallToolResult:
    """Sleeps `seconds`, then answers (a task when the client declares the extension)."""
    return CallToolResult.model_validate(await _slow_compute({"seconds": seconds, "label": label}, None))


@tasks.task_tool("slow_compute", "optional")
async def _slow_compute(arguments: dict[str, Any], task: Task | None) -> dict[str, Any]:
    seconds = float(arguments.get("seconds") or 0)
    await asyncio.sleep(seconds)
    return _text(f"computed {arguments.get('label') or 'result'} after {seconds:g}s")


@mcp.tool()
def failing_job() -> CallToolResult:
    """Fails as a tool after about a second (task required)."""
    return CallToolResult(content=[TextContent(type="text", text="not reached")], is_error=True)


@tasks.task_tool("failing_job", "required")
async def _failing_job(arguments: dict[str, Any], task: Task) -> dict[str, Any]:
    await asyncio.sleep(1.0)
    return _text("the job failed: the input was rejected", is_error=True)


@mcp.tool()
def protocol_error_job() -> CallToolResult:
    """Crashes into a protocol-level error (task required)."""
    return CallToolResult(content=[TextContent(type="text", text="not reached")], is_error=True)


@tasks.task_tool("protocol_error_job", "required")
async def _protocol_error_job(arguments: dict[str, Any], task: Task) -> dict[str, Any]:
    await asyncio.sleep(0.2)
    raise TaskFailed(INTERNAL_ERROR, "the job crashed: internal failure")


@mcp.tool()
def confirm_delete(filename: str) -> CallToolResult:
    """Asks for confirmation, then deletes (task required)."""
    return CallToolResult(content=[TextContent(type="text", text="not reached")], is_error=True)


@tasks.task_tool("confirm_delete", "required")
async def _confirm_delete(arguments: dict[str, Any], task: Task) -> dict[str, Any]:
    filename = arguments.get("filename")
    answers = await task.ask({"confirm": _elicit(f"Delete {filename}?", {"confirm": {"type": "boolean"}})})
    content = _accepted(answers.get("confirm"))
    if content is not None and content.get("confirm"):
        return _text(f"Deleted {filename}")
    return _text(f"Kept {filename}")


@mcp.tool()
def multi_input() -> CallToolResult:
    """Asks two questions at once (task required)."""
    return CallToolResult(content=[TextContent(type="text", text="not reached")], is_error=True)


@tasks.task_tool("multi_input", "required")
async def _multi_input(arguments: dict[str, Any], task: Task) -> dict[str, Any]:
    answers = await task.ask({
        "name": _elicit("Your name?", {"name": {"type": "string"}}),
        "confirm": _elicit("Go ahead?", {"confirm": {"type": "boolean"}}),
    })
    names = [str((_accepted(answers.get(k)) or {}).get("name")) for k in ("name", "confirm")]
    return _text(f"multi_input done: {', '.join(names)}")


@mcp.tool()
def test_tool_with_task() -> CallToolResult:
    """Asks for a name (input_required), then greets it in a task (task required)."""
    return CallToolResult(content=[TextContent(type="text", text="not reached")], is_error=True)


@tasks.task_tool("test_tool_with_task", "required")
async def _tool_with_task(arguments: dict[str, Any], task: Task) -> dict[str, Any]:
    await asyncio.sleep(0.2)
    return _text(f"Hello, {arguments.get('name')}! (from a task)")


def main() -> None:
    parser = build_parser("MCP tasks extension test server", 3920)
    parser.add_argument("--tasks-for-everyone", action="store_true",
                        help="make tasks even for clients that did not declare the extension (a misbehaving server)")
    args = parser.parse_args()
    tasks.for_everyone = args.tasks_for_everyone
    serve(mcp, args)


if __name__ == "__main__":
    main()
