"""In-process stand-ins for the request service's tests: an `Upstream` that lives in memory, a downstream
peer that records and answers the requests put to it, and `Caller`s built by hand. No subprocess, no network."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from anyio.abc import TaskStatus
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate

from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog.view import UpstreamCatalog
from mcp_hub.config import GatewayConfig
from mcp_hub.core.calls import Caller
from mcp_hub.core.hub import Gateway
from mcp_hub.upstreams.base import CallContext, DownstreamPeer, Upstream, UpstreamState

# A step of a scripted tool that never answers (until the call is cancelled).
HANG = object()


def ask(requests: dict[str, Any], state: str) -> dict[str, Any]:
    """A 2026-07-28 upstream's `input_required` answer to a tools/call, as JSON."""
    return {"resultType": "input_required", "inputRequests": requests, "requestState": state}


def elicit(message: str) -> dict[str, Any]:
    """An elicitation/create request as it appears in `inputRequests`."""
    return {"method": "elicitation/create", "params": {
        "mode": "form", "message": message,
        "requestedSchema": {"type": "object", "properties": {"answer": {"type": "string"}}},
    }}


def text_result(text: str, *, is_error: bool = False) -> dict[str, Any]:
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
    if is_error:
        result["isError"] = True
    return result


@dataclass
class Received:
    """One tools/call round as the upstream saw it."""

    name: str
    arguments: dict[str, Any] | None
    input_responses: dict[str, Any] | None
    request_state: str | None
    consumer: str
    had_peer: bool
    # What the caller declared, as the upstream sees it (a 2026-07-28 upstream decides what to ask by it).
    client_capabilities: dict[str, Any] | None = None
    traceparent: str | None = None
    headers: dict[str, str] | None = None


class MemoryUpstream(Upstream):
    """An upstream whose catalog, results and failures are set by the test.

    A tool's answers are scripted with `script(tool, *steps)`: each call takes the next step, and the last
    step repeats. A step is a result dict (returned), an exception instance (raised) or `HANG`. A tool with
    no script answers with its name and arguments.
    """

    kind = "memory"

    def __init__(
        self,
        name: str,
        *,
        tools: list[types.Tool] | None = None,
        prompts: list[types.Prompt] | None = None,
        resources: list[types.Resource] | None = None,
        templates: list[types.ResourceTemplate] | None = None,
        completions: dict[tuple[str, str], list[str]] | None = None,
    ) -> None:
        super().__init__(name)
        self.offer = UpstreamCatalog(tools=tools or [], prompts=prompts or [], resources=resources or [],
                                     resource_templates=templates or [])
        # (prompt name or URI template, argument name) -> the values completion offers.
        self.completions = completions or {}
        self.scripts: dict[str, list[Any]] = {}
        self.received: list[Received] = []
        self.reads: list[str] = []
        self.prompt_gets: list[tuple[str, dict[str, str] | None]] = []
        self.completes: list[types.CompleteRequestParams] = []
        self.subscribed: list[str] = []
        self.failure: BaseException | None = None  # raised by every method other than call when set

    def script(self, tool: str, *steps: Any) -> None:
        self.scripts[tool] = list(steps)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._set_catalog(self.offer)
        self._set_state(UpstreamState.UP)
        task_status.started()
        await anyio.sleep_forever()

    async def call(self, name: str, arguments: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        self.received.append(Received(name, arguments, ctx.input_responses, ctx.request_state, ctx.consumer.name,
                                      ctx.peer is not None, ctx.client_capabilities, ctx.traceparent,
                                      dict(ctx.headers)))
        steps = self.scripts.get(name)
        if not steps:
            return text_result(json.dumps({"upstream": self.name, "tool": name, "arguments": arguments}))
        step = steps.pop(0) if len(steps) > 1 else steps[0]
        if step is HANG:
            await anyio.sleep_forever()
        if isinstance(step, BaseException):
            raise step
        return dict(step)

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def read_resource(self, uri: str, ctx: CallContext) -> types.ReadResourceResult:
        self._check()
        self.reads.append(uri)
        listed = any(str(r.uri) == uri for r in self.offer.resources)
        matched = any(UriTemplate.parse(t.uri_template).match(uri) is not None for t in self.offer.resource_templates)
        if not (listed or matched):
            raise MCPError(code=-32002, message=f"{self.name} has no {uri}")
        return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, text=f"{self.name} read {uri}")])

    async def get_prompt(self, name: str, arguments: dict[str, str] | None, ctx: CallContext) -> types.GetPromptResult:
        self._check()
        self.prompt_gets.append((name, arguments))
        text = f"{self.name}:{name}:{json.dumps(arguments or {}, sort_keys=True)}"
        return types.GetPromptResult(messages=[
            types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))])

    async def complete(self, params: types.CompleteRequestParams, ctx: CallContext) -> types.CompleteResult:
        self._check()
        self.completes.append(params)
        ref = params.ref
        key = ref.name if isinstance(ref, types.PromptReference) else ref.uri
        values = [v for v in self.completions.get((key, params.argument.name), [])
                  if v.startswith(params.argument.value)]
        return types.CompleteResult(completion=types.Completion(values=values))

    async def subscribe(self, uri: str) -> None:
        self._check()
        self.subscribed.append(uri)


@dataclass
class RecordingPeer(DownstreamPeer):
    """A handshake-era client: records the requests put to it and answers them from `answers` (by method;
    a callable gets the params)."""

    answers: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, Any] | None]] = field(default_factory=list)

    def supports(self, method: str) -> bool:
        return method in self.answers

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        self.requests.append((method, params))
        answer = self.answers[method]
        return dict(answer(params) if callable(answer) else answer)


def handshake_caller(consumer: Consumer, peer: RecordingPeer | None = None) -> Caller:
    """A caller of the handshake era: it takes requests mid-call through its peer."""
    return Caller(consumer=consumer, modern=False, peer=peer,
                  declares=peer.supports if peer is not None else (lambda _method: False))


def modern_caller(consumer: Consumer, declares: Callable[[str], bool] = lambda _method: True) -> Caller:
    """A 2026-07-28 caller: no requests mid-call, input requests come back as InputRequiredResult rounds."""
    return Caller(consumer=consumer, modern=True, peer=None, declares=declares)


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig, upstreams: list[Upstream]) -> AsyncIterator[Gateway]:
    """A gateway over in-memory upstreams, running in a task group until the block ends."""
    gateway = Gateway(config, upstream_factory=lambda _cfg: {u.name: u for u in upstreams})
    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        try:
            yield gateway
        finally:
            tg.cancel_scope.cancel()
