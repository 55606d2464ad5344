"""Bad input against a real gateway process: raw HTTP POSTs of malformed JSON, wrong JSON-RPC shapes,
unknown methods, oversized bodies, arguments that violate a tool's input schema, and hostile tool names
and URIs, generated with hypothesis. Never a 500, never a crash, no lost state; invalid arguments are
refused by the gateway before the upstream sees them (the upstream records every request it receives).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from tests.servers.launch import http_server
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.rpc import answer_of

PROTOCOL = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
LIMIT = 4 * 1024 * 1024  # the gateway's default listen.max_request_body
EXAMPLES = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STRICT_SCHEMA = {
    "type": "object",
    "properties": {
        "count": {"type": "integer", "minimum": 0, "maximum": 100},
        "name": {"type": "string", "pattern": "^[a-z]{1,16}$"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["count", "name", "tags"],
}


class RawSession:
    """One Streamable HTTP session driven with plain POSTs, so any bytes at all can be sent on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx2.Client(timeout=30)
        self.next_id = 1000
        init = self.http.post(url, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
        }, headers={"Accept": ACCEPT, "Content-Type": "application/json"})
        assert init.status_code == 200, init.text
        self.session_id = init.headers["mcp-session-id"]
        self.post(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())

    def headers(self, session: bool = True) -> dict[str, str]:
        out = {"Accept": ACCEPT, "Content-Type": "application/json", "Mcp-Protocol-Version": PROTOCOL}
        if session:
            out["Mcp-Session-Id"] = self.session_id
        return out

    def post(self, body: bytes, *, session: bool = True, headers: dict[str, str] | None = None) -> httpx2.Response:
        return self.http.post(self.url, content=body, headers={**self.headers(session), **(headers or {})})

    def request(self, method: str, params: Any) -> dict[str, Any]:
        """A JSON-RPC request on the session; returns the JSON-RPC answer (result or error)."""
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        response = self.post(json.dumps(body).encode())
        assert response.status_code < 500, (response.status_code, response.text[:500])
        if response.status_code == 400:  # why: a request the transport cannot parse gets its error with id null
            answer = dict(response.json())
            assert "error" in answer, answer
            return answer
        assert response.status_code == 200, (response.status_code, response.text[:500])
        return answer_of(response, self.next_id)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("bad-input")
    record = tmp / "upstream-requests.jsonl"
    with http_server("faulty_server", tmp, "--mode", "record", "--record", str(record)) as recorder:
        config = {"upstreams": {
            "rec": {"transport": "streamable-http", "url": recorder.url},
            "demo": python_server("tests.servers.demo_server", "--transport", "stdio"),
        }}
        with run_gateway(config, tmp, wait_healthy=True) as gw:
            # why: a session opened before the barrage must still work after it
            yield {"gw": gw, "record": record, "session": RawSession(gw.mcp), "barrage": RawSession(gw.mcp)}


def alive(gw: RunningGateway) -> None:
    assert gw.proc.poll() is None, "the gateway process exited"


def strict_calls_seen_upstream(record: Path) -> list[dict[str, Any]]:
    """The tools/call requests for `strict` that reached the recording upstream."""
    seen = []
    for line in record.read_text().splitlines() if record.exists() else []:
        body = json.loads(line)["body"]
        try:
            message = json.loads(body)
        except ValueError:
            continue
        for item in message if isinstance(message, list) else [message]:
            if isinstance(item, dict) and item.get("method") == "tools/call" and (
                    item.get("params") or {}).get("name") == "strict":
                seen.append(item["params"].get("arguments"))
    return seen


# --- strategies -----------------------------------------------------------------------------

# JSON values (no NaN or Infinity: not JSON; tests/security/test_transport_input.py sends those)
json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(
    max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
HOSTILE = [
    "../../etc/passwd", "..", ".", "/", "rec__../strict", "rec__..%2fstrict", "rec/../demo__echo", "demo__echo\x00",
    "demo__echo\n", "\r\nX-Injected: 1", "rec__strict ", " rec__strict", "REC__STRICT", "rec__strict\u200b",
    "rec\u2215\u2215strict", "%00", "$(reboot)", "`id`", "<script>alert(1)</script>", "\u202eloot", "a" * 10_000,
    "rec__" + "a" * 70, "\ud7ff\ue000\U0010ffff", "file:///etc/passwd", "mcphub://rec/demo%3A%2F%2Freadme/../../x",
    "demo://../../../etc/passwd", "demo://items/../../secret", "\\\\server\\share", "", "\x1b[2J",
]
hostile_text = st.sampled_from(HOSTILE) | st.text(max_size=300) | st.text(
    st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Sm"]), max_size=80)


# --- the barrage ----------------------------------------------------------------------------


@EXAMPLES
@given(body=st.binary(max_size=3000), with_session=st.booleans())
def test_arbitrary_bytes(stack: dict[str, Any], body: bytes, with_session: bool) -> None:
    response = stack["barrage"].post(body, session=with_session)
    assert response.status_code < 500, (response.status_code, response.text[:300])
    alive(stack["gw"])


@EXAMPLES
@given(value=json_values)
def test_arbitrary_json_values(stack: dict[str, Any], value: Any) -> None:
    response = stack["barrage"].post(json.dumps(value).encode())
    assert response.status_code < 500, (response.status_code, response.text[:300])
    alive(stack["gw"])


@EXAMPLES
@given(message=st.fixed_dictionaries({}, optional={
    "jsonrpc": st.sampled_from(["2.0", "1.0", "", None, 2.0]) | json_values,
    "id": json_values,
    "method": st.sampled_from(["tools/call", "tools/list", "initialize", "ping", "resources/read",
                               "notifications/cancelled", "notifications/initialized"]) | json_values,
    "params": json_values,
    "result": json_values,
    "error": json_values,
}), batch=st.booleans())
def test_wrong_json_rpc_shapes(stack: dict[str, Any], message: dict[str, Any], batch: bool) -> None:
    body = [message, message] if batch else message
    response = stack["barrage"].post(json.dumps(body).encode())
    assert response.status_code < 500, (response.status_code, response.text[:300])
    alive(stack["gw"])


KNOWN_METHODS = {"initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
                 "resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list",
                 "prompts/get", "completion/complete", "logging/setLevel", "server/discover",
                 "subscriptions/listen"}


@EXAMPLES
@given(method=st.text(max_size=60).filter(lambda m: m not in KNOWN_METHODS), params=st.none() | st.dictionaries(
    st.text(max_size=8), json_scalars, max_size=3))
def test_unknown_methods_get_method_not_found(stack: dict[str, Any], method: str, params: Any) -> None:
    answer = stack["barrage"].request(method, params)
    assert answer.get("error", {}).get("code") in (-32601, -32600, -32602), answer
    alive(stack["gw"])


@EXAMPLES
@given(arguments=st.one_of(
    st.fixed_dictionaries({"count": json_values, "name": json_values, "tags": json_values}),
    st.dictionaries(st.sampled_from(["count", "name", "tags", "extra"]) | st.text(max_size=6), json_values,
                    max_size=5),
    st.fixed_dictionaries({"count": st.integers(-5, 200), "name": st.text(max_size=20),
                           "tags": st.lists(st.text(max_size=5), max_size=6)}),
).filter(lambda a: not jsonschema.Draft202012Validator(STRICT_SCHEMA).is_valid(a)))
def test_schema_violations_are_refused_before_the_upstream(stack: dict[str, Any], arguments: dict[str, Any]) -> None:
    answer = stack["barrage"].request("tools/call", {"name": "rec__strict", "arguments": arguments})
    error = answer.get("error")
    assert error is not None, answer
    assert error["code"] == -32602 and error["message"].startswith("Invalid arguments for tool rec__strict"), error
    alive(stack["gw"])


def test_the_upstream_never_saw_an_invalid_call(stack: dict[str, Any]) -> None:
    """Runs after the schema barrage: the only `strict` call that reached the upstream is this valid one."""
    before = strict_calls_seen_upstream(stack["record"])
    answer = stack["barrage"].request("tools/call", {"name": "rec__strict",
                                                     "arguments": {"count": 3, "name": "ok", "tags": ["a"]}})
    assert answer["result"]["content"][0]["text"] == "ok:3:a", answer
    seen = strict_calls_seen_upstream(stack["record"])
    assert before == [], f"invalid arguments reached the upstream: {before[:5]}"
    assert seen == [{"count": 3, "name": "ok", "tags": ["a"]}], seen


@EXAMPLES
@given(name=hostile_text, arguments=st.none() | st.dictionaries(st.text(max_size=5), json_scalars, max_size=2))
def test_hostile_tool_names(stack: dict[str, Any], name: str, arguments: Any) -> None:
    if name in {"rec__strict", "rec__echo", "demo__echo"}:
        return
    answer = stack["barrage"].request("tools/call", {"name": name, "arguments": arguments})
    assert "error" in answer or answer.get("result", {}).get("isError"), answer
    alive(stack["gw"])


@EXAMPLES
@given(uri=hostile_text, kind=st.sampled_from(["resources/read", "resources/subscribe", "prompts/get"]))
def test_hostile_uris_and_prompt_names(stack: dict[str, Any], uri: str, kind: str) -> None:
    params = {"name": uri, "arguments": {}} if kind == "prompts/get" else {"uri": uri}
    answer = stack["barrage"].request(kind, params)
    assert "error" in answer, answer
    assert answer["error"]["code"] in (-32002, -32602, -32600), answer
    alive(stack["gw"])


hostile_values = json_values | hostile_text.map(lambda t: t) | st.sampled_from([2**63, -(2**63) - 1, 1e308, -0.0])


@EXAMPLES
@given(method=st.sampled_from(sorted(KNOWN_METHODS - {"initialize", "subscriptions/listen"})),
       params=json_values | st.dictionaries(
           st.sampled_from(["name", "uri", "arguments", "level", "ref", "argument", "cursor", "_meta", "context"]),
           hostile_values, max_size=4))
def test_known_methods_with_hostile_params(stack: dict[str, Any], method: str, params: Any) -> None:
    answer = stack["barrage"].request(method, params)
    assert "error" in answer or "result" in answer, answer
    alive(stack["gw"])


@EXAMPLES
@given(meta=json_values, level=hostile_values)
def test_hostile_meta_and_log_level_on_a_real_call(stack: dict[str, Any], meta: Any, level: Any) -> None:
    raw: RawSession = stack["barrage"]
    raw.request("logging/setLevel", {"level": level})
    answer = raw.request("tools/call", {"name": "demo__echo", "arguments": {"text": "m"}, "_meta": meta})
    assert "error" in answer or answer["result"]["content"][0]["text"] == "m", answer
    alive(stack["gw"])


def test_deeply_nested_json(stack: dict[str, Any]) -> None:
    for body in (b"[" * 200_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
                 json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {
                     "name": "demo__echo", "arguments": {"text": "x"}}}).encode()[:-1] + b"," + b"[" * 50_000):
        response = stack["barrage"].post(body)
        assert response.status_code < 500, (response.status_code, response.text[:200])
    alive(stack["gw"])


def test_bodies_over_the_limit_get_413(stack: dict[str, Any]) -> None:
    raw: RawSession = stack["barrage"]
    big = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                      "params": {"name": "demo__echo", "arguments": {"text": "x" * LIMIT}}}).encode()
    assert raw.post(big).status_code == 413

    def chunks() -> Iterator[bytes]:  # why: no Content-Length, so the limit must be counted as bytes arrive
        for start in range(0, len(big), 256 * 1024):
            yield big[start:start + 256 * 1024]

    response = raw.http.post(raw.url, content=chunks(), headers=raw.headers())
    assert response.status_code == 413, response.status_code
    # just under the limit is served
    text = "y" * (LIMIT - 4096)
    answer = raw.request("tools/call", {"name": "demo__echo", "arguments": {"text": text}})
    assert "result" in answer, str(answer)[:500]
    assert answer["result"]["content"][0]["text"] == text
    alive(stack["gw"])


def test_wrong_headers_are_4xx(stack: dict[str, Any]) -> None:
    raw: RawSession = stack["barrage"]
    ping = json.dumps({"jsonrpc": "2.0", "id": 5, "method": "ping"}).encode()
    cases = {
        "text/plain content": {"Content-Type": "text/plain"},
        "no JSON in Accept": {"Accept": "text/html"},
        "unknown session": {"Mcp-Session-Id": "0" * 32},
        "hostile session": {"Mcp-Session-Id": "../../../etc/passwd"},
        "bogus protocol version": {"Mcp-Protocol-Version": "1999-01-01"},
    }
    for what, headers in cases.items():
        response = raw.post(ping, headers=headers)
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:200])
    for method in ("PUT", "PATCH"):
        response = raw.http.request(method, raw.url, content=ping, headers=raw.headers())
        assert 400 <= response.status_code < 500, (method, response.status_code)
    alive(stack["gw"])


def test_the_gateway_survived_the_barrage(stack: dict[str, Any]) -> None:
    """Last: alive, healthy, and the session opened before the barrage still works."""
    gw: RunningGateway = stack["gw"]
    alive(gw)
    health = httpx2.get(f"{gw.url}/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    session: RawSession = stack["session"]
    answer = session.request("tools/call", {"name": "demo__echo", "arguments": {"text": "still here"}})
    assert answer["result"]["content"][0]["text"] == "still here"
    names = [t["name"] for t in session.request("tools/list", {})["result"]["tools"]]
    assert {"rec__strict", "demo__echo"} <= set(names)

    async def fresh_client() -> str:
        async with Client(gw.mcp, mode="legacy") as client:
            result = await client.call_tool("rec__echo", {"text": "new session"})
            return str(result.content[0].text)

    assert anyio.run(fresh_client) == "new session"
    log = gw.log_text()
    assert not re.search(r"\b500 Internal Server Error\b|Exception in ASGI application", log), log[-3000:]
