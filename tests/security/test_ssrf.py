"""SSRF through runtime OpenAPI registration (`POST /admin/openapi`): no URL a registration names, or
its document names, may lead the gateway outside `admin.allowed_base_urls` / `admin.allowed_spec_urls`.

A real gateway process, and two real HTTP services on loopback ports:
- `public`, the API the allow-lists name (`/api` for calls, `/specs` for documents). It reads paths
  as leniently as a careless reverse proxy does (escapes decoded repeatedly, backslashes as slashes,
  `..;` as `..`, dot segments removed), so a request whose path climbs out of `/api` lands in its
  `/internal` area, which records the hit;
- `internal`, on another port, which records every request it ever gets.

Each attempt asserts the expected refusal (status, error code, the key and reason in the message),
that the answer quotes neither the URL nor the document (a canary is in both), and that neither the
internal service nor the internal area saw a request.
"""

from __future__ import annotations

import json
import posixpath
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_hub.auth.keys import new_api_key
from mcp_hub.upstreams.openapi.urls import URLRefused, canonical, check_url
from tests.support.gateway import RunningGateway, run_gateway

ADMIN_KEY, ADMIN_HASH = new_api_key()
OPS_KEY, OPS_HASH = new_api_key()
CANARY = f"CANARY{secrets.token_hex(6)}"  # in every attack URL and document: an answer must not quote it


# -- the services ------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    target: str  # the request target exactly as sent


@dataclass
class Service:
    """A stdlib HTTP server on a loopback port, in a thread; `answer` decides every response."""

    answer: Callable[[Service, str, str], tuple[int, dict[str, str], bytes]]
    requests: list[Seen] = field(default_factory=list)
    internal_hits: list[Seen] = field(default_factory=list)
    documents: dict[str, Any] = field(default_factory=dict)
    peer: Service | None = None

    def start(self) -> None:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                service.requests.append(Seen(self.command, self.path))
                status, headers, body = service.answer(service, self.command, self.path)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def lenient_path(target: str) -> str:
    """How a careless server reads a request path."""
    path = target.split("?", 1)[0]
    for _ in range(4):
        path = unquote(path)
    path = re.sub(r"/+", "/", path.replace("\\", "/"))
    parts = [p.split(";", 1)[0] if p.split(";", 1)[0] in (".", "..") else p for p in path.split("/")]
    return posixpath.normpath("/" + "/".join(parts).lstrip("/"))


def _json(status: int, value: Any, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(value).encode()


def answer_public(service: Service, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    path = lenient_path(target)
    assert service.peer is not None
    if path.startswith("/internal"):
        service.internal_hits.append(Seen(method, target))
        return _json(200, {"internal": CANARY})
    if path == "/api/redirect":
        return 302, {"Location": f"{service.peer.url}/stolen/{CANARY}"}, b""
    if path == "/specs/redirect.json":
        return 302, {"Location": f"{service.peer.url}/spec.json"}, b""
    if path.startswith("/specs/") and path[len("/specs/"):] in service.documents:
        return _json(200, service.documents[path[len("/specs/"):]])
    if path.startswith("/api"):
        return _json(200, {"raw": target, "path": path})
    return _json(404, {"error": "not found"})


def answer_internal(service: Service, method: str, target: str) -> tuple[int, dict[str, str], bytes]:
    # A valid OpenAPI document full of canaries: if anything fetched it, the attempt would show it.
    return _json(200, document(title=CANARY))


# -- documents ---------------------------------------------------------------------------------

OK = {"200": {"description": "ok"}}


def operation(op_id: str, **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "responses": OK, **extra}


def document(*, servers: list[Any] | None = None, paths: dict[str, Any] | None = None,
             title: str = "t", **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": title, "version": "1", "description": f"the document's own text {CANARY}"},
        "paths": paths if paths is not None else {
            "/items": {"get": operation("listItems")},
            "/items/{name}": {"get": operation("getItem", parameters=[
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}])},
            "/redirect": {"get": operation("redirect")},
        },
        **extra,
    }
    if servers is not None:
        doc["servers"] = servers
    return doc


def with_ref(ref: str) -> dict[str, Any]:
    """A document whose only operation takes a parameter from `$ref`."""
    return document(paths={"/items": {"get": operation("listItems", parameters=[{"$ref": ref}])}})


# -- the stack ---------------------------------------------------------------------------------


@dataclass
class Stack:
    gw: RunningGateway
    public: Service
    internal: Service
    count: int = 0

    @property
    def api(self) -> str:
        return f"{self.public.url}/api"

    @property
    def specs(self) -> str:
        return f"{self.public.url}/specs"

    def name(self) -> str:
        self.count += 1
        return f"r{self.count}"

    def register(self, body: dict[str, Any]) -> httpx2.Response:
        body = {"name": self.name(), **body}
        return httpx2.post(f"{self.gw.url}/admin/openapi", json=body, timeout=60,
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def serve(self, name: str, doc: dict[str, Any]) -> str:
        self.public.documents[name] = doc
        return f"{self.specs}/{name}"

    def nothing_internal(self) -> None:
        assert self.internal.requests == [], self.internal.requests
        assert self.public.internal_hits == [], self.public.internal_hits


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    internal = Service(answer_internal)
    public = Service(answer_public, peer=internal)
    internal.start()
    public.start()
    config = {
        "auth": {"mode": "api_key", "api_keys": [{"consumer": "olga", "groups": ["ops"], "sha256": OPS_HASH}]},
        "default_acl": "deny",
        "groups": {"ops": {"tools": {"allow": ["*"]}}},
        "admin": {
            "keys": [{"name": "tester", "sha256": ADMIN_HASH}],
            "allowed_base_urls": [f"{public.url}/api"],
            "allowed_spec_urls": [f"{public.url}/specs"],
            "registry": "memory://",
        },
    }
    try:
        with run_gateway(config, tmp_path_factory.mktemp("ssrf"), args=["--verbose"]) as gw:
            yield Stack(gw, public, internal)
    finally:
        public.stop()
        internal.stop()


def raw_get(service: Service, target: str) -> bytes:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_the_services_would_see_an_escape(stack: Stack) -> None:
    """The harness itself: without the gateway in between, every escape lands where it is recorded."""
    try:
        for target in (f"/api/../internal/{CANARY}", f"/api/%2e%2e/internal/{CANARY}", "/api/%252e%252e/internal",
                       "/api/..%2finternal", "/api/..\\internal", "/api/..;/internal", "/api//../../internal"):
            raw_get(stack.public, target)  # byte for byte: HTTP clients would normalize it
        assert len(stack.public.internal_hits) == 7
        httpx2.get(f"{stack.internal.url}/anything")
        assert len(stack.internal.requests) == 1
    finally:
        stack.public.internal_hits.clear()
        stack.internal.requests.clear()


# -- the attempts ------------------------------------------------------------------------------

# Expected answers: (status, error code, text the message must hold).
NOT_UNDER = (403, "url_not_allowed", "no prefix matches its normalized scheme, host, port and path")
BACKSLASH = (422, "invalid_url", "backslash")
ENCODED = (422, "invalid_url", "encoded slash, backslash or percent sign")
USERINFO = (422, "invalid_url", "user:password@")
FRAGMENT = (422, "invalid_url", "#fragment")
SCHEME = (422, "invalid_url", "not an http:// or https:// URL")
CONTROL = (422, "invalid_url", "space, control or non-ASCII")
MALFORMED = (422, "invalid_url", "malformed percent-encoding")
DOT_PARAM = (422, "invalid_url", "`..;`")
HOST = (422, "invalid_url", "host is percent-encoded")


@dataclass(frozen=True)
class Attempt:
    """A registration body built from the stack's URLs, and the refusal it must get."""

    body: Callable[[Stack], dict[str, Any]]
    expected: tuple[int, str, str]
    key: str  # the key the message must name


def base(url: Callable[[Stack], str], expected: tuple[int, str, str]) -> Attempt:
    return Attempt(lambda s: {"document": document(), "base_url": url(s)}, expected, "base_url")


def server(url: Callable[[Stack], str], expected: tuple[int, str, str]) -> Attempt:
    return Attempt(lambda s: {"document": document(servers=[{"url": url(s)}])}, expected, "servers[0].url")


def variables(url: str, defaults: Callable[[Stack], dict[str, str]], expected: tuple[int, str, str]) -> Attempt:
    def body(s: Stack) -> dict[str, Any]:
        variables = {name: {"default": value} for name, value in defaults(s).items()}
        return {"document": document(servers=[{"url": url, "variables": variables}])}

    return Attempt(body, expected, "servers[0].url")


def op_server(url: Callable[[Stack], str], expected: tuple[int, str, str], level: str = "operation") -> Attempt:
    def body(s: Stack) -> dict[str, Any]:
        servers = [{"url": url(s)}]
        item = ({"get": operation("listItems", servers=servers)} if level == "operation"
                else {"servers": servers, "get": operation("listItems")})
        return {"document": document(paths={"/items": item}), "base_url": s.api}

    return Attempt(body, expected, "servers[0].url")


def path_key(key: str, expected: tuple[int, str, str]) -> Attempt:
    return Attempt(lambda s: {"document": document(paths={key: {"get": operation("listItems")}}), "base_url": s.api},
                   expected, "paths key")


def spec(url: Callable[[Stack], str], expected: tuple[int, str, str]) -> Attempt:
    return Attempt(lambda s: {"spec": url(s), "base_url": s.api}, expected, "spec")


def ref(target: Callable[[Stack], str], expected: tuple[int, str, str], *, by_url: bool = False) -> Attempt:
    def body(s: Stack) -> dict[str, Any]:
        doc = with_ref(target(s))
        if by_url:
            return {"spec": s.serve(f"refs-{secrets.token_hex(4)}.json", doc), "base_url": s.api}
        return {"document": doc, "base_url": s.api}

    return Attempt(body, expected, "$ref")


def P(s: Stack) -> str:  # noqa: N802 - the public origin
    return s.public.url


def internal_port(s: Stack) -> str:
    return f"127.0.0.1:{s.internal.port}"


ATTEMPTS: dict[str, Attempt] = {
    # base_url, as the admin sends it
    "base_url dot segments": base(lambda s: f"{s.api}/../internal/{CANARY}", NOT_UNDER),
    "base_url %2e%2e": base(lambda s: f"{s.api}/%2e%2e/internal/{CANARY}", NOT_UNDER),
    "base_url %2E%2E": base(lambda s: f"{s.api}/%2E%2E/internal/{CANARY}", NOT_UNDER),
    "base_url .%2e": base(lambda s: f"{s.api}/.%2e/internal/{CANARY}", NOT_UNDER),
    "base_url %2e.": base(lambda s: f"{s.api}/%2e./internal/{CANARY}", NOT_UNDER),
    "base_url ./..": base(lambda s: f"{s.api}/./../internal/{CANARY}", NOT_UNDER),
    "base_url ..-ending": base(lambda s: f"{s.api}/sub/../..", NOT_UNDER),
    "base_url //..": base(lambda s: f"{s.api}//../../internal/{CANARY}", NOT_UNDER),
    "base_url upper-case path": base(lambda s: f"{P(s)}/API/../internal/{CANARY}", NOT_UNDER),
    "base_url upper-case scheme": base(lambda s: f"HTTP://127.0.0.1:{s.public.port}/api/../internal/{CANARY}", NOT_UNDER),
    "base_url ..%2f": base(lambda s: f"{s.api}/..%2finternal/{CANARY}", ENCODED),
    "base_url ..%2F": base(lambda s: f"{s.api}/..%2Finternal/{CANARY}", ENCODED),
    "base_url %2e%2e%2f": base(lambda s: f"{s.api}/%2e%2e%2finternal/{CANARY}", ENCODED),
    "base_url %5c": base(lambda s: f"{s.api}/%5c..%5cinternal/{CANARY}", ENCODED),
    "base_url double-encoded dots": base(lambda s: f"{s.api}/%252e%252e/internal/{CANARY}", ENCODED),
    "base_url double-encoded slash": base(lambda s: f"{s.api}/..%252finternal/{CANARY}", ENCODED),
    "base_url backslashes": base(lambda s: f"{s.api}\\..\\internal\\{CANARY}", BACKSLASH),
    "base_url mixed slashes": base(lambda s: f"{s.api}/..\\internal/{CANARY}", BACKSLASH),
    "base_url ..;": base(lambda s: f"{s.api}/..;/internal/{CANARY}", DOT_PARAM),
    "base_url %u escape": base(lambda s: f"{s.api}/%u002e%u002e/internal/{CANARY}", MALFORMED),
    "base_url tab in path": base(lambda s: f"{s.api}/.\t./internal/{CANARY}", CONTROL),
    "base_url non-ASCII dot": base(lambda s: f"{s.api}/\u2025/internal/{CANARY}", CONTROL),
    "base_url other port": base(lambda s: f"http://{internal_port(s)}/api/{CANARY}", NOT_UNDER),
    "base_url localhost other port": base(lambda s: f"http://localhost:{s.internal.port}/api/{CANARY}", NOT_UNDER),
    "base_url IPv4-mapped IPv6": base(lambda s: f"http://[::ffff:127.0.0.1]:{s.internal.port}/api/{CANARY}", NOT_UNDER),
    "base_url decimal IP": base(lambda s: f"http://2130706433:{s.internal.port}/api/{CANARY}", NOT_UNDER),
    "base_url backslash userinfo": base(lambda s: f"{P(s)}\\@{internal_port(s)}/api/{CANARY}", BACKSLASH),
    "base_url userinfo": base(lambda s: f"http://127.0.0.1:{s.public.port}@{internal_port(s)}/api/{CANARY}", USERINFO),
    "base_url fragment host": base(lambda s: f"http://{internal_port(s)}#@127.0.0.1:{s.public.port}/api", FRAGMENT),
    "base_url encoded host": base(lambda s: f"http://127.0.0.1%3A{s.internal.port}/api/{CANARY}", HOST),
    "base_url string prefix": base(lambda s: f"{s.api}x/{CANARY}", NOT_UNDER),
    "base_url file scheme": base(lambda s: f"file:///etc/{CANARY}", SCHEME),
    "base_url gopher": base(lambda s: f"gopher://{internal_port(s)}/_{CANARY}", SCHEME),
    # the document's servers
    "servers dot segments": server(lambda s: f"{s.api}/../internal/{CANARY}", NOT_UNDER),
    "servers %2e%2e": server(lambda s: f"{s.api}/%2e%2e/internal/{CANARY}", NOT_UNDER),
    "servers %2E%2E mixed case": server(lambda s: f"{s.api}/%2E%2e/internal/{CANARY}", NOT_UNDER),
    "servers backslashes": server(lambda s: f"{s.api}\\..\\internal\\{CANARY}", BACKSLASH),
    "servers double encoding": server(lambda s: f"{s.api}/%252e%252e/internal/{CANARY}", ENCODED),
    "servers other port": server(lambda s: f"http://{internal_port(s)}/{CANARY}", NOT_UNDER),
    "servers userinfo": server(lambda s: f"http://x@{internal_port(s)}/api/{CANARY}", USERINFO),
    "servers ..;": server(lambda s: f"{s.api}/..;/internal/{CANARY}", DOT_PARAM),
    # server variables, substituted by their defaults
    "variable path with ..": variables("http://127.0.0.1:{port}/{base}",
                                       lambda s: {"port": str(s.public.port), "base": f"api/../internal/{CANARY}"},
                                       NOT_UNDER),
    "variable path with %2e%2e": variables("http://127.0.0.1:{port}/{base}",
                                           lambda s: {"port": str(s.public.port),
                                                      "base": f"api/%2e%2e/internal/{CANARY}"}, NOT_UNDER),
    "variable host": variables("http://{host}/api/" + CANARY, lambda s: {"host": internal_port(s)}, NOT_UNDER),
    "variable port": variables("http://127.0.0.1:{port}/api/" + CANARY, lambda s: {"port": str(s.internal.port)},
                               NOT_UNDER),
    "variable smuggles userinfo": variables("http://127.0.0.1:{port}/api/" + CANARY,
                                            lambda s: {"port": f"{s.public.port}@{internal_port(s)}"}, USERINFO),
    "variable backslashes": variables("{root}/x", lambda s: {"root": f"{s.api}\\..\\internal\\{CANARY}"}, BACKSLASH),
    "variable encoded slash": variables("{root}/x", lambda s: {"root": f"{s.api}/..%2Finternal/{CANARY}"}, ENCODED),
    "variable scheme": variables("{scheme}://127.0.0.1/" + CANARY, lambda s: {"scheme": "file"}, SCHEME),
    # operation- and path-level servers (they win over base_url)
    "operation servers dot segments": op_server(lambda s: f"{s.api}/../internal/{CANARY}", NOT_UNDER),
    "operation servers %2e%2e": op_server(lambda s: f"{s.api}/%2e%2e/internal/{CANARY}", NOT_UNDER),
    "operation servers other port": op_server(lambda s: f"http://{internal_port(s)}/{CANARY}", NOT_UNDER),
    "operation servers backslash": op_server(lambda s: f"{s.api}\\..\\internal/{CANARY}", BACKSLASH),
    "path servers dot segments": op_server(lambda s: f"{s.api}/../internal/{CANARY}", NOT_UNDER, "path"),
    "path servers other port": op_server(lambda s: f"http://{internal_port(s)}/x/{CANARY}", NOT_UNDER, "path"),
    "path servers double encoding": op_server(lambda s: f"{s.api}/%252e%252e/{CANARY}", ENCODED, "path"),
    # paths keys, joined to an allowed base
    "paths key with ..": path_key(f"/../internal/{CANARY}", NOT_UNDER),
    "paths key with %2e%2e": path_key(f"/%2e%2e/internal/{CANARY}", NOT_UNDER),
    "paths key with encoded slash": path_key(f"/..%2Finternal/{CANARY}", ENCODED),
    "paths key with backslash": path_key(f"/..\\internal\\{CANARY}", BACKSLASH),
    # the document's own URL
    "spec dot segments": spec(lambda s: f"{s.specs}/../internal/{CANARY}.json", NOT_UNDER),
    "spec %2e%2e": spec(lambda s: f"{s.specs}/%2e%2e/internal/{CANARY}.json", NOT_UNDER),
    "spec %2E%2E": spec(lambda s: f"{s.specs}/%2E%2E/internal/{CANARY}.json", NOT_UNDER),
    "spec backslashes": spec(lambda s: f"{s.specs}\\..\\internal\\{CANARY}.json", BACKSLASH),
    "spec double encoding": spec(lambda s: f"{s.specs}/%252e%252e/internal/{CANARY}.json", ENCODED),
    "spec other port": spec(lambda s: f"http://{internal_port(s)}/specs/{CANARY}.json", NOT_UNDER),
    "spec userinfo": spec(lambda s: f"http://u@{internal_port(s)}/specs/{CANARY}.json", USERINFO),
    "spec under base URLs only": spec(lambda s: f"{s.api}/{CANARY}.json", NOT_UNDER),
    "spec file URL": spec(lambda s: f"file:///etc/{CANARY}", SCHEME),
    "spec upper-case FILE": spec(lambda s: f"FILE:///etc/{CANARY}", SCHEME),
    # $refs to other documents
    "$ref to the internal port": ref(lambda s: f"http://{internal_port(s)}/{CANARY}.json#/P", NOT_UNDER),
    "$ref dot segments": ref(lambda s: f"{s.specs}/../internal/{CANARY}.json#/P", NOT_UNDER),
    "$ref %2e%2e": ref(lambda s: f"{s.specs}/%2e%2e/internal/{CANARY}.json#/P", NOT_UNDER),
    "$ref %2E%2E": ref(lambda s: f"{s.specs}/%2E%2E/internal/{CANARY}.json#/P", NOT_UNDER),
    "$ref double encoding": ref(lambda s: f"{s.specs}/%252e%252e/internal/{CANARY}.json#/P", ENCODED),
    "$ref userinfo": ref(lambda s: f"http://{P(s)[7:]}@{internal_port(s)}/{CANARY}.json#/P", USERINFO),
    "$ref relative ..": ref(lambda s: f"../internal/{CANARY}.json#/P", NOT_UNDER, by_url=True),
    "$ref relative %2e%2e": ref(lambda s: f"%2e%2e/internal/{CANARY}.json#/P", NOT_UNDER, by_url=True),
    "$ref relative backslashes": ref(lambda s: f"..\\internal\\{CANARY}.json#/P", BACKSLASH, by_url=True),
    "$ref absolute path": ref(lambda s: f"/internal/{CANARY}.json#/P", NOT_UNDER, by_url=True),
    "$ref network-path": ref(lambda s: f"//{internal_port(s)}/{CANARY}.json#/P", NOT_UNDER, by_url=True),
    "$ref to a local file": ref(lambda s: f"file:///etc/{CANARY}.json#/P", (403, "url_not_allowed", "admin.spec_dirs")),
}


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_registration_is_refused(stack: Stack, name: str) -> None:
    attempt = ATTEMPTS[name]
    body = attempt.body(stack)
    response = stack.register(body)
    status, code, reason = attempt.expected
    assert response.status_code == status, (response.status_code, response.text)
    answer = response.json()
    assert answer["error"] == code, answer
    assert reason in answer["message"] and attempt.key in answer["message"], answer
    # The answer names the key and the reason: not the URL, not the document.
    assert CANARY not in response.text and str(stack.internal.port) not in response.text
    assert "internal" not in response.text
    stack.nothing_internal()
    # Nothing of it stays registered.
    listed = httpx2.get(f"{stack.gw.url}/admin/openapi", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert body.get("name", "") not in [r["name"] for r in listed["registrations"]]


def test_redirects_are_not_followed(stack: Stack) -> None:
    # The document's URL answers a redirect to the internal service.
    response = stack.register({"spec": f"{stack.specs}/redirect.json", "base_url": stack.api})
    assert response.status_code == 422 and response.json()["error"] == "upstream_failed", response.text
    assert "redirect (HTTP 302), which is not followed" in response.json()["message"]
    stack.nothing_internal()
    # A $ref that answers a redirect: the operation is skipped (reason withheld), nothing followed.
    doc = document(paths={
        "/items": {"get": operation("listItems", parameters=[{"$ref": f"{stack.specs}/redirect.json#/P"}])},
        "/other": {"get": operation("other")},
    })
    response = stack.register({"spec": stack.serve("redirecting-ref.json", doc), "base_url": stack.api})
    assert response.status_code == 201, response.text
    skipped = response.json()["skipped"]
    assert [s["path"] for s in skipped] == ["/items"] and "RefError" in skipped[0]["reason"]
    assert CANARY not in response.text and str(stack.internal.port) not in response.text
    stack.nothing_internal()


async def _call(stack: Stack, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {OPS_KEY}"}, timeout=30)
    async with Client(streamable_http_client(stack.gw.mcp, http_client=http), mode="legacy") as client:
        return await client.call_tool(tool, arguments)


def _text(result: types.CallToolResult) -> str:
    return "".join(b.text for b in result.content if isinstance(b, types.TextContent))


@pytest.fixture(scope="module")
def registered(stack: Stack) -> str:
    """A good registration (inline document, base_url at the allowed prefix); its tool prefix."""
    response = stack.register({"document": document(), "base_url": stack.api})
    assert response.status_code == 201, response.text
    return response.json()["name"]


async def test_calls_to_the_allowed_api_work(stack: Stack, registered: str) -> None:
    result = await _call(stack, f"{registered}__getItem", {"name": "pen"})
    assert not result.is_error, result
    assert json.loads(_text(result))["path"] == "/api/items/pen"
    stack.nothing_internal()


# Arguments of GET /items/{name}, and whether a lenient server would read the URL as leaving /api.
CALL_ARGUMENTS = {
    "../../internal/" + CANARY: True,
    "%2e%2e%2f%2e%2e%2finternal": True,  # sent as %252e...: decoded twice, it climbs
    "..\\..\\internal": True,
    "..;/..;/internal": True,
    "..": False,  # /api/items/.. is /api: still under the prefix
    "a/b": False,
}


@pytest.mark.parametrize("value", list(CALL_ARGUMENTS),
                         ids=[v.replace(CANARY, "CANARY") for v in CALL_ARGUMENTS])  # stable ids across processes
async def test_request_time_check_of_the_url_actually_requested(stack: Stack, registered: str, value: str) -> None:
    before = len(stack.public.requests)
    result = await _call(stack, f"{registered}__getItem", {"name": value})
    text = _text(result)
    if CALL_ARGUMENTS[value]:
        assert result.is_error and "refused: request URL is not under any allowed base URL" in text, text
        assert CANARY not in text
        assert len(stack.public.requests) == before  # refused before anything was sent
    else:
        assert not result.is_error and lenient_path(json.loads(text)["raw"]).startswith("/api"), text
    stack.nothing_internal()


async def test_a_redirect_answer_is_not_followed(stack: Stack, registered: str) -> None:
    result = await _call(stack, f"{registered}__redirect", {})
    assert not result.is_error and _text(result).startswith("HTTP 302"), result
    stack.nothing_internal()


ALLOWED: dict[str, Callable[[Stack], dict[str, Any]]] = {
    "base_url with harmless dot segments": lambda s: {"document": document(), "base_url": f"{s.api}/v1/./../"},
    "base_url with upper-case scheme and host": lambda s: {
        "document": document(), "base_url": f"HTTP://127.0.0.1:{s.public.port}/api"},
    "base_url with encoded unreserved characters": lambda s: {"document": document(), "base_url": f"{s.api}/%7Ev1"},
    "servers of the document": lambda s: {"document": document(servers=[{"url": f"{s.api}/v2"}])},
    "server variables": lambda s: {"document": document(servers=[{
        "url": "http://127.0.0.1:{port}/{base}", "variables": {"port": {"default": str(s.public.port)},
                                                            "base": {"default": "api/v3", "enum": ["api/v3"]}}}])},
    "operation servers under the prefix": lambda s: {"document": document(paths={"/items": {"get": operation(
        "listItems", servers=[{"url": f"{s.api}/v4"}])}}), "base_url": s.api},
    "spec by URL with relative server and $ref": lambda s: {"spec": s.serve("good.json", {
        **with_ref("common.json#/P"), "servers": [{"url": "../api"}]})},
}


@pytest.mark.parametrize("name", list(ALLOWED))
async def test_allowed_registrations_still_work(stack: Stack, name: str) -> None:
    stack.public.documents["common.json"] = {"P": {"name": "q", "in": "query", "schema": {"type": "string"}}}
    response = stack.register(ALLOWED[name](stack))
    assert response.status_code == 201, response.text
    registration = response.json()
    assert registration["state"] == "up" and registration["tools"]
    listed = httpx2.get(f"{stack.gw.url}/admin/openapi", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    stored = next(r for r in listed["registrations"] if r["name"] == registration["name"])
    if stored["base_url"] is not None:  # kept in normalized form: what is checked is what is requested
        assert stored["base_url"] == check_url(stored["base_url"], None, "base_url")
    tool = registration["tools"][0]
    result = await _call(stack, tool, {"q": "x"} if "spec" in name else {})
    assert not result.is_error, result
    assert json.loads(_text(result))["path"].startswith("/api")
    stack.nothing_internal()


# -- the rule itself, without a gateway --------------------------------------------------------


@pytest.mark.parametrize(("url", "normalized"), [
    ("HTTP://Example.COM:80/a/./b/../c", "http://example.com/a/c"),
    ("https://example.com:443/%7euser/%2E%2e/x", "https://example.com/x"),
    ("http://example.com", "http://example.com/"),
    ("http://[::1]:8080/a?b=%2F", "http://[::1]:8080/a?b=%2F"),
])
def test_normalization(url: str, normalized: str) -> None:
    assert str(canonical(url)) == normalized


def test_prefixes_match_on_segment_boundaries() -> None:
    prefixes = ["https://api.example.com/v1"]
    assert check_url("https://api.example.com/v1/users", prefixes, "u") == "https://api.example.com/v1/users"
    for url in ("https://api.example.com/v10", "https://api.example.com/v1/../v2", "https://api.example.com/v1/%2e%2e",
                "https://api.example.com:444/v1", "http://api.example.com/v1"):
        with pytest.raises(URLRefused) as refused:
            check_url(url, prefixes, "u")
        assert refused.value.code == "url_not_allowed" and "example" not in str(refused.value)
