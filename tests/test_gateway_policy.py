"""Policy and auth through a running gateway: API keys and OAuth identities, per-group catalogs,
server-side ACL enforcement, token budgets (memory and Redis, one and two replicas), metrics, audit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.keys import new_api_key
from tests.support.clients import claude_mcp_list
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.idp import Idp, idp  # noqa: F401 - the session IdP fixture
from tests.support.processes import redis_server

DEV_KEY, DEV_HASH = new_api_key()
ADMIN_KEY, ADMIN_HASH = new_api_key()


def _config(extra: dict[str, Any] | None = None, **groups_extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "auth": {
            "mode": "api_key",
            "api_keys": [
                {"consumer": "alice", "groups": ["developer"], "sha256": DEV_HASH},
                {"consumer": "root", "groups": ["admin"], "sha256": ADMIN_HASH},
            ],
        },
        "upstreams": {
            "time": {"transport": "stdio", "command": "mcp-server-time"},
            "tiny": python_server("tests.servers.demo_server", "--transport", "stdio"),
        },
        # the policy contract's keys, verbatim
        "default_acl": "deny",
        "groups": {
            "developer": {
                "tools": {"allow": ["time__*", "tiny__add", "tiny__big"], "deny": ["time__convert_time"]},
                "budgets": [{"tokens": 2000, "window": "1 minute", "count": "total"}],
                **groups_extra,
            },
            "admin": {"tools": {"allow": ["*"]}},
        },
    }
    config.update(extra or {})
    return config


def _client(url: str, key: str, mode: str = "legacy") -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    from mcp.client.streamable_http import streamable_http_client

    return Client(streamable_http_client(url, http_client=http), mode=mode)


async def _names(url: str, key: str) -> list[str]:
    async with _client(url, key) as client:
        return sorted(t.name for t in (await client.list_tools()).tools)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(_config(), tmp_path_factory.mktemp("policy"), wait_healthy=True) as gateway:
        yield gateway


def test_api_key_required(gw: RunningGateway) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    assert httpx2.post(gw.mcp, json=body, headers=headers).status_code == 401
    wrong = {**headers, "Authorization": "Bearer not-a-key"}
    assert httpx2.post(gw.mcp, json=body, headers=wrong).status_code == 401
    x_api_key = {**headers, "X-Api-Key": "also-wrong"}
    assert httpx2.post(gw.mcp, json=body, headers=x_api_key).status_code == 401


async def test_groups_see_different_catalogs(gw: RunningGateway) -> None:
    dev = await _names(gw.mcp, DEV_KEY)
    assert dev == ["time__get_current_time", "tiny__add", "tiny__big"]
    admin = await _names(gw.mcp, ADMIN_KEY)
    assert {"time__convert_time", "tiny__echo", "tiny__add"} <= set(admin)


async def test_hidden_tool_fails_like_a_missing_one(gw: RunningGateway) -> None:
    async with _client(gw.mcp, DEV_KEY) as client:
        with pytest.raises(MCPError) as hidden:
            await client.call_tool("time__convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                          "target_timezone": "UTC"})
        with pytest.raises(MCPError) as missing:
            await client.call_tool("time__does_not_exist", {})
        assert hidden.value.error.code == missing.value.error.code
        assert hidden.value.error.message.replace("time__convert_time", "X") == \
            missing.value.error.message.replace("time__does_not_exist", "X")
        assert (await client.call_tool("tiny__add", {"a": 1, "b": 2})).structured_content == {"sum": 3}
    async with _client(gw.mcp, ADMIN_KEY) as client:
        r = await client.call_tool("time__convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                          "target_timezone": "Europe/Paris"})
        assert not r.is_error
    audit = _audit_lines(gw)
    denied = [e for e in audit if e.get("tool") == "time__convert_time" and e.get("decision") == "deny"]
    assert denied and denied[-1]["rule"] == "groups.developer.tools.deny[0]: time__convert_time"
    missing_events = [e for e in audit if e.get("tool") == "time__does_not_exist"]
    assert missing_events and missing_events[-1]["outcome"] == "unknown_tool"


def _audit_lines(gw: RunningGateway) -> list[dict[str, Any]]:
    events = []
    for line in gw.log_text().splitlines():
        if line.startswith("{") and '"audit"' in line:
            events.append(json.loads(line))
    return events


async def test_metrics_and_audit_after_a_scripted_session(gw: RunningGateway) -> None:
    before = len(_audit_lines(gw))
    async with _client(gw.mcp, DEV_KEY) as client:
        for i in range(3):
            await client.call_tool("tiny__add", {"a": i, "b": 1})
    async with _client(gw.mcp, ADMIN_KEY) as client:
        await client.call_tool("tiny__echo", {"text": "hi"})
    await anyio.sleep(0.3)
    metrics = gw.metrics()
    dev_calls = _sample(metrics, "mcp_hub_tool_calls_total", consumer="alice", group="developer", tool="tiny__add",
                        outcome="ok")
    assert dev_calls >= 3
    assert _sample(metrics, "mcp_hub_tool_calls_total", consumer="root", group="admin", tool="tiny__echo",
                   outcome="ok") >= 1
    assert _sample(metrics, "mcp_hub_tokens_total", consumer="alice", group="developer", direction="output") > 0
    events = _audit_lines(gw)[before:]
    calls = [e for e in events if e.get("method") == "tools/call"]
    assert len(calls) == 4
    assert {e["consumer"] for e in calls} == {"alice", "root"}
    assert all(e["tokens_in"] > 0 and e["tokens_out"] > 0 and e["latency_ms"] > 0 for e in calls)
    for secret in (DEV_KEY, ADMIN_KEY):
        assert secret not in gw.log_text()
        assert secret not in metrics


def _sample(text: str, metric: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _exhaust(url: str, key: str, limit_rounds: int = 50) -> tuple[int, MCPError]:
    admitted = 0
    async with _client(url, key) as client:
        for _ in range(limit_rounds):
            try:
                await client.call_tool("tiny__big", {"n_bytes": 400})
                admitted += 1
            except MCPError as exc:
                return admitted, exc
    raise AssertionError("the budget never ran out")


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_budget_exhausted_then_resets(tmp_path: Path, storage: str) -> None:
    cfg = _config()
    cfg["groups"]["developer"]["budgets"] = [{"tokens": 500, "window": "2 seconds", "count": "total",
                                              "strategy": "fixed-window"}]
    with redis_server(tmp_path) if storage == "redis" else _nothing() as redis_url:
        if redis_url:
            cfg["storage"] = redis_url
        with run_gateway(cfg, tmp_path, wait_healthy=True) as gw:
            admitted, exc = await _exhaust(gw.mcp, DEV_KEY)
            assert admitted >= 1
            data = exc.error.data
            assert data["limit"].startswith("groups.developer.budgets[0]")
            assert data["subject"] == "developer" and data["remaining"] == 0
            assert 0 < data["reset_after_s"] <= 2.5
            assert "developer" in exc.error.message and "reset" in exc.error.message
            await anyio.sleep(data["reset_after_s"] + 0.3)
            async with _client(gw.mcp, DEV_KEY) as client:
                assert not (await client.call_tool("tiny__big", {"n_bytes": 10})).is_error
            metrics = gw.metrics()
            assert _sample(metrics, "mcp_hub_limit_rejections_total", group="developer") >= 1


async def test_two_replicas_share_one_budget_through_redis(tmp_path: Path) -> None:
    cfg = _config()
    limit = 3000
    cfg["groups"]["developer"]["budgets"] = [{"tokens": limit, "window": "1 hour", "count": "output"}]
    with redis_server(tmp_path) as redis_url:
        cfg["storage"] = redis_url
        with run_gateway(cfg, tmp_path, wait_healthy=True, name="a") as a, \
                run_gateway(cfg, tmp_path, wait_healthy=True, name="b") as b:
            per_call: list[int] = []
            admitted = {"a": 0, "b": 0}
            rejected = {"a": 0, "b": 0}

            async def worker(name: str, gw: RunningGateway) -> None:
                async with _client(gw.mcp, DEV_KEY) as client:
                    for _ in range(40):
                        try:
                            r = await client.call_tool("tiny__big", {"n_bytes": 400})
                            admitted[name] += 1
                            if not per_call:
                                per_call.append(len(r.content[0].text))
                        except MCPError:
                            rejected[name] += 1
                            return

            async with anyio.create_task_group() as tg:
                tg.start_soon(worker, "a", a)
                tg.start_soon(worker, "b", b)
            audit = [e for gw in (a, b) for e in _audit_lines(gw) if e.get("outcome") == "ok"]
            spent = sum(e["tokens_out"] for e in audit)
            one_call = max(e["tokens_out"] for e in audit)
            assert rejected["a"] == 1 and rejected["b"] == 1
            assert admitted["a"] > 0 and admitted["b"] > 0
            # at most the limit plus one call in flight per replica
            assert limit <= spent <= limit + 2 * one_call, (spent, one_call, admitted)


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_oauth_gateway_with_real_idp(idp: Idp, tmp_path: Path) -> None:  # noqa: F811
    from tests.support.tools import free_port

    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    cfg = {
        "auth": {"mode": "oauth", "resource": resource, "authorization_servers": [idp.issuer]},
        "upstreams": {"tiny": python_server("tests.servers.demo_server", "--transport", "stdio")},
        "default_acl": "deny",
        "groups": {"engineering": {"tools": {"allow": ["tiny__echo"]}}},
    }
    with run_gateway(cfg, tmp_path, wait_healthy=True, port=port) as gw:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"Accept": "application/json, text/event-stream"}
        r = httpx2.post(gw.mcp, json=body, headers=headers)
        assert r.status_code == 401
        challenge = r.headers["www-authenticate"]
        assert "resource_metadata=" in challenge
        prm_url = challenge.split('resource_metadata="')[1].split('"')[0]
        prm = httpx2.get(prm_url).json()
        assert prm["resource"] == resource and idp.issuer in prm["authorization_servers"]
        token = idp.client_credentials(resource=resource)["access_token"]
        names = anyio.run(_names, gw.mcp, token)
        assert names == ["tiny__echo"]  # the client's groups claim is engineering
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        assert httpx2.post(gw.mcp, json=body, headers={**headers, "Authorization": f"Bearer {tampered}"}
                           ).status_code == 401
        assert claude_mcp_list(gw.mcp) == "Needs authentication"
        assert claude_mcp_list(gw.mcp, {"Authorization": f"Bearer {token}"}) == "Connected"
        assert token not in gw.log_text()


def test_token_exchange_gives_the_upstream_its_own_token(idp: Idp, tmp_path: Path) -> None:  # noqa: F811
    """Caller-owned credentials: the upstream sees an exchanged token for its own audience (one session
    per consumer), never the token the caller presented to the gateway."""
    import sys

    from tests.support.processes import running, wait_for_port
    from tests.support.tools import ROOT, free_port

    up_port, gw_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"
    resource = f"http://127.0.0.1:{gw_port}/mcp"
    cfg = {
        "auth": {"mode": "oauth", "resource": resource, "authorization_servers": [idp.issuer]},
        "upstreams": {"gh": {
            "transport": "streamable-http", "url": upstream_url,
            "credentials": {"mode": "exchange", "client_id": "mcp-gateway", "client_secret": "${GW_SECRET}",
                            "audience": upstream_url},
        }},
    }
    args = [sys.executable, "-m", "tests.servers.github_like", "--transport", "streamable-http", "--port", str(up_port)]
    with running(args, cwd=ROOT, log=tmp_path / "gh.log") as proc:
        wait_for_port(up_port, proc=proc)
        with run_gateway(cfg, tmp_path, port=gw_port, env={"GW_SECRET": idp.gateway_secret}) as gw:
            token = idp.client_credentials(resource=resource)["access_token"]

            async def whoami() -> tuple[list[str], dict[str, Any]]:
                async with _client(gw.mcp, token) as client:
                    names = [t.name for t in (await client.list_tools()).tools]
                    result = await client.call_tool("gh__whoami", {})
                    return names, json.loads(result.content[0].text)

            names, seen = anyio.run(whoami)
            assert "gh__search_repositories" in names
            received = seen["authorization"].removeprefix("Bearer ")
            assert received != token
            claims = _jwt_claims(received)
            assert claims["aud"] == upstream_url
            assert claims["sub"] == _jwt_claims(token)["sub"]
            assert gw.health()["upstreams"]["gh"]["sessions"] == 1
            assert token not in gw.log_text() and received not in gw.log_text()


def _jwt_claims(token: str) -> dict[str, Any]:
    import base64

    body = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


async def test_passthrough_forwards_the_callers_upstream_token_only(tmp_path: Path) -> None:
    """The GitHub-remote pattern: API key identifies the consumer, the caller's own upstream token passes
    through on a per-consumer session, and the gateway credential is never forwarded."""
    import sys

    from mcp.client.streamable_http import streamable_http_client

    from tests.support.processes import running, wait_for_port
    from tests.support.tools import ROOT, free_port

    up_port = free_port()
    cfg = _config()
    cfg["upstreams"] = {"gh": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                               "credentials": {"mode": "passthrough", "source_header": "X-Upstream-Token"}}}
    cfg["groups"]["developer"]["tools"] = {"allow": ["gh__*"]}
    args = [sys.executable, "-m", "tests.servers.github_like", "--transport", "streamable-http", "--port", str(up_port)]
    with running(args, cwd=ROOT, log=tmp_path / "gh.log") as proc:
        wait_for_port(up_port, proc=proc)
        with run_gateway(cfg, tmp_path) as gw:
            seen: dict[str, str] = {}
            for who, key in (("alice", DEV_KEY), ("root", ADMIN_KEY)):
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}",
                                                   "X-Upstream-Token": f"ghp_{who}_token"}, timeout=30)
                async with Client(streamable_http_client(gw.mcp, http_client=http), mode="legacy") as client:
                    assert "gh__whoami" in [t.name for t in (await client.list_tools()).tools]
                    result = await client.call_tool("gh__whoami", {})
                    seen[who] = json.loads(result.content[0].text)["authorization"]
            assert seen == {"alice": "Bearer ghp_alice_token", "root": "Bearer ghp_root_token"}
            assert gw.health()["upstreams"]["gh"]["sessions"] == 2
            assert DEV_KEY not in gw.log_text() and "ghp_alice_token" not in gw.log_text()


async def test_upstream_with_its_own_oauth_github_remote_pattern(tmp_path: Path) -> None:
    """The caller identifies with X-Api-Key; the route's metadata sends it to the upstream's own
    authorization server for the token it puts in Authorization, which passes through unchanged."""
    import sys

    from mcp.client.streamable_http import streamable_http_client

    from tests.support.processes import running, wait_for_port
    from tests.support.tools import ROOT, free_port

    up_port, gw_port = free_port(), free_port()
    github_as = "https://github.example/login/oauth"
    cfg = _config()
    cfg["upstreams"] = {"gh": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                               "credentials": {"mode": "passthrough", "source_header": "Authorization"}}}
    cfg["servers"] = [{"path": "/mcp/github", "upstreams": ["gh"], "prefix": False,
                       "authorization_servers": [github_as]}]
    # rules name tools canonically (`<upstream prefix>__<name>`, as on /mcp), whichever route serves them
    cfg["groups"]["developer"]["tools"] = {"allow": ["gh__whoami", "gh__search_*"]}
    args = [sys.executable, "-m", "tests.servers.github_like", "--transport", "streamable-http", "--port", str(up_port)]
    with running(args, cwd=ROOT, log=tmp_path / "gh.log") as proc:
        wait_for_port(up_port, proc=proc)
        with run_gateway(cfg, tmp_path, port=gw_port) as gw:
            url = f"{gw.url}/mcp/github"
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            accept = {"Accept": "application/json, text/event-stream"}
            r = httpx2.post(url, json=body, headers={**accept, "X-Api-Key": DEV_KEY})
            assert r.status_code == 401
            metadata_url = r.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
            prm = httpx2.get(metadata_url).json()
            assert prm["resource"] == f"http://127.0.0.1:{gw_port}/mcp/github"
            assert prm["authorization_servers"] == [github_as]

            async def whoami(headers: dict[str, str]) -> tuple[list[str], Any]:
                http = httpx2.AsyncClient(headers=headers, timeout=30)
                async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                    names = sorted(t.name for t in (await client.list_tools()).tools)
                    try:
                        result = await client.call_tool("whoami", {})
                    except MCPError as exc:
                        return names, exc.error.message
                    return names, json.loads(result.content[0].text) if not result.is_error else \
                        result.content[0].text

            names, seen = await whoami({"X-Api-Key": DEV_KEY, "Authorization": "Bearer gho_from_github"})
            assert "whoami" in names and "search_repositories" in names and "delete_file" not in names
            assert seen["authorization"] == "Bearer gho_from_github"
            # a caller who identifies with Authorization itself never has its gateway key forwarded
            _, refused = await whoami({"Authorization": f"Bearer {ADMIN_KEY}"})
            assert "X-Api-Key" in str(refused)
            assert ADMIN_KEY not in (tmp_path / "gh.log").read_text()
            assert DEV_KEY not in gw.log_text() and "gho_from_github" not in gw.log_text()


def test_claims_forwarded_as_headers_on_a_shared_session(idp: Idp, tmp_path: Path) -> None:  # noqa: F811
    """auth.claim_to_header: each call carries its own caller's claims, even on one shared upstream session."""
    import sys

    from tests.support.processes import running, wait_for_port
    from tests.support.tools import ROOT, free_port

    up_port, gw_port = free_port(), free_port()
    resource = f"http://127.0.0.1:{gw_port}/mcp"
    cfg = {
        "auth": {"mode": ["oauth", "api_key"], "resource": resource, "authorization_servers": [idp.issuer],
                 "claim_to_header": {"sub": "X-Consumer-Sub", "groups": "X-Consumer-Groups"},
                 "api_keys": [{"consumer": "alice", "groups": ["developer"], "sha256": DEV_HASH}]},
        "upstreams": {"gh": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp"}},
    }
    args = [sys.executable, "-m", "tests.servers.github_like", "--transport", "streamable-http", "--port", str(up_port)]
    with running(args, cwd=ROOT, log=tmp_path / "gh.log") as proc:
        wait_for_port(up_port, proc=proc)
        with run_gateway(cfg, tmp_path, port=gw_port, wait_healthy=True) as gw:
            token = idp.client_credentials(resource=resource)["access_token"]

            async def whoami(key: str) -> dict[str, Any]:
                async with _client(gw.mcp, key) as client:
                    return json.loads((await client.call_tool("gh__whoami", {})).content[0].text)

            seen = anyio.run(whoami, token)
            assert seen["forwarded"]["x-consumer-sub"] == _jwt_claims(token)["sub"]
            assert seen["forwarded"]["x-consumer-groups"] == "engineering"
            assert seen["authorization"] is None  # the caller's token is not forwarded
            # another caller on the same session: its own identity, not the previous caller's
            assert anyio.run(whoami, DEV_KEY)["forwarded"] == {"x-consumer-sub": "alice",
                                                              "x-consumer-groups": "developer"}
            assert gw.health()["upstreams"]["gh"]["connects"] == 1


async def test_session_scope_per_consumer_isolates_callers(tmp_path: Path) -> None:
    """`session_scope: per_consumer` without caller credentials: one upstream process per consumer, so a
    server-to-client request can always be tied to its caller."""
    cfg = _config()
    cfg["upstreams"] = {"tiny": {**python_server("tests.servers.demo_server", "--transport", "stdio"),
                                 "session_scope": "per_consumer"}}
    cfg["groups"]["developer"]["tools"] = {"allow": ["tiny__*"]}
    with run_gateway(cfg, tmp_path) as gw:
        for key in (DEV_KEY, ADMIN_KEY):
            async with _client(gw.mcp, key) as client:
                assert "tiny__echo" in [t.name for t in (await client.list_tools()).tools]
                assert (await client.call_tool("tiny__echo", {"text": key[:12]})).content[0].text == key[:12]
        assert gw.health()["upstreams"]["tiny"]["sessions"] == 2
