"""The Tasks extension (`io.modelcontextprotocol/tasks`, SEP-2663) through the gateway, with real processes.

The upstream is tests/servers/tasks_server.py (an MCPServer with a tasks Extension). One gateway exposes it
unprefixed on an open route, where the conformance suite's tasks-* scenarios run against it as they run
against the upstream alone: every scenario that passes directly must pass through the gateway. A second
gateway, with API-key consumers, shows that a task id is the gateway's and belongs to the consumer that
made the task (another one gets "Unknown task" exactly as for an id that never existed), and that the
call that made a task is charged once, when its final result is first delivered (the audit log).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import httpx2
import pytest

from mcp_hub.auth.identity import Consumer
from mcp_hub.auth.keys import new_api_key
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.core.tasks import Tasks, declares_tasks, for_upstream
from mcp_hub.metering.meter import Meter
from mcp_hub.metering.record import CallOutcome, CallRecord
from tests.servers.launch import ServerProcess, http_server
from tests.support.clients import Recorder, sdk_session
from tests.support.conformance import NEXT_TOOL, ConformanceResult, run_conformance
from tests.support.gateway import RunningGateway, python_server, run_gateway, wait_until
from tests.support.rpc import MCP_HEADERS, answer_of
from tests.support.tools import node22, npm_tool

TASKS = "io.modelcontextprotocol/tasks"
SCENARIOS = (
    "tasks-lifecycle", "tasks-capability-negotiation", "tasks-wire-fields", "tasks-request-state-removal",
    "tasks-mrtr-input", "tasks-request-headers", "tasks-dispatch-and-envelope", "tasks-status-notifications",
    "tasks-required-task-error", "tasks-mrtr-composition",
)
# The scenarios of the brief: the upstream must pass them, or the comparison proves nothing.
CORE = {"tasks-lifecycle", "tasks-capability-negotiation", "tasks-wire-fields", "tasks-request-state-removal",
        "tasks-mrtr-input"}
ALICE_KEY, ALICE_SHA = new_api_key()
BOB_KEY, BOB_SHA = new_api_key()
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with http_server("tasks_server", tmp_path_factory.mktemp("tasks-upstream")) as server:
        yield server


@pytest.fixture(scope="module")
def eager_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The same server misbehaving: it makes tasks for every client, declared or not."""
    with http_server("tasks_server", tmp_path_factory.mktemp("tasks-eager"), "--tasks-for-everyone") as server:
        yield server


@pytest.fixture(scope="module")
def open_gateway(upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = {
        "upstreams": {"tasks": {"transport": "streamable-http", "url": upstream.url}},
        "servers": [{"path": "/mcp/tasks", "upstreams": ["tasks"], "prefix": False}],
    }
    with run_gateway(config, tmp_path_factory.mktemp("gateway-open"), wait_healthy=True) as gw:
        yield gw


@pytest.fixture(scope="module")
def keyed_gateway(
    upstream: ServerProcess, eager_upstream: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    config = {
        "auth": {"mode": "api_key", "api_keys": [{"consumer": "alice", "sha256": ALICE_SHA},
                                                 {"consumer": "bob", "sha256": BOB_SHA}]},
        "upstreams": {
            "tasks": {"transport": "streamable-http", "url": upstream.url},
            # every caller on the 2026-07-28 connection: a handshake-era session would refuse the task shape
            "eager": {"transport": "streamable-http", "url": eager_upstream.url, "match_caller_era": False},
            "demo": python_server("tests.servers.demo_server", "--transport", "stdio"),
        },
        "servers": [{"path": "/mcp/tasks", "upstreams": ["tasks"], "prefix": False},
                    {"path": "/mcp/tasks-too", "upstreams": ["tasks"], "prefix": False},
                    {"path": "/mcp/eager", "upstreams": ["eager"], "prefix": False},
                    {"path": "/mcp/plain", "upstreams": ["demo"], "prefix": False}],
        "costs": {"*slow_compute": {"per_call": 0.25}},
    }
    with run_gateway(config, tmp_path_factory.mktemp("gateway-keyed"), wait_healthy=True) as gw:
        yield gw


# -- the conformance scenarios ------------------------------------------------------------------------


def _scenarios(url: str, out: Path) -> ConformanceResult:
    """Every tasks-* scenario against `url`, one run each; the verdicts merged."""
    merged: ConformanceResult | None = None
    for scenario in SCENARIOS:
        result = run_conformance(url, out / scenario, [], scenario=scenario, tool=NEXT_TOOL, timeout=180.0)
        if merged is None:
            merged = result
        else:
            merged.scenarios.update(result.scenarios)
            merged.raw.update(result.raw)
    assert merged is not None
    merged.passed = len(merged.passing)
    merged.failed = len(merged.scenarios) - merged.passed
    return merged


def test_tasks_scenarios_pass_through_the_gateway(
    upstream: ServerProcess, open_gateway: RunningGateway, tmp_path: Path
) -> None:
    npm_tool(NEXT_TOOL)
    node22()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        direct_run = pool.submit(_scenarios, upstream.url, tmp_path / "direct")
        through_run = pool.submit(_scenarios, f"{open_gateway.url}/mcp/tasks", tmp_path / "gateway")
        direct, through = direct_run.result(), through_run.result()
    print(f"\n  direct:  {len(direct.passing)}/{len(direct.scenarios)} pass: {sorted(direct.passing)}")
    print(f"  gateway: {len(through.passing)}/{len(through.scenarios)} pass: {sorted(through.passing)}")
    lost = sorted(direct.passing - through.passing)
    if lost:
        print("  pass directly, not through the gateway:\n    " + through.failure_report(lost).replace("\n", "\n    "))
    assert not CORE - direct.passing, direct.failure_report(CORE - direct.passing)
    assert not lost, through.failure_report(lost)
    # the task ids the suite saw through the gateway were the gateway's
    assert "hubtask-" not in upstream.log_text()


# -- one consumer's tasks -----------------------------------------------------------------------------


class Caller:
    """A 2026-07-28 client speaking plain HTTP to a route, as one consumer, declaring the extension or not."""

    def __init__(self, http: httpx2.AsyncClient, url: str, key: str, *, declare: bool = True) -> None:
        self.http, self.url, self.key, self.declare = http, url, key, declare

    async def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON-RPC answer (`result` or `error`) to one request."""
        request_id = next(_ids)
        capabilities: dict[str, Any] = {"elicitation": {}}
        if self.declare:
            capabilities["extensions"] = {TASKS: {}}
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**params, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientInfo": {"name": "test-tasks", "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": capabilities,
        }}}
        headers = {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": method,
                   "authorization": f"Bearer {self.key}"}
        name = params.get("name", params.get("taskId"))
        if isinstance(name, str):
            headers["mcp-name"] = name
        return answer_of(await self.http.post(self.url, json=body, headers=headers), request_id)

    async def result(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = await self.send(method, params)
        assert "result" in answer, answer
        return dict(answer["result"])

    async def until_over(self, task_id: str) -> dict[str, Any]:
        with anyio.fail_after(15):
            while True:
                task = await self.result("tasks/get", {"taskId": task_id})
                if task["status"] in ("completed", "failed", "cancelled"):
                    return task
                await anyio.sleep(0.1)


def _audit(gw: RunningGateway) -> list[dict[str, Any]]:
    lines = [line for line in gw.log_text().splitlines() if line.startswith("{") and '"audit"' in line]
    return [json.loads(line) for line in lines]


def _call_lines(gw: RunningGateway, consumer: str, tool: str) -> list[dict[str, Any]]:
    """The settle lines of `consumer`'s calls of `tool` (the call's own line: tokens, cost, outcome)."""
    return [e for e in _audit(gw) if e.get("method") == "tools/call" and e.get("consumer") == consumer
            and e.get("tool") == tool]


async def test_a_task_is_the_consumers_own(keyed_gateway: RunningGateway) -> None:
    url = f"{keyed_gateway.url}/mcp/tasks"
    async with httpx2.AsyncClient(timeout=30) as http:
        alice, bob = Caller(http, url, ALICE_KEY), Caller(http, url, BOB_KEY)
        created = await alice.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 30}})
        assert created["resultType"] == "task" and created["status"] == "working", created
        task_id = created["taskId"]
        assert task_id.startswith("hubtask-")
        assert {"createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs"} <= set(created)

        # Bob holding Alice's id hears what he hears for an id that never existed, for every tasks/* method.
        for method, extra in (("tasks/get", {}), ("tasks/update", {"inputResponses": {}}), ("tasks/cancel", {})):
            foreign = await bob.send(method, {"taskId": task_id, **extra})
            unknown = await bob.send(method, {"taskId": "hubtask-never-made", **extra})
            assert foreign["error"]["code"] == unknown["error"]["code"] == -32602, (foreign, unknown)
            assert foreign["error"]["message"].replace(task_id, "ID") == unknown["error"]["message"].replace(
                "hubtask-never-made", "ID")
            # ... and on another route (where no upstream serves tasks) the methods do not exist at all
            plain = await Caller(http, f"{keyed_gateway.url}/mcp/plain", ALICE_KEY).send(method, {"taskId": task_id,
                                                                                              **extra})
            assert plain["error"]["code"] == -32601, plain

        # Alice's own id on another route of the same upstream is unknown there too.
        elsewhere = await Caller(http, f"{keyed_gateway.url}/mcp/tasks-too", ALICE_KEY).send(
            "tasks/get", {"taskId": task_id})
        assert elsewhere["error"] == {**unknown["error"], "message": unknown["error"]["message"].replace(
            "hubtask-never-made", task_id)}, elsewhere

        # Bob's cancel did nothing: the task still works for Alice, who cancels it herself.
        assert (await alice.result("tasks/get", {"taskId": task_id}))["status"] == "working"
        ack = await alice.result("tasks/cancel", {"taskId": task_id})
        assert ack["resultType"] == "complete" and not {"taskId", "status", "result", "error"} & set(ack), ack
        assert (await alice.until_over(task_id))["status"] == "cancelled"

        # A caller that does not declare the extension: -32021 on tasks/*, the call answered synchronously.
        undeclared = Caller(http, url, ALICE_KEY, declare=False)
        refused = await undeclared.send("tasks/get", {"taskId": task_id})
        assert refused["error"]["code"] == -32021, refused
        assert refused["error"]["data"]["requiredCapabilities"]["extensions"] == {TASKS: {}}
        sync = await undeclared.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.1,
                                                                                            "label": "sync"}})
        assert "taskId" not in sync and sync["content"][0]["text"].startswith("computed sync"), sync

        # The route advertises the extension; the route without a tasks upstream does not.
        tasks_caps = (await alice.result("server/discover", {}))["capabilities"]
        plain_caps = (await Caller(http, f"{keyed_gateway.url}/mcp/plain", ALICE_KEY).result(
            "server/discover", {}))["capabilities"]
        assert TASKS in (tasks_caps.get("extensions") or {}), tasks_caps
        assert TASKS not in (plain_caps.get("extensions") or {}), plain_caps
    log = keyed_gateway.log_text()
    assert '"outcome": "denied"' in log  # the audit says Bob's requests hit a task that exists


async def test_a_task_is_charged_once_when_its_result_is_delivered(keyed_gateway: RunningGateway) -> None:
    url = f"{keyed_gateway.url}/mcp/tasks"
    async with httpx2.AsyncClient(timeout=30) as http:
        bob = Caller(http, url, BOB_KEY)
        before = len(_call_lines(keyed_gateway, "bob", "slow_compute"))
        created = await bob.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.5,
                                                                                        "label": "charged"}})
        task_id = created["taskId"]
        wait_until(lambda: any(e.get("outcome") == "task_created" and e.get("consumer") == "bob"
                               for e in _audit(keyed_gateway)), timeout=10, what="the task's creation audited")
        await anyio.sleep(1.0)  # the task is over upstream, but its result has not been delivered
        assert len(_call_lines(keyed_gateway, "bob", "slow_compute")) == before

        done = await bob.until_over(task_id)
        assert done["status"] == "completed" and done["taskId"] == task_id
        assert done["result"]["content"][0]["text"].startswith("computed charged")
        for _ in range(3):  # delivered again: not charged again
            again = await bob.result("tasks/get", {"taskId": task_id})
            assert again["result"] == done["result"]
        wait_until(lambda: len(_call_lines(keyed_gateway, "bob", "slow_compute")) > before, timeout=10,
                   what="the delivered task's audit line")
        await anyio.sleep(0.5)
        lines = _call_lines(keyed_gateway, "bob", "slow_compute")[before:]
        assert len(lines) == 1, lines
        assert lines[0]["outcome"] == "ok" and lines[0]["tokens_out"] > 0 and lines[0]["cost"] == 0.25, lines[0]

        # A tool error is delivered (and charged) as a completed task; a protocol failure is recorded uncharged.
        failing = (await bob.result("tools/call", {"name": "failing_job", "arguments": {}}))["taskId"]
        crashing = (await bob.result("tools/call", {"name": "protocol_error_job", "arguments": {}}))["taskId"]
        assert (await bob.until_over(failing))["result"]["isError"] is True
        failed = await bob.until_over(crashing)
        assert failed["status"] == "failed" and "result" not in failed and failed["error"]["code"] == -32603
        wait_until(lambda: _call_lines(keyed_gateway, "bob", "protocol_error_job"), timeout=10, what="failed task")
        [tool_error] = _call_lines(keyed_gateway, "bob", "failing_job")
        [protocol_error] = _call_lines(keyed_gateway, "bob", "protocol_error_job")
        assert tool_error["outcome"] == "tool_error" and tool_error["tokens_out"] > 0
        assert protocol_error["outcome"] == "error" and protocol_error["tokens_out"] == 0


async def test_input_rounds_of_a_task_go_through(keyed_gateway: RunningGateway) -> None:
    """An input_required task: its input requests reach the caller on tasks/get, its answers reach the upstream
    on tasks/update (several questions answered one at a time)."""
    url = f"{keyed_gateway.url}/mcp/tasks"
    async with httpx2.AsyncClient(timeout=30) as http:
        alice = Caller(http, url, ALICE_KEY)
        task_id = (await alice.result("tools/call", {"name": "multi_input", "arguments": {}}))["taskId"]
        deadline = time.monotonic() + 10
        task = await alice.result("tasks/get", {"taskId": task_id})
        while task["status"] != "input_required" and time.monotonic() < deadline:
            await anyio.sleep(0.1)
            task = await alice.result("tasks/get", {"taskId": task_id})
        assert set(task["inputRequests"]) == {"name", "confirm"}, task
        assert task["inputRequests"]["name"]["method"] == "elicitation/create"
        answer = {"action": "accept", "content": {"name": "Ada"}}
        assert (await alice.result("tasks/update", {"taskId": task_id, "inputResponses": {"name": answer}}))[
            "resultType"] == "complete"
        task = await alice.result("tasks/get", {"taskId": task_id})
        assert task["status"] == "input_required" and set(task["inputRequests"]) == {"confirm"}, task
        await alice.result("tasks/update", {"taskId": task_id, "inputResponses": {"confirm": answer}})
        done = await alice.until_over(task_id)
        assert done["status"] == "completed" and "Ada" in done["result"]["content"][0]["text"], done


async def test_a_caller_without_the_extension_gets_a_synchronous_answer(keyed_gateway: RunningGateway) -> None:
    """An upstream that makes a task for a caller that did not declare the extension: the gateway waits for the
    task's end (answering its input requests through a handshake-era caller) and answers the call as a
    synchronous one; the call is charged once."""
    url = f"{keyed_gateway.url}/mcp/eager"
    async with httpx2.AsyncClient(timeout=30) as http:
        undeclared = Caller(http, url, BOB_KEY, declare=False)
        done = await undeclared.result("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.3,
                                                                                            "label": "eager"}})
        assert "taskId" not in done and done["resultType"] == "complete", done
        assert done["content"][0]["text"].startswith("computed eager")
        failing = await undeclared.result("tools/call", {"name": "failing_job", "arguments": {}})
        assert failing["isError"] is True and "taskId" not in failing
        crashed = await undeclared.send("tools/call", {"name": "protocol_error_job", "arguments": {}})
        assert crashed["error"]["code"] == -32603 and "crashed" in crashed["error"]["message"], crashed
        declared = await Caller(http, url, BOB_KEY).result("tools/call", {"name": "greet", "arguments": {"name": "x"}})
        assert declared["content"][0]["text"] == "Hello, x!"

    # A handshake-era caller (SDK client, initialize) with elicitation: the task's question is put to it.
    recorder = Recorder(elicited={"confirm": True})
    async with sdk_session(url, "legacy", headers={"authorization": f"Bearer {ALICE_KEY}"},
                           recorder=recorder) as client:
        result = await client.call_tool("confirm_delete", {"filename": "old.txt"})
    assert not result.is_error and result.content[0].text == "Deleted old.txt", result  # type: ignore[union-attr]
    assert len(recorder.elicitation_requests) == 1

    wait_until(lambda: _call_lines(keyed_gateway, "alice", "confirm_delete"), timeout=10, what="audit")
    lines = _call_lines(keyed_gateway, "bob", "slow_compute") + _call_lines(keyed_gateway, "alice", "confirm_delete")
    eager = [e for e in lines if e.get("upstream") == "eager"]
    assert [e["outcome"] for e in eager] == ["ok", "ok"], eager
    assert not any(e.get("outcome") == "task_created" and e.get("upstream") == "eager" for e in _audit(keyed_gateway))


async def test_an_undelivered_task_is_recorded_uncharged_when_it_expires() -> None:
    """The table forgets expired tasks; one whose result never reached its caller is settled as an error, with
    nothing charged (in-process: the table alone)."""
    meter = Meter(PolicyConfig())
    table = Tasks(SimpleNamespace(meter=meter, upstreams={}))  # type: ignore[arg-type]
    consumer = Consumer(name="carol")
    kept, lost = (CallRecord(consumer, "slow_compute", "tasks", True, "default") for _ in range(2))
    created = {"resultType": "task", "taskId": "up-1", "status": "working", "ttlMs": 60_000}
    mine = await table.adopt(created, upstream="tasks", route="/mcp/tasks", record=kept)
    await table.adopt({**created, "taskId": "up-2"}, upstream="tasks", route="/mcp/tasks", record=lost)
    assert mine["taskId"].startswith("hubtask-") and mine["taskId"] != "up-1" and len(table) == 2
    table._tasks[mine["taskId"]].delivered = True  # noqa: SLF001 - as a tasks/get of its final state leaves it
    for task in table._tasks.values():  # noqa: SLF001
        task.expires = 0.0
    table._swept = 0.0  # noqa: SLF001 - the next use sweeps
    await table._sweep()  # noqa: SLF001
    assert len(table) == 0
    assert lost.finished and lost.outcome == CallOutcome.ERROR and lost.tokens_out == 0
    assert not kept.finished  # delivered ones were settled at delivery (here: by no one)


def test_what_the_upstream_hears_of_the_callers_declaration() -> None:
    declared = {"elicitation": {}, "extensions": {TASKS: {}, "io.example/other": {"x": 1}}}
    assert declares_tasks(declared, modern=True) and not declares_tasks(declared, modern=False)
    assert for_upstream(declared, modern=True) == declared
    assert for_upstream(declared, modern=False) == {"elicitation": {}, "extensions": {"io.example/other": {"x": 1}}}
    assert for_upstream({"extensions": {TASKS: {}}}, modern=False) == {}
    assert for_upstream(None, modern=False) is None
