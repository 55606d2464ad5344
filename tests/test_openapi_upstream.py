"""`OpenAPIUpstream` against a real HTTP service (tests/openapi_services/echo_api.py, its own process).

Calls go through `call_tool`; the service answers with the request as it saw it, so each test
checks what actually went over the wire.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx2
import mcp_types as types
import pytest
from pydantic import ValidationError

from mcp_hub.upstreams.base import CallContext, UpstreamState, UpstreamUnavailable
from mcp_hub.upstreams.openapi import OpenAPIUpstream, OpenAPIUpstreamConfig, build_openapi_upstream
from tests.openapi_services.echo_api import CLIENT_ID, CLIENT_SECRET, PNG
from tests.openapi_services.harness import ECHO_SPEC, Service, echo_service, started
from tests.support.tools import free_port

SECRET_KEY = "key-Zq8uV1c9xw"


def payload(result: types.CallToolResult) -> dict[str, Any]:
    """The echo service's JSON answer from a successful result."""
    assert not result.is_error, result.content
    assert isinstance(result.content[0], types.TextContent)
    return json.loads(result.content[0].text)


def text(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The echo service, one process per module."""
    with echo_service(tmp_path_factory.mktemp("echo")) as service:
        yield service


def by_url(service: Service, **extra: Any) -> dict[str, Any]:
    """Config loading the document by URL: relative `$ref` and relative server resolve against it."""
    return {"spec": service.spec_url(), "auth": {"type": "api_key", "value": SECRET_KEY}, **extra}


async def stats(service: Service) -> dict[str, Any]:
    async with httpx2.AsyncClient() as client:
        return (await client.get(f"{service.url}/stats")).json()


# -- loading ---------------------------------------------------------------------------------


async def test_document_by_url_relative_refs_and_server(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        assert up.state == UpstreamState.UP, up.last_error
        assert up.base_url == f"{echo.url}/"
        names = {tool.name for tool in up.catalog.tools}
        assert {"getItem", "createItem", "uploadFile", "getTree", "postTree"} <= names
        tool = next(t for t in up.catalog.tools if t.name == "createItem")
        # common.yaml#/Item, fetched relative to the document's URL; its recursive Owner is a local $defs entry.
        assert tool.input_schema["properties"]["owner"] == {"$ref": "#/$defs/Owner"}
        assert "id" not in tool.input_schema["properties"]  # readOnly
        result = await up.call_tool("createItem", {"name": "box", "size": 3, "dryRun": True,
                                                   "owner": {"login": "a", "manager": {"login": "b"}}}, CallContext())
        echoed = payload(result)
        assert echoed["method"] == "POST" and echoed["path"] == "/echo/items"
        assert echoed["json"] == {"name": "box", "size": 3, "owner": {"login": "a", "manager": {"login": "b"}}}
        assert echoed["query"] == "dryRun=true"
        # Name and location from the document's scheme; the echoed value is scrubbed from the result.
        assert echoed["headers"]["x-api-key"] == "***"
        assert result.structured_content == echoed


async def test_gzip_document_from_file(echo: Service, tmp_path: Path) -> None:
    (tmp_path / "common.yaml").write_bytes((ECHO_SPEC.parent / "common.yaml").read_bytes())
    packed = tmp_path / "echo.yaml.gz"
    packed.write_bytes(gzip.compress(ECHO_SPEC.read_bytes()))
    async with started({"spec": "echo.yaml.gz", "base_url": echo.url}, base_dir=tmp_path) as up:
        assert up.state == UpstreamState.UP, up.last_error
        echoed = payload(await up.call_tool("publicInfo", {}, CallContext()))
        assert echoed["path"] == "/echo/public"


# -- serialization ---------------------------------------------------------------------------


async def test_query_header_cookie_styles(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        args = {
            "itemId": "it em;1", "tags": ["a", "b c"], "ids": [1, 2, 3], "words": ["x", "y"], "pipes": ["p", "q"],
            "filter": {"kind": "big", "max": 5}, "point": {"x": 1, "y": 2}, "flag": False,
            "X-Trace": "trace-1", "session": "s=1;2", "top": 10, "q": {"a": [1, 2]},
        }
        echoed = payload(await up.call_tool("getItem", args, CallContext()))
        assert echoed["raw_path"] == "/echo/items/it%20em%3B1"
        assert echoed["path_params"] == {"itemId": "it em;1"}
        query = echoed["query"].split("&")
        assert query[:2] == ["tags=a", "tags=b%20c"]
        assert "ids=1,2,3" in query and "words=x%20y" in query and "pipes=p|q" in query
        assert "filter[kind]=big" in query and "filter[max]=5" in query
        assert "x=1" in query and "y=2" in query and "flag=false" in query and "%24top=10" in query
        assert ["q", '{"a":[1,2]}'] in echoed["query_params"]
        assert echoed["headers"]["x-trace"] == "trace-1"
        assert "accept" not in {p.name.lower() for p in up.binding("getItem").parameters}  # type: ignore[union-attr]
        assert echoed["cookies"]["session"] == "s%3D1%3B2"


async def test_path_styles(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        args = {"label": ["a", "b"], "matrix": {"a": "1", "b": "2"}, "plain": {"a": "1", "b": "2"}}
        echoed = payload(await up.call_tool("pathStyles", args, CallContext()))
        assert echoed["raw_path"] == "/echo/styles/.a,b/;a=1;b=2/a,1,b,2"


TRAVERSALS = ["../secret", "..", ".", "../../secret", "a/../../secret", "..%2Fsecret", "%2e%2e", "..\\secret",
              "?x=1", "#frag", "a b/c", "/secret", "%2F..%2F..%2Fsecret"]


async def test_path_traversal_stays_in_segment(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        before = (await stats(echo))["secret_hits"]
        for value in TRAVERSALS:
            echoed = payload(await up.call_tool("getFile", {"name": value}, CallContext()))
            raw = echoed["raw_path"]
            # One segment on the wire, which decodes back to exactly the value.
            assert raw.startswith("/echo/files/") and raw.count("/") == 3, (value, raw)
            assert unquote(raw.split("/")[3]) == value and raw.split("/")[3] not in (".", "..")
            assert echoed["path_params"] == {"name": value}
            assert echoed["query"] == ""
        assert (await stats(echo))["secret_hits"] == before


async def test_body_wrapped_when_a_property_clashes_with_a_parameter(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        tool = next(t for t in up.catalog.tools if t.name == "replaceItem")
        assert set(tool.input_schema["properties"]) == {"itemId", "body"}
        echoed = payload(await up.call_tool("replaceItem", {"itemId": "7", "body": {"itemId": "8", "name": "n"}},
                                            CallContext()))
        assert echoed["method"] == "PUT" and echoed["raw_path"] == "/echo/items/7"
        assert echoed["json"] == {"itemId": "8", "name": "n"}


async def test_form_body(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        args = {"title": "a&b=c", "count": 2, "labels": ["x", "y"], "meta": {"a": "1"}}
        echoed = payload(await up.call_tool("submitForm", args, CallContext()))
        assert echoed["headers"]["content-type"] == "application/x-www-form-urlencoded"
        assert echoed["form"] == [["title", "a&b=c"], ["count", "2"], ["labels", "x"], ["labels", "y"], ["meta[a]", "1"]]


async def test_multipart_upload(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        args = {"file": base64.b64encode(PNG).decode(), "note": "hello", "info": {"k": 1}}
        echoed = payload(await up.call_tool("uploadFile", args, CallContext()))
        assert echoed["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert echoed["files"] == [{"name": "file", "filename": "file", "content_type": "image/png",
                                    "size": len(PNG), "sha256": hashlib.sha256(PNG).hexdigest()}]
        assert ["note", "hello"] in echoed["form"] and ["info", '{"k":1}'] in echoed["form"]
        bad = await up.call_tool("uploadFile", {"file": "not base64!"}, CallContext())
        assert bad.is_error and "not valid base64" in text(bad)


async def test_raw_binary_body(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        echoed = payload(await up.call_tool("sendRaw", {"body": base64.b64encode(b"\x00\x01hi").decode()}, CallContext()))
        assert echoed["headers"]["content-type"] == "application/octet-stream"
        assert echoed["body_text"] == "\x00\x01hi"


async def test_recursive_body_and_output(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        tree = {"name": "r", "children": [{"name": "c", "children": [{"name": "g"}]}]}
        assert payload(await up.call_tool("postTree", {"body": tree}, CallContext()))["json"] == tree
        result = await up.call_tool("getTree", {}, CallContext())
        assert result.structured_content == {"name": "root", "children": [{"name": "leaf", "children": []}],
                                             "extra": None}


# -- responses -------------------------------------------------------------------------------


async def test_response_kinds(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        plain = await up.call_tool("getText", {}, CallContext())
        assert not plain.is_error and text(plain) == "plain text answer\n" and plain.structured_content is None
        blob = await up.call_tool("getBinary", {}, CallContext())
        assert isinstance(blob.content[0], types.EmbeddedResource)
        resource = blob.content[0].resource
        assert isinstance(resource, types.BlobResourceContents)
        assert base64.b64decode(resource.blob) == bytes(range(256)) and resource.mime_type == "application/octet-stream"
        image = await up.call_tool("getImage", {}, CallContext())
        assert isinstance(image.content[0], types.ImageContent) and base64.b64decode(image.content[0].data) == PNG
        moved = await up.call_tool("getRedirect", {}, CallContext())
        assert not moved.is_error and "HTTP 302" in text(moved) and "Location: /text" in text(moved)
        gone = await up.call_tool("deleteItem", {"itemId": "1"}, CallContext())
        assert not gone.is_error and "204" in text(gone)


async def test_http_error_is_a_tool_error_with_trimmed_body(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        result = await up.call_tool("getStatus", {"code": 404}, CallContext())
        assert result.is_error
        message = text(result)
        assert message.startswith("HTTP 404 Not Found from GET /status/{code}: ")
        assert "status 404 as asked" in message and len(message) < 2300 and "more characters" in message


async def test_timeout_is_a_tool_error(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        began = time.monotonic()
        result = await up.call_tool("slow", {"seconds": 5}, CallContext(timeout=0.5))
        assert time.monotonic() - began < 3
        assert result.is_error and "no answer" in text(result) and "0.5s" in text(result)


async def test_connection_refused_is_a_tool_error_without_secrets(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = {"spec": str(ECHO_SPEC), "base_url": f"http://127.0.0.1:{port}",
              "auth": {"type": "api_key", "scheme": "apiKeyQuery", "value": SECRET_KEY}}
    async with started(config) as up:
        result = await up.call_tool("getItem", {"itemId": "1"}, CallContext())
        assert result.is_error and "ConnectError" in text(result)
        assert SECRET_KEY not in text(result)


async def test_invalid_arguments_are_reported(echo: Service) -> None:
    async with started(by_url(echo)) as up:
        result = await up.call_tool("getItem", {"tags": "not-a-list"}, CallContext())
        assert result.is_error and "invalid arguments for getItem" in text(result)
        unknown = await up.call_tool("nope", {}, CallContext())
        assert unknown.is_error and "unknown tool" in text(unknown)


async def test_context_headers_and_static_headers(echo: Service) -> None:
    async with started(by_url(echo, headers={"X-Static": "s"})) as up:
        ctx = CallContext(headers={"X-Forwarded-User": "alice", "X-Static": "from-call"})
        echoed = payload(await up.call_tool("whoAmI", {}, ctx))
        assert echoed["headers"]["x-forwarded-user"] == "alice"
        assert echoed["headers"]["x-static"] == "from-call"
        passthrough = payload(await up.call_tool("whoAmI", {}, CallContext(caller_token="caller-tok")))
        assert passthrough["headers"]["authorization"] == "Bearer ***"  # sent, and scrubbed from the result
        assert "x-api-key" not in passthrough["headers"]


# -- credentials -----------------------------------------------------------------------------


async def test_api_key_in_query_and_operations_without_security(echo: Service) -> None:
    auth = {"type": "api_key", "scheme": "apiKeyQuery", "value": SECRET_KEY}
    async with started({"spec": echo.spec_url(), "auth": auth}) as up:
        echoed = payload(await up.call_tool("whoAmI", {}, CallContext()))
        assert echoed["query"] == "api_key=***"  # sent in the query, scrubbed from the result
        public = payload(await up.call_tool("publicInfo", {}, CallContext()))
        assert public["query"] == ""  # `security: []`: no credential sent


async def test_bearer_from_env_and_basic_from_file(echo: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHO_TOKEN", "env-token")
    async with started({"spec": echo.spec_url(), "auth": {"type": "bearer", "token_env": "ECHO_TOKEN"}}) as up:
        echoed = payload(await up.call_tool("whoAmI", {}, CallContext()))
        assert echoed["headers"]["authorization"] == "***"  # "Bearer env-token", scrubbed from the result
    (tmp_path / "password").write_text("pa:ss\n")
    auth = {"type": "basic", "username": "bob", "password_file": "password"}
    async with started({"spec": echo.spec_url(), "auth": auth}, base_dir=tmp_path) as up:
        echoed = payload(await up.call_tool("whoAmI", {}, CallContext()))
        # "Basic base64(bob:pa:ss)" was sent; the result shows it scrubbed.
        assert echoed["headers"]["authorization"] == "***"
        assert base64.b64encode(b"bob:pa:ss").decode() not in json.dumps(echoed)


async def test_oauth2_client_credentials_token_cached_and_refreshed(echo: Service) -> None:
    auth = {"type": "oauth2_client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "scopes": ["read"]}
    async with started({"spec": echo.spec_url(), "auth": auth}) as up:
        before = (await stats(echo))["tokens_issued"]
        first = payload(await up.call_tool("oauthProtected", {}, CallContext()))
        second = payload(await up.call_tool("oauthProtected", {}, CallContext()))
        assert first["headers"]["authorization"] == second["headers"]["authorization"]
        after = await stats(echo)
        assert after["tokens_issued"] == before + 1  # token URL from the document, token reused
        assert after["token_requests"][-1] == {"grant_type": "client_credentials", "scope": "read"}
        async with httpx2.AsyncClient() as client:
            await client.post(f"{echo.url}/oauth/revoke-all")
        third = payload(await up.call_tool("oauthProtected", {}, CallContext()))  # 401, new token, retried
        # /auth/oauth accepts only a current token: the retry carried the new one (scrubbed in the result).
        assert third["headers"]["authorization"] == "Bearer ***"
        assert (await stats(echo))["tokens_issued"] == before + 2


async def test_oauth2_token_refetched_before_expiry(tmp_path: Path) -> None:
    # Tokens live 2 s; the cache refreshes halfway (leeway is at most half the lifetime).
    with echo_service(tmp_path, env={"ECHO_TOKEN_LIFETIME": "2"}) as service:
        auth = {"type": "oauth2_client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                "token_auth_method": "client_secret_post"}
        async with started({"spec": service.spec_url(), "auth": auth}) as up:
            payload(await up.call_tool("oauthProtected", {}, CallContext()))
            payload(await up.call_tool("oauthProtected", {}, CallContext()))
            assert (await stats(service))["tokens_issued"] == 1
            await anyio.sleep(1.2)
            payload(await up.call_tool("oauthProtected", {}, CallContext()))
            assert (await stats(service))["tokens_issued"] == 2


async def test_oauth2_refused_credentials_error_hides_the_secret(echo: Service) -> None:
    auth = {"type": "oauth2_client_credentials", "client_id": CLIENT_ID, "client_secret": "wrong-secret-123"}
    async with started({"spec": echo.spec_url(), "auth": auth}) as up:
        result = await up.call_tool("oauthProtected", {}, CallContext())
        assert result.is_error
        assert "token endpoint" in text(result) and "HTTP 401" in text(result) and "invalid_client" in text(result)
        assert "wrong-secret-123" not in text(result)


def test_secrets_stay_out_of_repr_and_validation_errors() -> None:
    config = OpenAPIUpstreamConfig.model_validate(
        {"spec": "x.yaml", "auth": {"type": "bearer", "token": "tok-visible-nowhere"}})
    assert "tok-visible-nowhere" not in repr(config) and "tok-visible-nowhere" not in str(config.model_dump())
    with pytest.raises(ValidationError) as caught:
        OpenAPIUpstreamConfig.model_validate(
            {"spec": "x.yaml", "auth": {"type": "basic", "username": "u", "password": "p4ss-word", "bogus": 1}})
    assert "p4ss-word" not in str(caught.value)
    with pytest.raises(ValidationError, match="exactly one of token"):
        OpenAPIUpstreamConfig.model_validate(
            {"spec": "x.yaml", "auth": {"type": "bearer", "token": "a", "token_env": "B"}})


# -- failures and lifecycle -----------------------------------------------------------------


@pytest.mark.parametrize(("content", "expected"), [
    ("openapi: 3.0.0\npaths: [unclosed", "not valid JSON or YAML at line 3, column 1"),
    ("just: a yaml file\n", "not an OpenAPI 2.0/3.x document"),
    (None, "no such file"),
])
async def test_bad_document_leaves_upstream_down_with_a_clear_error(tmp_path: Path, content: str | None,
                                                                     expected: str) -> None:
    path = tmp_path / "broken.yaml"
    if content is not None:
        path.write_text(content)
    async with started({"spec": str(path), "base_url": "http://127.0.0.1:9"}) as up:
        assert up.state == UpstreamState.DOWN
        assert up.last_error is not None and expected in up.last_error
        assert up.last_error.startswith(f"OpenAPI document {path}: ") and up.last_error.count(str(path)) == 1
        assert up.health()["error"] == up.last_error
        with pytest.raises(UpstreamUnavailable):
            await up.call_tool("anything", {}, CallContext())


async def test_unreachable_document_url(echo: Service) -> None:
    port = free_port()
    async with started({"spec": f"http://127.0.0.1:{port}/openapi.yaml"}) as up:
        assert up.state == UpstreamState.DOWN
        assert f"127.0.0.1:{port}/openapi.yaml" in (up.last_error or "") and "cannot fetch" in (up.last_error or "")
    async with started({"spec": f"{echo.url}/spec/missing.yaml"}) as up:
        assert up.state == UpstreamState.DOWN and "HTTP 404" in (up.last_error or "")


async def test_retries_until_the_document_appears(tmp_path: Path) -> None:
    path = tmp_path / "late.yaml"
    async with started({"spec": str(path), "base_url": "http://127.0.0.1:9"}) as up:
        assert up.state == UpstreamState.DOWN
        ready = anyio.Event()
        up.on_catalog_change(lambda u: ready.set() if u.state == UpstreamState.UP else None)
        path.write_bytes(ECHO_SPEC.read_bytes().replace(b"common.yaml#/Item", b"#/components/schemas/Node"))
        with anyio.fail_after(10):
            await ready.wait()
        assert up.last_error is None and len(up.catalog.tools) > 10


async def test_allowed_base_urls_guard(echo: Service) -> None:
    async with started(by_url(echo), allowed_base_urls=["https://api.example.com/"]) as up:
        assert up.state == UpstreamState.DOWN
        assert "is not under any allowed base URL" in (up.last_error or "")
    async with started(by_url(echo), allowed_base_urls=[echo.url]) as up:
        assert up.state == UpstreamState.UP, up.last_error
    # A token URL taken from the document is checked too (it would receive the client secret).
    auth = {"type": "oauth2_client_credentials", "client_id": "c", "client_secret": "s"}
    async with started({"spec": echo.spec_url(), "base_url": f"{echo.url}/echo", "auth": auth},
                       allowed_base_urls=[f"{echo.url}/echo"]) as up:
        assert up.state == UpstreamState.DOWN and "token URL" in (up.last_error or "")


async def test_missing_base_url_is_explained(tmp_path: Path) -> None:
    async with started({"spec": str(ECHO_SPEC)}) as up:
        assert up.state == UpstreamState.DOWN
        assert "no absolute base URL" in (up.last_error or "") and "'/'" in (up.last_error or "")


async def test_large_document_converts_off_the_event_loop() -> None:
    from tests.support.tools import ROOT

    upstream = build_openapi_upstream("github", {"spec": str(ROOT / "openapi_specs" / "github-api.json.gz")})
    assert isinstance(upstream, OpenAPIUpstream) and upstream.kind == "openapi"
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        began = time.monotonic()
        with anyio.fail_after(60):
            await tg.start(upstream.run)
        took = time.monotonic() - began
        tg.cancel_scope.cancel()
    assert len(upstream.catalog.tools) > 1000
    # Parsing 13 MB of JSON is one C call that holds the GIL (~0.3 s); the conversion itself (most of
    # the time) runs in a worker thread, so the loop keeps ticking through it.
    assert max(gaps) < 0.6 * took, f"event loop blocked for {max(gaps):.2f}s of {took:.2f}s"


@pytest.mark.parametrize(("prefix", "url", "allowed"), [
    ("https://api.x.com", "https://api.x.com:443/v1", True),
    ("https://api.x.com/v1", "https://api.x.com/v1/", True),
    ("https://api.x.com/v1/", "https://api.x.com/v1/users", True),
    ("https://api.x.com/v1", "https://api.x.com/v10", False),
    ("https://api.x.com/v1", "http://api.x.com/v1", False),
    ("https://api.x.com", "https://api.x.com.evil.example/", False),
    ("https://api.x.com", "https://user@evil.example/", False),
])
def test_allowed_base_url_prefixes(prefix: str, url: str, allowed: bool) -> None:
    from mcp_hub.config.openapi import ConfigError
    from mcp_hub.upstreams.openapi.upstream import check_allowed

    if allowed:
        check_allowed(url, [prefix], "base URL")
    else:
        with pytest.raises(ConfigError, match="not under any allowed base URL"):
            check_allowed(url, [prefix], "base URL")
