"""Shared sessions where traffic of one call or one session is split over replicas on purpose (each request
sent to a chosen replica, no balancer in between), and when Redis goes away.

- A 2026-07-28 `requestState` one replica hands out is honoured by another, once.
- A `notifications/cancelled` POSTed to another replica than the one running the call ends the call.
- Redis unreachable: a session keeps working on the replica that holds it, new sessions open and work
  on the replica that opens them, and another replica refuses what it cannot look up (404), as
  docs/deploy.md says.

Real gateway processes, a real redis-server, the reference server over Streamable HTTP (its 2026-07-28
tools answer InputRequiredResult) and the demo server over stdio (its `slow` tool sleeps).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.servers.launch import http_server
from tests.support.gateway import SCRAPE_HEADERS, RunningGateway, python_server, run_gateway
from tests.support.processes import redis_server
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request

pytestmark = pytest.mark.slow

MODERN = "2026-07-28"
_ids = itertools.count(100)


@contextlib.contextmanager
def replicas(tmp: Path, redis_url: str, upstreams: dict[str, Any], n: int = 3) -> Iterator[list[RunningGateway]]:
    config = {"sessions": redis_url, "upstreams": upstreams}
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_gateway(config, tmp, wait_healthy=True, name=f"{tmp.name}-{i}"))
               for i in range(n)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with http_server("reference_server", tmp_path_factory.mktemp("reference")) as server:
        yield server.url


# -- requestState across replicas --------------------------------------------------------------------


def modern_call(gw: RunningGateway, name: str, state: str | None = None,
                responses: dict[str, Any] | None = None) -> dict[str, Any]:
    request_id = next(_ids)
    params: dict[str, Any] = {"name": name, "arguments": {}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}}
    if state is not None:
        params["requestState"], params["inputResponses"] = state, responses
    headers = {**MCP_HEADERS, "mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": name}
    response = httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                                         "params": params}, headers=headers, timeout=30)
    return answer_of(response, request_id)


def test_a_request_state_from_one_replica_is_honoured_once_by_another(
    reference: str, tmp_path: Path
) -> None:
    with redis_server(tmp_path) as redis_url, replicas(
        tmp_path, redis_url, {"ref": {"transport": "streamable-http", "url": reference}}
    ) as gws:
        first = modern_call(gws[0], "ref__test_input_required_result_elicitation")
        assert first["result"]["resultType"] == "input_required", first
        state = first["result"]["requestState"]
        assert list(first["result"]["inputRequests"]) == ["user_name"]
        answer = {"user_name": {"action": "accept", "content": {"name": "Ada"}}}

        done = modern_call(gws[1], "ref__test_input_required_result_elicitation", state, answer)
        assert done["result"]["content"] == [{"type": "text", "text": "Hello, Ada!"}], done

        again = modern_call(gws[2], "ref__test_input_required_result_elicitation", state, answer)
        assert "error" in again, again  # a state is good for one round, whichever replica sees it
        assert "Hello" not in json.dumps(again)


# -- cancellation across replicas --------------------------------------------------------------------


def open_session(gw: RunningGateway) -> dict[str, str]:
    """A handshake-era session opened on `gw`; the headers that use it."""
    init = httpx2.post(gw.mcp, json=initialize_request("2025-11-25"), headers=MCP_HEADERS, timeout=30)
    assert init.status_code == 200, init.text
    headers = {**MCP_HEADERS, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    sent = httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers,
                       timeout=30)
    assert sent.status_code == 202, sent.text
    return headers


def call(gw: RunningGateway, headers: dict[str, str], name: str, arguments: dict[str, Any],
         timeout: float = 60) -> httpx2.Response:
    request_id = next(_ids)
    return httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                                     "params": {"name": name, "arguments": arguments}},
                       headers=headers, timeout=timeout)


def audit(gw: RunningGateway, tool: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in gw.log_text().splitlines() if line.startswith("{") and '"audit"' in line]
    return [entry for entry in lines if entry.get("tool") == tool]


def test_a_cancellation_posted_to_another_replica_ends_the_call(tmp_path: Path) -> None:
    demo = {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")}
    with redis_server(tmp_path) as redis_url, replicas(tmp_path, redis_url, demo, n=2) as gws:
        headers = open_session(gws[0])
        request_id = 7
        outcome: dict[str, Any] = {}

        def long_call() -> None:
            started = time.monotonic()
            try:
                response = httpx2.post(gws[0].mcp, json={
                    "jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                    "params": {"name": "demo__slow", "arguments": {"seconds": 300}}}, headers=headers, timeout=120)
                outcome["body"] = response.text
            except httpx2.HTTPError as exc:
                outcome["error"] = repr(exc)
            outcome["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=long_call)
        worker.start()
        deadline = time.monotonic() + 30
        while not gws[0].log_text().count("demo__slow") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # the call is running at the upstream
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": request_id, "reason": "changed my mind"}}
        sent = httpx2.post(gws[1].mcp, json=cancel, headers=headers, timeout=30)  # the other replica
        assert sent.status_code == 202, sent.text
        worker.join(timeout=90)
        assert not worker.is_alive(), "the call was not ended by the cancellation sent through the other replica"
        assert outcome["seconds"] < 90, outcome  # not the tool's 300 s
        deadline = time.monotonic() + 10
        while not audit(gws[0], "demo__slow") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [entry["outcome"] for entry in audit(gws[0], "demo__slow")] == ["cancelled"]
        # the session goes on, on either replica
        for gw in gws:
            answered = call(gw, headers, "demo__add", {"a": 1, "b": 2})
            assert answered.status_code == 200 and '"sum":3' in answered.text.replace(" ", ""), answered.text


# -- Redis unreachable -------------------------------------------------------------------------------


def shut_down(redis_url: str) -> None:
    host, port = redis_url.removeprefix("redis://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
        with contextlib.suppress(OSError):
            s.recv(100)


def test_without_redis_sessions_keep_working_on_their_replica(tmp_path: Path) -> None:
    demo = {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")}
    with redis_server(tmp_path) as redis_url, replicas(tmp_path, redis_url, demo, n=2) as gws:
        held = open_session(gws[0])
        assert call(gws[1], held, "demo__add", {"a": 1, "b": 1}).status_code == 200  # adopted while Redis is up
        shut_down(redis_url)
        time.sleep(0.5)
        for i in range(5):  # the session goes on where it is held
            for gw in gws:
                answered = call(gw, held, "demo__add", {"a": i, "b": 1})
                assert answered.status_code == 200 and f'"sum":{i + 1}' in answered.text.replace(" ", ""), \
                    answered.text
        fresh = open_session(gws[0])  # a new session opens and works where it was opened
        answered = call(gws[0], fresh, "demo__add", {"a": 2, "b": 2})
        assert answered.status_code == 200, answered.text
        elsewhere = call(gws[1], fresh, "demo__add", {"a": 2, "b": 2})
        assert elsewhere.status_code == 404, elsewhere.text  # not adoptable without its record
        health = httpx2.get(f"{gws[0].url}/healthz", headers=SCRAPE_HEADERS, timeout=10)
        assert health.status_code == 200 and health.json()["status"] in ("ok", "degraded"), health.text



# -- subscriptions and log levels set through another replica ------------------------------------------


def test_a_subscription_made_through_one_replica_reaches_the_stream_another_holds(tmp_path: Path) -> None:
    """The session's GET stream is held by replica 1 (which adopted the session before the subscription);
    the client subscribes through replica 0 and the resource changes through replica 2: the update arrives on
    the stream replica 1 holds."""
    with http_server("conformance_server", tmp_path) as server, redis_server(tmp_path) as redis_url:
        # a handshake-era upstream session: the server sends resource updates on it
        upstream = {"conf": {"transport": "streamable-http", "url": server.url, "protocol": "legacy"}}
        with replicas(tmp_path, redis_url, upstream) as gws:
            headers = open_session(gws[0])
            listed = httpx2.post(gws[0].mcp, json={"jsonrpc": "2.0", "id": 1, "method": "resources/list"},
                                 headers=headers, timeout=30)
            uris = [r["uri"] for r in answer_of(listed, 1)["result"]["resources"] if "watched" in r["uri"]]
            assert len(uris) == 1, listed.text
            received: list[dict[str, Any]] = []
            stop = threading.Event()

            def stream() -> None:  # the client's GET stream, on replica 1 (it ends when the replicas stop)
                with contextlib.suppress(httpx2.HTTPError), httpx2.stream("GET", gws[1].mcp, headers={**headers, "Accept": "text/event-stream"},
                                   timeout=httpx2.Timeout(5, read=60)) as response:
                    received.append({"status": response.status_code})
                    for line in response.iter_lines():
                        if line.startswith("data:"):
                            received.append(json.loads(line[5:]))
                        if stop.is_set():
                            return

            reader = threading.Thread(target=stream, daemon=True)
            reader.start()
            deadline = time.monotonic() + 20
            while not received and time.monotonic() < deadline:
                time.sleep(0.05)
            assert received and received[0]["status"] == 200, received
            time.sleep(0.5)
            subscribed = httpx2.post(gws[0].mcp, json={"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe",
                                                       "params": {"uri": uris[0]}}, headers=headers, timeout=30)
            assert "result" in answer_of(subscribed, 2), subscribed.text
            time.sleep(1.0)  # announced to the other replicas
            changed = call(gws[2], headers, "conf__test_update_watched_resource", {})
            assert changed.status_code == 200, changed.text
            deadline = time.monotonic() + 20
            updates: list[dict[str, Any]] = []
            while not updates and time.monotonic() < deadline:
                updates = [m for m in received[1:] if m.get("method") == "notifications/resources/updated"]
                time.sleep(0.1)
            stop.set()
            assert updates and updates[0]["params"]["uri"] == uris[0], received
