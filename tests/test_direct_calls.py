"""The direct call path (fastpath.py, upstreams/direct.py, upstreams/wire.py) against real processes.

Two gateways in front of the same demo server (2026-07-28 over Streamable HTTP): one with the direct
path (the default), one with `listen.direct_calls: false`. Every call a handshake-era client can make
must come back the same from both, and the first gateway's own count proves it took the direct path.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_hub.upstreams.wire import Pool, WireError
from tests.support.gateway import RunningGateway, run_gateway, wait_until
from tests.support.processes import running, wait_for_port
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request
from tests.support.tools import ROOT, free_port


def _demo(port: int, tmp: Path, name: str) -> Any:
    args = [sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http",
            "--port", str(port), "--name", name]
    return running(args, cwd=ROOT, log=tmp / f"{name}.log")


@pytest.fixture(scope="module", params=["auto", "legacy"], ids=["modern-upstream", "handshake-upstream"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The demo upstream spoken to in 2026-07-28 (protocol: auto) or on a handshake-era session (legacy), by
    callers of either era (match_caller_era off: the bridges between eras are what these tests exercise)."""
    tmp = tmp_path_factory.mktemp("direct")
    port = free_port()
    with _demo(port, tmp, "up") as proc:
        wait_for_port(port, proc=proc)
        upstream = {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp", "call_timeout": 3,
                    "protocol": request.param, "match_caller_era": False}
        policy = {"default_acl": "allow", "groups": {}, "consumers": {}}
        fast_cfg = {"upstreams": {"up": upstream}, **policy}
        sdk_cfg = {"upstreams": {"up": upstream}, "listen": {"direct_calls": False}, **policy}
        with run_gateway(fast_cfg, tmp, wait_healthy=True, name="fast") as fast, \
                run_gateway(sdk_cfg, tmp, wait_healthy=True, name="sdk") as sdk:
            yield {"fast": fast, "sdk": sdk, "port": port, "tmp": tmp, "upstream": request.param}


def _route(pair: dict[str, Any], mode: str) -> str:
    """Which entry frames a call of a caller of `mode`: the direct entry, for every upstream era (there is one
    call path behind both entries, so it no longer hands any tools/call it can frame to the SDK's)."""
    return "served"


def _served(gw: RunningGateway, what: str = "served") -> int:
    """Calls the gateway served on its direct path (or, what="handed_to_sdk", left to the SDK path)."""
    return int(gw.health()["direct_calls"][what])


async def _outcome(url: str, tool: str, arguments: dict[str, Any], mode: str = "legacy", **kwargs: Any) -> Any:
    """A call's result (as JSON) or its error (code, message), from an SDK client of that mode."""
    async with Client(url, mode=mode, **kwargs) as client:
        await client.list_tools()
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            return ("error", exc.error.code, exc.error.message)
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)


CALLS = [
    ("up__echo", {"text": "héllo"}),
    ("up__add", {"a": 2, "b": 40}),
    ("up__tiny_image", {}),
    ("up__big", {"n_bytes": 300_000}),
    ("up__echo", {"text": 5}),  # invalid arguments: refused before the upstream
    ("up__nope", {}),  # unknown tool
]


async def _outcomes(client: Client, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Each call's result (as JSON) or its error (code, message), in order, on one session."""
    out: list[Any] = []
    for tool, arguments in calls:
        try:
            result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            out.append(("error", exc.error.code, exc.error.message))
        else:
            out.append(result.model_dump(mode="json", by_alias=True, exclude_none=True))
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_same_answers_on_both_paths(pair: dict[str, Any], mode: str) -> None:
    """legacy: a handshake-era caller on a stateful session; auto: a 2026-07-28 caller (self-contained requests).
    Text, structured content, an image, a 300 kB result, invalid arguments and an unknown tool."""
    counter = _route(pair, mode)
    before = (_served(pair["fast"], counter), _served(pair["fast"], "handed_to_sdk"))
    async with Client(pair["fast"].mcp, mode=mode) as fast, Client(pair["sdk"].mcp, mode=mode) as sdk:
        await fast.list_tools()
        await sdk.list_tools()
        assert await _outcomes(fast, CALLS) == await _outcomes(sdk, CALLS)
    # every call took `counter`'s entry, the unknown name too: a counter must not tell a missing tool from
    # a hidden one
    assert _served(pair["fast"], counter) == before[0] + len(CALLS)
    assert _served(pair["fast"], "handed_to_sdk") == before[1]
    assert _served(pair["sdk"]) == 0


async def test_structured_output_and_image_are_kept(pair: dict[str, Any]) -> None:
    async with Client(pair["fast"].mcp, mode="legacy") as client:
        await client.list_tools()
        added = await client.call_tool("up__add", {"a": 2, "b": 40})
        assert added.structured_content == {"sum": 42}
        image = await client.call_tool("up__tiny_image", {})
        assert isinstance(image.content[0], types.ImageContent)
        assert image.content[0].mime_type == "image/png"


async def test_modern_caller_progress_streams_on_the_call(pair: dict[str, Any]) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    counter = _route(pair, "auto")
    before = _served(pair["fast"], counter)
    async with Client(pair["fast"].mcp, mode="auto") as client:
        r = await client.call_tool("up__progress", {"steps": 3}, progress_callback=on_progress)
        assert r.content[0].text == "done 3 steps"
    assert progress == [1, 2, 3]
    assert _served(pair["fast"], counter) == before + 1


async def test_progress_and_logs_stream_on_the_call(pair: dict[str, Any]) -> None:
    progress: list[float] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    before = _served(pair["fast"])
    async with Client(pair["fast"].mcp, mode="legacy", logging_callback=on_log) as client:
        await client.list_tools()
        r = await client.call_tool("up__progress", {"steps": 3}, progress_callback=on_progress)
        assert r.content[0].text == "done 3 steps"
        r = await client.call_tool("up__log_message", {"text": "from upstream", "level": "warning"})
        assert r.content[0].text
    assert progress == [1, 2, 3]
    assert "from upstream" in json.dumps(logs)
    assert _served(pair["fast"]) >= before + 2


async def test_log_level_of_the_session_is_respected(pair: dict[str, Any]) -> None:
    logs: list[Any] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params.data)

    async with Client(pair["fast"].mcp, mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("error")
        await client.call_tool("up__log_message", {"text": "too chatty", "level": "info"})
        await client.call_tool("up__log_message", {"text": "serious", "level": "error"})
    assert "too chatty" not in json.dumps(logs)
    assert "serious" in json.dumps(logs)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_upstream_questions_are_put_to_the_caller(pair: dict[str, Any], mode: str) -> None:
    """A 2026-07-28 upstream's input_required rounds reach the caller: as sampling/elicitation/roots requests on
    the call's stream for a handshake-era session (answers POSTed back on it), as the gateway's own
    InputRequiredResult rounds for a 2026-07-28 caller."""

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="forty-two"), model="m"
        )

    async def elicitation(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "blue"})

    async def roots(ctx: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/repo", name="repo")])

    counter = _route(pair, mode)
    before = _served(pair["fast"], counter)
    async with Client(pair["fast"].mcp, mode=mode, sampling_callback=sampling,
                      elicitation_callback=elicitation, list_roots_callback=roots) as client:
        await client.list_tools()
        assert (await client.call_tool("up__ask_llm", {"prompt": "meaning?"})).content[0].text == "forty-two"
        assert (await client.call_tool("up__ask_user", {"question": "colour?"})).content[0].text == "blue"
        listed = await client.call_tool("up__list_client_roots", {})
        assert "file:///work/repo" in json.dumps(listed.model_dump(mode="json"))
    assert _served(pair["fast"], counter) >= before + 3


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_caller_without_the_capability_gets_the_same_error(pair: dict[str, Any], mode: str) -> None:
    fast = await _outcome(pair["fast"].mcp, "up__ask_llm", {"prompt": "x"}, mode)
    sdk = await _outcome(pair["sdk"].mcp, "up__ask_llm", {"prompt": "x"}, mode)
    assert fast == sdk
    assert fast[0] == "error" or fast.get("isError")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_slow_upstream_times_out_clearly(pair: dict[str, Any], mode: str) -> None:
    outcome = await _outcome(pair["fast"].mcp, "up__slow", {"seconds": 10}, mode)
    if _route(pair, mode) == "served":
        assert outcome["isError"]
        assert "did not answer tools/call slow within 3s" in outcome["content"][0]["text"]
    else:  # the SDK path's relay (a 2026-07-28 caller of a handshake-era upstream) says it its own way
        assert outcome == ("error", types.INTERNAL_ERROR, "tool up__slow timed out")
    still = await _outcome(pair["fast"].mcp, "up__echo", {"text": "still fine"}, mode)
    assert still["content"] == [{"type": "text", "text": "still fine"}]


async def test_cancelled_call_ends_upstream_request_and_is_audited(pair: dict[str, Any]) -> None:
    fast: RunningGateway = pair["fast"]
    async with Client(fast.mcp, mode="legacy") as client:
        await client.list_tools()
        with anyio.move_on_after(0.5):
            await client.call_tool("up__slow", {"seconds": 2.5})
        # the session goes on, and the gateway recorded the call as cancelled
        assert (await client.call_tool("up__echo", {"text": "after"})).content[0].text == "after"
    wait_until(lambda: '"outcome": "cancelled"' in fast.log_text(), timeout=10)


def test_raw_http_answers_of_both_paths(pair: dict[str, Any]) -> None:
    """The session id, the request's own id, no 2026-07-28 fields. The SDK transport always streams SSE; the
    direct path answers JSON (read to its end, so the caller's HTTP client keeps its connection) unless
    something is streamed before the answer, then SSE."""
    for gw in (pair["fast"], pair["sdk"]):
        with httpx2.Client(timeout=10) as http:
            init = http.post(gw.mcp, json=initialize_request("2025-11-25"), headers=MCP_HEADERS)
            session = init.headers["mcp-session-id"]
            headers = {**MCP_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
            http.post(gw.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            for n in range(3):
                call = {"jsonrpc": "2.0", "id": f"abc{n}", "method": "tools/call",
                        "params": {"name": "up__echo", "arguments": {"text": "x"}, "_meta": {"progressToken": "t"}}}
                response = http.post(gw.mcp, json=call, headers=headers)
                assert response.status_code == 200
                assert response.headers["mcp-session-id"] == session
                expected = "application/json" if gw is pair["fast"] else "text/event-stream"
                assert response.headers["content-type"].startswith(expected)
                answer = answer_of(response, f"abc{n}")
                assert answer["result"]["content"] == [{"type": "text", "text": "x"}]
                assert "resultType" not in answer["result"]  # a 2026-07-28 field, not for this caller
            # progress before the answer: SSE on either path, the notifications first
            call = {"jsonrpc": "2.0", "id": "p", "method": "tools/call",
                    "params": {"name": "up__progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "t"}}}
            response = http.post(gw.mcp, json=call, headers=headers)
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.text.count('"notifications/progress"') == 2
            assert answer_of(response, "p")["result"]["content"][0]["text"] == "done 2 steps"
            # a session that does not exist is the SDK's 404, whichever path
            gone = http.post(gw.mcp, json=call, headers={**headers, "mcp-session-id": "f" * 32})
            assert gone.status_code == 404


def test_upstream_killed_mid_call_then_back(tmp_path: Path) -> None:
    port = free_port()
    config = {"upstreams": {"flaky": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp",
                                      "health_interval": 0.5}}}

    async def call(url: str, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        async with Client(url, mode="legacy") as client:
            return await client.call_tool(tool, arguments)

    with run_gateway(config, tmp_path, wait_healthy=False) as gw:
        with _demo(port, tmp_path, "flaky") as proc:
            wait_for_port(port, proc=proc)
            wait_until(lambda: gw.health()["upstreams"]["flaky"]["state"] == "up", timeout=30)
            assert anyio.run(call, gw.mcp, "flaky__echo", {"text": "a"}).content[0].text == "a"

            async def killed_mid_call() -> types.CallToolResult:
                async def kill() -> None:
                    await anyio.sleep(0.5)
                    proc.kill()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(kill)
                    return await call(gw.mcp, "flaky__slow", {"seconds": 5})

            r = anyio.run(killed_mid_call)
            # "closed the connection during tools/call slow" (killed mid-call; worded as on the SDK path), or
            # "failed during tools/call slow: cannot connect" when a slow start let the kill come first
            assert r.is_error and r.content[0].text.startswith("upstream 'flaky' "), r
            assert "during tools/call slow" in r.content[0].text
        with _demo(port, tmp_path, "flaky-again") as again:
            wait_for_port(port, proc=again)
            wait_until(lambda: gw.health()["upstreams"]["flaky"]["state"] == "up", timeout=30)
            assert anyio.run(call, gw.mcp, "flaky__echo", {"text": "b"}).content[0].text == "b"
            assert _served(gw) >= 3


# -- the lean HTTP client against a real server ------------------------------------------------------


async def _serve_http(handler: Any) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def test_wire_pool_reuses_and_survives_a_closed_keepalive() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers two requests per connection (chunked), then takes a third and closes without answering:
        the keep-alive race, where the server drops a connection the client is reusing."""
        nonlocal connections
        connections += 1
        for served in range(3):
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            if served == 2:
                break
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n"
                         + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            await writer.drain()
        writer.close()

    server, port = await _serve_http(handler)
    async with server:
        pool = Pool(f"http://127.0.0.1:{port}/mcp", keepalive_expiry=30)
        assert await (await pool.post(b"one", {})).read() == b"one"
        assert await (await pool.post(b"two", {})).read() == b"two"
        assert connections == 1  # the second request reused the first connection
        assert await (await pool.post(b"three", {})).read() == b"three"
        assert connections == 2  # dropped unanswered: sent again on a fresh connection
        pool.close()


async def test_wire_pool_caps_connections_in_use() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                break
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()
        writer.close()

    server, port = await _serve_http(echo)
    async with server:
        pool = Pool(f"http://127.0.0.1:{port}/mcp", max_connections=1)
        first = await pool.post(b"a", {})
        waiting = asyncio.ensure_future(pool.post(b"b", {}))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the only connection is in use
        assert await first.read() == b"a"  # read to its end: the connection comes back
        second = await asyncio.wait_for(waiting, 5)
        assert await second.read() == b"b"
        pool.close()


async def test_wire_pool_closes_idle_connections_after_the_expiry() -> None:
    closed = asyncio.Event()

    async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        if not await reader.read(1):  # the client closed the idle connection
            closed.set()
        writer.close()

    server, port = await _serve_http(echo_once)
    async with server:
        pool = Pool(f"http://127.0.0.1:{port}/mcp", keepalive_expiry=0.2)
        assert await (await pool.post(b"x", {})).read() == b"x"
        assert len(pool._idle) == 1
        await asyncio.wait_for(closed.wait(), 5)  # no further request came: the sweep closed it
        assert pool._idle == []


async def test_wire_pool_reports_refused_and_broken_answers() -> None:
    pool = Pool(f"http://127.0.0.1:{free_port()}/mcp")
    with pytest.raises(WireError, match="cannot connect"):
        await pool.post(b"{}", {})

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort")
        await writer.drain()
        writer.close()

    server, port = await _serve_http(broken)
    async with server:
        response = await Pool(f"http://127.0.0.1:{port}/mcp").post(b"{}", {})
        with pytest.raises(WireError, match="broke off"):
            await response.read()
    with pytest.raises(WireError, match="line break"):
        await Pool("http://127.0.0.1:1/mcp").post(b"{}", {"x-evil": "a\r\nhost: elsewhere"})


def test_wire_pool_leaves_proxied_urls_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Pool.usable("http://127.0.0.1:9/mcp")
    assert not Pool.usable("ftp://host/mcp")
    assert not Pool.usable("http://user:secret@host/mcp")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert not Pool.usable("https://api.example.com/mcp")
    assert Pool.usable("https://localhost/mcp")


async def test_stateless_route_serves_calls_directly(pair: dict[str, Any]) -> None:
    """listen.stateless: no session to check, no back channel; calls and progress work as on the SDK path."""
    upstream = {"transport": "streamable-http", "url": f"http://127.0.0.1:{pair['port']}/mcp",
                "protocol": pair["upstream"], "match_caller_era": False}
    with run_gateway({"upstreams": {"up": upstream}, "listen": {"stateless": True}}, pair["tmp"],
                     wait_healthy=True, name="stateless") as gw:
        progress: list[float] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        async with Client(gw.mcp, mode="legacy") as client:
            await client.list_tools()
            assert (await client.call_tool("up__echo", {"text": "s"})).content[0].text == "s"
            r = await client.call_tool("up__progress", {"steps": 2}, progress_callback=on_progress)
            assert r.content[0].text == "done 2 steps"
            asked = await _outcome(gw.mcp, "up__ask_llm", {"prompt": "x"})
        assert progress == [1, 2]
        assert _served(gw) >= 3
        # no back channel on a stateless route: the same refusal as the SDK path gives
        assert asked == await _outcome(pair["sdk"].mcp, "up__ask_llm", {"prompt": "x"})


def test_modern_raw_requests_match_the_sdk_entry(pair: dict[str, Any]) -> None:
    """2026-07-28 requests over plain HTTP: the same status and JSON-RPC answer from both paths, for a good call,
    a refused one (400 from the spec's code-to-status table) and one whose routing header lies."""
    envelope = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}

    def exchange(gw: RunningGateway, arguments: dict[str, Any], name_header: str) -> tuple[int, dict[str, Any]]:
        headers = {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                   "mcp-name": name_header}
        body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "up__echo", "arguments": arguments, "_meta": envelope}}
        response = httpx2.post(gw.mcp, json=body, headers=headers, timeout=10)
        return response.status_code, answer_of(response, 7)

    for arguments, name_header, status in (({"text": "m"}, "up__echo", 200), ({"text": 1}, "up__echo", 400),
                                           ({"text": "m"}, "up__other", 400)):
        fast = exchange(pair["fast"], arguments, name_header)
        sdk = exchange(pair["sdk"], arguments, name_header)
        assert fast == sdk
        assert fast[0] == status
    assert fast[1]["error"]["code"] == types.HEADER_MISMATCH


def _start_probe_call(gw: RunningGateway, era: str, seconds: float, http: httpx2.Client) -> tuple[socket.socket, dict[str, str]]:
    """A raw tools/call of probe__wait on its own connection (left open); the session headers used."""
    headers = {**MCP_HEADERS, "mcp-protocol-version": era}
    params: dict[str, Any] = {"name": "probe__wait", "arguments": {"seconds": seconds}}
    if era == "2026-07-28":
        headers.update({"mcp-method": "tools/call", "mcp-name": "probe__wait"})
        params["_meta"] = {"io.modelcontextprotocol/protocolVersion": era,
                           "io.modelcontextprotocol/clientCapabilities": {}}
    else:
        init = http.post(gw.mcp, json=initialize_request(era), headers=MCP_HEADERS)
        headers["mcp-session-id"] = init.headers["mcp-session-id"]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    caller = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    caller.sendall(f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\n{head}"
                   f"content-length: {len(body)}\r\n\r\n".encode() + body)
    return caller, headers


@pytest.fixture
def probe(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """cancel_probe over Streamable HTTP: its marker file and port."""
    marker, port = tmp_path / "marker", free_port()
    args = [sys.executable, "-m", "tests.servers.cancel_probe", str(marker), str(port)]
    with running(args, cwd=ROOT, log=tmp_path / "probe.log") as proc:
        wait_for_port(port, proc=proc)
        yield marker, port


@pytest.mark.parametrize("upstream_protocol", ["auto", "legacy"])
@pytest.mark.parametrize("era", ["2025-11-25", "2026-07-28"])
def test_cancellation_reaches_the_upstream(
    tmp_path: Path, probe: tuple[Path, int], era: str, upstream_protocol: str
) -> None:
    """A caller cancels mid-call (2026-07-28: by closing its request; handshake era: notifications/cancelled on
    its session): the upstream's handler sees the cancellation (the request closed for a 2026-07-28 upstream,
    notifications/cancelled on a handshake-era session) and the call is recorded as cancelled."""
    marker, port = probe
    config = {"upstreams": {"probe": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp",
                                      "protocol": upstream_protocol, "match_caller_era": False}}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw, httpx2.Client(timeout=10) as http:
        caller, headers = _start_probe_call(gw, era, 30, http)
        with caller:
            wait_until(lambda: marker.exists() and marker.read_text() == "started", timeout=10)
            if era != "2026-07-28":
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
                assert http.post(gw.mcp, json=cancel, headers=headers).status_code == 202
        wait_until(lambda: marker.read_text() == "cancelled", timeout=10)
        wait_until(lambda: '"outcome": "cancelled"' in gw.log_text(), timeout=10)
        assert gw.health()["direct_calls"]["served"] == 1  # the direct entry frames it, whatever the eras


def test_handshake_caller_disconnect_is_not_a_cancellation(tmp_path: Path, probe: tuple[Path, int]) -> None:
    """The handshake-era transport says a dropped connection is not a cancellation: the call runs to its end
    (and is charged), as on the SDK path."""
    marker, port = probe
    config = {"upstreams": {"probe": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw, httpx2.Client(timeout=10) as http:
        caller, _ = _start_probe_call(gw, "2025-11-25", 1.5, http)
        with caller:
            wait_until(lambda: marker.exists() and marker.read_text() == "started", timeout=10)
        wait_until(lambda: marker.read_text() == "finished", timeout=10)
        wait_until(lambda: '"outcome": "ok"' in gw.log_text(), timeout=10)
        assert gw.health()["direct_calls"]["served"] == 1


async def test_silent_modern_call_is_kept_alive_with_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2026-07-28 reply waits for the answer; a call silent past the ping interval commits to SSE and pings."""
    from mcp_hub.transport import direct as fastpath

    monkeypatch.setattr(fastpath, "PING_INTERVAL", 0.05)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    reply = fastpath._Reply(send, None, None)
    with anyio.CancelScope() as scope:
        watch = fastpath._DisconnectWatch(receive, scope, reply, after=0.01)
        await anyio.sleep(0.2)
        watch.close()
    await reply.finish({"jsonrpc": "2.0", "id": 1, "result": {"content": []}})
    assert sent[0]["type"] == "http.response.start" and (b"content-type", b"text/event-stream") in sent[0]["headers"]
    pings = [m for m in sent[1:-1] if m.get("body") == b": ping\r\n\r\n"]
    assert len(pings) >= 2
    assert sent[-1]["body"].startswith(b"event: message\r\ndata: ") and sent[-1]["more_body"] is False


async def test_another_credential_cannot_steer_a_sessions_call(tmp_path: Path, pair: dict[str, Any]) -> None:
    """A session belongs to the credential that opened it: another caller holding its id can neither cancel its
    call nor answer the questions put to it (the SDK refuses that caller's requests with 404; the direct path
    takes nothing from them)."""
    from mcp_hub.auth.keys import new_api_key

    (alice, alice_sha), (bob, bob_sha) = new_api_key(), new_api_key()
    upstream = {"transport": "streamable-http", "url": f"http://127.0.0.1:{pair['port']}/mcp",
                "protocol": pair["upstream"], "match_caller_era": False}
    config = {"upstreams": {"up": upstream},
              "auth": {"mode": "api_key", "api_keys": [{"consumer": "alice", "sha256": alice_sha},
                                                       {"consumer": "bob", "sha256": bob_sha}]}}
    with run_gateway(config, tmp_path, wait_healthy=True, name="owners") as gw:
        async with httpx2.AsyncClient(timeout=20) as http:
            as_alice = {**MCP_HEADERS, "authorization": f"Bearer {alice}"}
            init = await http.post(gw.mcp, json=initialize_request("2025-11-25"), headers=as_alice)
            session = {"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
            as_bob = {**MCP_HEADERS, "authorization": f"Bearer {bob}", **session}
            call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                    "params": {"name": "up__slow", "arguments": {"seconds": 1}}}
            cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
            answers: list[httpx2.Response] = []

            async def alice_calls() -> None:
                answers.append(await http.post(gw.mcp, json=call, headers={**as_alice, **session}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(alice_calls)
                await anyio.sleep(0.3)
                assert (await http.post(gw.mcp, json=cancel, headers=as_bob)).status_code == 404
            answer = answer_of(answers[0], 1)
            assert "result" in answer and not answer["result"].get("isError"), answer
        assert gw.health()["direct_calls"]["served"] == 1
        assert '"outcome": "cancelled"' not in gw.log_text()
