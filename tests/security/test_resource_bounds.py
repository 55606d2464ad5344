"""One consumer cannot hold what every consumer shares: its open sessions
(`listen.max_sessions_per_consumer`) and its calls waiting for its input
(`listen.max_pending_per_consumer`) are capped, refused with a clear error naming the key, and
others are not held up.

A real gateway in front of the reference server over stdio in a handshake session, so a 2026-07-28
caller's call that the upstream asks a question in waits in the gateway for the caller's answer."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request

KEYS = {"mallory": "mallory-key-for-bounds-tests-00", "bob": "bob-key-for-bounds-tests-000000"}
CAP = 3
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("bounds")
    config = {
        "listen": {"max_pending_per_consumer": CAP, "max_sessions_per_consumer": CAP},
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": name, "groups": ["users"], "sha256": hashlib.sha256(key.encode()).hexdigest()}
            for name, key in KEYS.items()]},
        "upstreams": {"ref": {**python_server("tests.servers.reference_server", "--transport", "stdio"),
                              "protocol": "legacy", "match_caller_era": False, "session_scope": "per_consumer"}},
    }
    with run_gateway(config, tmp, wait_healthy=True) as gateway:
        yield gateway


def modern_call(gw: RunningGateway, who: str, state: str | None = None,
                responses: dict[str, Any] | None = None) -> dict[str, Any]:
    """A 2026-07-28 tools/call of the reference server's elicitation tool, as a caller that can answer it."""
    request_id = next(_ids)
    params: dict[str, Any] = {"name": "ref__test_elicitation", "arguments": {"message": "who?"}, "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {"form": {}}}}}
    if state is not None:
        params["requestState"], params["inputResponses"] = state, responses
    headers = {**MCP_HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
               "mcp-name": "ref__test_elicitation", "Authorization": f"Bearer {KEYS[who]}"}
    response = httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                                         "params": params}, headers=headers, timeout=30)
    return answer_of(response, request_id)


def test_one_consumers_waiting_calls_are_capped_and_others_go_on(gw: RunningGateway) -> None:
    parked = [modern_call(gw, "mallory") for _ in range(CAP)]
    assert all(p["result"]["resultType"] == "input_required" for p in parked), parked
    refused = modern_call(gw, "mallory")
    assert refused["error"]["code"] == -32029, refused
    assert "listen.max_pending_per_consumer" in refused["error"]["message"]
    assert refused["error"]["data"] == {"limit": "listen.max_pending_per_consumer", "max": CAP}
    # another consumer is not held up by mallory's waiting calls
    bob = modern_call(gw, "bob")
    assert bob.get("result", {}).get("resultType") == "input_required", bob
    # answering one of mallory's makes room for one more
    (key,) = parked[0]["result"]["inputRequests"]
    answer = {"action": "accept", "content": {"username": "m", "email": "m@example.test"}}
    done = modern_call(gw, "mallory", parked[0]["result"]["requestState"], {key: answer})
    assert "result" in done and done["result"].get("resultType") != "input_required", done
    assert modern_call(gw, "mallory")["result"]["resultType"] == "input_required"
    assert modern_call(gw, "mallory")["error"]["code"] == -32029


def open_session(gw: RunningGateway, who: str) -> httpx2.Response:
    """A handshake-era initialize as `who` (each one opens a session)."""
    return httpx2.post(gw.mcp, json=initialize_request("2025-11-25", client=who),
                       headers={**MCP_HEADERS, "Authorization": f"Bearer {KEYS[who]}"}, timeout=30)


def test_one_consumers_sessions_are_capped_and_others_go_on(gw: RunningGateway) -> None:
    opened = [open_session(gw, "mallory") for _ in range(CAP)]
    assert [r.status_code for r in opened] == [200] * CAP
    sessions = [r.headers["mcp-session-id"] for r in opened]
    assert len(set(sessions)) == CAP
    refused = open_session(gw, "mallory")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == -32029 and "listen.max_sessions_per_consumer" in error["message"], error
    assert "mcp-session-id" not in refused.headers
    # bob still opens sessions
    assert open_session(gw, "bob").status_code == 200
    # closing one of mallory's frees its slot
    closed = httpx2.delete(gw.mcp, headers={**MCP_HEADERS, "Authorization": f"Bearer {KEYS['mallory']}",
                                             "mcp-session-id": sessions[0]}, timeout=30)
    assert closed.status_code in (200, 204)
    assert open_session(gw, "mallory").status_code == 200
    assert open_session(gw, "mallory").status_code == 429
