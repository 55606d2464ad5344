"""Security of a running gateway: DNS-rebinding and Origin checks on a loopback bind, path traversal through
OpenAPI path parameters, runtime OpenAPI registrations that try to reach internal addresses (SSRF), and
secrets that must never show in logs, errors, health, metrics or admin answers.

Two real local HTTP services stand in for the network: `allowed` (the REST API the gateway may call)
and `internal` (an address nobody allowed); both record the raw request line of everything they get.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_hub.auth.keys import new_api_key
from tests.support.gateway import SCRAPE_HEADERS, RunningGateway, python_server, run_gateway, wait_until
from tests.support.idp import serve_asgi
from tests.support.rpc import initialize_request
from tests.support.tools import free_port

DEMO = "tests.servers.demo_server"
PROTOCOL = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
INIT = initialize_request(PROTOCOL, "sec")


# --- real local HTTP services that record what reaches them ---------------------------------


@dataclass
class Recorder:
    """An ASGI service that records every request's raw path and query, serves documents and redirects."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    documents: dict[str, Any] = field(default_factory=dict)  # path -> JSON body
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append({"method": scope["method"], "raw_path": scope["raw_path"],
                              "query": scope["query_string"], "headers": headers})
        path = scope["path"]
        status, extra, body = 200, [], {"ok": True, "path": scope["raw_path"].decode("latin-1")}
        if path in self.redirects:
            status, extra, body = 302, [(b"location", self.redirects[path].encode())], {"moved": True}
        elif path in self.documents:
            body = self.documents[path]
        elif path.endswith("/fail"):
            status, body = 500, {"error": "the service failed"}
        payload = json.dumps(body).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *extra]})
        await send({"type": "http.response.body", "body": payload})


def files_document(server: str) -> dict[str, Any]:
    """An OpenAPI document with path parameters, a redirecting operation and a failing one."""
    def param(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    ok = {"200": {"description": "ok"}}
    return {
        "openapi": "3.0.3",
        "info": {"title": "files", "version": "1"},
        "servers": [{"url": server}],
        "paths": {
            "/files/{name}": {"get": {"operationId": "getFile", "parameters": [param("name")], "responses": ok}},
            "/users/{id}/items/{item}": {"get": {"operationId": "getItem", "parameters": [param("id"), param("item")],
                                                 "responses": ok}},
            "/go": {"get": {"operationId": "go", "responses": ok}},
            "/fail": {"get": {"operationId": "fail", "responses": ok}},
        },
    }


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, Any]]:
    allowed, internal = Recorder(), Recorder()
    with serve_asgi(allowed) as allowed_url, serve_asgi(internal) as internal_url:
        allowed.redirects["/api/v1/go"] = f"{internal_url}/stolen"
        allowed.redirects["/redirect/spec"] = f"{internal_url}/spec.json"
        internal.documents["/spec.json"] = files_document(f"{allowed_url}/api/v1")
        internal.documents["/schema.json"] = {"type": "string"}
        yield {"allowed": allowed, "allowed_url": allowed_url, "internal": internal, "internal_url": internal_url}


class RawSession:
    """A Streamable HTTP session driven with plain requests, so every header can be chosen."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url, self.extra = url, dict(headers or {})
        self.http = httpx2.Client(timeout=30)
        init = self.http.post(url, json=INIT, headers={"Accept": ACCEPT, **self.extra})
        assert init.status_code == 200, (init.status_code, init.text)
        self.headers = {"Accept": ACCEPT, "Mcp-Session-Id": init.headers["mcp-session-id"],
                        "Mcp-Protocol-Version": PROTOCOL, **self.extra}
        self.http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers)
        self.next_id = 1

    def request(self, method: str, params: Any) -> dict[str, Any]:
        self.next_id += 1
        response = self.http.post(self.url, headers=self.headers,
                                  json={"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        assert response.status_code < 500, (response.status_code, response.text[:300])
        if response.headers.get("content-type", "").startswith("application/json"):
            return dict(response.json())
        for line in re.split(r"\r\n|\r|\n", response.text):
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:])
                if message.get("id") == self.next_id:
                    return dict(message)
        raise AssertionError(f"no answer: {response.status_code} {response.text[:300]!r}")

    def call(self, tool: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """(text or error message, failed?) of one tools/call."""
        answer = self.request("tools/call", {"name": tool, "arguments": arguments})
        if "error" in answer:
            return str(answer["error"].get("message")), True
        result = answer["result"]
        return " ".join(c.get("text", "") for c in result.get("content", [])), bool(result.get("isError"))


# --- gateway 1: loopback, no auth, an OpenAPI upstream --------------------------------------


@pytest.fixture(scope="module")
def open_gw(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("security-open")
    spec = tmp / "files.json"
    spec.write_text(json.dumps(files_document("http://127.0.0.1:9/unused")))
    config = {
        "upstreams": {"demo": python_server(DEMO, "--transport", "stdio")},
        "openapi": {"files": {"spec": str(spec), "base_url": f"{services['allowed_url']}/api/v1"}},
        "servers": [{"path": "/mcp/files", "upstreams": ["files"]}],
    }
    with run_gateway(config, tmp, wait_healthy=True) as gw:
        yield gw


# Host values a browser sends after a DNS rebinding (the attacker's name, with or without the port)
EVIL_HOSTS = ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}", "localhost.evil.example",
              "127.0.0.1.nip.io:{port}"]
EVIL_ORIGINS = ["http://evil.example", "http://evil.example:{port}", "null", "http://127.0.0.1.evil.example:{port}",
                "https://localhost.evil.example", "file://"]


def test_dns_rebinding_refused_on_every_mcp_route(open_gw: RunningGateway) -> None:
    port = open_gw.port
    for path in ("/mcp", "/mcp/files"):
        url = f"{open_gw.url}{path}"
        for host in EVIL_HOSTS:
            host = host.format(port=port)
            for method in ("POST", "GET", "DELETE"):
                response = httpx2.request(method, url, json=INIT if method == "POST" else None, timeout=10,
                                          headers={"Accept": ACCEPT, "Host": host})
                assert 400 <= response.status_code < 500, (path, method, host, response.status_code)
                assert "mcp-session-id" not in response.headers
        for origin in EVIL_ORIGINS:
            response = httpx2.post(url, json=INIT, timeout=10,
                                   headers={"Accept": ACCEPT, "Origin": origin.format(port=port)})
            assert 400 <= response.status_code < 500, (path, origin, response.status_code)
            assert "mcp-session-id" not in response.headers
        # positive controls: the loopback names a local client really uses
        for headers in ({"Host": f"127.0.0.1:{port}"}, {"Host": f"localhost:{port}"},
                        {"Origin": f"http://127.0.0.1:{port}"}, {"Origin": f"http://localhost:{port}"}):
            response = httpx2.post(url, json=INIT, timeout=10, headers={"Accept": ACCEPT, **headers})
            assert response.status_code == 200, (path, headers, response.status_code, response.text)


def test_dns_rebinding_refused_on_health_and_metrics(open_gw: RunningGateway) -> None:
    """A rebinding page must not read the upstream list, their errors or the usage metrics either."""
    answered: list[str] = []
    for path in ("/healthz", "/metrics"):
        assert httpx2.get(f"{open_gw.url}{path}", headers=SCRAPE_HEADERS, timeout=10).status_code == 200
        for header in ({"Host": "evil.example"}, {"Host": f"evil.example:{open_gw.port}"},
                       {"Origin": "http://evil.example"}):
            # with the scrape key too: a rebinding page in a browser that holds it must not read them either
            response = httpx2.get(f"{open_gw.url}{path}", headers={**header, **SCRAPE_HEADERS}, timeout=10)
            if not 400 <= response.status_code < 500:
                answered.append(f"GET {path} with {header}: HTTP {response.status_code} {response.text[:60]!r}")
    assert not answered, "; ".join(answered)


TRAVERSALS = ["..", ".", "../..", "../../admin", "..%2f..%2fadmin", "%2e%2e", "%2E%2E%2F", "a/b", "a\\b", "/", "//",
              "?x=1", "#frag", "a?b=c#d", "a b", "%00", "\x00", "..;/admin", "\u2025", "\uff0e\uff0e", "%252e%252e",
              "~root", "a%2Fb", "\r\nHost: evil.example", "\u00fc", "\U0001f600", "x" * 300, "....//", ".%00.",
              "..\u2215..", "\\..\\..\\", "http://127.0.0.1/", "@evil.example"]


def assert_stays_in_segment(recorder: Recorder, prefix: str, expected: list[str]) -> None:
    """The last request's path is `prefix` followed by exactly the `expected` segments, each percent-encoded
    (never a bare `.` or `..`), and it carries no query string."""
    request = recorder.requests[-1]
    raw: str = request["raw_path"].decode("latin-1")
    assert raw.startswith(prefix), raw
    segments = raw[len(prefix):].split("/")
    assert len(segments) == len(expected), (raw, expected)
    for segment, value in zip(segments, expected, strict=True):
        assert segment not in (".", ".."), raw
        assert unquote(segment, errors="strict") == value, (raw, value)
    assert request["query"] == b"", (raw, request["query"])


def test_path_parameters_stay_in_their_segment(open_gw: RunningGateway, services: dict[str, Any]) -> None:
    allowed: Recorder = services["allowed"]
    session = RawSession(open_gw.mcp)
    for value in TRAVERSALS:
        before = len(allowed.requests)
        text, failed = session.call("files__getFile", {"name": value})
        if len(allowed.requests) == before:
            assert failed and "name" in text, (value, text)  # refused before any request: fine
            continue
        assert len(allowed.requests) == before + 1
        assert_stays_in_segment(allowed, "/api/v1/files/", [value])
        before = len(allowed.requests)
        text, failed = session.call("files__getItem", {"id": value, "item": value[::-1]})
        if len(allowed.requests) > before:
            assert_stays_in_segment(allowed, "/api/v1/users/", [value, "items", value[::-1]])
    assert all(r["raw_path"].startswith(b"/api/v1/") for r in allowed.requests), allowed.requests[-5:]
    assert services["internal"].requests == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(min_size=1, max_size=40))
def test_path_parameters_property(open_gw: RunningGateway, services: dict[str, Any], value: str) -> None:
    allowed: Recorder = services["allowed"]
    before = len(allowed.requests)
    text, failed = _open_session(open_gw).call("files__getFile", {"name": value})
    if len(allowed.requests) > before:
        assert_stays_in_segment(allowed, "/api/v1/files/", [value])
    else:
        assert failed, (value, text)


_SESSIONS: dict[int, RawSession] = {}


def _open_session(gw: RunningGateway) -> RawSession:
    # why: one session for all hypothesis examples (a handshake per example would dominate the run time)
    if gw.port not in _SESSIONS:
        _SESSIONS[gw.port] = RawSession(gw.mcp)
    return _SESSIONS[gw.port]


def test_redirects_are_not_followed_to_internal_addresses(open_gw: RunningGateway,
                                                          services: dict[str, Any]) -> None:
    text, failed = RawSession(open_gw.mcp).call("files__go", {})
    assert services["internal"].requests == [], "a tool call followed a redirect to an internal address"
    assert "302" in text or failed, text


# --- gateway 2: auth, admin API, secrets everywhere -----------------------------------------

DEV_KEY, DEV_HASH = new_api_key()
BOB_KEY, BOB_HASH = new_api_key()
ADMIN_KEY, ADMIN_HASH = new_api_key()
SECRETS = {name: f"{name}-{secrets.token_hex(12)}" for name in
           ("urlpass", "header", "envtoken", "querykey", "bearer", "redispass", "wrongkey", "localfile")}


@pytest.fixture(scope="module")
def guarded(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("security-guarded")
    spec = tmp / "files.json"
    spec.write_text(json.dumps(files_document("http://127.0.0.1:9/unused")))
    base = f"{services['allowed_url']}/api/v1"
    dead, dead_redis = free_port(), free_port()
    config = {
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": "dev", "groups": ["developer"], "sha256": DEV_HASH},
            {"consumer": "bob", "groups": ["budgeted"], "sha256": BOB_HASH},
        ]},
        "upstreams": {
            "demo": python_server(DEMO, "--transport", "stdio"),
            "down": {"transport": "streamable-http", "url": f"http://ops:{SECRETS['urlpass']}@127.0.0.1:{dead}/mcp",
                     "headers": {"X-Api-Key": SECRETS["header"]}, "reconnect_max_backoff": 1},
            "missing": {"transport": "stdio", "command": "/nonexistent/mcp-server",
                        "env": {"API_TOKEN": SECRETS["envtoken"]}},
        },
        "openapi": {
            "keyed": {"spec": str(spec), "base_url": base,
                      "auth": {"type": "api_key", "in": "query", "name": "api_key", "value": SECRETS["querykey"]}},
            "bearer": {"spec": str(spec), "base_url": base, "auth": {"type": "bearer", "token": SECRETS["bearer"]}},
        },
        "groups": {"budgeted": {"budgets": [{"tokens": 100000, "window": "1 hour"}]}},
        "storage": f"redis://:{SECRETS['redispass']}@127.0.0.1:{dead_redis}",
        "admin": {"keys": [{"name": "ops", "sha256": ADMIN_HASH}], "allowed_base_urls": [services["allowed_url"] + "/"]},
    }
    # why: --verbose (debug logs) is where secrets leak first; none may appear even there
    with run_gateway(config, tmp, name="guarded", args=["--verbose"]) as gw:
        wait_until(lambda: all(gw.health()["upstreams"][u]["state"] == "up" for u in ("demo", "keyed", "bearer")),
                   timeout=60, what="demo and the OpenAPI upstreams up")
        yield gw


def admin_post(gw: RunningGateway, body: dict[str, Any]) -> httpx2.Response:
    return httpx2.post(f"{gw.url}/admin/openapi", json=body, timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def test_dns_rebinding_refused_with_a_valid_token(guarded: RunningGateway) -> None:
    auth = {"Authorization": f"Bearer {DEV_KEY}", "Accept": ACCEPT}
    assert httpx2.post(guarded.mcp, json=INIT, headers=auth, timeout=10).status_code == 200
    for extra in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
        response = httpx2.post(guarded.mcp, json=INIT, headers={**auth, **extra}, timeout=10)
        assert 400 <= response.status_code < 500, (extra, response.status_code)


def test_runtime_registration_cannot_reach_internal_addresses(guarded: RunningGateway,
                                                              services: dict[str, Any], tmp_path: Path) -> None:
    allowed_url, internal_url = services["allowed_url"], services["internal_url"]
    internal: Recorder = services["internal"]
    internal_port = int(internal_url.rsplit(":", 1)[1])
    doc = files_document(f"{allowed_url}/api/v1")

    def with_paths(**changes: Any) -> dict[str, Any]:
        out = json.loads(json.dumps(doc))
        out["paths"] = {**out["paths"], **changes}
        return out

    local_secret = tmp_path / "gateway-host-secret.json"
    local_secret.write_text(json.dumps({"type": "string", "description": SECRETS["localfile"]}))
    param_ref = {"name": "q", "in": "query", "required": False}
    cases: dict[str, dict[str, Any]] = {
        "base_url internal": {"document": doc, "base_url": f"{internal_url}/api"},
        "document servers internal": {"document": files_document(f"{internal_url}/api")},
        "server variables internal": {"document": {**doc, "servers": [{
            "url": "http://{host}:{port}/api", "variables": {"host": {"default": "127.0.0.1"},
                                                             "port": {"default": str(internal_port)}}}]}},
        "path-level servers": {"document": with_paths(**{"/leak": {
            "servers": [{"url": internal_url}], "get": {"operationId": "leak", "responses": {"200": {
                "description": "ok"}}}}}), "base_url": f"{allowed_url}/api/v1"},
        "operation-level servers": {"document": with_paths(**{"/leak": {"get": {
            "operationId": "leak", "servers": [{"url": internal_url}], "responses": {"200": {"description": "ok"}}}}}),
            "base_url": f"{allowed_url}/api/v1"},
        "absolute path keys": {"document": with_paths(**{
            f"{internal_url}/abs": {"get": {"operationId": "abs", "responses": {"200": {"description": "ok"}}}},
            f"//127.0.0.1:{internal_port}/rel": {"get": {"operationId": "rel", "responses": {"200": {
                "description": "ok"}}}}}), "base_url": f"{allowed_url}/api/v1"},
        "$ref to an internal URL": {"document": with_paths(**{"/ref": {"get": {
            "operationId": "ref", "parameters": [{**param_ref, "schema": {"$ref": f"{internal_url}/schema.json"}}],
            "responses": {"200": {"description": "ok"}}}}}), "base_url": f"{allowed_url}/api/v1"},
        "spec URL redirecting inside": {"spec": f"{allowed_url}/redirect/spec", "base_url": f"{allowed_url}/api/v1"},
        "spec URL internal": {"spec": f"{internal_url}/spec.json", "base_url": f"{allowed_url}/api/v1"},
    }
    for host in ("0.0.0.0", "[::ffff:127.0.0.1]", "2130706433", "127.1", "localhost", "[::1]", "127.0.0.2"):
        cases[f"base_url {host}"] = {"document": doc, "base_url": f"http://{host}:{internal_port}/api"}
    outcomes: dict[str, str] = {}
    problems: dict[str, str] = {}  # why: every case is tried, so one run names all the holes
    for i, (what, body) in enumerate(cases.items()):
        name = f"ssrf{i}"
        response = admin_post(guarded, {"name": name, **body})
        outcomes[what] = f"{response.status_code} {response.text[:80] if response.status_code >= 500 else ''}"
        if response.status_code >= 500:
            problems[what] = f"HTTP {response.status_code}"
        if response.status_code == 201:
            # registered: none of its tools may reach the internal service either
            session = RawSession(guarded.mcp, {"Authorization": f"Bearer {DEV_KEY}"})
            schemas = {t["name"]: t["inputSchema"] for t in session.request("tools/list", {})["result"]["tools"]}
            for tool in response.json()["tools"]:
                session.call(tool, {arg: "x" for arg in schemas.get(tool, {}).get("required", [])})
        if internal.requests:
            problems[what] = "the gateway called the internal service: " + ", ".join(
                f"{r['method']} {r['raw_path'].decode()}" for r in internal.requests)
            internal.requests.clear()
    # an inline document must not read files of the gateway host through $ref (admin.spec_dirs is empty)
    response = admin_post(guarded, {"name": "localref", "document": with_paths(**{"/ref": {"get": {
        "operationId": "ref", "parameters": [{**param_ref, "schema": {"$ref": local_secret.as_uri()}}],
        "responses": {"200": {"description": "ok"}}}}}), "base_url": f"{allowed_url}/api/v1"})
    outcomes["$ref to a file on the gateway host"] = str(response.status_code)
    listed = RawSession(guarded.mcp, {"Authorization": f"Bearer {DEV_KEY}"}).request("tools/list", {})
    if response.status_code >= 500 or SECRETS["localfile"] in response.text + json.dumps(listed):
        problems["$ref to a file on the gateway host"] = f"HTTP {response.status_code}; the file's content is " + (
            "in tools/list" if SECRETS["localfile"] in json.dumps(listed) else "not exposed")
    print("\nSSRF registrations:", outcomes)
    assert not problems, "; ".join(problems) if isinstance(problems, list) else problems


def test_malformed_registration_urls_are_4xx(guarded: RunningGateway, services: dict[str, Any]) -> None:
    doc = files_document(f"{services['allowed_url']}/api/v1")
    port = services["allowed_url"].rsplit(":", 1)[1]
    problems: list[str] = []
    for i, url in enumerate([f"http://127.0.0.1:{port}:1/", "http://127.0.0.1:99999/", "http://127.0.0.1:abc/",
                             "http://[::1/", f"http://127.0.0.1:{port}\\@evil.example/", "http:///nohost",
                             "javascript:alert(1)", "http://" + "a" * 300 + "/"]):
        for field_name, body in (("base_url", {"document": doc, "base_url": url}), ("spec", {"spec": url})):
            response = admin_post(guarded, {"name": f"bad{i}{field_name[0]}", **body})
            if not 400 <= response.status_code < 500:
                problems.append(f"{field_name} {url[:40]!r}: HTTP {response.status_code} {response.text[:60]!r}")
    assert guarded.proc.poll() is None
    assert not problems, "; ".join(problems) if isinstance(problems, list) else problems


def test_no_secret_in_logs_errors_health_metrics_or_admin(guarded: RunningGateway, services: dict[str, Any]) -> None:
    allowed: Recorder = services["allowed"]
    seen: list[str] = []  # every text a caller or operator can read
    dev = RawSession(guarded.mcp, {"Authorization": f"Bearer {DEV_KEY}"})
    for tool, args in [("keyed__getFile", {"name": "a"}), ("keyed__fail", {}), ("bearer__getFile", {"name": "b"}),
                       ("bearer__fail", {}), ("down__echo", {"text": "x"}), ("missing__echo", {"text": "x"}),
                       ("demo__echo", {"text": "x"})]:
        seen.append(json.dumps(dev.call(tool, args)))
    # positive control: the credentials really went out to the REST API
    sent = [r["query"].decode() + json.dumps(r["headers"]) for r in allowed.requests]
    assert any(SECRETS["querykey"] in s for s in sent) and any(SECRETS["bearer"] in s for s in sent)
    # bob has a budget and the budget storage (with a password in its URL) is unreachable
    bob = RawSession(guarded.mcp, {"Authorization": f"Bearer {BOB_KEY}"})
    text, failed = bob.call("demo__echo", {"text": "x"})
    assert failed and "storage" in text.lower(), text
    seen.append(text)
    for header in ({"Authorization": f"Bearer mcphub_{SECRETS['wrongkey']}"}, {"X-Api-Key": SECRETS["wrongkey"]}):
        response = httpx2.post(guarded.mcp, json=INIT, headers={"Accept": ACCEPT, **header}, timeout=10)
        assert response.status_code == 401
        seen.append(response.text + json.dumps(dict(response.headers)))
    wait_until(lambda: guarded.health()["upstreams"]["down"].get("error"), what="the down upstream's error")
    seen.append(json.dumps(guarded.health()))
    seen.append(guarded.metrics())
    for path in ("upstreams", "openapi", "catalog?group=developer"):
        response = httpx2.get(f"{guarded.url}/admin/{path}", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                              timeout=10)
        assert response.status_code == 200, (path, response.status_code)
        seen.append(response.text)
    time.sleep(0.5)  # why: let the last log lines reach the file
    seen.append(guarded.log_text())
    leaks = {name: where for name, value in SECRETS.items() if name != "localfile"
             for where, text in (("log", seen[-1]), ("answers", "\n".join(seen[:-1]))) if value in text}
    for key in (DEV_KEY, BOB_KEY, ADMIN_KEY):
        if key in "\n".join(seen):
            leaks[f"api key {key[:10]}..."] = "somewhere"
    context = {name: _context(seen[-1], SECRETS[name]) for name in leaks if name in SECRETS}
    assert not leaks, f"secrets leaked: {leaks}; first log occurrence: {context}"


def _context(text: str, secret: str) -> str:
    at = text.find(secret)
    return text[max(0, at - 150):at + len(secret) + 20] if at >= 0 else ""
