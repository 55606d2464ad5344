"""The gateway in front of real upstreams over real transports, driven by the SDK client."""

from __future__ import annotations

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

from tests.support.gateway import RunningGateway, python_server, run_gateway, wait_until
from tests.support.processes import running, stop, wait_for_port
from tests.support.tools import NPM_MODULES, ROOT, free_port, npm_tool

MODES = ["legacy", "auto"]


def demo_http(transport: str, port: int, tmp_path: Path, name: str = "demo") -> Any:
    args = [sys.executable, "-m", "tests.servers.demo_server", "--transport", transport, "--port", str(port),
            "--name", name]
    return running(args, cwd=ROOT, log=tmp_path / f"{name}-{transport}.log")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One gateway in front of: mcp-server-time and server-everything (stdio), the demo server over
    Streamable HTTP and over SSE, and the demo server over stdio."""
    tmp = tmp_path_factory.mktemp("stack")
    npm_tool("mcp-server-everything")
    http_port, sse_port = free_port(), free_port()
    with demo_http("streamable-http", http_port, tmp, "remote") as http_proc, \
            demo_http("sse", sse_port, tmp, "legacy-sse") as sse_proc:
        wait_for_port(http_port, proc=http_proc)
        wait_for_port(sse_port, proc=sse_proc)
        config = {
            "upstreams": {
                "time": {"transport": "stdio", "command": "mcp-server-time"},
                "everything": {
                    "transport": "stdio",
                    "command": npm_tool("mcp-server-everything"),
                    "args": ["stdio"],
                    "prefix": "ev",
                },
                "remote": {"transport": "streamable-http", "url": f"http://127.0.0.1:{http_port}/mcp",
                           "headers": {"X-Api-Key": "dev"}},
                "sse": {"transport": "sse", "url": f"http://127.0.0.1:{sse_port}/sse"},
                "local": {**python_server("tests.servers.demo_server", "--transport", "stdio"), "protocol": "legacy"},
            },
            "servers": [{"path": "/mcp/time", "upstreams": ["time"], "prefix": False}],
        }
        with run_gateway(config, tmp, wait_healthy=True) as gw:
            yield {"gw": gw, "http_port": http_port, "tmp": tmp}


async def _tools(url: str, mode: str = "legacy") -> list[str]:
    async with Client(url, mode=mode) as client:
        return [t.name for t in (await client.list_tools()).tools]


@pytest.mark.parametrize("mode", MODES)
async def test_merged_prefixed_catalog(stack: dict[str, Any], mode: str) -> None:
    gw: RunningGateway = stack["gw"]
    names = await _tools(gw.mcp, mode)
    for expected in ["time__get_current_time", "time__convert_time", "ev__echo", "ev__get-sum",
                     "remote__echo", "remote__add", "sse__echo", "local__echo"]:
        assert expected in names, f"{expected} missing from {names}"
    assert all(len(n) <= 64 for n in names)
    assert sorted(await _tools(f"{gw.url}/mcp/time", mode)) == ["convert_time", "get_current_time"]


@pytest.mark.parametrize("mode", MODES)
async def test_calls_return_upstream_results(stack: dict[str, Any], mode: str) -> None:
    gw: RunningGateway = stack["gw"]
    async with Client(gw.mcp, mode=mode) as client:
        await client.list_tools()
        r = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
        assert not r.is_error and "UTC" in r.content[0].text
        r = await client.call_tool("ev__get-sum", {"a": 2, "b": 3})
        assert "5" in r.content[0].text
        r = await client.call_tool("remote__add", {"a": 2, "b": 40})
        assert r.structured_content == {"sum": 42}
        r = await client.call_tool("sse__tiny_image", {})
        assert isinstance(r.content[0], types.ImageContent) and r.content[0].mime_type == "image/png"
        r = await client.call_tool("ev__get-tiny-image", {})
        assert any(isinstance(c, types.ImageContent) for c in r.content)


@pytest.mark.parametrize("mode", MODES)
async def test_resources_prompts_completion_round_trip(stack: dict[str, Any], mode: str) -> None:
    gw: RunningGateway = stack["gw"]
    async with Client(gw.mcp, mode=mode) as client:
        resources = await client.list_resources()
        uris = [str(r.uri) for r in resources.resources]
        # demo://readme is served by three upstreams: namespaced, never a silent winner
        hub = [u for u in uris if u.startswith("mcphub://") and u.endswith("demo%3A%2F%2Freadme")]
        assert len(hub) == 3, uris
        read = await client.read_resource(hub[0])
        assert "Demo server" in read.contents[0].text
        templates = await client.list_resource_templates()
        assert any(t.uri_template == "demo://items/{id}" for t in templates.resource_templates)
        prompts = [p.name for p in (await client.list_prompts()).prompts]
        assert "remote__greet" in prompts
        prompt = await client.get_prompt("remote__greet", {"name": "Ada"})
        assert "Ada" in prompt.messages[0].content.text
        done = await client.complete(types.PromptReference(type="ref/prompt", name="remote__greet"),
                                     {"name": "name", "value": "A"})
        assert "Alice" in done.completion.values


async def test_unknown_tool_and_bad_arguments_are_json_rpc_errors(stack: dict[str, Any]) -> None:
    gw: RunningGateway = stack["gw"]
    async with Client(gw.mcp, mode="legacy") as client:
        with pytest.raises(Exception, match="Unknown tool: nope__nothing"):
            await client.call_tool("nope__nothing", {})
        with pytest.raises(Exception, match="Invalid arguments for tool remote__add"):
            await client.call_tool("remote__add", {"a": "two", "b": 3})


@pytest.mark.parametrize("mode", MODES)
async def test_progress_reaches_the_client(stack: dict[str, Any], mode: str) -> None:
    gw: RunningGateway = stack["gw"]
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(gw.mcp, mode=mode) as client:
        await client.list_tools()
        r = await client.call_tool("remote__progress", {"steps": 4}, progress_callback=on_progress)
        assert r.content[0].text == "done 4 steps"
    assert [p for p, _, _ in seen] == [1, 2, 3, 4]
    assert seen[-1][1] == 4


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", ["local__ask_llm", "remote__ask_llm"])
async def test_sampling_and_elicitation_answered_by_the_caller(stack: dict[str, Any], tool: str, mode: str) -> None:
    """All four era pairs: local__ is a handshake-era upstream (requests mid-call), remote__ a 2026-07-28
    one (input_required rounds); a legacy caller answers requests mid-call, an auto (2026-07-28) caller
    answers the gateway's input_required rounds."""
    gw: RunningGateway = stack["gw"]
    prompts: list[str] = []

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompts.append(params.messages[0].content.text)
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text="forty-two"), model="test-model"
        )

    async def elicitation(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "blue"})

    async with Client(gw.mcp, mode=mode, sampling_callback=sampling, elicitation_callback=elicitation) as client:
        await client.list_tools()
        r = await client.call_tool(tool, {"prompt": "meaning of life?"})
        assert r.content[0].text == "forty-two", r
        assert prompts == ["meaning of life?"]
        r = await client.call_tool(tool.replace("ask_llm", "ask_user"), {"question": "favourite colour?"})
        assert r.content[0].text == "blue"


async def test_upstream_list_changed_reaches_clients(stack: dict[str, Any]) -> None:
    gw: RunningGateway = stack["gw"]
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with Client(gw.mcp, mode="legacy", message_handler=on_message) as client:
        await client.list_tools()
        await client.call_tool("local__add_tool", {"name": "fresh_tool"})
        with anyio.fail_after(10):
            await changed.wait()
        names = [t.name for t in (await client.list_tools()).tools]
        assert "local__fresh_tool" in names
        r = await client.call_tool("local__fresh_tool", {})
        assert r.content[0].text == "fresh_tool called"


def test_healthz_names_each_upstream(stack: dict[str, Any]) -> None:
    health = stack["gw"].health()
    assert set(health["upstreams"]) == {"time", "everything", "remote", "sse", "local"}
    assert all(u["state"] == "up" for u in health["upstreams"].values())


async def test_upstream_killed_and_back(tmp_path: Path) -> None:
    """Kill a Streamable HTTP upstream mid-session; its tools fail clearly, others work; it comes back."""
    port = free_port()
    config = {
        "upstreams": {
            "flaky": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp", "health_interval": 0.5},
            "steady": python_server("tests.servers.demo_server", "--transport", "stdio"),
        }
    }
    proc_cm = demo_http("streamable-http", port, tmp_path, "flaky")
    proc = proc_cm.__enter__()
    try:
        wait_for_port(port, proc=proc)
        with run_gateway(config, tmp_path, wait_healthy=True) as gw:
            async with Client(gw.mcp, mode="legacy") as client:
                assert (await client.call_tool("flaky__echo", {"text": "hi"})).content[0].text == "hi"
                stop(proc)
                r = await client.call_tool("flaky__echo", {"text": "hi"})
                assert r.is_error and "flaky" in r.content[0].text, r
                assert (await client.call_tool("steady__echo", {"text": "still"})).content[0].text == "still"
                wait_until(lambda: gw.health()["upstreams"]["flaky"]["state"] != "up", what="flaky marked down")
                r = await client.call_tool("flaky__echo", {"text": "hi"})
                assert r.is_error and "flaky" in r.content[0].text
                proc_cm2 = demo_http("streamable-http", port, tmp_path, "flaky2")
                with proc_cm2 as proc2:
                    wait_for_port(port, proc=proc2)
                    wait_until(lambda: gw.health()["upstreams"]["flaky"]["state"] == "up", timeout=30,
                               what="flaky back up")
                    assert (await client.call_tool("flaky__echo", {"text": "back"})).content[0].text == "back"
    finally:
        proc_cm.__exit__(None, None, None)


async def test_stdio_upstream_crash_restarts(tmp_path: Path) -> None:
    config = {"upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        async with Client(gw.mcp, mode="legacy") as client:
            r = await client.call_tool("demo__crash", {})
            assert r.is_error and "demo" in r.content[0].text
            wait_until(lambda: gw.health()["upstreams"]["demo"]["state"] == "up", timeout=30, what="respawn")
            assert (await client.call_tool("demo__echo", {"text": "again"})).content[0].text == "again"


async def test_gateway_starts_with_an_unreachable_upstream(tmp_path: Path) -> None:
    config = {
        "upstreams": {
            "gone": {"transport": "streamable-http", "url": f"http://127.0.0.1:{free_port()}/mcp"},
            "missing": {"transport": "stdio", "command": "/nonexistent/server"},
            "demo": python_server("tests.servers.demo_server", "--transport", "stdio"),
        }
    }
    with run_gateway(config, tmp_path) as gw:
        wait_until(lambda: gw.health()["upstreams"]["demo"]["state"] == "up", what="demo up")
        health = gw.health()
        assert health["status"] == "degraded"
        assert health["upstreams"]["missing"]["state"] != "up"
        assert "not found" in health["upstreams"]["missing"]["error"] or "No such file" in health["upstreams"][
            "missing"]["error"]
        names = await _tools(gw.mcp)
        assert "demo__echo" in names and not any(n.startswith("gone__") for n in names)


def test_issue_contract_config_verbatim(tmp_path: Path) -> None:
    """The config from the gateway-core contract, unchanged, with a server on port 9100."""
    contract = """
upstreams:
  time:
    transport: stdio
    command: mcp-server-time
  everything:
    transport: stdio
    command: npx
    args: ["-y", "@modelcontextprotocol/server-everything", "stdio"]
    prefix: ev
  remote:
    transport: streamable-http
    url: http://127.0.0.1:9100/mcp
    headers: {X-Api-Key: "${REMOTE_KEY:-dev}"}
servers:
  - path: /mcp/time
    upstreams: [time]
    prefix: false
"""
    if not (NPM_MODULES / "@modelcontextprotocol" / "server-everything").exists():
        npm_tool("mcp-server-everything")
    with demo_http("streamable-http", 9100, tmp_path, "remote9100") as proc:
        wait_for_port(9100, proc=proc)
        # npx finds the locally installed package when run from the tools folder
        with run_gateway(contract, tmp_path, cwd=NPM_MODULES.parent, wait_healthy=True) as gw:
            names = anyio.run(_tools, gw.mcp)
            for expected in ["time__get_current_time", "time__convert_time", "ev__echo", "ev__get-sum",
                             "remote__echo"]:
                assert expected in names
            assert sorted(anyio.run(_tools, f"{gw.url}/mcp/time")) == ["convert_time", "get_current_time"]


def test_check_command_names_the_key_path(tmp_path: Path) -> None:
    import subprocess

    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  time:\n    transport: carrier-pigeon\n    command: x\n")
    out = subprocess.run([sys.executable, "-m", "mcp_hub.cli", "check", str(bad)], capture_output=True, text=True)
    assert out.returncode == 2
    assert "upstreams.time.transport: must be one of stdio, sse, streamable-http" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text("upstreams:\n  time:\n    transport: stdio\n    command: mcp-server-time\n")
    out = subprocess.run([sys.executable, "-m", "mcp_hub.cli", "check", str(good)], capture_output=True, text=True)
    assert out.returncode == 0 and "valid" in out.stdout


def test_malformed_requests_get_json_rpc_errors(stack: dict[str, Any]) -> None:
    gw: RunningGateway = stack["gw"]
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    r = httpx2.post(gw.mcp, content=b"{not json", headers=headers, timeout=10)
    assert r.status_code in (400, 200) and "error" in r.text
    r = httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": "x"},
                    headers=headers, timeout=10)
    assert "error" in r.text
    assert gw.health()["status"] == "ok"


@pytest.mark.parametrize("mode", MODES)
async def test_stdio_downstream(tmp_path: Path, mode: str) -> None:
    from mcp import StdioServerParameters

    from tests.support.gateway import gateway_env

    cfg = tmp_path / "stdio.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"upstreams": {"demo": python_server("tests.servers.demo_server", "--transport",
                                                                       "stdio")}}))
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_hub.cli", "serve", "--stdio", "-c", str(cfg)],
                                   env=gateway_env(), cwd=str(ROOT))
    async with Client(params, mode=mode) as client:
        with anyio.fail_after(30):
            while "demo__echo" not in [t.name for t in (await client.list_tools()).tools]:  # noqa: ASYNC110 - polls the server
                await anyio.sleep(0.2)
        assert (await client.call_tool("demo__echo", {"text": "over stdio"})).content[0].text == "over stdio"


@pytest.mark.parametrize("mode", MODES)
async def test_stateless_mode(tmp_path: Path, mode: str) -> None:
    config = {"listen": {"stateless": True},
              "upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        async with Client(gw.mcp, mode=mode) as client:
            assert "demo__add" in [t.name for t in (await client.list_tools()).tools]
            r = await client.call_tool("demo__add", {"a": 1, "b": 2})
            assert r.structured_content == {"sum": 3}
        r = httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"Accept": "application/json, text/event-stream",
                                 "Mcp-Protocol-Version": "2025-11-25"}, timeout=10)
        assert r.status_code == 200 and "demo__add" in r.text
        assert "mcp-session-id" not in {k.lower() for k in r.headers}


async def test_forged_request_state_is_refused(stack: dict[str, Any]) -> None:
    gw: RunningGateway = stack["gw"]
    async with Client(gw.mcp, mode="auto") as client:
        await client.list_tools()
        for state in ["hub1.eyJpZCI6IngifQ.AAAA", "not-ours", "hub1." + "A" * 40]:
            with pytest.raises(MCPError, match="request_state is invalid"):
                await client.session.call_tool("remote__ask_llm", {"prompt": "x"}, request_state=state,
                                               input_responses={}, allow_input_required=True)


def test_relay_state_signing_is_tamper_proof() -> None:
    from mcp_hub.core.relay import StateSigner

    signer = StateSigner()
    token = signer.sign({"id": "abc", "tool": "t", "sub": "alice", "exp": 2**40})
    assert signer.verify(token) == {"id": "abc", "tool": "t", "sub": "alice", "exp": 2**40}
    body, mac = token.rsplit(".", 1)
    assert signer.verify(body + "." + mac[::-1]) is None
    assert StateSigner().verify(token) is None  # another key
    assert signer.verify(signer.sign({"id": "abc", "exp": 1})) is None  # expired


async def test_modern_upstream_change_reaches_modern_and_legacy_clients(stack: dict[str, Any]) -> None:
    """remote__ speaks 2026-07-28: its change arrives on the gateway's listen stream, and goes out as
    notifications/tools/list_changed (legacy caller) and on subscriptions/listen (modern caller)."""
    from mcp.shared.subscriptions import ToolsListChanged

    gw: RunningGateway = stack["gw"]
    legacy_changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            legacy_changed.set()

    async with Client(gw.mcp, mode="legacy", message_handler=on_message) as legacy, \
            Client(gw.mcp, mode="auto") as modern:
        await legacy.list_tools()
        assert modern.protocol_version == "2026-07-28"
        async with modern.listen(tools_list_changed=True) as events:
            await modern.call_tool("remote__add_tool", {"name": "via_listen"})
            with anyio.fail_after(15):
                event = await events.__anext__()
            assert isinstance(event, ToolsListChanged)
            with anyio.fail_after(15):
                await legacy_changed.wait()
        assert "remote__via_listen" in [t.name for t in (await modern.list_tools()).tools]
        assert (await legacy.call_tool("remote__via_listen", {})).content[0].text == "via_listen called"


@pytest.mark.parametrize("mode", MODES)
async def test_cancellation_reaches_the_upstream(tmp_path: Path, mode: str) -> None:
    marker = tmp_path / "marker"
    config = {"upstreams": {"probe": python_server("tests.servers.cancel_probe", str(marker))}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        async with Client(gw.mcp, mode=mode) as client:
            await client.list_tools()
            with anyio.move_on_after(20):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client.call_tool, "probe__wait", {"seconds": 30})
                    with anyio.fail_after(10):
                        while not marker.exists():  # noqa: ASYNC110 - polls a file another process writes
                            await anyio.sleep(0.05)
                    tg.cancel_scope.cancel()
            with anyio.fail_after(10):  # async wait: the client must keep running to send its cancel
                while marker.read_text() != "cancelled":  # noqa: ASYNC110 - polls a file another process writes
                    await anyio.sleep(0.05)
            # the session and the upstream keep working
            r = await client.call_tool("probe__wait", {"seconds": 0})
            assert r.content[0].text == "done"


def test_collision_at_start_names_both_sources(tmp_path: Path) -> None:
    import subprocess

    import yaml

    from tests.support.gateway import gateway_env

    demo = python_server("tests.servers.demo_server", "--transport", "stdio")
    config = {"upstreams": {"a": {**demo, "prefix": ""}, "b": {**demo, "prefix": ""}}}
    path = tmp_path / "clash.yaml"
    path.write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(path), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60, env=gateway_env(), cwd=ROOT)
    assert out.returncode != 0
    assert "tool 'echo' is offered by a:echo and b:echo" in out.stderr
    # with on_collision: warn it starts, the first upstream keeps the name, and /healthz reports it
    config["listen"] = {"on_collision": "warn"}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        assert any("tool 'echo' is offered by a:echo and b:echo" in c for c in gw.health()["collisions"])
        names = anyio.run(_tools, gw.mcp)
        assert names.count("echo") == 1


async def test_legacy_sse_downstream(stack: dict[str, Any]) -> None:
    from mcp.client.sse import sse_client

    gw: RunningGateway = stack["gw"]
    async with Client(sse_client(f"{gw.url}/mcp/time/sse"), mode="legacy") as client:
        assert sorted(t.name for t in (await client.list_tools()).tools) == ["convert_time", "get_current_time"]
        r = await client.call_tool("get_current_time", {"timezone": "UTC"})
        assert not r.is_error and "UTC" in r.content[0].text


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"])
def test_every_handshake_revision_downstream(stack: dict[str, Any], version: str) -> None:
    """Raw Streamable HTTP at each handshake-era revision: initialize, tools/list, tools/call."""
    import json as _json

    gw: RunningGateway = stack["gw"]
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    def rpc(http: httpx2.Client, body: dict[str, Any]) -> dict[str, Any]:
        r = http.post(gw.mcp, json=body, headers=headers)
        assert r.status_code == 200, r.text
        text = r.text
        if text.lstrip().startswith("{"):
            return _json.loads(text)
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        return _json.loads(data[-1])

    with httpx2.Client(timeout=30) as http:
        init = http.post(gw.mcp, headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}})
        assert init.status_code == 200
        headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
        headers["Mcp-Protocol-Version"] = version
        assert f'"protocolVersion":"{version}"' in init.text.replace(" ", "")
        http.post(gw.mcp, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = rpc(http, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"})["result"]["tools"]
        assert any(t["name"] == "remote__echo" for t in tools)
        result = rpc(http, {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                            "params": {"name": "remote__echo", "arguments": {"text": version}}})["result"]
        assert result["content"][0]["text"] == version
