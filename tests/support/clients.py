"""Outside MCP clients driven against a URL: the MCP Inspector CLI, Claude Code, and the SDK's own client.

Each helper talks to whatever serves the URL (an upstream directly, or the gateway), so a test written
against a server works unchanged against the gateway's route.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.support.tools import ROOT, node22_env, npm_tool

Mode = Literal["legacy", "auto"]


# --- MCP Inspector CLI ----------------------------------------------------------------------


class InspectorError(RuntimeError):
    """The inspector exited non-zero (it could not connect, or the method failed at the protocol level)."""


def _inspector(url: str, method_args: list[str], headers: Mapping[str, str] | None, timeout: float) -> Any:
    transport = "sse" if urlsplit(url).path.rstrip("/").endswith("/sse") else "http"
    args = [npm_tool("mcp-inspector"), "--cli", url, "--transport", transport, *method_args]
    for name, value in (headers or {}).items():
        args += ["--header", f"{name}: {value}"]
    proc = subprocess.run(args, env=node22_env(), capture_output=True, text=True, timeout=timeout)
    # why: the deprecation banner and errors go to stderr; the result JSON is all of stdout
    if proc.returncode != 0:
        raise InspectorError(f"mcp-inspector exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise InspectorError(f"mcp-inspector printed no JSON: {proc.stdout!r} {proc.stderr!r}") from exc


def inspector_list_tools(url: str, headers: Mapping[str, str] | None = None, timeout: float = 60.0) -> list[dict]:
    """`mcp-inspector --cli URL --method tools/list`: the tools as JSON dicts (wire field names)."""
    return list(_inspector(url, ["--method", "tools/list"], headers, timeout)["tools"])


def inspector_call_tool(
    url: str,
    name: str,
    args: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> dict:
    """`mcp-inspector --cli URL --method tools/call`: the CallToolResult as a JSON dict.

    The exit code is 0 even when the result has `isError: true`: check `result.get("isError")`.
    """
    method_args = ["--method", "tools/call", "--tool-name", name]
    if args:
        # why: the CLI JSON-parses each value, so "42" would arrive as a number; JSON-encoding keeps types exact
        method_args += ["--tool-arg", *(f"{key}={json.dumps(value)}" for key, value in args.items())]
    return dict(_inspector(url, method_args, headers, timeout))


# --- Claude Code ----------------------------------------------------------------------------

_CLAUDE_STATUS = re.compile(r"^(?P<name>[\w.-]+): .* - (?P<status>.+)$")


def claude_mcp_list(
    url: str, headers: Mapping[str, str] | None = None, *, name: str = "hub", timeout: float = 90.0
) -> str:
    """Add URL to a throwaway Claude Code config and return what `claude mcp list` says about it.

    Returns "Connected", "Needs authentication", "Failed", or the raw status text for anything else.
    """
    claude = npm_tool("claude")
    with tempfile.TemporaryDirectory(prefix="claude-home-") as home:
        env = node22_env({
            "HOME": home,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "CLAUDE_CONFIG_DIR": f"{home}/.claude",
        })
        add = [claude, "mcp", "add", "--transport", "http", name, url]
        for header, value in (headers or {}).items():
            add += ["--header", f"{header}: {value}"]
        # why: the server is stored per project directory, so both commands run in the throwaway home
        subprocess.run(add, env=env, cwd=home, capture_output=True, text=True, timeout=timeout, check=True)
        listed = subprocess.run([claude, "mcp", "list"], env=env, cwd=home, capture_output=True, text=True,
                                timeout=timeout)
    return parse_claude_status(listed.stdout + listed.stderr, name)


def parse_claude_status(text: str, name: str = "hub") -> str:
    for line in text.splitlines():
        match = _CLAUDE_STATUS.match(line.strip())
        if not match or match["name"] != name:
            continue
        status = match["status"].strip()
        for known in ("Connected", "Needs authentication", "Failed"):
            if known in status:
                return known
        return status
    raise AssertionError(f"claude mcp list did not mention {name!r}:\n{text}")


# --- the SDK client -------------------------------------------------------------------------


@dataclass
class Recorder:
    """Canned answers for server-to-client requests, and a record of everything the server sent."""

    sampled_text: str = "sampled answer"
    elicited: dict[str, Any] = field(default_factory=lambda: {"answer": "elicited answer"})
    elicit_action: Literal["accept", "decline", "cancel"] = "accept"
    roots: list[str] = field(default_factory=lambda: ["file:///tmp/demo-root"])
    sampling_requests: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicitation_requests: list[types.ElicitRequestParams] = field(default_factory=list)
    roots_requests: int = 0
    logs: list[types.LoggingMessageNotificationParams] = field(default_factory=list)
    notifications: list[types.ServerNotification] = field(default_factory=list)
    _changed: anyio.Event | None = field(default=None, repr=False)

    async def wait_for(self, predicate: Callable[[Recorder], bool], seconds: float = 5.0) -> None:
        """Wait until `predicate(recorder)` holds; it is re-checked after each log or notification arrives."""
        with anyio.fail_after(seconds):
            while True:
                # why: created before the check, so a message that lands after the check still wakes us
                self._changed = anyio.Event()
                if predicate(self):
                    return
                await self._changed.wait()

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling_requests.append(params)
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=self.sampled_text),
            model="test-model",
            stop_reason="endTurn",
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation_requests.append(params)
        content = self.elicited if self.elicit_action == "accept" else None
        return types.ElicitResult(action=self.elicit_action, content=content)

    async def list_roots(self, context: Any) -> types.ListRootsResult:
        self.roots_requests += 1
        return types.ListRootsResult(roots=[types.Root(uri=uri) for uri in self.roots])  # type: ignore[arg-type]

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(params)
        self._wake()

    async def messages(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification):
            self.notifications.append(message)
            self._wake()


def stdio_target(module: str, *args: str, env: Mapping[str, str] | None = None) -> StdioServerParameters:
    """Parameters that start `python -m MODULE ARGS` from the repository root over stdio."""
    return StdioServerParameters(command=sys.executable, args=["-m", module, *args], cwd=str(ROOT),
                                 env=dict(env) if env is not None else None)


@contextlib.asynccontextmanager
async def sdk_session(
    target: str | StdioServerParameters,
    mode: Mode = "auto",
    *,
    headers: Mapping[str, str] | None = None,
    recorder: Recorder | None = None,
    log_level: types.LoggingLevel | None = "debug",
    read_timeout_seconds: float | None = 30.0,
) -> AsyncIterator[Client]:
    """A connected `mcp.Client` for a URL (`.../sse` means the SSE transport) or stdio parameters.

    `mode="legacy"` forces the initialize handshake; `mode="auto"` probes `server/discover` first and
    speaks 2026-07-28 when the server does. The `recorder` answers sampling, elicitation and roots and
    records logs and notifications; `log_level` opts in to log messages on 2026-07-28 connections.
    """
    recorder = recorder or Recorder()
    async with contextlib.AsyncExitStack() as stack:
        server: Any
        if isinstance(target, StdioServerParameters):
            server = target
        elif urlsplit(target).path.rstrip("/").endswith("/sse"):
            server = sse_client(target, headers=dict(headers or {}))
        else:
            http = await stack.enter_async_context(create_mcp_http_client(headers=dict(headers or {})))
            server = streamable_http_client(target, http_client=http)
        client = Client(
            server,
            mode=mode,
            sampling_callback=recorder.sampling,
            elicitation_callback=recorder.elicitation,
            list_roots_callback=recorder.list_roots,
            logging_callback=recorder.logging,
            message_handler=recorder.messages,
            log_level=log_level,
            read_timeout_seconds=read_timeout_seconds,
        )
        yield await stack.enter_async_context(client)


def bearer_client(url: str, token: str, mode: str = "legacy") -> Client:
    """An SDK client over Streamable HTTP that sends `Authorization: Bearer <token>` on every request."""
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode=mode)
