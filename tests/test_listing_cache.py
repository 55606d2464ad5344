"""Listings served from their serialized form (transport/listings.py): what clients receive is what a fresh
computation gives, in both protocol eras, it follows catalog changes, and it is per group set.

Real gateways in front of real upstream processes; listings read over raw HTTP (the direct entry answers a
session's listings once it is initialized) and through the SDK's client.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.lowlevel import Server
from mcp_types import methods

from mcp_hub import __version__
from mcp_hub.auth.keys import new_api_key
from tests.support.gateway import RunningGateway, python_server, run_gateway, wait_until
from tests.support.processes import running, wait_for_port
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request
from tests.support.tools import ROOT, free_port

MODERN = "2026-07-28"
ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "0"}}
ERAS = ["2025-11-25", "2025-06-18", MODERN]
LISTS = {"tools/list": (types.ListToolsResult, "tools"), "prompts/list": (types.ListPromptsResult, "prompts"),
         "resources/list": (types.ListResourcesResult, "resources")}
READER_KEY, READER_HASH = new_api_key()
WRITER_KEY, WRITER_HASH = new_api_key()
ADMIN_KEY, ADMIN_HASH = new_api_key()
API_BASE = "http://127.0.0.1:9/api"


class RawCaller:
    """One caller over plain HTTP: a handshake-era session, or 2026-07-28 requests that stand alone."""

    def __init__(self, url: str, era: str, key: str | None = None, headers: dict[str, str] | None = None) -> None:
        self.url, self.era, self.ids = url, era, 1
        self.http = httpx2.Client(timeout=30)
        self.headers = {**MCP_HEADERS, "mcp-protocol-version": era, **(headers or {})}
        if key is not None:
            self.headers["Authorization"] = f"Bearer {key}"
        if era != MODERN:
            init = self.http.post(url, json=initialize_request(era), headers=self.headers)
            assert init.status_code == 200, init.text
            self.headers["mcp-session-id"] = init.headers["mcp-session-id"]
            self.http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers)

    def result(self, method: str) -> tuple[dict[str, Any], httpx2.Response]:
        self.ids += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.ids, "method": method}
        headers = dict(self.headers)
        if self.era == MODERN:
            body["params"] = {"_meta": ENVELOPE}
            headers["mcp-method"] = method
        response = self.http.post(self.url, json=body, headers=headers)
        answer = answer_of(response, self.ids)
        assert "result" in answer, answer
        return answer["result"], response

    def names(self, method: str = "tools/list") -> list[str]:
        field = LISTS[method][1]
        return [item["name"] for item in self.result(method)[0][field]]

    def close(self) -> None:
        self.http.close()


def _stamp() -> dict[str, Any]:
    """The `_meta` a 2026-07-28 result of the gateway carries: its server info, as the SDK stamps it."""
    server: Server[Any] = Server("mcp-hub", version=__version__, title="mcp-hub gateway")
    return {types.SERVER_INFO_META_KEY: server.server_info_stamp}


def _fresh(upstream: dict[str, list[dict[str, Any]]], method: str, era: str, prefix: str) -> dict[str, Any]:
    """The result as the SDK's server would serialize it from the upstream's items, named as the gateway
    exposes them: the models, then `serialize_server_result` for the era, then the 2026-07-28 stamp."""
    model, field = LISTS[method]
    items = [dict(item, name=f"{prefix}{item['name']}") if field != "resources" else item
             for item in upstream[method]]
    dumped = model.model_validate({field: items}).model_dump(by_alias=True, mode="json", exclude_none=True)
    wire = methods.serialize_server_result(method, era, dumped)
    if era == MODERN:
        wire["_meta"] = _stamp()
    return wire


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """The demo server over Streamable HTTP, and its own listings (read from it directly)."""
    tmp = tmp_path_factory.mktemp("demo")
    port = free_port()
    args = [sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http", "--port", str(port)]
    with running(args, cwd=ROOT, log=tmp / "demo.log") as proc:
        wait_for_port(port, proc=proc)
        url = f"http://127.0.0.1:{port}/mcp"
        direct = RawCaller(url, "2025-11-25")
        own = {method: direct.result(method)[0][LISTS[method][1]] for method in LISTS}
        direct.close()
        yield url, own


@pytest.fixture(scope="module")
def pair(demo: tuple[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningGateway]]:
    """The same config twice: the default gateway (listings from the direct entry) and one whose requests
    all go through the SDK's server (`listen.direct_calls: false`)."""
    tmp = tmp_path_factory.mktemp("pair")
    config = {"upstreams": {"demo": {"transport": "streamable-http", "url": demo[0]}},
              "admin": {"keys": [{"name": "ops", "sha256": ADMIN_HASH}], "allowed_base_urls": [API_BASE]}}
    with run_gateway(config, tmp, wait_healthy=True, name="fast") as fast, \
            run_gateway({**config, "listen": {"direct_calls": False}}, tmp, wait_healthy=True, name="sdk") as sdk:
        yield {"fast": fast, "sdk": sdk}


@pytest.mark.parametrize("era", ERAS)
def test_served_listing_equals_a_fresh_one(pair: dict[str, RunningGateway], demo: tuple[str, dict[str, Any]],
                                           era: str) -> None:
    """Tools, prompts and resources, first and repeated, from the direct entry and from the SDK's: each the
    result a fresh serialization of the upstream's items gives for the era."""
    own = demo[1]
    texts: dict[tuple[str, str], str] = {}
    for name, gw in pair.items():
        caller = RawCaller(gw.mcp, era)
        for method in LISTS:
            expected = _fresh(own, method, era, "demo__")
            first, first_response = caller.result(method)
            again, response = caller.result(method)
            assert first == expected, (name, method)
            assert again == expected
            if era == MODERN:
                assert first["resultType"] == "complete" and first["_meta"] == _stamp()
            else:
                assert "resultType" not in first and "_meta" not in first
            assert response.status_code == 200
            texts[(name, method)] = _message_text(response)
            # the direct entry answered (the SDK's entry streams a session's answers)
            if name == "fast":
                assert first_response.headers["content-type"] == response.headers["content-type"] == "application/json"
        caller.close()
    for method in LISTS:  # the same JSON text either way
        assert texts[("fast", method)] == texts[("sdk", method)]


def _message_text(response: httpx2.Response) -> str:
    """The JSON-RPC message as sent: the body, or the data of the SSE event."""
    if response.headers["content-type"].startswith("application/json"):
        return response.text
    return next(line[len("data: "):] for line in response.text.splitlines() if line.startswith("data: "))


@pytest.mark.parametrize("era", ERAS)
def test_text_and_numbers_written_as_the_sdk_writes_them(pair: dict[str, RunningGateway], era: str) -> None:
    """Non-ASCII text, a DEL character and numbers whose forms differ between JSON writers (1e-05, 1e+20,
    0.5) in a registered document's tool: the same JSON text from the direct entry as from the SDK's."""
    document = {"openapi": "3.0.3", "info": {"title": "unicode", "version": "1"}, "paths": {"/f": {"get": {
        "operationId": "fetch_faktura", "summary": "Hämta fakturor \u2014 snabbt \U0001f680 \x7f",
        "parameters": [{"name": "ratio", "in": "query", "description": "Förhållande, 0.5 standard",
                        "schema": {"type": "number", "minimum": 1e-05, "maximum": 1e20, "default": 0.5}}],
        "responses": {"200": {"description": "ok"}}}}}}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for gw in pair.values():
        r = httpx2.post(f"{gw.url}/admin/openapi", headers=admin, timeout=30,
                        json={"name": "uni", "document": document, "base_url": API_BASE})
        assert r.status_code == 201, r.text
    try:
        texts, results = {}, {}
        for name, gw in pair.items():
            caller = RawCaller(gw.mcp, era)
            caller.result("tools/list")
            results[name], response = caller.result("tools/list")
            texts[name] = _message_text(response)
            caller.close()
        assert texts["fast"] == texts["sdk"]
        tool = next(t for t in results["fast"]["tools"] if t["name"] == "uni__fetch_faktura")
        assert "\U0001f680" in tool["description"] and tool["inputSchema"]["properties"]["ratio"]["minimum"] == 1e-05
    finally:
        for gw in pair.values():
            httpx2.delete(f"{gw.url}/admin/openapi/uni", headers=admin, timeout=30)


async def test_listing_follows_list_changed_in_both_eras(tmp_path: Path) -> None:
    """An upstream adds a tool and says so: a handshake-era session hears list_changed and its next listing
    (served from the direct entry) shows the tool, as do a 2026-07-28 client's and a new raw session's."""
    config = {"upstreams": {"a": python_server("tests.servers.demo_server", "--transport", "stdio")}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        changed = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        raw = RawCaller(gw.mcp, "2025-11-25")
        before = raw.names()
        assert "a__echo" in before and "a__fresh_tool" not in before
        async with Client(gw.mcp, mode="legacy", message_handler=on_message) as client:
            assert [t.name for t in (await client.list_tools()).tools] == before
            await client.call_tool("a__add_tool", {"name": "fresh_tool"})
            with anyio.fail_after(30):
                await changed.wait()
            after = [t.name for t in (await client.list_tools()).tools]
        assert after == [*before, "a__fresh_tool"]
        assert raw.names() == after  # the earlier session, answered by the direct entry
        async with Client(gw.mcp) as modern:
            assert [t.name for t in (await modern.list_tools()).tools] == after
        assert RawCaller(gw.mcp, MODERN).names() == after
        raw.close()


def _groups_config(upstream: dict[str, Any]) -> dict[str, Any]:
    return {
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": "rita", "groups": ["readers"], "sha256": READER_HASH},
            {"consumer": "walt", "groups": ["writers"], "sha256": WRITER_HASH}]},
        "admin": {"keys": [{"name": "ops", "sha256": ADMIN_HASH}], "allowed_base_urls": [API_BASE]},
        "upstreams": {"a": upstream},
        "default_acl": "deny",
        "groups": {"readers": {"tools": {"allow": ["a__echo", "a__add", "billing__*"]},
                               "prompts": {"allow": ["*"]}, "resources": {"allow": ["demo://readme"]}},
                   "writers": {"tools": {"allow": ["a__*"], "deny": ["a__echo"]}}},
    }


def test_each_group_sees_its_own_list_and_registrations(tmp_path: Path) -> None:
    """Two API keys in two groups with different ACLs: each gets its own listing in both eras, first and
    repeated; an OpenAPI document registered through the admin API (and then removed) shows in the next
    listing of the group allowed to see it only."""
    config = _groups_config(python_server("tests.servers.demo_server", "--transport", "stdio"))
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        callers = {(who, era): RawCaller(gw.mcp, era, key) for who, key in (("rita", READER_KEY), ("walt", WRITER_KEY))
                   for era in ("2025-11-25", MODERN)}
        for _ in range(2):
            for (who, _era), caller in callers.items():
                names = caller.names()
                if who == "rita":
                    assert names == ["a__echo", "a__add"]
                    assert caller.names("prompts/list") == ["a__greet"]
                    assert [r["uri"] for r in caller.result("resources/list")[0]["resources"]] == ["demo://readme"]
                else:
                    assert "a__echo" not in names and {"a__add", "a__add_tool", "a__big"} <= set(names)
                    assert caller.names("prompts/list") == []
                    assert caller.result("resources/list")[0]["resources"] == []
        document = {"openapi": "3.0.3", "info": {"title": "billing", "version": "1"},
                    "paths": {"/invoices": {"get": {"operationId": "list_invoices", "summary": "List invoices.",
                                                     "responses": {"200": {"description": "ok"}}}}}}
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        r = httpx2.post(f"{gw.url}/admin/openapi", headers=admin, timeout=30,
                        json={"name": "billing", "document": document, "base_url": API_BASE})
        assert r.status_code == 201, r.text
        for (who, _era), caller in callers.items():
            assert ("billing__list_invoices" in caller.names()) is (who == "rita")
        assert httpx2.delete(f"{gw.url}/admin/openapi/billing", headers=admin, timeout=30).status_code == 200
        for (who, _era), caller in callers.items():
            assert "billing__list_invoices" not in caller.names()
            assert ("a__echo" in caller.names()) is (who == "rita")
        for caller in callers.values():
            caller.close()


async def test_per_consumer_upstream_listing_is_each_callers_own(tmp_path: Path) -> None:
    """A passthrough upstream (one upstream session per consumer): a consumer whose group's listing is
    served already still gets its own upstream session opened by its listing, calls go out with its own
    credential, and a consumer of another group sees its group's list only."""
    up_port = free_port()
    args = [sys.executable, "-m", "tests.servers.github_like", "--transport", "streamable-http", "--port", str(up_port)]
    other_key, other_hash = new_api_key()
    config = _groups_config({"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                             "credentials": {"mode": "passthrough", "source_header": "X-Upstream-Token"}})
    config["auth"]["api_keys"].append({"consumer": "rosa", "groups": ["readers"], "sha256": other_hash})
    config["groups"]["readers"]["tools"] = {"allow": ["a__whoami", "a__search_*"]}
    with running(args, cwd=ROOT, log=tmp_path / "gh.log") as proc:
        wait_for_port(up_port, proc=proc)
        with run_gateway(config, tmp_path) as gw:
            lists: dict[str, list[str]] = {}
            for number, (who, key) in enumerate((("rita", READER_KEY), ("rosa", other_key), ("walt", WRITER_KEY))):
                caller = RawCaller(gw.mcp, "2025-11-25", key, {"X-Upstream-Token": f"ghp_{who}_token"})
                lists[who] = caller.names()
                # the listing opened this consumer's own upstream session, cached answer or not
                wait_until(lambda n=number: gw.health()["upstreams"]["a"]["sessions"] == n + 1,
                           what="a session per consumer")
                caller.close()
            assert lists["rita"] == lists["rosa"] and "a__whoami" in lists["rita"]
            assert all(name == "a__whoami" or name.startswith("a__search_") for name in lists["rita"])
            assert "a__whoami" in lists["walt"] and set(lists["walt"]) != set(lists["rita"])
            seen = {}
            for who, key in (("rita", READER_KEY), ("rosa", other_key)):
                http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}",
                                                   "X-Upstream-Token": f"ghp_{who}_token"}, timeout=30)
                async with Client(streamable_http_client(gw.mcp, http_client=http)) as client:
                    assert [t.name for t in (await client.list_tools()).tools] == lists[who]
                    result = await client.call_tool("a__whoami", {})
                    seen[who] = json.loads(result.content[0].text)["authorization"]
            assert seen == {"rita": "Bearer ghp_rita_token", "rosa": "Bearer ghp_rosa_token"}
            assert "ghp_rita_token" not in gw.log_text()
