"""Adversarial input at the transport: JSON no strict parser takes, ambiguous credentials, bad log levels.

Each attempt is an assertion with the expected refusal, against a real gateway process in front of a
real upstream (a recording server, so that nothing refused can be seen to have reached it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests import test_bad_input
from tests.servers.launch import http_server
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.rpc import answer_of
from tests.test_bad_input import RawSession, strict_calls_seen_upstream

ARG = '{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"rec__strict","arguments":%s}}'
GOOD_ARGS = '{"count":3,"name":"ok","tags":["a"]}'
# Bodies Python's json module takes but a strict JSON parser (and most of the ecosystem) does not.
NOT_STRICT = {
    "NaN number": ARG % ("1", '{"count":NaN,"name":"ok","tags":["a"]}'),
    "Infinity number": ARG % ("2", '{"count":Infinity,"name":"ok","tags":["a"]}'),
    "-Infinity number": ARG % ("3", '{"count":-Infinity,"name":"ok","tags":["a"]}'),
    "lone high surrogate in a value": ARG % ("4", '{"count":3,"name":"\\ud800","tags":["a"]}'),
    "lone low surrogate in a value": ARG % ("5", '{"count":3,"name":"\\udfff","tags":["a"]}'),
    "lone surrogate in a key": ARG % ("6", '{"count":3,"name":"ok","tags":["a"],"\\ud801":1}'),
    "lone surrogate in the id": ARG % ('"\\udc00"', GOOD_ARGS),
    "lone surrogate in the tool name": ARG.replace("rec__strict", "rec__\\ud800") % ("7", GOOD_ARGS),
    "reversed surrogate pair": ARG % ("8", '{"count":3,"name":"\\ude00\\ud83d","tags":["a"]}'),
    "surrogate in a nested list": ARG % ("9", '{"count":3,"name":"ok","tags":["a",["\\ud9ff"]]}'),
    "NaN in _meta": ARG.replace('"arguments"', '"_meta":{"progressToken":NaN},"arguments"') % ("10", GOOD_ARGS),
    "surrogate in a ping": '{"jsonrpc":"2.0","id":11,"method":"ping","params":{"_meta":{"x":"\\ud800"}}}',
    "NaN in a listing": '{"jsonrpc":"2.0","id":12,"method":"tools/list","params":{"cursor":NaN}}',
    "surrogate in resources/read": '{"jsonrpc":"2.0","id":13,"method":"resources/read","params":{"uri":"a\\ud800"}}',
}
LOG_LEVELS = ["bogus", "", "DEBUG", 5, None, ["error"], {"level": "error"}, "emergency ", "\u0000"]


# The same gateway, recording upstream and sessions as tests/test_bad_input.py uses.
stack = test_bad_input.stack


def _alive(gw: RunningGateway) -> None:
    assert gw.proc.poll() is None
    assert httpx2.get(f"{gw.url}/healthz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def sdk_entry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The same stack with the direct entry off: every request is framed by the SDK's entry."""
    tmp = tmp_path_factory.mktemp("sdk-entry")
    record = tmp / "upstream-requests.jsonl"
    with http_server("faulty_server", tmp, "--mode", "record", "--record", str(record)) as recorder:
        config = {"listen": {"direct_calls": False}, "upstreams": {
            "rec": {"transport": "streamable-http", "url": recorder.url},
            "demo": python_server("tests.servers.demo_server", "--transport", "stdio"),
        }}
        with run_gateway(config, tmp, wait_healthy=True) as gw:
            assert gw.health()["direct_calls"]["on"] is False
            yield {"gw": gw, "record": record, "session": RawSession(gw.mcp)}


@pytest.mark.parametrize("entry", ["direct entry", "SDK entry"])
@pytest.mark.parametrize("what", sorted(NOT_STRICT))
def test_json_no_strict_parser_takes_is_a_parse_error(request: pytest.FixtureRequest, what: str, entry: str) -> None:
    on = request.getfixturevalue("stack" if entry == "direct entry" else "sdk_entry")
    raw: RawSession = on["session"]
    before = strict_calls_seen_upstream(on["record"])
    response = raw.post(NOT_STRICT[what].encode())
    assert response.status_code == 400, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert error["code"] == -32700 and error["message"].startswith("Parse error"), error
    assert "Traceback" not in response.text
    assert strict_calls_seen_upstream(on["record"]) == before  # nothing reached the upstream
    _alive(on["gw"])


def test_paired_surrogates_and_escaped_backslashes_are_fine(stack: dict[str, Any]) -> None:
    raw: RawSession = stack["session"]
    body = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"demo__echo","arguments":{"text":"%s"}}}'
    for request_id, (escaped, text) in enumerate([("\\ud83d\\ude00", "\U0001f600"), ("\\\\ud800", "\\ud800"),
                                                  ("plain", "plain")], start=20):
        response = raw.post((body % (request_id, escaped)).encode())
        assert response.status_code == 200, response.text[:300]
        assert answer_of(response, request_id)["result"]["content"][0]["text"] == text

@pytest.mark.parametrize("header", ["Authorization", "X-Api-Key"])
def test_a_credential_header_given_twice_is_refused(stack: dict[str, Any], header: str) -> None:
    gw: RunningGateway = stack["gw"]
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    for path in ("/mcp", "/healthz", "/metrics"):
        pairs = [("Accept", "application/json, text/event-stream"), ("Content-Type", "application/json"),
                 (header, "Bearer a"), (header, "Bearer b")]
        response = httpx2.request("POST" if path == "/mcp" else "GET", gw.url + path, content=body if path == "/mcp"
                                  else None, headers=httpx2.Headers(pairs), timeout=10)
        assert response.status_code == 400, (path, response.status_code)
        assert response.json()["error_description"] == f"the {header.lower()} header is given more than once"


@pytest.mark.parametrize("level", LOG_LEVELS, ids=[repr(v) for v in LOG_LEVELS])
def test_an_invalid_log_level_is_refused_and_breaks_nothing(stack: dict[str, Any], level: Any) -> None:
    raw: RawSession = stack["session"]
    answer = raw.request("logging/setLevel", {"level": level})
    assert "error" in answer and answer["error"]["code"] == -32602, answer
    # the session's later calls, to a stdio and to an HTTP upstream, still work
    echoed = raw.request("tools/call", {"name": "demo__echo", "arguments": {"text": "after"}})
    assert echoed["result"]["content"][0]["text"] == "after", echoed
    strict = raw.request("tools/call", {"name": "rec__strict", "arguments": json.loads(GOOD_ARGS)})
    assert strict["result"]["content"][0]["text"] == "ok:3:a", strict
