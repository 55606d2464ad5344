"""The `mcp-hub` command as an operator runs it: tools and explain from a config (upstreams started
in-process) and from a running gateway (admin API), keys, openapi inspect/add, reload, progress."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_hub.auth.keys import new_api_key
from mcp_hub.cli import Progress, main
from tests.support.gateway import RunningGateway, gateway_env, python_server, run_gateway
from tests.support.tools import ROOT

ADMIN_KEY, ADMIN_HASH = new_api_key()
DOCUMENT = ROOT / "examples" / "internal-api.openapi.yaml"


def gateway_config() -> dict[str, Any]:
    return {
        "upstreams": {
            "time": {"transport": "stdio", "command": "mcp-server-time"},
            "tiny": python_server("tests.servers.demo_server", "--transport", "stdio"),
        },
        "servers": [{"path": "/mcp/time", "upstreams": ["time"], "prefix": False}],
        "default_acl": "deny",
        "upstream_acl": {"time": "allow"},
        "groups": {
            "developer": {
                "tools": {"allow": ["tiny__echo", "tiny__add"], "deny": ["time__convert_time"]},
                "budgets": [{"tokens": 5000, "window": "1 hour"}],
            },
            "admin": {"tools": {"allow": ["*"]}},
        },
        "auth": {"static_groups": {"carol": ["admin"]}},
        "admin": {"keys": [{"name": "ops", "sha256": ADMIN_HASH}]},
    }


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real `mcp-hub` command (stderr is a pipe, not a terminal)."""
    return subprocess.run([sys.executable, "-m", "mcp_hub.cli", *args], env=gateway_env(env), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config()))
    return path


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    with run_gateway(gateway_config(), tmp_path_factory.mktemp("cli-gw"), wait_healthy=True) as gateway:
        yield gateway


def test_keys_new() -> None:
    out = cli("keys", "new", "--json")
    data = json.loads(out.stdout)
    assert data["key"].startswith("mcphub_") and hashlib.sha256(data["key"].encode()).hexdigest() == data["sha256"]
    text = cli("keys", "new", "--consumer", "alice", "--groups", "developer,oncall").stdout
    key = re.search(r"^  (mcphub_\S+)$", text, re.M)
    digest = re.search(r"sha256: ([0-9a-f]{64})$", text, re.M)
    assert key and digest and hashlib.sha256(key[1].encode()).hexdigest() == digest[1]
    snippet = yaml.safe_load(text[text.index("auth:"):])
    assert snippet["auth"]["api_keys"] == [{"consumer": "alice", "groups": ["developer", "oncall"], "sha256": digest[1]}]
    admin = cli("keys", "new", "--admin", "release-bot").stdout
    assert yaml.safe_load(admin[admin.index("admin:"):])["admin"]["keys"][0]["name"] == "release-bot"


def test_tools_from_a_config(config_file: Path) -> None:
    table = cli("tools", "--config", str(config_file), "--group", "developer")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("/mcp (consumer anonymous, groups developer): 3 of ")
    assert re.split(r"\s{2,}", lines[1]) == ["TOOL", "UPSTREAM", "TOKENS", "DESCRIPTION"]
    rows = {re.split(r"\s{2,}", line)[0]: line for line in lines[2:] if line.strip() and not line.startswith("total:")}
    assert re.search(r"^total: [\d,]+ tokens \(tools/list as the client receives it; counter estimate\)$", table.stdout, re.M)
    assert set(rows) == {"time__get_current_time", "tiny__echo", "tiny__add"}
    assert "Get current time" in rows["time__get_current_time"]
    # not a terminal: no spinner, one final line
    assert table.stderr.strip().splitlines()[-1].startswith("connected to 2 of 2 upstream(s) (")
    assert "\r" not in table.stderr

    as_json = json.loads(cli("tools", "-c", str(config_file), "--consumer", "carol", "--route", "all", "--json").stdout)
    assert as_json["consumer"] == {"name": "carol", "groups": ["admin"]}  # static_groups merged in
    assert set(as_json["routes"]) == {"/mcp", "/mcp/time"}
    assert {t["name"] for t in as_json["routes"]["/mcp/time"]["tools"]} == {"get_current_time", "convert_time"}
    assert as_json["upstreams"] == {"time": "up", "tiny": "up"}


def test_explain_from_a_config(config_file: Path, capfd: pytest.CaptureFixture[str]) -> None:
    # in-process through main(), to spare an interpreter start per question (capfd: stdio upstreams
    # inherit the real stderr)
    def explain(*args: str) -> tuple[int, str]:
        code = main(["explain", *args, "-c", str(config_file), "-g", "developer"])
        return code, capfd.readouterr().out

    code, denied = explain("time__convert_time")
    assert code == 1
    assert "denied" in denied.splitlines()[0]
    assert "rule:   groups.developer.tools.deny[0]: time__convert_time" in denied
    code, allowed = explain("time__get_current_time", "--json")
    result = json.loads(allowed)
    assert code == 0 and result["allowed"] and result["rule"] == "upstream_acl.time: allow"
    assert result["limits"] == ["groups.developer.budgets[0]: 5000 tokens per 1 hour"]
    code, unknown = explain("tiny__eho")
    assert code == 1 and "did you mean tiny__echo" in unknown
    # on the unprefixed route the ACL decides on the canonical name: the rule on time__convert_time holds there
    code, route = explain("convert_time", "--route", "/mcp/time")
    assert code == 1 and "groups.developer.tools.deny[0]: time__convert_time" in route


def test_tools_and_explain_from_a_running_gateway(gw: RunningGateway, config_file: Path) -> None:
    env = {"MCP_HUB_ADMIN_KEY": ADMIN_KEY}
    remote = json.loads(cli("tools", "--url", gw.mcp, "-g", "developer", "--json", env=env).stdout)
    local = json.loads(cli("tools", "-c", str(config_file), "-g", "developer", "--json").stdout)
    assert remote == local
    table = cli("tools", "--url", gw.url, "--admin-key", ADMIN_KEY, "--groups", "admin")
    assert table.returncode == 0 and "tiny__big" in table.stdout and "time__convert_time" in table.stdout
    explained = cli("explain", "tiny__add", "--url", gw.url, "-g", "developer", env=env)
    assert explained.returncode == 0 and "groups.developer.tools.allow[1]: tiny__add" in explained.stdout
    status = cli("status", "--url", gw.url, env=env)
    assert status.returncode == 0 and re.search(r"^time\s+mcp/stdio\s+up\s+2\s+config", status.stdout, re.M)
    # no key, a wrong key: clear errors, exit 1, and the key is never printed
    missing = cli("tools", "--url", gw.url)
    assert missing.returncode == 1 and "--admin-key" in missing.stderr
    wrong = cli("tools", "--url", gw.url, "--admin-key", "mcphub_wrong-key")
    assert wrong.returncode == 1 and "401" in wrong.stderr and "mcphub_wrong-key" not in wrong.stderr + wrong.stdout
    for out in (table, explained, status):
        assert ADMIN_KEY not in out.stdout + out.stderr
    down = cli("tools", "--url", "http://127.0.0.1:1", env=env)
    assert down.returncode == 1 and "cannot reach the admin API" in down.stderr


def test_reload_through_the_cli(tmp_path: Path) -> None:
    with run_gateway(gateway_config(), tmp_path, wait_healthy=True) as gw:
        out = cli("reload", "--url", gw.url, "--json", env={"MCP_HUB_ADMIN_KEY": ADMIN_KEY})
        summary = json.loads(out.stdout)
        assert summary["unchanged"] == ["time", "tiny"] and summary["restart_required"] == []


def test_openapi_inspect(tmp_path: Path) -> None:
    table = cli("openapi", "inspect", str(DOCUMENT), "--exclude-tag", "admin")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0] == "Inventory API (OpenAPI 3.0.3): 4 operations, 3 tools, 1 skipped"
    assert re.search(r"^getItem\s+GET\s+/items/\{item_id\}\s+Read one item$", table.stdout, re.M)
    assert "  DELETE /items/{item_id} (deleteItem): excluded by exclude.tags" in table.stdout
    assert table.stderr.strip().endswith("s)") and "3 tools, 1 skipped" in table.stderr

    broken = yaml.safe_load(DOCUMENT.read_text())
    broken["paths"]["/missing"] = {"$ref": "#/components/pathItems/nowhere"}
    doc = tmp_path / "broken.json"
    doc.write_text(json.dumps(broken))
    report = json.loads(cli("openapi", "inspect", str(doc), "--json").stdout)
    assert [t["name"] for t in report["tools"]] == ["listItems", "createItem", "getItem", "deleteItem"]
    assert len(report["skipped"]) == 1 and report["skipped"][0]["path"] == "/missing"
    assert report["skipped"][0]["reason"]

    not_openapi = tmp_path / "nope.yaml"
    not_openapi.write_text("hello: world\n")
    failed = cli("openapi", "inspect", str(not_openapi))
    assert failed.returncode == 1 and "error: cannot use" in failed.stderr and "not an OpenAPI" in failed.stderr
    assert cli("openapi", "inspect", str(tmp_path / "absent.yaml")).returncode == 1


def test_openapi_add_list_remove(tmp_path: Path) -> None:
    from tests.test_admin import inventory_service

    with inventory_service(tmp_path) as api:
        cfg = gateway_config()
        cfg["admin"]["allowed_base_urls"] = [api]
        with run_gateway(cfg, tmp_path, wait_healthy=True) as gw:
            env = {"MCP_HUB_ADMIN_KEY": ADMIN_KEY}
            added = cli("openapi", "add", "inventory", str(DOCUMENT), "--base-url", api, "--prefix", "inv",
                        "--route", "/mcp/time", "--url", gw.url, env=env)
            assert added.returncode == 0, added.stderr
            assert added.stdout.startswith("registered inventory: 4 tools (inv__listItems, ")
            listed = cli("openapi", "list", "--url", gw.url, env=env)
            assert re.search(r"^inventory\s+up\s+4\s+\(inline document\)\s+" + re.escape(api), listed.stdout, re.M)
            tools = json.loads(cli("tools", "--url", gw.url, "-g", "admin", "--route", "all", "--json", env=env).stdout)
            assert "inv__getItem" in {t["name"] for t in tools["routes"]["/mcp"]["tools"]}
            # also on the virtual server it asked for (unprefixed there, like the route's other upstreams)
            assert "getItem" in {t["name"] for t in tools["routes"]["/mcp/time"]["tools"]}
            # a reload rebuilds the routes from the config and keeps the registration's route
            assert cli("reload", "--url", gw.url, env=env).returncode == 0
            after = json.loads(cli("tools", "--url", gw.url, "-g", "admin", "--route", "/mcp/time", "--json",
                                   env=env).stdout)
            assert "getItem" in {t["name"] for t in after["routes"]["/mcp/time"]["tools"]}
            again = cli("openapi", "add", "inventory", f"{api}/openapi.yaml", "--base-url", api, "--url", gw.url, env=env)
            assert again.returncode == 1 and "exists already" in again.stderr
            assert cli("openapi", "remove", "inventory", "--url", gw.url, env=env).stdout == "removed inventory\n"
            assert "inventory" not in gw.health()["upstreams"]


def test_progress_on_a_terminal_and_off() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    import time

    shown = Terminal()
    with Progress("connecting to 2 upstream(s)", shown) as progress:
        time.sleep(0.35)
        progress.done("connected to 2 of 2 upstream(s)")
    text = shown.getvalue()
    assert re.search(r"\r[|/\\-] connecting to 2 upstream\(s\) \(0\.\ds\)", text)
    assert text.endswith("connected to 2 of 2 upstream(s) (0.4s)\n") or text.endswith("(0.3s)\n")
    plain = io.StringIO()
    with pytest.raises(RuntimeError), Progress("converting x", plain):
        raise RuntimeError("boom")
    assert re.fullmatch(r"converting x: failed \(0\.0s\)\n", plain.getvalue())


def test_main_returns_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstreams:\n  a: {transport: stdi, command: x}\n")
    assert main(["check", str(bad)]) == 2
    assert "upstreams.a.transport" in capsys.readouterr().err
    assert main(["keys", "new", "--json"]) == 0
    assert main(["tools", "--url", "http://127.0.0.1:1", "--admin-key", "k"]) == 1
