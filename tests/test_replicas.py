"""Replicas without affinity: a real HAProxy in plain round-robin (no stickiness) in front of three real
gateway processes sharing one real redis-server (`sessions: redis://...`).

Through HAProxy: one handshake-era SDK session spans all three replicas (their logs say which opened it and
which adopted it); an upstream's sampling and elicitation questions are answered mid-call while the answer
lands on another replica; list_changed follows a runtime OpenAPI registration made through one replica;
the conformance suite scores the same as through one gateway; Claude Code connects; a budget shared by the
replicas holds its bound under concurrent calls; per-consumer session caps hold across replicas; a killed
replica's sessions go on through the others without initializing again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.keys import new_api_key
from tests.support.clients import claude_mcp_list
from tests.support.conformance import NEXT_TOOL, run_conformance
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.haproxy import RunningHAProxy, run_haproxy, sessions_in_log
from tests.support.processes import redis_server, running, wait_for_http, wait_for_port
from tests.support.tools import ROOT, free_port, node22, npm_tool

pytestmark = pytest.mark.slow

ADMIN_KEY, ADMIN_HASH = new_api_key()
OPS_KEY, OPS_HASH = new_api_key()
CAPPED_KEY, CAPPED_HASH = new_api_key()
BUDGET_KEY, BUDGET_HASH = new_api_key()
INVENTORY = ROOT / "examples" / "internal_api_service.py"
DOCUMENT = ROOT / "examples" / "internal-api.openapi.yaml"
BUDGET_LIMIT = 1000
SESSION_CAP = 6


def cluster_config(redis_url: str, api_url: str) -> dict[str, Any]:
    return {
        "sessions": redis_url,
        "storage": redis_url,
        "listen": {"max_sessions_per_consumer": SESSION_CAP},
        "auth": {
            "mode": "api_key",
            "api_keys": [
                {"consumer": "olga", "groups": ["ops"], "sha256": OPS_HASH},
                {"consumer": "carl", "groups": ["ops"], "sha256": CAPPED_HASH},
                {"consumer": "bea", "groups": ["metered"], "sha256": BUDGET_HASH},
            ],
        },
        "upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")},
        "default_acl": "allow",
        "groups": {
            "ops": {"tools": {"allow": ["*"]}},
            "metered": {"tools": {"allow": ["*"]},
                        "budgets": [{"tokens": BUDGET_LIMIT, "window": "1 hour", "count": "total"}]},
        },
        "admin": {"keys": [{"name": "release-bot", "sha256": ADMIN_HASH}], "groups": ["ops"],
                  "allowed_base_urls": [api_url], "registry": redis_url},
    }


class Cluster:
    def __init__(self, replicas: list[RunningGateway], lb: RunningHAProxy, redis_url: str) -> None:
        self.replicas = replicas
        self.lb = lb
        self.redis_url = redis_url

    @property
    def mcp(self) -> str:
        return f"{self.lb.url}/mcp"


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("inventory")
    port = free_port()
    with running([__import__("sys").executable, str(INVENTORY), "--port", str(port)], cwd=ROOT,
                 log=tmp / "inventory.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/openapi.yaml", proc=proc)
        yield url


@pytest.fixture(scope="module")
def cluster(api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    with redis_server(tmp) as redis_url, contextlib.ExitStack() as stack:
        config = cluster_config(redis_url, api)
        replicas = [stack.enter_context(run_gateway(config, tmp, wait_healthy=True, name=f"replica{i}"))
                    for i in range(3)]
        lb = stack.enter_context(run_haproxy([(f"r{i}", gw.port) for i, gw in enumerate(replicas)], tmp))
        yield Cluster(replicas, lb, redis_url)


def client(url: str, key: str = OPS_KEY, **kwargs: Any) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode="legacy", **kwargs)


def session_logs(cluster: Cluster) -> list[dict[str, str]]:
    return [sessions_in_log(gw.log_text()) for gw in cluster.replicas]


def served_by_every_replica(cluster: Cluster, sid: str) -> bool:
    logs = session_logs(cluster)
    return all(sid in log for log in logs) and sorted(log[sid] for log in logs) == ["adopted", "adopted", "opened"]


async def test_one_session_spans_every_replica(cluster: Cluster) -> None:
    """30 calls of one handshake-era session through round-robin HAProxy: every call answered, the session
    opened on one replica and adopted by the two others, and the client never initialized again."""
    async with client(cluster.mcp) as c:
        tools = {t.name for t in (await c.list_tools()).tools}
        assert "demo__add" in tools
        for i in range(30):
            result = await c.call_tool("demo__add", {"a": i, "b": 1})
            assert result.structured_content == {"sum": i + 1}, result
        sid = c.session.session_id if hasattr(c.session, "session_id") else None
    logs = session_logs(cluster)
    opened = [s for log in logs for s, what in log.items() if what == "opened"]
    sid = sid or next(s for s in opened if all(s in log for log in logs))
    assert served_by_every_replica(cluster, sid), logs
    # one initialize in all: the other replicas rebuilt the session from Redis, they saw no client initialize
    assert sum(gw.log_text().count(f"session {sid} opened") for gw in cluster.replicas) == 1


async def test_sampling_and_elicitation_answers_land_on_other_replicas(cluster: Cluster) -> None:
    """The upstream asks the caller mid-call; the caller's answer is a new POST that HAProxy sends to the next
    replica, which passes it to the replica holding the call."""

    async def sampling(ctx: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", content=types.TextContent(type="text", text="forty-two"),
                                         model="m")

    async def elicitation(ctx: Any, params: Any) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"answer": "blue"})

    forwarded_before = _forwarded(cluster)
    async with client(cluster.mcp, sampling_callback=sampling, elicitation_callback=elicitation) as c:
        await c.list_tools()
        for _ in range(3):  # with three replicas in turn, an answer lands elsewhere than its call
            assert (await c.call_tool("demo__ask_llm", {"prompt": "meaning?"})).content[0].text == "forty-two"
            assert (await c.call_tool("demo__ask_user", {"question": "colour?"})).content[0].text == "blue"
    assert _forwarded(cluster) > forwarded_before


def _forwarded(cluster: Cluster) -> int:
    return sum(gw.log_text().count("answer for replica") for gw in cluster.replicas)


async def test_list_changed_follows_a_registration_made_through_another_replica(cluster: Cluster, api: str) -> None:
    """A session whose GET stream is held by some replica hears list_changed when an OpenAPI API is registered
    through one replica directly (not through HAProxy); every replica serves the new tools."""
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(message, types.ToolListChangedNotification):
            changed.set()
        root = getattr(message, "root", message)
        if isinstance(root, types.ToolListChangedNotification):
            changed.set()

    async with client(cluster.mcp, message_handler=on_message) as c:
        before = {t.name for t in (await c.list_tools()).tools}
        assert not any(n.startswith("inv__") for n in before)
        await anyio.sleep(1.0)  # the client's GET stream is open on some replica
        document = yaml.safe_load(DOCUMENT.read_text())
        response = httpx2.post(f"{cluster.replicas[0].url}/admin/openapi",
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                               json={"name": "inv", "document": document, "base_url": api}, timeout=60)
        assert response.status_code in (200, 201), response.text
        with anyio.fail_after(20):
            await changed.wait()
        for _ in range(3):  # each replica in turn lists the registered API's tools
            assert any(t.name.startswith("inv__") for t in (await c.list_tools()).tools)
    for gw in cluster.replicas[1:]:
        upstreams = httpx2.get(f"{gw.url}/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                               timeout=10).json()["upstreams"]
        assert upstreams["inv"]["state"] == "up"


async def test_sessions_per_consumer_are_capped_across_replicas(cluster: Cluster) -> None:
    """carl may hold SESSION_CAP sessions in all; they open on different replicas; one more is refused with 429
    and a JSON-RPC error naming the limit, whichever replica gets it; closing one makes room."""
    headers = {"Authorization": f"Bearer {CAPPED_KEY}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    sids = []
    for _ in range(SESSION_CAP):
        response = httpx2.post(cluster.mcp, headers=headers, json=init, timeout=10)
        assert response.status_code == 200, response.text
        sids.append(response.headers["mcp-session-id"])
    for _ in range(3):  # every replica refuses the next one
        refused = httpx2.post(cluster.mcp, headers=headers, json=init, timeout=10)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert "listen.max_sessions_per_consumer" in error["message"] and str(SESSION_CAP) in error["message"]
    closed = httpx2.delete(cluster.mcp, headers={**headers, "mcp-session-id": sids[0],
                                                 "mcp-protocol-version": "2025-11-25"}, timeout=10)
    assert closed.status_code == 200
    assert httpx2.post(cluster.mcp, headers=headers, json=init, timeout=10).status_code == 200
    # the closed session is gone on every replica, not only on the one that got the DELETE
    for _ in range(3):
        gone = httpx2.post(cluster.mcp, headers={**headers, "mcp-session-id": sids[0],
                                                 "mcp-protocol-version": "2025-11-25"},
                           json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, timeout=10)
        assert gone.status_code == 404


@pytest.fixture(scope="module")
def open_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three replicas without auth (the suite sends no credentials) whose route /mcp/ref exposes the reference
    server unprefixed, behind HAProxy, sharing sessions on one Redis."""
    npm_tool(NEXT_TOOL)
    node22()
    tmp = tmp_path_factory.mktemp("open-replicas")
    port = free_port()
    args = [__import__("sys").executable, "-m", "tests.servers.reference_server", "--port", str(port)]
    with running(args, cwd=ROOT, log=tmp / "reference-server.log") as proc, redis_server(tmp) as redis_url, \
            contextlib.ExitStack() as stack:
        wait_for_port(port, proc=proc)
        config = {
            "sessions": redis_url,
            "upstreams": {"ref": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}},
            "servers": [{"path": "/mcp/ref", "upstreams": ["ref"], "prefix": False}],
        }
        replicas = [stack.enter_context(run_gateway(config, tmp, wait_healthy=True, name=f"open{i}"))
                    for i in range(3)]
        lb = stack.enter_context(run_haproxy([(f"r{i}", gw.port) for i, gw in enumerate(replicas)], tmp))
        yield Cluster(replicas, lb, redis_url)


def test_conformance_through_haproxy_scores_as_one_gateway(open_cluster: Cluster, tmp_path: Path) -> None:
    """`conformance server --requirements 2025-11-25` (stateful sessions): the same scenarios pass through
    HAProxy and three replicas as through one of those replicas alone."""
    common: dict[str, Any] = {"expected_failures": [], "requirements": "2025-11-25", "tool": NEXT_TOOL,
                              "timeout": 900.0, "scenario_timeout_ms": 20_000}
    one = run_conformance(f"{open_cluster.replicas[0].url}/mcp/ref", tmp_path / "one", **common)
    spread = run_conformance(f"{open_cluster.lb.url}/mcp/ref", tmp_path / "haproxy", **common)
    print(f"\n[2025-11-25] one gateway: {len(one.passing)}/{len(one.scenarios)}; "
          f"through HAProxy: {len(spread.passing)}/{len(spread.scenarios)}")
    assert one.scenarios and one.passing, one.output[-3000:]
    lost = sorted(one.passing - spread.passing)
    assert not lost, spread.failure_report(lost)
    assert spread.passing == one.passing
    adopted = sum(gw.log_text().count("adopted on replica") for gw in open_cluster.replicas)
    assert adopted > 0  # the suite's sessions were served by more than the replica that opened them


async def test_claude_code_connects_through_haproxy(cluster: Cluster) -> None:
    status = await anyio.to_thread.run_sync(
        lambda: claude_mcp_list(cluster.mcp, {"Authorization": f"Bearer {OPS_KEY}"}))
    assert status == "Connected"


async def test_shared_budget_holds_under_concurrent_load(cluster: Cluster) -> None:
    """30 concurrent calls of about 500 tokens against a 1,000-token group budget, from three sessions whose
    calls HAProxy spreads over the three replicas: the tokens charged stay within the documented bound
    (metering/budgets.py: limit + what each call used beyond what it held), the rest are refused for tokens."""
    outcomes: list[str] = []

    async def member() -> None:
        async with client(cluster.mcp, key=BUDGET_KEY) as c:
            async def one() -> None:
                try:
                    await c.call_tool("demo__big", {"n_bytes": 2000})
                    outcomes.append("ok")
                except MCPError as exc:
                    assert exc.error.data["kind"] == "tokens", exc.error
                    outcomes.append("refused")

            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(one)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(member)
    calls = [e for gw in cluster.replicas for e in _audit_lines(gw) if e.get("tool") == "demo__big"]
    ok = [e for e in calls if e["outcome"] == "ok"]
    assert len(calls) == 30 and outcomes.count("ok") == len(ok) and "refused" in outcomes
    assert len({gw.url for gw in cluster.replicas if any(e.get("tool") == "demo__big" for e in _audit_lines(gw))}) == 3
    charged = sum(e["tokens_in"] + e["tokens_out"] for e in ok)
    one_call = max(e["tokens_in"] + e["tokens_out"] for e in ok)
    # a call of ~510 tokens holds half the budget (the most one call holds): at most two are charged
    assert 1 <= len(ok) <= 2, ok
    assert charged <= max(BUDGET_LIMIT, 2 * one_call) < 2 * BUDGET_LIMIT, (charged, ok)


def _audit_lines(gw: RunningGateway) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.log_text().splitlines() if line.startswith("{") and '"audit"' in line]


async def test_a_killed_replica_sessions_go_on(cluster: Cluster) -> None:
    """A session used on all three replicas; one replica is killed; the session goes on through the other two,
    every call answered, without initializing again (runs last: it stops a replica)."""
    opened_before = _opened(cluster)
    async with client(cluster.mcp) as c:
        await c.list_tools()
        for i in range(30):
            assert (await c.call_tool("demo__add", {"a": i, "b": 2})).structured_content == {"sum": i + 2}
        victim = cluster.replicas[2]
        victim.proc.kill()
        victim.proc.wait(timeout=10)
        for i in range(30):
            assert (await c.call_tool("demo__add", {"a": i, "b": 3})).structured_content == {"sum": i + 3}
    opened = _opened(cluster) - opened_before
    assert len(opened) == 1, opened  # one initialize: the survivors served the rest from the session's record
    [sid] = opened
    survivors = [sessions_in_log(gw.log_text()) for gw in cluster.replicas[:2]]
    assert all(sid in log for log in survivors)


def _opened(cluster: Cluster) -> set[str]:
    return {s for log in session_logs(cluster) for s, what in log.items() if what == "opened"}
