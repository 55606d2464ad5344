"""A general-purpose upstream MCP server for gateway tests: every feature a client can meet, on every transport.

    python -m tests.servers.demo_server --transport stdio
    python -m tests.servers.demo_server --transport sse --port 3901               # http://127.0.0.1:3901/sse
    python -m tests.servers.demo_server --transport streamable-http --port 3901   # http://127.0.0.1:3901/mcp
    options: --name NAME (server info only), --extra-tool NAME (repeatable), --stateless, --json-response

Sampling, elicitation and roots go through the SDK's resolvers, so they work in both protocol eras:
requests mid-call on a handshake session, an `InputRequiredResult` round on 2026-07-28.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver import (
    AcceptedElicitation,
    Context,
    Elicit,
    ElicitationResult,
    Image,
    ListRoots,
    MCPServer,
    Resolve,
    Sample,
)
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp_types import (
    Completion,
    CreateMessageResult,
    ListRootsResult,
    LoggingLevel,
    NotificationParams,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    TextContent,
)
from pydantic import BaseModel, Field

from tests.servers._common import advertise_list_changed, build_parser, serve, tiny_png

# why: sampling, roots and logging are deprecated in 2026-07-28 but this server exists to exercise them
warnings.filterwarnings("ignore", message=r"The .* capability is deprecated")

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NAMES = ["Alice", "Bob", "Carol", "Dave", "Eve"]
README = "# Demo server\n\nAn MCP server for gateway tests: tools, resources, prompts, completions.\n"


class AddResult(BaseModel):
    """The structured result of `add`."""

    sum: int = Field(description="a + b")


class UserAnswer(BaseModel):
    """What `ask_user` asks the user for."""

    answer: str = Field(description="Your answer")


def _sampling_request(prompt: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=prompt))], max_tokens=200)


def _elicitation_request(question: str) -> Elicit[UserAnswer]:
    return Elicit(question, UserAnswer)


def _roots_request() -> ListRoots:
    return ListRoots()


class _Sessions:
    """Every handshake-era session that finished `initialize`, so runtime tool changes reach all of them."""

    def __init__(self) -> None:
        self.sessions: list[Any] = []

    async def on_initialized(self, ctx: Any, params: NotificationParams) -> None:
        self.sessions.append(ctx.session)

    async def tools_changed(self) -> int:
        delivered = 0
        for session in list(self.sessions):
            try:
                with anyio.fail_after(2):
                    await session.send_tool_list_changed()
                delivered += 1
            except Exception:  # noqa: BLE001 - a closed session just stops receiving
                self.sessions.remove(session)
        return delivered


def _dynamic_tool(name: str) -> Any:
    def tool() -> str:
        return f"{name} called"

    tool.__name__ = name
    tool.__doc__ = f"A tool named {name}, added while the server runs."
    return tool


def create_server(name: str = "demo", extra_tools: Sequence[str] = ()) -> MCPServer[Any]:
    """Build the demo server; `name` only changes the server info, never tool names."""
    mcp: MCPServer[Any] = MCPServer(
        name,
        version="1.0.0",
        instructions="Demo upstream for mcp-hub tests.",
        log_level="WARNING",
    )
    sessions = _Sessions()

    @mcp.tool(structured_output=False)
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool()
    def add(a: int, b: int) -> AddResult:
        """Add two integers; the result is structured content."""
        return AddResult(sum=a + b)

    @mcp.tool()
    def tiny_image() -> Image:
        """Return a 1x1 red PNG."""
        return Image(data=tiny_png(), format="png")

    @mcp.tool(structured_output=False)
    async def slow(seconds: float) -> str:
        """Sleep for the given number of seconds, then answer."""
        await anyio.sleep(seconds)
        return f"slept {seconds}s"

    @mcp.tool(structured_output=False)
    async def progress(steps: int, ctx: Context[Any, Any]) -> str:
        """Send one progress notification per step."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}/{steps}")
            await anyio.sleep(0.01)
        return f"done {steps} steps"

    @mcp.tool(structured_output=False)
    async def ask_llm(
        prompt: str, sampled: Annotated[CreateMessageResult, Resolve(_sampling_request)]
    ) -> str:
        """Ask the client's LLM (sampling) and return what it said."""
        content = sampled.content
        return content.text if isinstance(content, TextContent) else json.dumps(content.model_dump(mode="json"))

    @mcp.tool(structured_output=False)
    async def ask_user(
        question: str, reply: Annotated[ElicitationResult[UserAnswer], Resolve(_elicitation_request)]
    ) -> str:
        """Ask the user a question (form elicitation) and return the answer."""
        if isinstance(reply, AcceptedElicitation):
            return reply.data.answer
        return f"user chose {reply.action}"

    @mcp.tool()
    async def list_client_roots(roots: Annotated[ListRootsResult, Resolve(_roots_request)]) -> list[str]:
        """Ask the client for its roots and return their URIs."""
        return [str(root.uri) for root in roots.roots]

    @mcp.tool(structured_output=False)
    async def log_message(text: str, ctx: Context[Any, Any], level: LoggingLevel = "info") -> str:
        """Send a log notification (notifications/message) with the text."""
        await ctx.log(level, text, logger_name="demo")
        return f"logged at {level}"

    @mcp.tool(structured_output=False)
    def crash() -> str:
        """Exit the server process at once, as a crash would."""
        sys.stderr.flush()
        os._exit(3)

    @mcp.tool(structured_output=False)
    def big(n_bytes: int) -> str:
        """Return a text of exactly n_bytes ASCII bytes."""
        pattern = "0123456789abcdef"
        return (pattern * (n_bytes // len(pattern) + 1))[:n_bytes]

    @mcp.tool(structured_output=False)
    async def add_tool(name: str, ctx: Context[Any, Any]) -> str:
        """Register a new tool at runtime and notify clients (notifications/tools/list_changed)."""
        if not TOOL_NAME.match(name):
            raise ValueError(f"invalid tool name {name!r}")
        mcp.add_tool(_dynamic_tool(name), name=name, structured_output=False)
        delivered = await sessions.tools_changed()
        await ctx.notify_tools_changed()  # why: 2026-07-28 clients hear it on subscriptions/listen
        return f"added {name}; notified {delivered} session(s)"

    for extra in extra_tools:
        mcp.add_tool(_dynamic_tool(extra), name=extra, structured_output=False)

    @mcp.resource("demo://readme", name="readme", description="What this server is", mime_type="text/markdown")
    def readme() -> str:
        return README

    @mcp.resource("demo://items/{id}", name="item", description="One item by id", mime_type="application/json")
    def item(id: str) -> str:  # noqa: A002 - the template variable is called id
        return json.dumps({"id": id, "name": f"item {id}"})

    @mcp.prompt()
    def greet(name: str) -> list[UserMessage]:
        """Greet someone by name."""
        return [UserMessage(f"Hello, {name}! Please greet {name} warmly.")]

    @mcp.completion()
    async def complete(ref: PromptReference | ResourceTemplateReference, argument: Any, context: Any) -> Completion:
        if argument.name == "name":
            candidates = NAMES
        elif argument.name == "id":
            candidates = ["1", "2", "3", "42"]
        else:
            candidates = []
        prefix = (argument.value or "").lower()
        values = [value for value in candidates if value.lower().startswith(prefix)]
        return Completion(values=values, total=len(values), has_more=False)

    mcp._lowlevel_server.add_notification_handler(  # noqa: SLF001 - no public hook for session start
        "notifications/initialized", NotificationParams, sessions.on_initialized
    )
    advertise_list_changed(mcp)
    return mcp


def main() -> None:
    parser = build_parser("Demo MCP server for mcp-hub tests", 3901)
    parser.add_argument("--name", default="demo", help="server name reported in serverInfo")
    parser.add_argument("--extra-tool", action="append", default=[], help="add a tool with this name at start")
    args = parser.parse_args()
    server = create_server(args.name, args.extra_tool)
    with contextlib.suppress(KeyboardInterrupt):
        serve(server, args)


if __name__ == "__main__":
    main()
