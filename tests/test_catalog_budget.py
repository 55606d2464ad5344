"""Catalog budgets through a running gateway: the compact catalog past `catalog.max_tokens`, its four
meta-tools from handshake-era and 2026-07-28 SDK clients, the ACL inside every meta-tool, the full list
within budget, list_changed, the measure (admin API, metric, warning) and Claude Code.

Upstreams are real: `mcp-server-time`, the test MCP server (tests/servers/demo_server.py, which can add
tools at run time), Slack's OpenAPI document (174 operations) and the echo service's document served by
the echo service itself (tests/openapi_services/echo_api.py), which answers calls over real HTTP.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.keys import new_api_key
from mcp_hub.catalog.tokens import listing_tokens, wire_tool
from tests.openapi_services.harness import ECHO_SPEC, Service, echo_service
from tests.support.clients import Recorder, bearer_client, claude_mcp_list, sdk_session
from tests.support.gateway import RunningGateway, python_server, run_gateway, wait_until
from tests.support.tools import ROOT

MODES = ["legacy", "auto"]
DEV_KEY, DEV_HASH = new_api_key()
LEAN_KEY, LEAN_HASH = new_api_key()
ADMIN_KEY = "catalog-budget-admin-key-0123456789"
META = {"catalog_browse", "catalog_search", "catalog_describe", "catalog_call"}
ECHO_SECRET = "key-Zq8uV1c9xw"
HIDDEN = ["slack__admin_users_invite", "slack__admin_users_remove", "time__convert_time"]


def _config(echo: Service) -> dict[str, Any]:
    return {
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": "alice", "groups": ["dev"], "sha256": DEV_HASH},
            {"consumer": "lena", "groups": ["lean"], "sha256": LEAN_HASH},
        ]},
        "admin": {"keys": [{"name": "ops", "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}]},
        "upstreams": {
            "time": {"transport": "stdio", "command": "mcp-server-time"},
            "tiny": python_server("tests.servers.demo_server", "--transport", "stdio"),
        },
        "openapi": {
            "slack": {"spec": str(ROOT / "openapi_specs" / "slack.json")},
            "echo": {"spec": str(ECHO_SPEC), "base_url": echo.url, "auth": {"type": "api_key", "value": ECHO_SECRET}},
        },
        "catalog": {"max_tokens": 5000},  # verbatim, as the issue has it
        "default_acl": "deny",
        "groups": {
            "dev": {
                "tools": {"allow": ["slack__*", "time__*", "tiny__*", "echo__*"],
                          "deny": ["slack__admin_*", "time__convert_time"]},
                "catalog": {"always": ["time__get_current_time", "time__convert_time"], "warn_tokens": 20000},
            },
            "lean": {"tools": {"allow": ["time__*"]}},
        },
    }


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with echo_service(tmp_path_factory.mktemp("echo")) as service:
        yield service


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, echo: Service) -> Iterator[RunningGateway]:
    with run_gateway(_config(echo), tmp_path_factory.mktemp("budget"), wait_healthy=True) as gateway:
        yield gateway


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _payload(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    payload = json.loads(block.text)
    assert result.structured_content == payload
    return payload


async def _unknown_error(client: Client, name: str, arguments: dict[str, Any]) -> str:
    """The error a call gets, with the tool's name taken out (hidden and missing must read the same)."""
    with pytest.raises(MCPError) as caught:
        await client.call_tool(name, arguments)
    target = arguments.get("name", name)
    return caught.value.error.message.replace(target, "<name>") + f" [{caught.value.error.code}]"


# -- the listing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_over_budget_route_lists_the_compact_catalog(gw: RunningGateway, mode: str) -> None:
    async with bearer_client(gw.mcp, DEV_KEY, mode=mode) as client:
        if mode == "auto":
            assert client.protocol_version == "2026-07-28"
        tools = (await client.list_tools()).tools
    names = {t.name for t in tools}
    # the meta-tools and the `always` tool the caller may see; the denied `always` tool stays hidden
    assert names == META | {"time__get_current_time"}
    assert listing_tokens([wire_tool(t) for t in tools]) <= 5000
    search = next(t for t in tools if t.name == "catalog_search")
    assert search.input_schema["required"] == ["query"]


@pytest.mark.parametrize("mode", MODES)
async def test_group_within_budget_sees_the_full_list(gw: RunningGateway, mode: str) -> None:
    async with bearer_client(gw.mcp, LEAN_KEY, mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
    assert names == {"time__get_current_time", "time__convert_time"}


# -- the meta-tools --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_browse_search_describe_and_call(gw: RunningGateway, echo: Service, mode: str) -> None:
    async with bearer_client(gw.mcp, DEV_KEY, mode=mode) as client:
        await client.list_tools()
        toolsets = _payload(await client.call_tool("catalog_browse", {}))["toolsets"]
        by_name = {t["name"]: t for t in toolsets}
        assert by_name["slack/chat"]["tools"] >= 8 and by_name["slack/chat"]["description"]
        assert by_name["echo/items"]["tools"] == 4
        assert by_name["time"]["tools"] == 1  # convert_time is hidden
        listed = _payload(await client.call_tool("catalog_browse", {"toolset": "echo/items"}))
        assert {t["name"] for t in listed["tools"]} == {"echo__getItem", "echo__replaceItem", "echo__deleteItem",
                                                       "echo__createItem"}

        hits = _payload(await client.call_tool("catalog_search", {"query": "post a message in a slack channel"}))
        names = [h["name"] for h in hits["tools"]]
        assert "slack__chat_postMessage" in names[:5], names
        assert all(set(h) == {"name", "description", "score"} for h in hits["tools"])
        scores = [h["score"] for h in hits["tools"]]
        assert scores == sorted(scores, reverse=True)
        scoped = _payload(await client.call_tool("catalog_search", {"query": "item", "toolset": "echo", "limit": 3}))
        assert scoped["tools"] and all(h["name"].startswith("echo__") for h in scoped["tools"])

        described = _payload(await client.call_tool("catalog_describe", {"names": ["slack__chat_postMessage",
                                                                                   "echo__getItem"]}))
        assert [t["name"] for t in described["tools"]] == ["slack__chat_postMessage", "echo__getItem"]
        assert "itemId" in described["tools"][1]["inputSchema"]["properties"]
        assert described["unknown"] == []

        # call: an MCP upstream's tool and a REST operation, answered by the real service
        now = await client.call_tool("catalog_call", {"name": "time__get_current_time",
                                                      "arguments": {"timezone": "UTC"}})
        assert not now.is_error and "UTC" in now.content[0].text  # type: ignore[union-attr]
        got = await client.call_tool("catalog_call", {"name": "echo__getItem", "arguments": {"itemId": "i-42"}})
        assert not got.is_error, got.content
        echoed = json.loads(got.content[0].text)  # type: ignore[union-attr]
        assert echoed["method"] == "GET" and echoed["path"].endswith("/echo/items/i-42")
        # a direct tools/call of an allowed tool that is not listed works too
        added = await client.call_tool("tiny__add", {"a": 2, "b": 3})
        assert not added.is_error and added.structured_content == {"sum": 5}
        # the meta-tools check their arguments like any tool
        with pytest.raises(MCPError, match="Invalid arguments for tool catalog_search"):
            await client.call_tool("catalog_search", {"limit": 3})


@pytest.mark.parametrize("mode", MODES)
async def test_hidden_tools_never_appear_nor_run(gw: RunningGateway, mode: str) -> None:
    async with bearer_client(gw.mcp, DEV_KEY, mode=mode) as client:
        await client.list_tools()
        seen: set[str] = set()
        toolsets = _payload(await client.call_tool("catalog_browse", {}))["toolsets"]
        assert not [t for t in toolsets if t["name"].startswith("slack/admin")]
        for toolset in toolsets:
            listed = _payload(await client.call_tool("catalog_browse", {"toolset": toolset["name"], "limit": 200}))
            assert len(listed["tools"]) == toolset["tools"]
            seen |= {t["name"] for t in listed["tools"]}
        for query in ("invite a user to the workspace as an admin", "remove a user from the workspace",
                      "admin users invite", "convert time between timezones", "convert_time"):
            hits = _payload(await client.call_tool("catalog_search", {"query": query, "limit": 50}))
            seen |= {h["name"] for h in hits["tools"]}
        assert seen and not seen & set(HIDDEN)
        assert "slack__chat_postMessage" in seen

        described = _payload(await client.call_tool("catalog_describe", {"names": [*HIDDEN, "slack__no_such_tool"]}))
        assert described == {"tools": [], "unknown": [*HIDDEN, "slack__no_such_tool"]}

        missing = await _unknown_error(client, "catalog_call", {"name": "slack__no_such_tool", "arguments": {}})
        assert missing == "Unknown tool: <name> [-32602]"
        for name in HIDDEN:
            assert await _unknown_error(client, "catalog_call", {"name": name, "arguments": {}}) == missing
            assert await _unknown_error(client, name, {}) == missing  # nor directly


async def test_meta_tool_names_are_plain_tools_within_budget(gw: RunningGateway) -> None:
    """A caller within budget has no meta-tools: their names are unknown tools like any other."""
    async with bearer_client(gw.mcp, LEAN_KEY) as client:
        await client.list_tools()
        with pytest.raises(MCPError, match="Unknown tool: catalog_search"):
            await client.call_tool("catalog_search", {"query": "time"})


# -- list_changed ------------------------------------------------------------------------------------


async def test_list_changed_reaches_legacy_and_modern_callers(gw: RunningGateway) -> None:
    recorder = Recorder()
    async with sdk_session(gw.mcp, "legacy", headers=_auth(DEV_KEY), recorder=recorder) as legacy, \
            bearer_client(gw.mcp, DEV_KEY, mode="auto") as modern:
        await legacy.list_tools()
        assert modern.protocol_version == "2026-07-28"
        async with modern.listen(tools_list_changed=True) as events:
            await legacy.call_tool("catalog_call", {"name": "tiny__add_tool", "arguments": {"name": "fresh_budget"}})
            with anyio.fail_after(15):
                await events.__anext__()
            await recorder.wait_for(lambda r: any(isinstance(n, types.ToolListChangedNotification)
                                                  for n in r.notifications), seconds=15)
        # the compact listing stays the same; the new tool is found, described and called through it
        assert {t.name for t in (await legacy.list_tools()).tools} == META | {"time__get_current_time"}
        hits = _payload(await modern.call_tool("catalog_search", {"query": "fresh budget"}))
        assert hits["tools"][0]["name"] == "tiny__fresh_budget"
        called = await modern.call_tool("catalog_call", {"name": "tiny__fresh_budget"})
        assert called.content[0].text == "fresh_budget called"  # type: ignore[union-attr]


# -- measuring ---------------------------------------------------------------------------------------


def test_admin_api_metric_and_warning(gw: RunningGateway) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    answer = httpx2.get(f"{gw.url}/admin/catalog", params={"groups": "dev"}, headers=admin, timeout=60)
    assert answer.status_code == 200, answer.text
    route = answer.json()["routes"]["/mcp"]
    cost = route["catalog"]
    assert cost["compact"] is True and cost["max_tokens"] == 5000 and cost["counter"] == "estimate"
    assert cost["tokens"] > 5000 >= cost["listed_tokens"]
    assert set(cost["listed"]) == META | {"time__get_current_time"}
    assert sum(t["tokens"] for t in route["tools"]) == pytest.approx(cost["tokens"], rel=0.01)
    assert not {t["name"] for t in route["tools"]} & set(HIDDEN)
    lean = httpx2.get(f"{gw.url}/admin/catalog", params={"groups": "lean"}, headers=admin, timeout=60).json()
    assert lean["routes"]["/mcp"]["catalog"]["compact"] is False

    def sample(group: str) -> float | None:
        for line in gw.metrics().splitlines():
            if line.startswith("mcp_hub_catalog_tokens{") and f'group="{group}"' in line and 'route="/mcp"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    anyio.run(_list, gw, DEV_KEY)
    anyio.run(_list, gw, LEAN_KEY)
    assert sample("dev") == cost["listed_tokens"]
    assert sample("lean") == lean["routes"]["/mcp"]["catalog"]["listed_tokens"]
    wait_until(lambda: "over warn_tokens 20000" in gw.log_text(), timeout=10, what="the warning in the log")


async def _list(gw: RunningGateway, key: str) -> None:
    async with bearer_client(gw.mcp, key) as client:
        await client.list_tools()


def test_claude_code_reports_the_compact_route_connected(gw: RunningGateway) -> None:
    assert claude_mcp_list(gw.mcp, _auth(DEV_KEY)) == "Connected"


async def test_configured_meta_tool_names_and_route_budget(tmp_path: Path) -> None:
    """A servers: entry's catalog, renamed meta-tools, a description cap; the top-level route stays full."""
    config = {
        "upstreams": {"time": {"transport": "stdio", "command": "mcp-server-time"}},
        "openapi": {"slack": {"spec": str(ROOT / "openapi_specs" / "slack.json")}},
        "servers": [{"path": "/lean", "upstreams": ["slack", "time"], "catalog": {
            "max_tokens": 3000, "always": ["slack__chat_post*"], "max_description": 80,
            "meta_tools": {"search": "find_tool", "call": "use_tool"}}}],
    }
    with run_gateway(config, tmp_path, wait_healthy=True) as gateway:
        async with Client(f"{gateway.url}/lean", mode="legacy") as client:
            tools = (await client.list_tools()).tools
            names = {t.name for t in tools}
            assert names == {"catalog_browse", "find_tool", "catalog_describe", "use_tool",
                             "slack__chat_postEphemeral", "slack__chat_postMessage"}
            assert all(len(t.description or "") <= 80 for t in tools if t.name.startswith("slack__"))
            hits = _payload(await client.call_tool("find_tool", {"query": "current time in a timezone"}))
            assert hits["tools"][0]["name"] == "time__get_current_time"
            called = await client.call_tool("use_tool", {"name": "time__get_current_time",
                                                         "arguments": {"timezone": "UTC"}})
            assert not called.is_error
        async with Client(gateway.mcp, mode="legacy") as client:
            assert len((await client.list_tools()).tools) == 176


def test_reload_refuses_a_counter_that_does_not_load(gw: RunningGateway) -> None:
    original = gw.config_path.read_text()
    config = yaml.safe_load(original)
    config["catalog"]["counter"] = "no_such_module_here:count"
    try:
        gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        answer = httpx2.post(f"{gw.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
    finally:
        gw.config_path.write_text(original)
    assert answer.status_code == 422, answer.text
    assert any(p.startswith("catalog.counter: token counter 'no_such_module_here:count': cannot import module")
               for p in answer.json()["problems"]), answer.json()
    anyio.run(_list, gw, DEV_KEY)  # the old config keeps serving
