"""OAuth clients users actually run, against a real gateway and a real IdP (oidc-provider), knowing only a URL.

- `mcp-remote`, as Claude Desktop runs it: its "open the browser" is `$BROWSER` (a program that logs in and
  consents at the IdP, tests/support/browser_login.py); the MCP conversation goes over its stdio.
- A web page in headless Chromium on an origin listed in `auth.cors_origins` (tests/support/browser_page.html):
  discovery from the 401, authorization code + PKCE in page JavaScript, then MCP with fetch(). A page from an
  origin not listed cannot read the gateway's answers.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from playwright.sync_api import Browser, Page, sync_playwright

from mcp_hub.auth.metadata import resource_metadata_url
from tests.support.browser_login import DESKTOP_VARIABLES, browser_env
from tests.support.browser_page import browser_app, client_id
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.idp import Idp, idp_server, serve_asgi, signing_jwks
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request
from tests.support.tools import free_port, missing, node22_env, npm_tool

CHROMIUM = Path("/usr/bin/chromium")
CIMD_ORIGIN = "https://browser-app.example.test"
HTTP = httpx2.Client(timeout=10)
# Routes: the gateway (no scope required: only offline_access is ever asked) and one needing mcp:tools.
ROUTES = ["/mcp", "/scoped"]


@dataclass
class World:
    idp: Idp
    gateway: RunningGateway
    app: str  # the browser app's origin, in auth.cors_origins
    other: str  # the same app on an origin not listed

    def url(self, path: str) -> str:
        return f"{self.gateway.url}{path}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("oauth-clients")
    port = free_port()
    with serve_asgi(browser_app(CIMD_ORIGIN)) as app, serve_asgi(browser_app(CIMD_ORIGIN)) as other, idp_server(
        tmp / "idp", jwks=signing_jwks("clients-key"), cimd=(CIMD_ORIGIN, app)
    ) as idp:
        config = {
            "listen": {"port": port},
            "upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")},
            "servers": [{"path": "/scoped", "upstreams": ["demo"], "required_scopes": ["mcp:tools"]}],
            "auth": {
                "mode": "oauth",
                "resource": f"http://127.0.0.1:{port}/mcp",
                "authorization_servers": [idp.issuer],
                "cors_origins": [app],
            },
        }
        with run_gateway(config, tmp, port=port, wait_healthy=True) as gateway:
            yield World(idp=idp, gateway=gateway, app=app, other=other)


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def tool_names(world: World, url: str) -> list[str]:
    """The route's tools as a plain HTTP client with a client-credentials token sees them."""
    token = world.idp.client_credentials(resource=url)["access_token"]
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    init = HTTP.post(url, json=initialize_request(), headers=headers)
    assert init.status_code == 200, init.text
    headers |= {"Mcp-Session-Id": init.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}
    HTTP.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    listed = HTTP.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers)
    return [tool["name"] for tool in answer_of(listed, 2)["result"]["tools"]]


def assert_least_privilege(token: str, url: str, path: str) -> None:
    """The token is for this route, with the route's scope and never the admin API's."""
    granted = claims(token)
    assert granted["aud"] == url
    assert granted["sub"] == "alice"
    scopes = granted.get("scope", "").split()
    assert "mcp:admin" not in scopes
    assert scopes == (["mcp:tools"] if path == "/scoped" else [])


# --- mcp-remote, driven headlessly ------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
async def test_mcp_remote_signs_in_with_a_browser_program(world: World, path: str, tmp_path: Path) -> None:
    mcp_remote = npm_tool("mcp-remote")
    url = world.url(path)
    record = tmp_path / "browser.jsonl"
    home = tmp_path / "home"
    home.mkdir()
    config_dir = tmp_path / "mcp-auth"  # fresh: no token from an earlier run
    env = {k: v for k, v in node22_env().items() if k not in DESKTOP_VARIABLES}
    env |= {"HOME": str(home), "MCP_REMOTE_CONFIG_DIR": str(config_dir), **browser_env(tmp_path, record=record)}
    params = StdioServerParameters(
        command=mcp_remote, args=[url, str(free_port()), "--transport", "http-only"], env=env
    )
    log = tmp_path / "mcp-remote.log"
    with log.open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode="legacy", read_timeout_seconds=60) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("demo__echo", {"text": "via mcp-remote"})
    assert names == tool_names(world, url), log.read_text()
    assert not result.is_error, result
    content = result.content[0]
    assert isinstance(content, types.TextContent) and content.text == "via mcp-remote"

    # One sign-in, through the browser program, for this route's resource and scopes.
    opened = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(opened) == 1, opened
    assert opened[0]["status"] == 200, opened
    request = opened[0]["request"]
    assert request["resource"] == url
    assert request["code_challenge_method"] == "S256"
    assert request["redirect_uri"].startswith(opened[0]["callback"])
    # mcp-remote asks what the 401's scope= names, plus offline_access for a refresh token.
    expected_scope = {"mcp:tools", "offline_access"} if path == "/scoped" else {"offline_access"}
    assert set(request["scope"].split()) == expected_scope

    # The tokens mcp-remote keeps: for this route only, no admin scope.
    stored = list(config_dir.rglob("*_tokens.json"))
    assert len(stored) == 1, stored
    tokens = json.loads(stored[0].read_text())
    world.idp.issued.extend([tokens["access_token"], tokens.get("refresh_token", "")])
    assert tokens.get("refresh_token")
    assert_least_privilege(tokens["access_token"], url, path)


# --- a web page in headless Chromium ---------------------------------------------------------------


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        missing(f"chromium ({CHROMIUM})")
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser.new_page()
        finally:
            browser.close()


def sign_in_at_the_idp(page: Page, account: str = "alice") -> None:
    """What the user does on the IdP's pages (login, then consent) until the app's page has finished."""
    for _ in range(6):
        page.wait_for_selector("body[data-state], input[name=login], button.login-submit", timeout=30_000)
        if page.locator("body[data-state]").count():
            return
        if page.locator("input[name=login]").count():
            page.fill("input[name=login]", account)
            page.fill("input[name=password]", "any")
        with page.expect_navigation():
            page.click("button.login-submit")
    raise AssertionError(f"sign-in did not finish: {page.url}")


@pytest.mark.parametrize("path", ROUTES)
def test_browser_page_signs_in_and_lists_tools(world: World, page: Page, path: str) -> None:
    url = world.url(path)
    page.goto(f"{world.app}/?{urlencode({'mcp': url, 'client_id': client_id(CIMD_ORIGIN)})}")
    sign_in_at_the_idp(page)
    report = page.evaluate("window.report")
    assert page.get_attribute("body", "data-state") == "done", report.get("error", report)

    # Discovery as the page saw it: the challenge named the metadata, which named this route and the IdP.
    assert report["challenge"]["status"] == 401
    assert f'resource_metadata="{resource_metadata_url(url)}"' in report["challenge"]["header"]
    assert report["resource_metadata"]["resource"] == url
    assert report["resource_metadata"]["authorization_servers"] == [world.idp.issuer]

    # The tools the page lists (and shows) are the route's tools, and a call went through.
    shown = page.locator("#tools li").all_inner_texts()
    assert shown == report["tools"] == tool_names(world, url)
    assert "demo__echo" in shown
    assert report["session_id"]
    assert report["call"]["content"] == [{"type": "text", "text": "from the browser"}]

    world.idp.issued.append(report["access_token"])
    # The page asks what the 401's scope= names (the route's required scopes), else the metadata's
    # scopes_supported: never more than the route needs.
    expected_scope = {"mcp:tools"} if path == "/scoped" else {"offline_access"}
    assert set(report["requested_scope"].split()) == expected_scope
    assert claims(report["access_token"])["client_id"] == client_id(CIMD_ORIGIN)
    assert_least_privilege(report["access_token"], url, path)


@pytest.mark.parametrize("allowed", [True, False], ids=["listed-origin", "other-origin"])
def test_only_listed_origins_read_mcp_answers(world: World, page: Page, allowed: bool) -> None:
    url = world.url("/mcp")
    origin = world.app if allowed else world.other
    page.goto(f"{origin}/probe?{urlencode({'mcp': url, 'metadata': resource_metadata_url(url)})}")
    page.wait_for_selector("body[data-state]", timeout=30_000)
    report = page.evaluate("window.report")
    assert page.get_attribute("body", "data-state") == "done", report
    # The protected resource metadata is public: any origin reads it.
    assert report["metadata"] == {"status": 200, "resource": url}
    for attempt in ("json", "simple"):  # with a preflight, and a request sent without one
        if allowed:
            assert report[attempt]["status"] == 401, report
            assert f'resource_metadata="{resource_metadata_url(url)}"' in report[attempt]["challenge"]
        else:
            # The browser refuses the page the answer: fetch() rejects.
            assert "error" in report[attempt], report
            assert "Failed to fetch" in report[attempt]["error"]
