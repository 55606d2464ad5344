"""Upstream MCP servers that misbehave on purpose, for fault tests of the gateway.

    python -m tests.servers.faulty_server --mode hang      [--transport stdio|sse|streamable-http --port P]
    python -m tests.servers.faulty_server --mode slow      [--delay 2.0]
    python -m tests.servers.faulty_server --mode hang,slow,huge,flood   (modes combine, except malformed)
    python -m tests.servers.faulty_server --mode huge      (tool `huge(megabytes=50)`; add --json-response)
    python -m tests.servers.faulty_server --mode flood     (tools `flood`, `flood_forever`)
    python -m tests.servers.faulty_server --mode record --record FILE   (Streamable HTTP only)
    python -m tests.servers.faulty_server --mode malformed (stdio only: hand-written JSON-RPC)

Every mode serves `echo(text)`, answered at once, so a test can show that the healthy part of a
faulty upstream still answers. What each mode does:

- hang: `hang()` accepts the call and never answers it, not even after a cancellation.
- slow: `slow_echo(text)` waits `--delay` seconds before answering; `slow(seconds)` waits as long as asked.
- huge: `huge(megabytes)` answers with a text of that many MiB (50 by default).
- flood: `flood(count, kind)` sends `count` notifications (log | progress | list_changed |
  resource_updated) while the call is in flight; `flood_forever(kind)` keeps sending log or
  list_changed notifications, unsolicited, for as long as the process lives.
- record: appends every HTTP request body it receives to `--record FILE` (one JSON line per
  request), so a test can prove which requests reached the upstream; `strict(...)` has a
  constrained input schema.
- malformed: speaks JSON-RPC on stdio by hand and mixes garbage lines, wrong shapes, wrong JSON-RPC
  versions and responses to ids nobody asked for into every answer. Tools: `echo` (answers
  correctly after the garbage), `wrong_shape` (result of the wrong type), `not_object` (result is a
  string), `bad_error` (error object with a non-integer code), `wrong_id` (answers another id),
  `no_answer` (garbage only) and `bad_bytes` (a line that is not UTF-8, then a correct answer).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import sys
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import NotificationParams
from pydantic import Field

from tests.servers._common import TRANSPORTS, advertise_list_changed

# why: logging is deprecated in 2026-07-28 but flooding with log messages is the point here
warnings.filterwarnings("ignore", message=r"The .* capability is deprecated")

MODES = ("hang", "slow", "huge", "flood", "record", "malformed")
FloodKind = Literal["log", "progress", "list_changed", "resource_updated"]


# --- SDK-based modes ------------------------------------------------------------------------


class _Background:
    """A task group that lives as long as the server, and the sessions it can notify."""

    def __init__(self) -> None:
        self.tg: TaskGroup | None = None
        self.sessions: list[Any] = []

    async def on_initialized(self, ctx: Any, params: NotificationParams) -> None:
        self.sessions.append(ctx.session)


def _server(modes: set[str], delay: float, background: _Background) -> MCPServer[Any]:
    @contextlib.asynccontextmanager
    async def lifespan(server: MCPServer[Any]) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            background.tg = tg
            yield None
            tg.cancel_scope.cancel()

    name = "faulty-" + "-".join(sorted(modes))
    mcp: MCPServer[Any] = MCPServer(name, version="1.0.0", log_level="WARNING", lifespan=lifespan)

    @mcp.tool(structured_output=False)
    async def echo(text: str) -> str:
        """Return the text unchanged, at once."""
        return text

    if "hang" in modes:

        @mcp.tool(structured_output=False)
        async def hang() -> str:
            """Accept the call and never answer it."""
            # why: shielded, so the gateway's cancellation cannot turn the hang into an answer
            with anyio.CancelScope(shield=True):
                await anyio.sleep_forever()
            return "unreachable"

    if "slow" in modes:

        @mcp.tool(structured_output=False)
        async def slow_echo(text: str) -> str:
            """Return the text after --delay seconds."""
            await anyio.sleep(delay)
            return text

        @mcp.tool(structured_output=False)
        async def slow(seconds: float) -> str:
            """Wait the given number of seconds, then answer."""
            await anyio.sleep(seconds)
            return f"slept {seconds}s"

    if "huge" in modes:

        @mcp.tool(structured_output=False)
        def huge(megabytes: int = 50) -> str:
            """Answer with a text of `megabytes` MiB."""
            pattern = "0123456789abcdef" * 64  # 1 KiB
            return pattern * (1024 * megabytes)

    if "flood" in modes:

        @mcp.tool(structured_output=False)
        async def flood(count: int, ctx: Context[Any, Any], kind: FloodKind = "log") -> str:
            """Send `count` notifications of one kind while this call is in flight."""
            for i in range(count):
                if kind == "log":
                    await ctx.log("info", f"flood {i}", logger_name="flood")
                elif kind == "progress":
                    await ctx.report_progress(i + 1, count, f"flood {i}")
                elif kind == "list_changed":
                    await ctx.session.send_tool_list_changed()
                else:
                    await ctx.session.send_resource_updated("flood://nothing")
            return f"flooded {count} {kind}"

        @mcp.tool(structured_output=False)
        async def flood_forever(kind: Literal["log", "list_changed"] = "log") -> str:
            """Keep sending notifications to every session, unsolicited, until the process ends."""
            assert background.tg is not None
            background.tg.start_soon(_flood_sessions, background, kind)
            return f"flooding {kind}"

    if "record" in modes:

        @mcp.tool(structured_output=False)
        def strict(
            count: Annotated[int, Field(ge=0, le=100)],
            name: Annotated[str, Field(pattern=r"^[a-z]{1,16}$")],
            tags: Annotated[list[str], Field(max_length=3)],
        ) -> str:
            """A tool with a constrained input schema."""
            return f"{name}:{count}:{','.join(tags)}"

    mcp._lowlevel_server.add_notification_handler(  # noqa: SLF001 - no public hook for session start
        "notifications/initialized", NotificationParams, background.on_initialized
    )
    advertise_list_changed(mcp)
    return mcp


async def _flood_sessions(background: _Background, kind: str) -> None:
    sent = 0
    while True:
        for session in list(background.sessions):
            try:
                if kind == "log":
                    await session.send_log_message("info", f"unsolicited {sent}", "flood")
                else:
                    await session.send_tool_list_changed()
            except Exception:  # noqa: BLE001 - a closed session stops receiving
                background.sessions.remove(session)
            sent += 1
        # why: yields to the event loop so the server still answers calls while it floods
        await anyio.sleep(0.0005)


def _recording(app: Any, record: Path) -> Callable[..., Any]:
    """ASGI wrapper that appends every HTTP request body to `record` before the MCP app sees it."""

    async def wrapped(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        messages: list[dict[str, Any]] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if body:
            line = {"method": scope["method"], "body": body.decode("utf-8", errors="replace")}
            with record.open("a") as out:
                out.write(json.dumps(line) + "\n")

        async def replay() -> dict[str, Any]:
            return messages.pop(0) if messages else await receive()

        await app(scope, replay, send)

    return wrapped


def _serve_sdk(args: argparse.Namespace) -> None:
    background = _Background()
    server = _server(args.modes, args.delay, background)
    if "record" in args.modes:
        import uvicorn

        app = server.streamable_http_app(host=args.host)
        uvicorn.run(_recording(app, Path(args.record)), host=args.host, port=args.port, log_level="warning")
    elif args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        server.run("sse", host=args.host, port=args.port)
    else:
        server.run("streamable-http", host=args.host, port=args.port, json_response=args.json_response)


# --- malformed: JSON-RPC by hand on stdio ---------------------------------------------------

GARBAGE: list[bytes] = [
    b"this is not json",
    b'{"jsonrpc": "2.0"}',
    b"[1, 2, 3]",
    b'{"jsonrpc": "2.0", "id": 987654, "result": {}}',
    b'{"jsonrpc": "2.0", "id": "ghost", "error": {"code": -32000, "message": "nobody asked"}}',
    b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}',
    b'{"jsonrpc": "2.0", "method": 42}',
    b'{"jsonrpc": "2.0", "method": "notifications/unknown_thing", "params": {"x": 1}}',
    b'{"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "nope", "progress": "lots"}}',
    b"\x00\x01\x02 control bytes \x1b[31m",
    b'{"jsonrpc": "2.0", "id": 31337, "method": "sampling/createMessage", "params": "bogus"}',
    b"null",
    b"",
    b"{}",
    b'{"jsonrpc": "2.0", "id": null, "result": {}}',
    b'{"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "shouting", "data": 1}}',
    b"{" * 5000,
    b'"' + b"x" * 200_000 + b'"',
    base64.b64encode(bytes(range(256)) * 64),
]

_TOOLS = [
    {"name": name, "description": what, "inputSchema": {"type": "object", "properties": props}}
    for name, what, props in [
        ("echo", "Return the text unchanged.", {"text": {"type": "string"}}),
        ("wrong_shape", "Answers with content that is not a list.", {}),
        ("not_object", "Answers with a result that is a string.", {}),
        ("bad_error", "Answers with an error whose code is not an integer.", {}),
        ("wrong_id", "Answers a request id nobody sent.", {}),
        ("no_answer", "Answers with garbage only.", {}),
        ("bad_bytes", "Answers correctly after a line that is not UTF-8.", {}),
    ]
]


class _Malformed:
    """A stdio JSON-RPC speaker that wraps every answer in garbage."""

    def __init__(self) -> None:
        self.out = sys.stdout.buffer
        self.cursor = 0

    def write(self, line: bytes) -> None:
        self.out.write(line.replace(b"\n", b" ") + b"\n")
        self.out.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message).encode())

    def garbage(self, n: int = 3) -> None:
        for _ in range(n):
            self.write(GARBAGE[self.cursor % len(GARBAGE)])
            self.cursor += 1

    def answer(self, msg: dict[str, Any]) -> None:
        method, rid = msg.get("method"), msg.get("id")
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        if rid is None:
            return  # notifications (initialized, cancelled) need no answer
        self.garbage()
        if method == "initialize":
            version = params.get("protocolVersion", "2025-06-18")
            self.send({"jsonrpc": "2.0", "id": rid, "result": {
                "protocolVersion": version if isinstance(version, str) else "2025-06-18",
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "faulty-malformed", "version": "1.0.0"},
            }})
        elif method == "ping":
            self.send({"jsonrpc": "2.0", "id": rid, "result": {}})
        elif method == "tools/list":
            self.send({"jsonrpc": "2.0", "id": rid, "result": {"tools": _TOOLS}})
        elif method == "tools/call":
            self.call(rid, str(params.get("name")), params.get("arguments") or {})
        else:
            self.send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"no method {method}"}})

    def call(self, rid: Any, name: str, arguments: dict[str, Any]) -> None:
        if name == "echo":
            text = str(arguments.get("text", ""))
            self.send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": text}]}})
        elif name == "wrong_shape":
            self.send({"jsonrpc": "2.0", "id": rid, "result": {"content": "not a list", "isError": "maybe"}})
        elif name == "not_object":
            self.send({"jsonrpc": "2.0", "id": rid, "result": "a string where an object belongs"})
        elif name == "bad_error":
            self.send({"jsonrpc": "2.0", "id": rid, "error": {"code": "eleven", "message": ["not", "text"]}})
        elif name == "wrong_id":
            other = rid + 100_000 if isinstance(rid, int) else f"{rid}-other"
            self.send({"jsonrpc": "2.0", "id": other, "result": {"content": []}})
        elif name == "no_answer":
            self.garbage(len(GARBAGE))
        elif name == "bad_bytes":
            self.write(b"\xff\xfe\xc3\x28 not utf-8")
            self.send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": "after bytes"}]}})
        else:
            self.send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"Unknown tool: {name}"}})

    def run(self) -> None:
        for raw in sys.stdin.buffer:
            try:
                msg = json.loads(raw)
            except ValueError:
                self.garbage(1)
                continue
            if isinstance(msg, dict):
                self.answer(msg)


def main() -> None:
    parser = argparse.ArgumentParser(description="Misbehaving MCP servers for mcp-hub fault tests")
    parser.add_argument("--mode", required=True, help=f"one of {', '.join(MODES)}, or several joined by commas")
    parser.add_argument("--transport", choices=TRANSPORTS, default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3911)
    parser.add_argument("--delay", type=float, default=2.0, help="slow mode: seconds before every answer")
    parser.add_argument("--record", help="record mode: file that receives every request body")
    parser.add_argument("--json-response", action="store_true", help="Streamable HTTP answers in JSON, not SSE")
    args = parser.parse_args()
    args.modes = set(args.mode.split(","))
    if not args.modes <= set(MODES):
        parser.error(f"unknown mode in {args.mode!r}; modes: {', '.join(MODES)}")
    if "malformed" in args.modes:
        if args.modes != {"malformed"}:
            parser.error("malformed mode cannot be combined")
        if args.transport != "stdio":
            parser.error("malformed mode speaks stdio only")
        with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
            _Malformed().run()
        return
    if "record" in args.modes and not args.record:
        parser.error("record mode needs --record FILE")
    with contextlib.suppress(KeyboardInterrupt):
        _serve_sdk(args)


if __name__ == "__main__":
    main()
