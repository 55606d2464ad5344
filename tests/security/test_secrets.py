"""The credentials the gateway holds for OpenAPI upstreams never reach a client or a log.

A real gateway process (`serve --verbose`: debug logging, upstream traffic included) in front of a
real "leaky" REST API on a loopback port. The API echoes everything it gets, in every way an API
can: JSON bodies, error bodies, response headers, a redirect whose `Location` carries the query
(and the gateway's query-parameter key), text with the values percent-encoded, HTML-escaped,
`\\u`-escaped and base64-encoded, binary bodies. One upstream per kind of credential: API key in a
header, a query parameter and a cookie; bearer; HTTP Basic; OAuth 2.0 client credentials (and one
whose token endpoint echoes the client's credentials in its error).

Each attempt asserts that the API did receive the credential (so the echo is real), and that neither
the tool result (content, structured content, the `isError` text) nor, at the end, the gateway's
log holds any secret in any spelling.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, unquote_plus

import mcp_types as types
import pytest
import structlog
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_hub.metering.observability import configure_logging
from mcp_hub.upstreams.openapi.scrub import KNOWN_SECRETS, Scrubber
from tests.support.gateway import RunningGateway, run_gateway


def _secret(kind: str) -> str:
    # Characters every encoding treats differently: / + = & % ~ ! * and a space-free random core.
    return f"{kind}{secrets.token_urlsafe(12)}/+={secrets.token_hex(3)}&%~!*{secrets.token_hex(2)}"


CLIENT_ID = "hub-client"
SECRETS = {
    "header": _secret("hk"),
    "query": _secret("qk"),
    "cookie": _secret("ck"),
    "bearer": _secret("bt"),
    "basic": _secret("pw"),
    "oauth": _secret("cs"),
    "oauth_echo": _secret("ce"),
}
USERNAME = "bob"


# -- the leaky API -------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LeakyAPI:
    requests: list[Request] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # access tokens it issued

    def start(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                api.requests.append(request)
                status, headers, payload = api.answer(request)
                self.send_response(status)
                for name, value in {"Content-Length": str(len(payload)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _echo(request: Request) -> dict[str, Any]:
        return {"method": request.method, "target": request.target, "headers": request.headers,
                "body": request.body.decode("utf-8", "replace")}

    def answer(self, request: Request) -> tuple[int, dict[str, str], bytes]:  # noqa: C901 - one branch per route
        path, _, query = request.target.partition("?")
        echo = self._echo(request)
        as_json = {"Content-Type": "application/json"}
        auth = request.headers.get("authorization", "")
        every = json.dumps(echo)
        if path == "/oauth/token":
            form = dict(parse_qsl(request.body.decode()))
            scheme, _, encoded = auth.partition(" ")
            client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":") if scheme == "Basic" else ("", "", "")
            if unquote(client_id) != CLIENT_ID or unquote(client_secret) != SECRETS["oauth"]:
                return 401, as_json, json.dumps({"error": "invalid_client"}).encode()
            token = f"at{secrets.token_urlsafe(16)}/+={secrets.token_hex(4)}"
            self.tokens.append(token)
            assert form.get("grant_type") == "client_credentials"
            return 200, as_json, json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 3600}).encode()
        if path == "/oauth/token-echo":  # a token endpoint that quotes what it got in its error
            return 400, as_json, json.dumps({"error": "invalid_client",
                                             "error_description": f"got {auth} {request.body.decode()} "
                                             f"{base64.b64decode(auth[6:] or 'AA==').decode('latin-1')}"}).encode()
        if path == "/echo":
            return 200, as_json, every.encode()
        if path == "/fail":
            return 401, {**as_json, "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{auth}"',
                         "X-Echo-Query": query, "X-Echo-Cookie": request.headers.get("cookie", "")}, every.encode()
        if path == "/fail-text":
            text = "\n".join([every, quote(every, safe=""), quote_plus(every), html.escape(every),
                              base64.b64encode(every.encode()).decode(), unquote(every),
                              "".join(f"\\u{ord(c):04x}" for c in every)])
            return 500, {"Content-Type": "text/plain; charset=utf-8"}, text.encode()
        if path == "/escaped":  # JSON with every character of every string \u-escaped
            def escaped(value: Any) -> str:
                if isinstance(value, dict):
                    return "{" + ",".join(f"{escaped(k)}:{escaped(v)}" for k, v in value.items()) + "}"
                return '"' + "".join(f"\\u{ord(c):04x}" for c in str(value)) + '"'
            return 200, as_json, escaped(echo).encode()
        if path == "/b64":
            return 200, as_json, json.dumps({"blob": base64.b64encode(every.encode()).decode(),
                                             "url": base64.urlsafe_b64encode(("x" + every).encode()).decode()}).encode()
        if path in ("/go", "/go307"):
            location = f"{self.url}/landing?{query}&copy={quote(every, safe='')}&auth={quote(auth)}"
            return (307 if path == "/go307" else 302), {"Location": location}, b""
        if path == "/binary":
            return 200, {"Content-Type": "application/octet-stream"}, b"\x00\xff" + every.encode() + b"\xfe"
        if path == "/html":
            return 403, {"Content-Type": "text/html"}, f"<p>{html.escape(every)}</p>".encode()
        return 404, as_json, b'{"error": "not found"}'


OPERATIONS = {
    "/echo": ("get", "echo"), "/fail": ("get", "fail"), "/fail-text": ("get", "failText"),
    "/escaped": ("get", "escaped"), "/b64": ("get", "b64"), "/go": ("get", "go"), "/go307": ("get", "go307"),
    "/binary": ("get", "binary"), "/html": ("get", "html"),
}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, (method, op_id) in OPERATIONS.items():
        paths[path] = {method: {
            "operationId": op_id,
            "parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "ok"}},
        }}
    paths["/echo"]["post"] = {"operationId": "postEcho", "responses": {"200": {"description": "ok"}},
                              "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}
    return {"openapi": "3.0.3", "info": {"title": "leaky", "version": "1"}, "paths": paths}


AUTH = {
    "header": {"type": "api_key", "in": "header", "name": "X-Api-Key", "value": SECRETS["header"]},
    "query": {"type": "api_key", "in": "query", "name": "sig", "value": SECRETS["query"]},
    "cookie": {"type": "api_key", "in": "cookie", "name": "sid", "value": SECRETS["cookie"]},
    "bearer": {"type": "bearer", "token": SECRETS["bearer"]},
    "basic": {"type": "basic", "username": USERNAME, "password": SECRETS["basic"]},
    "oauth": {"type": "oauth2_client_credentials", "token_url": "{api}/oauth/token", "client_id": CLIENT_ID,
              "client_secret": SECRETS["oauth"]},
    "oauth_echo": {"type": "oauth2_client_credentials", "token_url": "{api}/oauth/token-echo",
                   "client_id": CLIENT_ID, "client_secret": SECRETS["oauth_echo"]},
}


@dataclass
class Stack:
    gw: RunningGateway
    api: LeakyAPI


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("secrets")
    api = LeakyAPI()
    api.start()
    spec = tmp / "leaky.json"
    spec.write_text(json.dumps(document()))
    openapi = {}
    for kind, auth in AUTH.items():
        auth = {k: v.format(api=api.url) if k == "token_url" else v for k, v in auth.items()}
        openapi[kind.replace("_", "-")] = {"spec": str(spec), "base_url": api.url, "auth": auth}
    try:
        with run_gateway({"openapi": openapi}, tmp, args=["--verbose"], wait_healthy=True) as gw:
            yield Stack(gw, api)
    finally:
        api.stop()


# -- looking for a secret in any spelling ----------------------------------------------------------


def _views(text: str) -> set[str]:
    """`text` and what it reads as once decoded, every way a secret could have been encoded."""
    views = {text}
    for _ in range(3):
        for view in list(views):
            views |= {unquote(view), unquote_plus(view), html.unescape(view),
                      re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), view),
                      view.replace("\\/", "/")}
    return views


def _base64_views(text: str) -> Iterator[bytes]:
    """Every run of base64 characters in `text`, decoded from each of the four possible starts."""
    for run in re.findall(r"[A-Za-z0-9+/_-]{8,}={0,2}", text):
        for start in range(4):
            part = run[start:].rstrip("=")
            part = part[: len(part) - len(part) % 4] if len(part) % 4 == 1 else part
            for alt in (part, part.replace("-", "+").replace("_", "/")):
                try:
                    yield base64.b64decode(alt + "=" * (-len(alt) % 4))
                except ValueError:
                    continue


def held_secrets(stack: Stack) -> dict[str, str]:
    """Every secret the gateway holds: the configured ones and the access tokens it was issued."""
    held = dict(SECRETS)
    held |= {f"token {i}": token for i, token in enumerate(stack.api.tokens)}
    return held


def _expand(text: str, depth: int = 0) -> set[str]:
    """The views of `text`, and of any text base64-encoded in them (two levels deep)."""
    views = _views(text)
    if depth < 2:
        for view in list(views):
            for blob in _base64_views(view):
                decoded = blob.decode("latin-1")
                if len(decoded) >= 8 and sum(c.isprintable() for c in decoded) >= 0.9 * len(decoded):
                    views |= _expand(decoded, depth + 1)
    return views


def leaks(text: str, held: dict[str, str]) -> list[str]:
    """Which secrets `text` gives away, in whatever spelling (percent, HTML, JSON escapes, base64)."""
    views = _expand(text)
    return [name for name, secret in held.items() if any(secret in view for view in views)]


# -- the attempts ------------------------------------------------------------------------------


def dump(result: types.CallToolResult) -> str:
    return json.dumps(result.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False)


def texts(result: types.CallToolResult) -> str:
    out = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            out.append(block.text)
        elif isinstance(block, types.EmbeddedResource):
            blob = getattr(block.resource, "blob", None)
            out.append(base64.b64decode(blob).decode("latin-1") if blob else str(block.resource))
    return "\n".join(out)


async def call(stack: Stack, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
    async with Client(streamable_http_client(stack.gw.mcp), mode="legacy") as client:
        return await client.call_tool(tool, arguments)


def sent(request: Request, kind: str, tokens: list[str]) -> bool:
    """Whether the API got the credential of `kind` in this request."""
    secret = SECRETS[kind]
    if kind == "header":
        return request.headers.get("x-api-key") == secret
    if kind == "query":
        return f"sig={quote(secret, safe='')}" in request.target
    if kind == "cookie":
        return f"sid={quote(secret, safe='')}" in request.headers.get("cookie", "")
    if kind == "bearer":
        return request.headers.get("authorization") == f"Bearer {secret}"
    if kind == "basic":
        return request.headers.get("authorization") == "Basic " + base64.b64encode(f"{USERNAME}:{secret}".encode()).decode()
    assert kind == "oauth"
    return request.headers.get("authorization", "").removeprefix("Bearer ") in tokens

KINDS = ["header", "query", "cookie", "bearer", "basic", "oauth"]
TOOLS = {  # tool -> (arguments, answered as an error)
    "echo": ({"q": "hello"}, False),
    "postEcho": ({"body": {"note": "hi"}}, False),
    "fail": ({"q": "x"}, True),
    "failText": ({}, True),
    "escaped": ({}, False),
    "b64": ({}, False),
    "go": ({"q": "next"}, False),
    "go307": ({}, False),
    "binary": ({}, False),
    "html": ({}, True),
}


@pytest.mark.parametrize("tool", list(TOOLS))
@pytest.mark.parametrize("kind", KINDS)
async def test_no_secret_in_tool_results(stack: Stack, kind: str, tool: str) -> None:
    arguments, is_error = TOOLS[tool]
    before = len(stack.api.requests)
    result = await call(stack, f"{kind}__{tool}", arguments)
    answered = [r for r in stack.api.requests[before:] if not r.target.startswith("/oauth/")]
    assert answered and sent(answered[-1], kind, stack.api.tokens), "the API must have received the credential"
    assert bool(result.is_error) == is_error, result
    held = held_secrets(stack)
    for text in (dump(result), texts(result)):
        assert leaks(text, held) == [], (kind, tool, text[:2000])
    if tool.startswith("go"):
        assert "Location: " in texts(result) and "/landing?" in texts(result)  # the redirect is told, not its key


async def test_token_endpoint_echoing_the_client_credentials(stack: Stack) -> None:
    result = await call(stack, "oauth-echo__echo", {})
    assert result.is_error and "upstream credential failed" in texts(result), result
    token_requests = [r for r in stack.api.requests if r.target == "/oauth/token-echo"]
    assert token_requests  # the endpoint got the client secret (and echoed it)
    assert leaks(dump(result), held_secrets(stack)) == [], dump(result)


def test_the_verbose_log_holds_no_secret(stack: Stack) -> None:
    log = stack.gw.log_text()
    # The log is verbose (upstream traffic is in it) and the calls above happened.
    assert "HTTP Request: GET" in log and "/echo?" in log, log[-3000:]
    found = leaks(log, held_secrets(stack))
    assert found == [], [line for line in log.splitlines() if any(
        s in "".join(_views(line)) for s in held_secrets(stack).values())][:5]


# -- the scrubber itself ----------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [
    lambda s: s, lambda s: quote(s, safe=""), lambda s: quote(s), lambda s: quote_plus(s),
    lambda s: re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s, safe="")),
    lambda s: quote(quote(s, safe=""), safe=""), lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    lambda s: html.escape(s), lambda s: base64.b64encode(s.encode()).decode(),
    lambda s: base64.b64encode(b"user:" + s.encode()).decode(), lambda s: base64.urlsafe_b64encode(b"ab" + s.encode()).decode(),
    lambda s: "".join(f"%{b:02x}" if i % 2 else chr(b) for i, b in enumerate(s.encode())),  # mixed
])
def test_scrubber_spellings(spelling: Any) -> None:
    secret = SECRETS["header"]
    text = f"before {spelling(secret)} after"
    cleaned = Scrubber([secret]).text(text)
    assert leaks(cleaned, {"s": secret}) == [] and cleaned.startswith("before") and cleaned.endswith("after")


def test_scrubber_json_escapes_and_binary() -> None:
    secret = SECRETS["query"]
    scrub = Scrubber([secret])
    escaped = '{"k": "' + "".join(f"\\u{ord(c):04x}" for c in secret) + '"}'
    assert json.loads(scrub.json_text(escaped)) == {"k": "***"}
    assert secret.encode() not in scrub.body(b"\xff\x00" + secret.encode() + b"\xfe")
    assert scrub.text("nothing secret here, 100% sure") == "nothing secret here, 100% sure"


def test_log_processor_redacts_registered_secret_values() -> None:
    secret = _secret("lg")
    line = f"HTTP Request: GET http://h/x?weird={quote(secret, safe='')}"
    stream = io.StringIO()
    configure_logging(json=True, level="DEBUG", stream=stream)
    try:
        logging.getLogger("httpx2").debug(line)  # before the secret is known: cached as it is
        assert secret in unquote(stream.getvalue())
        KNOWN_SECRETS.add(secret)
        logging.getLogger("httpx2").debug(line)  # the same line again: the cache must not hand it back
        structlog.get_logger("mcp_hub.test").info("event", detail=base64.b64encode(f"u:{secret}".encode()).decode(),
                                                  nested={"list": [html.escape(secret)]})
        later = stream.getvalue().splitlines()[1:]
        assert len(later) == 2 and leaks("\n".join(later), {"s": secret}) == [], later
        assert all("[REDACTED]" in entry for entry in later)
    finally:
        configure_logging(json=True, level="INFO")
