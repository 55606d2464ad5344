"""The gateway in front of upstreams that fail: killed mid-call, hung, slow, huge, malformed, flooding;
and with its IdP or its Redis gone. Every test runs a real gateway process in front of real
upstream processes and checks, after the fault, that everything the fault did not touch still works.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.keys import new_api_key
from tests.servers.launch import http_server
from tests.support.gateway import SCRAPE_HEADERS, RunningGateway, python_server, run_gateway, wait_until
from tests.support.idp import idp_server
from tests.support.processes import running, wait_for_port
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request
from tests.support.tools import ROOT, executable, free_port

FAULTY = "tests.servers.faulty_server"
DEMO = "tests.servers.demo_server"
INIT = initialize_request()


# --- process inspection ---------------------------------------------------------------------


def proc_kib(pid: int, key: str) -> int:
    """A /proc/PID/status figure in KiB (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def descendant_with(pid: int, needle: str) -> int:
    """The one process below `pid` whose command line contains `needle`."""
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if needle in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                return child
    raise LookupError(f"no process below {pid} runs {needle!r}")


def kill_group(proc: Any) -> None:
    """SIGKILL a process started in its own group: a crash, not a shutdown."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def demo_process(port: int, tmp: Path, name: str) -> Any:
    cmd = [sys.executable, "-m", DEMO, "--transport", "streamable-http", "--port", str(port), "--name", name]
    return running(cmd, cwd=ROOT, log=tmp / f"{name}-{port}-{time.monotonic_ns()}.log")


# --- calling through the gateway ------------------------------------------------------------


def text_of(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call_outcome(client: Client, name: str, args: dict[str, Any]) -> tuple[float, str, bool]:
    """(seconds taken, text or error message, failed?) for one call, whatever way it fails."""
    started = time.monotonic()
    try:
        result = await client.call_tool(name, args)
        return time.monotonic() - started, text_of(result), bool(result.is_error)
    except MCPError as exc:
        return time.monotonic() - started, exc.error.message, True


async def answers_again(client: Client, tool: str, seconds: float = 20.0) -> None:
    """Retry `tool` (an echo) until it answers: an upstream that was reconnected serves again."""
    deadline = time.monotonic() + seconds
    last: tuple[float, str, bool] = (0.0, "", True)
    while time.monotonic() < deadline:
        last = await call_outcome(client, tool, {"text": "again"})
        if last[1:] == ("again", False):
            return
        await anyio.sleep(0.3)  # noqa: ASYNC110 - polling another process, no event to wait on
    raise AssertionError(f"{tool} did not answer again within {seconds}s: {last}")


async def assert_unaffected(gw: RunningGateway, *tools: str) -> None:
    """/healthz answers and names the healthy upstreams up; a call on each healthy upstream answers.

    "Up" within 10 s: on a loaded 2-core machine a 50 MiB answer can hold the gateway long enough for a
    healthy upstream's keep-alive to lapse and reconnect; it must be back, and answer, by then."""
    deadline = time.monotonic() + 10
    while True:
        response = httpx2.get(f"{gw.url}/healthz", headers=SCRAPE_HEADERS, timeout=5)
        assert response.status_code == 200, response.text
        health = response.json()
        states = {t.split("__", 1)[0]: health["upstreams"][t.split("__", 1)[0]]["state"] for t in tools}
        if all(state == "up" for state in states.values()) or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    async with Client(gw.mcp, mode="legacy") as client:
        for tool in tools:
            upstream = tool.split("__", 1)[0]
            assert health["upstreams"][upstream]["state"] == "up", health
            result = await client.call_tool(tool, {"text": f"still {tool}"})
            assert not result.is_error and text_of(result) == f"still {tool}", result


def raw_tool_call(url: str, name: str, arguments: dict[str, Any], timeout: float = 90) -> dict[str, Any]:
    """tools/call on a fresh session with a plain HTTP client (no SSE event size limit, unlike the SDK's)."""
    with httpx2.Client(timeout=timeout) as http:
        init = http.post(url, json=INIT, headers=MCP_HEADERS)
        headers = {**MCP_HEADERS, "Mcp-Session-Id": init.headers["mcp-session-id"],
                   "Mcp-Protocol-Version": "2025-06-18"}
        http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        return answer_of(http.post(url, json=call, headers=headers), 2)


# --- one gateway in front of healthy and faulty upstreams -----------------------------------

HEALTHY = ("demo__echo", "other__echo")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("faults")
    other_port = free_port()
    with contextlib.ExitStack() as stack:
        faulty = stack.enter_context(http_server("faulty_server", tmp, "--mode", "hang,slow,huge", "--delay", "0.5"))
        other = stack.enter_context(demo_process(other_port, tmp, "other"))
        wait_for_port(other_port, proc=other)
        config = {
            "upstreams": {
                # demo (stdio) and other (Streamable HTTP) are healthy, and the victims of the kill tests
                "demo": {**python_server(DEMO, "--transport", "stdio", "--name", "demo-stdio"),
                         "call_timeout": 60, "reconnect_max_backoff": 1},
                "other": {"transport": "streamable-http", "url": f"http://127.0.0.1:{other_port}/mcp",
                          "call_timeout": 60, "health_interval": 1, "reconnect_max_backoff": 1},
                # one faulty process seen as three upstreams, each with the call_timeout its test needs
                "hang": {"transport": "streamable-http", "url": faulty.url, "call_timeout": 2},
                "slow": {"transport": "streamable-http", "url": faulty.url, "call_timeout": 3},
                "huge": {"transport": "streamable-http", "url": faulty.url, "call_timeout": 60},
                "malformed": {**python_server(FAULTY, "--mode", "malformed"), "protocol": "legacy",
                              "call_timeout": 1},
                "flood": {**python_server(FAULTY, "--mode", "flood"), "call_timeout": 60},
            }
        }
        gw = stack.enter_context(run_gateway(config, tmp, wait_healthy=True))
        # why: processes a test restarts join the stack, so they stop with the fixture
        yield {"gw": gw, "tmp": tmp, "other": other, "other_port": other_port, "stack": stack}


async def test_fifty_megabyte_result(zoo: dict[str, Any]) -> None:
    """The client gets all 50 MiB (or a clear error); the gateway's peak RSS stays within 10x the payload.

    First of the zoo's tests, so the gateway's peak RSS (VmHWM) is this test's.
    """
    gw: RunningGateway = zoo["gw"]
    size = 50 * 1024 * 1024
    pid = gw.proc.pid
    before = proc_kib(pid, "VmRSS")
    started = time.monotonic()
    answer = await anyio.to_thread.run_sync(raw_tool_call, gw.mcp, "huge__huge", {"megabytes": 50})
    elapsed = time.monotonic() - started
    if "error" in answer or answer["result"].get("isError"):
        message = json.dumps(answer)
        assert "huge" in message and len(message) < 2000, message[:300]
        outcome = f"a clear error in {elapsed:.1f}s"
    else:
        text = answer["result"]["content"][0]["text"]
        assert len(text) == size and text.startswith("0123456789abcdef")
        outcome = f"all of it in {elapsed:.1f}s"
    del answer
    peak = proc_kib(pid, "VmHWM")
    after = proc_kib(pid, "VmRSS")
    print(f"\n50 MiB result: {outcome}; gateway RSS before {before // 1024} MiB, "
          f"peak {peak // 1024} MiB, after {after // 1024} MiB")
    assert (peak - before) * 1024 < 10 * size, (before, peak)
    await assert_unaffected(gw, *HEALTHY)
    assert gw.proc.poll() is None


async def test_hung_call_times_out_while_everything_else_is_served(zoo: dict[str, Any]) -> None:
    gw: RunningGateway = zoo["gw"]
    hung: list[tuple[float, str, bool]] = []
    latencies: list[float] = []
    async with Client(gw.mcp, mode="legacy") as caller, Client(gw.mcp, mode="legacy") as bystander:

        async def hang() -> None:
            hung.append(await call_outcome(caller, "hang__hang", {}))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(hang)
            await anyio.sleep(0.3)
            # why: while three calls hang, other upstreams and the hung upstream's other tools answer at once
            for tool in [*HEALTHY, "hang__echo"] * 4:
                elapsed, text, failed = await call_outcome(bystander, tool, {"text": "meanwhile"})
                assert (text, failed) == ("meanwhile", False), (tool, text)
                latencies.append(elapsed)
    assert max(latencies) < 1.0, latencies
    assert len(hung) == 3
    for elapsed, message, failed in hung:
        assert failed and "hang" in message and "did not answer" in message and "2s" in message, message
        assert 1.8 <= elapsed < 6, elapsed
    await assert_unaffected(gw, *HEALTHY, "hang__echo")


async def test_slow_upstream_is_not_serialised_and_times_out_clearly(zoo: dict[str, Any]) -> None:
    gw: RunningGateway = zoo["gw"]
    outcomes: list[tuple[float, str, bool]] = []
    async with Client(gw.mcp, mode="legacy") as client:
        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for i in range(8):

                async def one(i: int = i) -> None:
                    outcomes.append(await call_outcome(client, "slow__slow_echo", {"text": f"s{i}"}))

                tg.start_soon(one)
        wall = time.monotonic() - started
        assert sorted(text for _, text, _ in outcomes) == [f"s{i}" for i in range(8)]
        # why: eight 0.5 s calls in flight together take about 0.5 s, not 4 s
        assert wall < 2.5, wall
        elapsed, message, failed = await call_outcome(client, "slow__slow", {"seconds": 10})
        assert failed and "slow" in message and "within 3s" in message, message
        assert 2.8 <= elapsed < 6, elapsed
        _, text, failed = await call_outcome(client, "slow__slow_echo", {"text": "after"})
        assert (text, failed) == ("after", False)
    await assert_unaffected(gw, *HEALTHY)


async def test_malformed_json_rpc_gets_clear_errors_and_keeps_the_session(zoo: dict[str, Any]) -> None:
    gw: RunningGateway = zoo["gw"]
    connects = gw.health()["upstreams"]["malformed"]["connects"]
    async with Client(gw.mcp, mode="legacy") as client:
        _, text, failed = await call_outcome(client, "malformed__echo", {"text": "through garbage"})
        assert (text, failed) == ("through garbage", False)
        for tool in ["wrong_shape", "not_object", "bad_error", "wrong_id", "no_answer"]:
            elapsed, message, failed = await call_outcome(client, f"malformed__{tool}", {})
            assert failed, (tool, message)
            assert elapsed < 3, (tool, elapsed)  # call_timeout is 1 s
            assert message and "Traceback" not in message, (tool, message)
            _, text, failed = await call_outcome(client, "malformed__echo", {"text": f"after {tool}"})
            assert (text, failed) == (f"after {tool}", False), (tool, text)
    # why: garbage lines and stray responses must not cost the upstream its session
    assert gw.health()["upstreams"]["malformed"]["connects"] == connects
    await assert_unaffected(gw, *HEALTHY)
    assert gw.proc.poll() is None


async def test_non_utf8_output_is_survived(zoo: dict[str, Any]) -> None:
    """One line that is not UTF-8: the call answers or fails within call_timeout, the upstream serves again
    within 10 s (the gateway learns at once that the connection closed), everything else is untouched."""
    gw: RunningGateway = zoo["gw"]
    async with Client(gw.mcp, mode="legacy") as client:
        elapsed, message, failed = await call_outcome(client, "malformed__bad_bytes", {})
        assert elapsed < 3 and (not failed or "malformed" in message), (elapsed, message)
        await assert_unaffected(gw, *HEALTHY)
        await answers_again(client, "malformed__echo", 10)


@pytest.mark.parametrize("transport", ["stdio", "streamable-http"])
async def test_upstream_killed_mid_call(zoo: dict[str, Any], transport: str) -> None:
    """The in-flight call fails promptly with the upstream's name (not after call_timeout: 60 s)."""
    gw: RunningGateway = zoo["gw"]
    name, bystander = ("demo", "other__echo") if transport == "stdio" else ("other", "demo__echo")
    outcome: list[tuple[float, str, bool]] = []
    finished = anyio.Event()
    async with Client(gw.mcp, mode="legacy") as client:
        assert (await call_outcome(client, f"{name}__echo", {"text": "alive"}))[1] == "alive"
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                outcome.append(await call_outcome(client, f"{name}__slow", {"seconds": 30}))
                finished.set()

            tg.start_soon(long_call)
            await anyio.sleep(1.0)
            if transport == "stdio":
                os.kill(descendant_with(gw.proc.pid, "demo-stdio"), signal.SIGKILL)
            else:
                kill_group(zoo["other"])
            killed = time.monotonic()
            with anyio.fail_after(20):
                await finished.wait()
            noticed = time.monotonic() - killed
        _, message, failed = outcome[0]
        assert failed and name in message, message
        assert noticed < 5, f"the call failed {noticed:.1f}s after the kill"
        await assert_unaffected(gw, bystander)
        if transport == "streamable-http":
            zoo["other"] = zoo["stack"].enter_context(demo_process(zoo["other_port"], zoo["tmp"], "other-again"))
            wait_for_port(zoo["other_port"], proc=zoo["other"])
        wait_until(lambda: gw.health()["upstreams"][name]["state"] == "up", timeout=30, what=f"{name} back")
        await answers_again(client, f"{name}__echo", 5)
    await assert_unaffected(gw, *HEALTHY)


# --- notification floods (last of the zoo's tests) ------------------------------------


async def test_notification_flood(zoo: dict[str, Any]) -> None:
    """Last of the zoo's tests: its unsolicited flood goes on until the gateway stops."""
    gw: RunningGateway = zoo["gw"]
    latencies: list[float] = []
    logs: list[types.LoggingMessageNotificationParams] = []
    progress: list[float] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def bystander(done: anyio.Event) -> None:
        async with Client(gw.mcp, mode="legacy") as client:
            while not done.is_set():
                elapsed, text, failed = await call_outcome(client, "demo__echo", {"text": "calm"})
                assert (text, failed) == ("calm", False)
                latencies.append(elapsed)
                await anyio.sleep(0.02)

    async with Client(gw.mcp, mode="legacy", logging_callback=on_log) as flooder:
        for kind, count in (("log", 500), ("progress", 500), ("list_changed", 100),
                            ("resource_updated", 200)):
            done = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(bystander, done)
                result = await flooder.call_tool("flood__flood", {"count": count, "kind": kind},
                                                 progress_callback=on_progress)
                done.set()
            assert text_of(result) == f"flooded {count} {kind}", result
        assert logs and progress, "log messages and progress made it through"
        # unsolicited floods for as long as the process lives: the gateway keeps serving, memory stays flat
        await flooder.call_tool("flood__flood_forever", {"kind": "log"})
        await flooder.call_tool("flood__flood_forever", {"kind": "list_changed"})
        await anyio.sleep(1.0)
        rss_start = proc_kib(gw.proc.pid, "VmRSS")
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(bystander, done)
            await anyio.sleep(2.0)
            done.set()
        rss_end = proc_kib(gw.proc.pid, "VmRSS")
    print(f"\nflood: bystander p max {max(latencies) * 1000:.0f} ms over {len(latencies)} calls; "
          f"{len(logs)} log messages relayed; RSS {rss_start // 1024} -> {rss_end // 1024} MiB under a "
          "2 s unsolicited flood")
    assert max(latencies) < 2.0, max(latencies)
    assert rss_end - rss_start < 50 * 1024, (rss_start, rss_end)
    async with Client(gw.mcp, mode="legacy") as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert {"flood__flood", "demo__echo", "other__echo", "hang__hang"} <= names, names
    await assert_unaffected(gw, *HEALTHY, "flood__echo")


# --- the IdP goes away ----------------------------------------------------------------------


def bearer_client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


async def test_idp_down_cached_jwks_keeps_working_introspection_gives_401(tmp_path: Path) -> None:
    idp_port, gw_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{gw_port}/mcp"
    secrets = {"client_secret": "cs-faults-" + "c" * 20, "gateway_secret": "gs-faults-" + "g" * 20}
    with contextlib.ExitStack() as stack:
        idp_up = contextlib.ExitStack()
        stack.callback(idp_up.close)
        idp = idp_up.enter_context(idp_server(tmp_path / "idp", port=idp_port, **secrets))
        config = {
            "auth": {
                "mode": "oauth", "resource": resource, "authorization_servers": [idp.issuer],
                "introspection": {"client_id": "mcp-gateway", "client_secret": secrets["gateway_secret"],
                                  "cache_ttl_s": 0},
            },
            "upstreams": {"demo": python_server(DEMO, "--transport", "stdio")},
        }
        gw = stack.enter_context(run_gateway(config, tmp_path, wait_healthy=True, port=gw_port))
        jwt_token = idp.client_credentials(resource=resource)["access_token"]
        opaque_used = idp.client_credentials("mcp-client-opaque", resource=resource)["access_token"]
        opaque_fresh = idp.client_credentials("mcp-client-opaque", resource=resource)["access_token"]
        for token in (jwt_token, opaque_used):
            async with bearer_client(gw.mcp, token) as client:
                assert text_of(await client.call_tool("demo__echo", {"text": "up"})) == "up"
        idp_up.close()  # the IdP is down from here on

        async with bearer_client(gw.mcp, jwt_token) as client:
            assert text_of(await client.call_tool("demo__echo", {"text": "cached keys"})) == "cached keys"
        for token in (opaque_used, opaque_fresh):
            response = httpx2.post(gw.mcp, json=INIT, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"},
                                   timeout=15)
            assert response.status_code == 401, (response.status_code, response.text)
            challenge = response.headers.get("www-authenticate", "")
            assert "introspection" in challenge and "error_description" in challenge, challenge
            assert token not in challenge and token not in response.text
        assert gw.health()["upstreams"]["demo"]["state"] == "up"
        for secret in (jwt_token, opaque_used, opaque_fresh, *secrets.values()):
            assert secret not in gw.log_text()
        assert gw.proc.poll() is None


# --- Redis goes away ------------------------------------------------------------------------

DEV_KEY, DEV_HASH = new_api_key()
ADMIN_KEY, ADMIN_HASH = new_api_key()


@contextlib.contextmanager
def redis_on(port: int, tmp: Path) -> Iterator[Any]:
    args = [executable("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(tmp)]
    with running(args, log=tmp / f"redis-{port}-{time.monotonic_ns()}.log") as proc:
        wait_for_port(port, proc=proc)
        yield proc


def started_together(stack: contextlib.ExitStack, *gateways: Any) -> list[RunningGateway]:
    """Enter several `run_gateway` blocks at once (each start is mostly imports: overlap them)."""
    with ThreadPoolExecutor(len(gateways)) as pool:
        futures = [pool.submit(cm.__enter__) for cm in gateways]
    for cm in gateways:
        stack.push(cm.__exit__)  # why: every started gateway is stopped, even if another failed to start
    return [future.result() for future in futures]


async def test_redis_down(tmp_path: Path) -> None:
    """One Redis behind two gateways: fail_open false refuses budgeted calls clearly, fail_open true admits
    them; a consumer without budgets is served by both; both recover when Redis is back."""
    port = free_port()

    def config(fail_open: bool) -> dict[str, Any]:
        return {
            "auth": {"mode": "api_key", "api_keys": [
                {"consumer": "alice", "groups": ["developer"], "sha256": DEV_HASH},
                {"consumer": "root", "groups": ["admin"], "sha256": ADMIN_HASH},
            ]},
            "upstreams": {"demo": python_server(DEMO, "--transport", "stdio")},
            "groups": {
                "developer": {"budgets": [{"tokens": 1_000_000, "window": "1 hour", "count": "total"}]},
                "admin": {},
            },
            "storage": f"redis://127.0.0.1:{port}",
            "fail_open": fail_open,
        }

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_on(port, tmp_path))
        closed, open_ = started_together(
            stack,
            run_gateway(config(False), tmp_path, wait_healthy=True, name="fail-closed"),
            run_gateway(config(True), tmp_path, wait_healthy=True, name="fail-open"),
        )
        for gw in (closed, open_):
            async with bearer_client(gw.mcp, DEV_KEY) as dev:
                assert (await call_outcome(dev, "demo__echo", {"text": "counted"}))[1:] == ("counted", False)
        kill_group(redis)
        for gw in (closed, open_):
            async with bearer_client(gw.mcp, DEV_KEY) as dev, bearer_client(gw.mcp, ADMIN_KEY) as admin:
                elapsed, message, failed = await call_outcome(dev, "demo__echo", {"text": "no redis"})
                assert elapsed < 5, elapsed
                if gw is open_:
                    assert (message, failed) == ("no redis", False), message
                else:
                    assert failed and "storage" in message.lower() and "unreachable" in message, message
                    assert "Traceback" not in message, message
                # a consumer with no budget is not held up by the missing storage
                assert (await call_outcome(admin, "demo__echo", {"text": "admin"}))[1:] == ("admin", False)
            health = httpx2.get(f"{gw.url}/healthz", headers=SCRAPE_HEADERS, timeout=5)
            assert health.status_code == 200 and health.json()["upstreams"]["demo"]["state"] == "up"
        with redis_on(port, tmp_path):
            for gw in (closed, open_):
                async with bearer_client(gw.mcp, DEV_KEY) as dev:
                    await answers_again(dev, "demo__echo", 15)
        for gw in (closed, open_):
            assert gw.proc.poll() is None
