"""The admin API through a running gateway: who may use it, what it reports, and runtime OpenAPI
registrations that reach connected clients and survive restarts (file store and Redis store)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from mcp_hub.auth.keys import new_api_key
from tests.support.gateway import RunningGateway, python_server, run_gateway, wait_until
from tests.support.processes import redis_server, running, wait_for_http
from tests.support.tools import ROOT, free_port

ADMIN_KEY, ADMIN_HASH = new_api_key()  # an admin.keys entry
OPS_KEY, OPS_HASH = new_api_key()  # a gateway API key in the admin group
DEV_KEY, DEV_HASH = new_api_key()  # a gateway API key in an ordinary group
SECRETS = (ADMIN_KEY, OPS_KEY, DEV_KEY)
INVENTORY = ROOT / "examples" / "internal_api_service.py"
DOCUMENT = ROOT / "examples" / "internal-api.openapi.yaml"


@contextlib.contextmanager
def inventory_service(tmp_path: Path) -> Iterator[str]:
    """The example's internal REST API as a real process; yields its base URL."""
    port = free_port()
    with running([sys.executable, str(INVENTORY), "--port", str(port)], cwd=ROOT, log=tmp_path / "inventory.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/openapi.yaml", proc=proc)
        yield url


def config(api_url: str, **admin: Any) -> dict[str, Any]:
    return {
        "auth": {
            "mode": "api_key",
            "api_keys": [
                {"consumer": "olga", "groups": ["ops"], "sha256": OPS_HASH},
                {"consumer": "dan", "groups": ["developer"], "sha256": DEV_HASH},
            ],
        },
        "upstreams": {"tiny": python_server("tests.servers.demo_server", "--transport", "stdio")},
        "default_acl": "deny",
        "groups": {
            "developer": {"tools": {"allow": ["tiny__echo", "inv__list*"], "deny": ["tiny__add"]},
                          "budgets": [{"tokens": 10000, "window": "1 hour"}]},
            "ops": {"tools": {"allow": ["*"]}},
        },
        "admin": {"keys": [{"name": "release-bot", "sha256": ADMIN_HASH}], "groups": ["ops"],
                  "allowed_base_urls": [api_url], **admin},
    }


def admin(gw: RunningGateway, method: str, path: str, key: str | None = ADMIN_KEY, **kwargs: Any) -> httpx2.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx2.request(method, f"{gw.url}/admin/{path}", headers=headers, timeout=60, **kwargs)


def registration(api_url: str, name: str = "inv") -> dict[str, Any]:
    return {"name": name, "document": yaml.safe_load(DOCUMENT.read_text()), "base_url": api_url}


def client(gw: RunningGateway, key: str, **kwargs: Any) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(gw.mcp, http_client=http), mode="legacy", **kwargs)


async def tool_names(gw: RunningGateway, key: str) -> set[str]:
    async with client(gw, key) as c:
        return {t.name for t in (await c.list_tools()).tools}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with inventory_service(tmp_path_factory.mktemp("inventory")) as url:
        yield url


@pytest.fixture(scope="module")
def gw(api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(config(api), tmp_path_factory.mktemp("admin"), wait_healthy=True) as gateway:
        yield gateway


def test_admin_api_needs_an_admin(gw: RunningGateway) -> None:
    none = admin(gw, "GET", "upstreams", key=None)
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert none.json()["error"] == "unauthorized"
    wrong = admin(gw, "GET", "upstreams", key="mcphub_not-a-key")
    assert wrong.status_code == 401
    assert admin(gw, "GET", "upstreams", key=DEV_KEY).status_code == 403  # valid caller, not an admin
    assert admin(gw, "GET", "upstreams", key=DEV_KEY).json()["message"].endswith("not in any of admin.groups")
    assert admin(gw, "GET", "upstreams", key=OPS_KEY).status_code == 200  # in admin.groups
    ok = admin(gw, "GET", "upstreams")
    assert ok.status_code == 200
    assert ok.json()["upstreams"]["tiny"] | {"state": "up", "source": "config", "routes": ["/mcp"]} == \
        ok.json()["upstreams"]["tiny"]
    # the admin API is not an MCP route: admin keys do not open /mcp
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert httpx2.post(gw.mcp, json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}",
                                                    "Accept": "application/json, text/event-stream"}).status_code == 401
    for response in (none, wrong, ok):
        assert not any(secret in response.text for secret in SECRETS)


async def test_catalog_and_explain_match_what_the_group_sees(gw: RunningGateway) -> None:
    catalog = admin(gw, "GET", "catalog", params={"group": "developer"}).json()
    names = [t["name"] for t in catalog["routes"]["/mcp"]["tools"]]
    assert names == ["tiny__echo"]
    assert set(names) == await tool_names(gw, DEV_KEY)
    assert catalog["routes"]["/mcp"]["tools"][0]["upstream"] == "tiny"
    assert catalog["routes"]["/mcp"]["totals"]["tools"] > 5
    by_consumer = admin(gw, "GET", "catalog", params={"consumer": "olga", "groups": "ops,developer"}).json()
    assert by_consumer["consumer"] == {"name": "olga", "groups": ["ops", "developer"]}
    # deny wins across groups: developer's deny of tiny__add hides it even with ops' allow-all
    assert {t["name"] for t in by_consumer["routes"]["/mcp"]["tools"]} == await tool_names(gw, OPS_KEY) - {"tiny__add"}
    ops = admin(gw, "GET", "catalog", params={"consumer": "olga", "groups": "ops"}).json()
    assert {t["name"] for t in ops["routes"]["/mcp"]["tools"]} == await tool_names(gw, OPS_KEY)

    denied = admin(gw, "GET", "explain", params={"tool": "tiny__add", "groups": "developer"}).json()
    assert denied["allowed"] is False and denied["exists"] is True and denied["upstream"] == "tiny"
    assert denied["rule"] == "groups.developer.tools.deny[0]: tiny__add"
    allowed = admin(gw, "GET", "explain", params={"tool": "tiny__echo", "group": "developer"}).json()
    assert allowed["allowed"] is True and allowed["rule"] == "groups.developer.tools.allow[0]: tiny__echo"
    assert allowed["limits"] == ["groups.developer.budgets[0]: 10000 tokens per 1 hour"]
    default = admin(gw, "GET", "explain", params={"tool": "tiny__big", "groups": "developer"}).json()
    assert default["allowed"] is False and default["rule"] == "default_acl: deny"
    missing = admin(gw, "GET", "explain", params={"tool": "tiny__ech", "groups": "developer"}).json()
    assert missing["exists"] is False and "tiny__echo" in missing["similar"]
    bad = admin(gw, "GET", "explain", params={"groups": "developer"})
    assert bad.status_code == 400 and "tool=" in bad.json()["message"]
    assert admin(gw, "GET", "catalog", params={"route": "/nope"}).status_code == 404


def test_registration_refusals(gw: RunningGateway, api: str) -> None:
    def post(body: dict[str, Any]) -> httpx2.Response:
        return admin(gw, "POST", "openapi", json=body)

    outside = post({**registration(api), "base_url": "http://127.0.0.1:1/"})
    assert outside.status_code == 403 and "allowed_base_urls" in outside.json()["message"]
    foreign_spec = post({"name": "x", "spec": "https://example.com/openapi.json", "base_url": api})
    assert foreign_spec.status_code == 403
    assert post({"name": "tiny", **{k: v for k, v in registration(api).items() if k != "name"}}).status_code == 409
    neither = post({"name": "x", "base_url": api})
    assert neither.status_code == 422 and "exactly one of `spec`" in neither.json()["message"]
    assert post({**registration(api), "name": "bad name!"}).status_code == 422
    local = post({"name": "x", "spec": str(DOCUMENT), "base_url": api})
    assert local.status_code == 403 and "spec_dirs" in local.json()["message"]
    with_password = post({**registration(api), "base_url": api.replace("http://", "http://u:hunter2@")})
    assert with_password.status_code == 422 and "hunter2" not in with_password.text
    broken = post({"name": "x", "document": {"info": {"title": "not OpenAPI"}}, "base_url": api})
    assert broken.status_code == 422 and broken.json()["error"] == "upstream_failed"
    assert admin(gw, "POST", "openapi", content=b"not json").status_code == 400
    assert admin(gw, "GET", "openapi").json()["registrations"] == []
    assert "x" not in gw.health()["upstreams"]
    # a config upstream cannot be removed through the API; an unknown name is 404
    assert admin(gw, "DELETE", "openapi/tiny").status_code == 409
    assert admin(gw, "DELETE", "openapi/nothing").status_code == 404


async def _register_while_connected(gw: RunningGateway, body: dict[str, Any]) -> dict[str, Any]:
    """POST a registration while a client is connected; return the answer once the client got list_changed."""
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with client(gw, OPS_KEY, message_handler=on_message) as c:
        before = {t.name for t in (await c.list_tools()).tools}
        assert not any(n.startswith(f"{body['name']}__") for n in before)
        response = await anyio.to_thread.run_sync(lambda: admin(gw, "POST", "openapi", json=body))
        assert response.status_code == 201, response.text
        with anyio.fail_after(20):
            await changed.wait()
        after = {t.name for t in (await c.list_tools()).tools}
        assert set(response.json()["tools"]) <= after
        result = await c.call_tool(f"{body['name']}__listItems", {"location": "shelf-a"})
        assert not result.is_error, result
        assert "keyboard" in result.content[0].text  # answered by the real REST service
    return response.json()


async def test_registration_reaches_clients_and_survives_restart(api: str, tmp_path: Path) -> None:
    with run_gateway(config(api), tmp_path, wait_healthy=True) as gw:
        answer = await _register_while_connected(gw, registration(api))
        assert answer["tools"] == ["inv__listItems", "inv__createItem", "inv__getItem", "inv__deleteItem"]
        assert answer["store"].endswith("gateway.registrations.json")
        assert (tmp_path / "gateway.registrations.json").exists()
        # the ACL applies to registered tools like to any other
        assert await tool_names(gw, DEV_KEY) == {"tiny__echo", "inv__listItems"}
        listed = admin(gw, "GET", "openapi").json()["registrations"]
        assert [(r["name"], r["state"], r["tools"], r["document"]) for r in listed] == [("inv", "up", 4, "inline")]
        assert admin(gw, "GET", "upstreams").json()["upstreams"]["inv"]["source"] == "registered"
        # a reload keeps it (it is not in the config file)
        reloaded = admin(gw, "POST", "reload")
        assert reloaded.status_code == 200 and "inv" in reloaded.json()["unchanged"]
    with run_gateway(config(api), tmp_path, wait_healthy=True) as gw:
        assert "inv__getItem" in await tool_names(gw, OPS_KEY)
        async with client(gw, OPS_KEY) as c:
            item = await c.call_tool("inv__getItem", {"item_id": 2})
            assert "monitor" in item.content[0].text
        assert admin(gw, "DELETE", "openapi/inv").json() == {"removed": "inv"}
        assert not any(n.startswith("inv__") for n in await tool_names(gw, OPS_KEY))
        for secret in SECRETS:
            assert secret not in gw.log_text()
    with run_gateway(config(api), tmp_path, wait_healthy=True) as gw:
        assert not any(n.startswith("inv__") for n in await tool_names(gw, OPS_KEY))


async def test_redis_store_shared_by_replicas(api: str, tmp_path: Path) -> None:
    with redis_server(tmp_path) as redis_url:
        cfg = config(api, registry=redis_url)
        # the spec is fetched by the gateway from the service itself this time
        body = {"name": "stock", "spec": f"{api}/openapi.yaml", "base_url": api}
        with run_gateway(cfg, tmp_path, wait_healthy=True, name="a") as a, \
                run_gateway(cfg, tmp_path, wait_healthy=True, name="b") as b:
            answer = await _register_while_connected(a, body)
            assert answer["store"].startswith(redis_url)
            assert not (tmp_path / "a.registrations.json").exists()
            # replica b picks it up on reload (or restart)
            assert not any(n.startswith("stock__") for n in await tool_names(b, OPS_KEY))
            assert admin(b, "POST", "reload").json()["added"] == ["stock"]
            assert "stock__listItems" in await tool_names(b, OPS_KEY)
        with run_gateway(cfg, tmp_path, wait_healthy=True, name="c") as c:
            assert "stock__createItem" in await tool_names(c, OPS_KEY)
            assert admin(c, "GET", "openapi").json()["registrations"][0]["spec"] == f"{api}/openapi.yaml"


def test_reload_endpoint(api: str, tmp_path: Path) -> None:
    with run_gateway(config(api), tmp_path, wait_healthy=True) as gw:
        cfg = yaml.safe_load(gw.config_path.read_text())
        cfg["upstreams"]["time"] = {"transport": "stdio", "command": "mcp-server-time"}
        gw.config_path.write_text(yaml.safe_dump(cfg))
        answer = admin(gw, "POST", "reload")
        # the file watcher may have reloaded first; either way time is running afterwards
        assert answer.status_code == 200 and answer.json()["restart_required"] == []
        wait_until(lambda: gw.health()["upstreams"].get("time", {}).get("state") == "up", what="time up")
        gw.config_path.write_text("upstreams:\n  a:\n    transport: telepathy\n")
        refused = admin(gw, "POST", "reload")
        assert refused.status_code == 422
        assert any("upstreams.a.transport" in p for p in refused.json()["problems"])
        assert gw.health()["upstreams"]["time"]["state"] == "up"


def test_admin_off_without_keys_or_groups(api: str, tmp_path: Path) -> None:
    cfg = config(api)
    del cfg["admin"]
    with run_gateway(cfg, tmp_path) as gw:
        assert admin(gw, "GET", "upstreams").status_code == 404


async def test_url_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from mcp_hub.admin.api import AdminError, check_url

    def resolve(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        address = {"metadata.internal": "169.254.169.254", "api.example.com": "93.184.216.34"}[host]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 443))]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    await check_url("https://api.example.com/v1/items", ["https://api.example.com/v1"], "base_url")
    for url, prefixes, status in [
        ("https://api.example.com/v10", ["https://api.example.com/v1"], 403),  # a segment boundary, not a string prefix
        ("http://api.example.com/v1", ["https://api.example.com/v1"], 403),  # another scheme
        ("https://api.example.com:8443/v1", ["https://api.example.com/v1"], 403),  # another port
        ("http://metadata.internal/latest", ["http://metadata.internal"], 403),  # resolves to link-local
        ("https://u:p@api.example.com/v1", ["https://api.example.com"], 422),
        ("ftp://api.example.com/v1", ["https://api.example.com"], 422),
    ]:
        with pytest.raises(AdminError) as refused:
            await check_url(url, prefixes, "base_url")
        assert refused.value.status == status, url
        assert "u:p@" not in refused.value.message
    # a loopback or link-local host named literally by the operator is allowed on purpose
    await check_url("http://169.254.169.254/latest", ["http://169.254.169.254"], "base_url")
    await check_url("http://localhost:9000/api", ["http://localhost:9000"], "base_url")


def test_file_store_round_trip_and_bad_entries(tmp_path: Path) -> None:
    from mcp_hub.admin.registry import FileStore, open_store

    store = open_store(None, config_path=tmp_path / "hub.yaml")
    assert isinstance(store, FileStore) and store.path == tmp_path / "hub.registrations.json"
    assert anyio.run(store.load) == [] and not list(tmp_path.iterdir())  # reading creates nothing
    anyio.run(_round_trip, store)
    assert open_store("memory://").describe() == "memory://"
    assert open_store("redis://:hunter2@127.0.0.1:6379/0").describe().startswith("redis://:***@127.0.0.1")


async def _round_trip(store: Any) -> None:
    from mcp_hub.admin.registry import Registration

    first = Registration(name="a", spec="https://x.example/openapi.json", created_at=1)
    await store.save(first)
    await store.save(Registration(name="b", document={"openapi": "3.0.0"}, prefix="", created_at=2))
    data = json.loads(await anyio.Path(store.path).read_text())
    data["registrations"]["broken"] = {"name": "broken"}  # neither spec nor document
    await anyio.Path(store.path).write_text(json.dumps(data))
    assert [r.name for r in await store.load()] == ["a", "b"]
    assert await store.delete("a") and not await store.delete("a")
    assert [r.name for r in await store.load()] == ["b"]
