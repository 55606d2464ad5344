"""Every shipped example config, loaded as a user would and run as a real gateway process against real
upstreams (local stand-ins where the example points at an outside service)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_hub.auth.keys import new_api_key
from mcp_hub.config import load_config
from tests.support.gateway import gateway_env, run_gateway
from tests.support.processes import running, wait_for_http, wait_for_port
from tests.support.tools import ROOT, executable, free_port
from tests.test_admin import inventory_service

EXAMPLES = ROOT / "examples"
KEYS = {role: new_api_key() for role in ("developer", "admin", "reader", "writer")}
# What each example needs from the environment to load.
EXAMPLE_ENV = {
    "DEVELOPER_KEY_SHA256": KEYS["developer"][1],
    "ADMIN_KEY_SHA256": KEYS["admin"][1],
    "READER_KEY_SHA256": KEYS["reader"][1],
    "WRITER_KEY_SHA256": KEYS["writer"][1],
    "GITHUB_PAT": "github_pat_test_only",
    "INVENTORY_API_KEY": "inventory-test-key",
}
TESTED = {"quickstart.yaml", "team-quotas.yaml", "github-acl.yaml", "internal-rest-api.yaml",
          "replicas/gateway-a.yaml", "replicas/gateway-b.yaml"}


def example(name: str) -> str:
    return (EXAMPLES / name).read_text()


def session(url: str, token: str | None = None) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=30)
    return Client(streamable_http_client(url, http_client=http), mode="legacy")


async def tool_names(url: str, token: str | None = None) -> list[str]:
    async with session(url, token) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


def test_every_example_loads_and_is_tested(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(key, value)
    found = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*.yaml") if not p.name.endswith(".openapi.yaml")}
    assert found == TESTED, "an example without a test (or a test without its example)"
    for name in sorted(found):
        config = load_config(EXAMPLES / name)
        assert config.upstreams or config.openapi, name


def test_configuration_reference_is_current() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_reference.py"), "--check"],
                           capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 0, check.stderr
    assert "has no description" not in check.stderr, check.stderr  # every key is explained
    text = (ROOT / "docs" / "configuration.md").read_text()
    for key in ("`allowed_base_urls`", "`groups_claim`", "`stateless`", "`per_1k_tokens`", "`value_env`"):
        assert key in text


async def test_quickstart(tmp_path: Path) -> None:
    with run_gateway(example("quickstart.yaml"), tmp_path, wait_healthy=True) as gw:
        names = await tool_names(gw.mcp)
        assert {"time__get_current_time", "time__convert_time", "git__git_status", "git__git_log"} <= set(names)
        assert await tool_names(f"{gw.mcp}/time") == ["convert_time", "get_current_time"]
        async with session(gw.mcp) as client:
            now = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
            assert not now.is_error and "UTC" in now.content[0].text
            status = await client.call_tool("git__git_status", {"repo_path": str(ROOT)})
            assert not status.is_error and "branch" in status.content[0].text.lower()


# --- team-quotas: groups from the `team` claim of real signed JWTs ------------------------------


@dataclass
class TokenIssuer:
    """A minimal OAuth authorization server: RFC 8414 metadata and a JWKS, tokens signed with RS256."""

    issuer: str
    key: RSAKey

    def token(self, subject: str, team: str, audience: str, lifetime: int = 600) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": subject, "aud": audience, "iat": now, "exp": now + lifetime,
                  "team": team, "client_id": "example-client"}
        return jwt.encode({"alg": "RS256", "kid": self.key.kid}, claims, self.key)


@contextlib.contextmanager
def token_issuer() -> Iterator[TokenIssuer]:
    key = RSAKey.generate_key(2048, parameters={"kid": "example-key", "alg": "RS256", "use": "sig"}, private=True)
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse({"issuer": issuer, "jwks_uri": f"{issuer}/jwks", "token_endpoint": f"{issuer}/token",
                             "response_types_supported": ["code"]})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse({"keys": [key.as_dict(private=False)]})

    app = Starlette(routes=[Route("/.well-known/oauth-authorization-server", metadata), Route("/jwks", jwks)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_http(f"{issuer}/jwks")
        yield TokenIssuer(issuer, key)
    finally:
        server.should_exit = True
        thread.join(10)


async def _spend_until_refused(url: str, token: str, rounds: int = 60) -> tuple[int, MCPError]:
    async with session(url, token) as client:
        for done in range(rounds):
            try:
                await client.call_tool("time__convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                              "target_timezone": "Asia/Tokyo"})
            except MCPError as exc:
                return done, exc
    raise AssertionError("the budget never ran out")


async def test_team_quotas(tmp_path: Path) -> None:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    with token_issuer() as idp:
        # Small budgets so the test can exhaust one; the defaults are 500000 and 1000000.
        env = {"OIDC_ISSUER": idp.issuer, "HUB_RESOURCE": resource, "PLATFORM_TOKENS_PER_HOUR": "600",
               "DATA_TOKENS_PER_HOUR": "100000"}
        with run_gateway(example("team-quotas.yaml"), tmp_path, env=env, port=port, wait_healthy=True) as gw:
            platform = idp.token("pat", "team-platform", resource)
            data = idp.token("dee", "team-data", resource)
            other = idp.token("oscar", "team-sales", resource)
            assert "git__git_commit" in await tool_names(gw.mcp, platform)
            data_tools = await tool_names(gw.mcp, data)
            assert "time__convert_time" in data_tools and "git__git_log" in data_tools
            assert "git__git_commit" not in data_tools
            assert await tool_names(gw.mcp, other) == []
            wrong_audience = idp.token("pat", "team-platform", "http://127.0.0.1:1/mcp")
            headers = {"Authorization": f"Bearer {wrong_audience}", "Accept": "application/json, text/event-stream"}
            assert httpx2.post(gw.mcp, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                               headers=headers).status_code == 401

            # a second member of the team shares the team's budget
            admitted, refused = await _spend_until_refused(gw.mcp, platform)
            assert admitted >= 1
            assert refused.error.data["limit"].startswith("groups.team-platform.budgets[0]")
            assert refused.error.data["subject"] == "team-platform"
            teammate = idp.token("pia", "team-platform", resource)
            _, again = await _spend_until_refused(gw.mcp, teammate, rounds=1)
            assert again.error.data["subject"] == "team-platform"
            # team-data has its own budget and is unaffected
            async with session(gw.mcp, data) as client:
                result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
                assert not result.is_error
            for token in (platform, data, teammate):
                assert token not in gw.log_text()


# --- github-acl: the GitHub stand-in behind the gateway's own token --------------------------------


DEVELOPER_TOOLS = ["github__get_file_contents", "github__list_issues", "github__list_pull_requests",
                   "github__search_code", "github__search_repositories", "github__search_users"]


async def test_github_acl(tmp_path: Path) -> None:
    port = free_port()
    pat = EXAMPLE_ENV["GITHUB_PAT"]
    github = [sys.executable, "-m", "tests.servers.github_like", "--transport", "streamable-http",
              "--port", str(port), "--require-token", pat]
    with running(github, env=gateway_env(), cwd=ROOT, log=tmp_path / "github.log") as proc:
        wait_for_port(port, proc=proc)
        env = {**EXAMPLE_ENV, "GITHUB_MCP_URL": f"http://127.0.0.1:{port}/mcp"}
        with run_gateway(example("github-acl.yaml"), tmp_path, env=env, wait_healthy=True) as gw:
            developer, admin = KEYS["developer"][0], KEYS["admin"][0]
            assert await tool_names(gw.mcp, developer) == DEVELOPER_TOOLS
            admin_tools = await tool_names(gw.mcp, admin)
            assert set(DEVELOPER_TOOLS) < set(admin_tools)
            assert {"github__create_issue", "github__merge_pull_request", "github__whoami"} <= set(admin_tools)
            async with session(gw.mcp, developer) as client:
                found = await client.call_tool("github__search_repositories", {"query": "mcp"})
                assert not found.is_error and "octo/mcp-1" in found.content[0].text
                with pytest.raises(MCPError) as denied:
                    await client.call_tool("github__merge_pull_request", {"owner": "o", "repo": "r", "pullNumber": 1})
                assert "Unknown tool" in denied.value.error.message
            async with session(gw.mcp, admin) as client:
                who = json.loads((await client.call_tool("github__whoami", {})).content[0].text)
                assert who["authorization"] == f"Bearer {pat}"  # the gateway's token, not the caller's key
            # API-key callers, ACL, rate limit and the injected upstream token, all on the direct call path
            assert gw.health()["direct_calls"]["served"] >= 2
            assert pat not in gw.log_text() and developer not in gw.log_text()


# --- internal-rest-api: an OpenAPI document and a real REST service ---------------------------------


async def test_internal_rest_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVENTORY_API_KEY", EXAMPLE_ENV["INVENTORY_API_KEY"])  # the service checks it
    with inventory_service(tmp_path) as api:
        env = {**EXAMPLE_ENV, "INVENTORY_URL": api}
        with run_gateway(example("internal-rest-api.yaml"), tmp_path, env=env, wait_healthy=True) as gw:
            reader, writer = KEYS["reader"][0], KEYS["writer"][0]
            assert await tool_names(gw.mcp, reader) == ["inventory__getItem", "inventory__listItems"]
            assert await tool_names(gw.mcp, writer) == ["inventory__createItem", "inventory__getItem",
                                                        "inventory__listItems"]  # deleteItem is excluded
            async with session(gw.mcp, writer) as client:
                created = await client.call_tool("inventory__createItem", {"name": "dock", "quantity": 4})
                assert not created.is_error, created
                item_id = json.loads(created.content[0].text)["id"]
            async with session(gw.mcp, reader) as client:
                item = await client.call_tool("inventory__getItem", {"item_id": item_id})
                assert json.loads(item.content[0].text)["name"] == "dock"
                with pytest.raises(MCPError):
                    await client.call_tool("inventory__createItem", {"name": "nope"})
            # the service refuses calls without its key: the gateway sent it
            assert httpx2.get(f"{api}/items").status_code == 401
            assert EXAMPLE_ENV["INVENTORY_API_KEY"] not in gw.log_text()


# --- replicas: the example's own script starts Redis and both gateways ------------------------------


def _call_time(url: str) -> tuple[bool, dict[str, Any] | None]:
    async def call() -> tuple[bool, dict[str, Any] | None]:
        async with session(url) as client:
            try:
                await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
                return True, None
            except MCPError as exc:
                return False, exc.error.data

    return anyio.run(call)


def test_replicas_share_one_budget(tmp_path: Path) -> None:
    executable("redis-server")
    ports = {"A_PORT": free_port(), "B_PORT": free_port(), "REDIS_PORT": free_port()}
    env = gateway_env({**{k: str(v) for k, v in ports.items()}, "REPLICA_TOKENS_PER_HOUR": "400",
                       "MCP_HUB": f"{sys.executable} -m mcp_hub.cli"})
    with running(["bash", str(EXAMPLES / "replicas" / "run.sh")], env=env, cwd=ROOT, log=tmp_path / "run.log") as proc:
        urls = [f"http://127.0.0.1:{ports['A_PORT']}", f"http://127.0.0.1:{ports['B_PORT']}"]
        for url in urls:
            wait_for_http(f"{url}/healthz", timeout=60, proc=proc)
        admitted = [0, 0]
        refusals: list[tuple[int, dict[str, Any]]] = []
        for i in range(80):
            replica = i % 2  # round-robin, as a load balancer would
            ok, data = _call_time(f"{urls[replica]}/mcp")
            if ok:
                admitted[replica] += 1
            else:
                assert data is not None
                refusals.append((replica, data))
                if {r for r, _ in refusals} == {0, 1}:
                    break
        assert admitted[0] >= 1 and admitted[1] >= 1, admitted
        assert {r for r, _ in refusals} == {0, 1}, (admitted, refusals)
        # both replicas refuse for the same shared budget
        assert all(d["limit"].startswith("groups.everyone.budgets[0]") and d["subject"] == "everyone"
                   for _, d in refusals)
        health = [httpx2.get(f"{url}/healthz").json() for url in urls]
        assert all(h["upstreams"]["time"]["state"] == "up" for h in health)
    log = (tmp_path / "run.log").read_text()
    assert "replicas: http://127.0.0.1" in log
    # one budget of 400 tokens, not two: what both spent together is the limit plus at most the last call
    calls = [json.loads(line) for line in log.splitlines()
             if line.startswith("{") and '"audit"' in line and '"tools/call"' in line]
    spent = [e["tokens_in"] + e["tokens_out"] for e in calls if e["outcome"] == "ok"]
    assert len(spent) == sum(admitted)
    assert 400 <= sum(spent) <= 400 + max(spent), (spent, admitted)
