"""Every route a protected resource of its own, met by clients that know nothing but its URL.

A real `mcp-hub serve` (OAuth against the test IdP, oidc-provider) with `/mcp`, a virtual server
under it (`/mcp/demo`), one outside it (`/time`) and one with its own scopes (`/scoped`). The SDK's
OAuth client provider finds everything from a 401 (RFC 9728 metadata, the authorization server,
dynamic registration or a Client ID Metadata Document), logs in headlessly, calls a tool, refreshes.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_hub.auth.metadata import resource_metadata_url
from mcp_hub.config.env import interpolate
from mcp_hub.config.loading import parse_config
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.idp import Idp, browse_login, idp_server, serve_asgi, signing_jwks
from tests.support.tools import free_port

REDIRECT = "http://127.0.0.1:9/callback"  # never opened: the headless browser stops at it
APP_ORIGIN = "http://app.example"
CIMD_ORIGIN = "https://client.example.test"
CIMD_URL = f"{CIMD_ORIGIN}/oauth/mcp-client.json"
HTTP = httpx2.Client(timeout=10)


@dataclass
class World:
    idp: Idp
    gateway: RunningGateway
    requests: list[dict[str, Any]]  # every authorization request the headless browser opened

    def url(self, path: str) -> str:
        return f"{self.gateway.url}{path}"


def _cimd_app() -> Starlette:
    async def document(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "client_id": CIMD_URL,
                "client_name": "CIMD test client",
                "redirect_uris": [REDIRECT],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "native",
            },
            headers={"cache-control": "max-age=60"},
        )

    return Starlette(routes=[Route("/oauth/mcp-client.json", document)])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("oauth-routes")
    port = free_port()
    with serve_asgi(_cimd_app()) as cimd_base, idp_server(
        tmp / "idp", jwks=signing_jwks("routes-key"), cimd=(CIMD_ORIGIN, cimd_base)
    ) as idp:
        config = {
            "listen": {"port": port},
            "upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")},
            "servers": [
                {"path": "/mcp/demo", "upstreams": ["demo"]},
                {"path": "/time", "upstreams": ["demo"]},
                {"path": "/scoped", "upstreams": ["demo"], "required_scopes": ["mcp:tools"]},
            ],
            "auth": {
                "mode": "oauth",
                "resource": f"http://127.0.0.1:{port}/mcp",
                "authorization_servers": [idp.issuer],
                "cors_origins": [APP_ORIGIN],
            },
        }
        with run_gateway(config, tmp, port=port, wait_healthy=True) as gateway:
            yield World(idp=idp, gateway=gateway, requests=[])


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


def oauth_provider(world: World, url: str, storage: MemoryStorage, *, cimd: bool = False) -> OAuthClientProvider:
    """The SDK's OAuth client for `url`, its browser a headless login as alice."""
    redirected: dict[str, str] = {}

    async def open_browser(authorization_url: str) -> None:
        world.requests.append({k: v[0] for k, v in parse_qs(urlsplit(authorization_url).query).items()})
        redirected["url"] = await anyio.to_thread.run_sync(browse_login, authorization_url, REDIRECT)

    async def callback() -> AuthorizationCodeResult:
        query = parse_qs(urlsplit(redirected["url"]).query)
        assert "code" in query, query
        return AuthorizationCodeResult(code=query["code"][0], state=query.get("state", [None])[0],
                                       iss=query.get("iss", [None])[0])

    return OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="oauth-routes test",
            redirect_uris=[REDIRECT],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=open_browser,
        callback_handler=callback,
        client_metadata_url=CIMD_URL if cimd else None,
    )


@contextlib.asynccontextmanager
async def oauth_client(
    world: World, url: str, storage: MemoryStorage, mode: str, *, cimd: bool = False
) -> AsyncIterator[Client]:
    auth = oauth_provider(world, url, storage, cimd=cimd)
    async with create_mcp_http_client(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
            yield client


async def echo(client: Client, text: str) -> str:
    result = await client.call_tool("demo__echo", {"text": text})
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return content.text


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "oauth-routes", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def post_init(url: str, headers: dict[str, str] | None = None) -> httpx2.Response:
    return HTTP.post(url, json=INIT, headers={**MCP_HEADERS, **(headers or {})})


# --- a client that knows only the URL ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/mcp", "/mcp/demo", "/time"])
@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_sdk_oauth_client_from_the_url_alone(world: World, path: str, mode: str) -> None:
    url = world.url(path)
    storage = MemoryStorage()
    auth = oauth_provider(world, url, storage)
    async with create_mcp_http_client(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
            assert await echo(client, "hi") == "hi"
            assert "demo__echo" in [t.name for t in (await client.list_tools()).tools]
    assert storage.tokens is not None and storage.client_info is not None
    first = storage.tokens.access_token
    world.idp.issued.append(first)
    assert claims(first)["aud"] == url  # the route's own resource, wherever its path is
    # No scopes required: none requested but offline_access (never the AS's whole list, so never mcp:admin).
    request = world.requests[-1]
    assert request["resource"] == url
    assert request["scope"].split() == ["offline_access"]
    logins = len(world.requests)

    # The access token runs out: the provider refreshes it, without a new login.
    assert storage.tokens.refresh_token
    auth.context.token_expiry_time = 1.0
    async with create_mcp_http_client(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
            assert await echo(client, "again") == "again"
    assert storage.tokens.access_token != first
    assert claims(storage.tokens.access_token)["aud"] == url
    assert len(world.requests) == logins
    world.idp.issued.append(storage.tokens.access_token)


async def test_client_id_metadata_document_instead_of_registration(world: World) -> None:
    as_metadata = HTTP.get(f"{world.idp.issuer}/.well-known/oauth-authorization-server").json()
    assert as_metadata.get("client_id_metadata_document_supported") is True
    storage = MemoryStorage()
    async with oauth_client(world, world.url("/time"), storage, "auto", cimd=True) as client:
        assert await echo(client, "cimd") == "cimd"
    assert world.requests[-1]["client_id"] == CIMD_URL
    assert storage.tokens is not None
    assert claims(storage.tokens.access_token)["client_id"] == CIMD_URL


async def test_required_scopes_are_requested_and_granted(world: World) -> None:
    url = world.url("/scoped")
    prm = HTTP.get(resource_metadata_url(url)).json()
    assert prm["scopes_supported"] == ["mcp:tools"]
    storage = MemoryStorage()
    async with oauth_client(world, url, storage, "auto") as client:
        assert await echo(client, "scoped") == "scoped"
    requested = world.requests[-1]["scope"].split()
    assert "mcp:tools" in requested and "mcp:admin" not in requested
    assert storage.tokens is not None
    assert claims(storage.tokens.access_token)["scope"].split() == ["mcp:tools"]


# --- metadata, challenges, audiences ------------------------------------------------------------


@pytest.mark.parametrize(("path", "scopes"), [("/mcp", ["offline_access"]), ("/mcp/demo", ["offline_access"]),
                                              ("/time", ["offline_access"]),
                                              ("/scoped", ["mcp:tools"])])
def test_metadata_of_every_route(world: World, path: str, scopes: list[str]) -> None:
    url = world.url(path)
    challenge = post_init(url).headers["www-authenticate"]
    assert f'resource_metadata="{resource_metadata_url(url)}"' in challenge
    prm = HTTP.get(resource_metadata_url(url)).json()
    assert prm["resource"] == url
    assert prm["authorization_servers"] == [world.idp.issuer]
    assert prm["scopes_supported"] == scopes  # always published, never the admin scope


def test_challenge_names_the_scope_on_401_and_403(world: World) -> None:
    url = world.url("/scoped")
    missing = post_init(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == (
        f'Bearer scope="mcp:tools", resource_metadata="{resource_metadata_url(url)}"'
    )
    unscoped = world.idp.client_credentials(resource=url, scope=None)["access_token"]
    refused = post_init(url, bearer(unscoped))
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge and 'scope="mcp:tools"' in challenge
    # Routes needing no scope name none.
    assert "scope=" not in post_init(world.url("/time")).headers["www-authenticate"]


def test_tokens_cross_routes_by_the_documented_rule(world: World) -> None:
    def token_for(path: str) -> str:
        return world.idp.client_credentials(resource=world.url(path))["access_token"]

    gateway_token = token_for("/mcp")  # auth.resource: the whole gateway
    for path in ("/mcp", "/mcp/demo", "/time", "/scoped"):
        assert post_init(world.url(path), bearer(gateway_token)).status_code == 200, path
    time_token = token_for("/time")
    assert post_init(world.url("/time"), bearer(time_token)).status_code == 200
    for path in ("/mcp", "/mcp/demo"):
        refused = post_init(world.url(path), bearer(time_token))
        assert refused.status_code == 401, path
        challenge = refused.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and "token audience is not this resource" in challenge
        assert world.url("/time") in refused.json()["error_description"]
        assert f'resource_metadata="{resource_metadata_url(world.url(path))}"' in challenge
    demo_token = token_for("/mcp/demo")
    assert post_init(world.url("/mcp/demo"), bearer(demo_token)).status_code == 200
    assert post_init(world.url("/time"), bearer(demo_token)).status_code == 401
    elsewhere = world.idp.client_credentials(resource="http://127.0.0.1:9/other")["access_token"]
    assert post_init(world.url("/time"), bearer(elsewhere)).status_code == 401


# --- browsers ------------------------------------------------------------------------------------


def test_cors_preflight_and_exposed_headers(world: World) -> None:
    url = world.url("/mcp")
    preflight = HTTP.options(url, headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
    })
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "last-event-id",
            "x-api-key"} <= allowed
    refused = post_init(url, {"Origin": APP_ORIGIN})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP_ORIGIN
    exposed = refused.headers["access-control-expose-headers"].lower()
    assert "www-authenticate" in exposed and "mcp-session-id" in exposed
    token = world.idp.client_credentials(resource=url)["access_token"]
    ok = post_init(url, {"Origin": APP_ORIGIN, **bearer(token)})
    assert ok.status_code == 200 and ok.headers["mcp-session-id"]
    assert ok.headers["access-control-allow-origin"] == APP_ORIGIN
    # Another origin: no preflight success, no CORS headers.
    other = HTTP.options(url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    # The metadata is readable from any origin.
    prm = HTTP.get(resource_metadata_url(url), headers={"Origin": "http://evil.example"})
    assert prm.status_code == 200 and prm.headers["access-control-allow-origin"] == "*"
    prm_pre = HTTP.options(resource_metadata_url(url), headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert prm_pre.status_code == 204


# --- config ---------------------------------------------------------------------------------------


def test_env_values_become_lists_where_lists_are_expected(tmp_path: Path) -> None:
    raw = {
        "auth": {"mode": "oauth", "resource": "http://h/mcp", "authorization_servers": "${AS}",
                 "required_scopes": "${SCOPES:-[mcp:tools, mcp:read]}", "cors_origins": "${CORS:-}"},
        "upstreams": {"u": {"transport": "stdio", "command": "x", "args": "${ARGS:-[--a, b]}",
                            "env": {"TAGS": "${TAGS}"}}},
        "servers": [{"path": "/t", "required_scopes": "${T_SCOPES:-[t]}"}],
    }
    env = {"AS": "[http://idp.example]", "TAGS": "[x, y]"}
    config = parse_config(interpolate(raw, env=env))
    assert config.auth.authorization_servers == ["http://idp.example"]
    assert config.auth.required_scopes == ["mcp:tools", "mcp:read"]
    assert config.auth.cors_origins == []
    assert config.upstreams["u"].args == ["--a", "b"]  # type: ignore[union-attr]
    assert config.upstreams["u"].env == {"TAGS": "[x, y]"}  # type: ignore[union-attr] - a string key
    assert config.servers[0].required_scopes == ["t"]

