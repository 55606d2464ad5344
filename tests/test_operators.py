"""What a new operator meets first, as they meet it: a regular install, `check` and `serve` agreeing on a
config, a busy port, an upstream that cannot start, the default config of `tools`, an allow pattern
that matches nothing, Claude Code without a key, and the README and docs that explain all of it.

Every failure is checked for its message, the absence of a traceback, and its exit code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import yaml

from mcp_hub.auth.keys import new_api_key
from mcp_hub.cli import build_parser
from tests.support.clients import sdk_session
from tests.support.gateway import RunningGateway, gateway_env, python_server, run_gateway, wait_until
from tests.support.processes import running, wait_for_http
from tests.support.tools import ROOT, executable, free_port, node22_env, npm_tool

ALICE_KEY, ALICE_SHA = new_api_key()
ADMIN_KEY, ADMIN_SHA = new_api_key()
SECRET = "hunter2-do-not-print"  # a secret value under a misspelt key: never shown anywhere
ACCEPT = {"Accept": "application/json, text/event-stream"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


def hub(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `mcp-hub` command, as a user runs it (stdout and stderr are pipes)."""
    return subprocess.run([sys.executable, "-m", "mcp_hub.cli", *args], cwd=cwd, env=gateway_env(env),
                          capture_output=True, text=True, timeout=timeout)


def no_traceback(out: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in out.stderr + out.stdout, out.stderr


def write(path: Path, config: dict[str, Any] | str) -> Path:
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    return path


def time_upstream(**extra: Any) -> dict[str, Any]:
    return {"transport": "stdio", "command": "mcp-server-time", **extra}


# --- 1. a regular install: connectors are package data --------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the project installed into a fresh venv outside the checkout; returns the venv.

    The wheel is built from a copy of the project's files (so the checkout gets no build/ or
    egg-info), with pip's usual build isolation: setuptools comes from the package index pip is set
    up with, nothing else from outside. The venv is made without pip (fast); the project's pip installs
    the wheel into it with --no-deps, and one .pth line lets it import the dependencies from the
    project's venv. A .pth line adds that folder only: the editable install's own .pth files there are
    not read, so `mcp_hub` can only come from the wheel.
    """
    work = tmp_path_factory.mktemp("wheel")
    project = work / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, project / name)
    shutil.copytree(ROOT / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                            str(project)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = (work / "dist").glob("mcp_hub-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def installed_env(venv: Path) -> dict[str, str]:
    """PATH: the installed `mcp-hub` first, then the project's venv (mcp-server-time, mcp-server-git)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(venv / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["GIT_REPO"] = str(ROOT)
    return env


def test_a_wheel_install_serves_included_connectors(installed: Path) -> None:
    executable("mcp-server-time")
    executable("mcp-server-git")
    where = Path(tempfile.mkdtemp(prefix="mcp-hub-installed-"))  # outside the checkout
    try:
        env = installed_env(installed)
        origin = subprocess.run([str(installed / "bin" / "python"), "-c", "import mcp_hub; print(mcp_hub.__file__)"],
                                cwd=where, env=env, capture_output=True, text=True, check=True).stdout
        assert origin.startswith(str(installed)), origin
        shutil.copy(ROOT / "examples" / "quickstart.yaml", where / "quickstart.yaml")
        checked = subprocess.run([str(installed / "bin" / "mcp-hub"), "check", "quickstart.yaml"], cwd=where,
                                 env=env, capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith("quickstart.yaml: valid (2 upstream(s): time, git;")
        port = free_port()
        log = where / "serve.log"
        args = [str(installed / "bin" / "mcp-hub"), "serve", "--config", "quickstart.yaml", "--port", str(port)]
        with running(args, env=env, cwd=where, log=log) as proc:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc)
            url = f"http://127.0.0.1:{port}/mcp"

            async def call() -> str:
                async with sdk_session(url) as client:
                    result = await client.call_tool("time__get_current_time", {"timezone": "UTC"})
                    assert not result.is_error, result
                    return result.content[0].text

            assert "UTC" in anyio.run(call)
        assert "no connector named" not in log.read_text()
    finally:
        shutil.rmtree(where, ignore_errors=True)


# --- 2. one validation for check and serve --------------------------------------------------------


def test_check_refuses_what_serve_refuses(tmp_path: Path) -> None:
    cases: dict[str, tuple[dict[str, Any], list[str]]] = {
        "typo": ({"upstreams": {"api": {
            "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp",
            "credentials": {"mode": "client_credentials", "client_id": "gw", "clent_secret": SECRET}}}},
            ["upstreams.api.credentials.clent_secret: is not a known key; did you mean client_secret?",
             "upstreams.api.credentials.client_secret: is required"]),
        "no_source": ({"upstreams": {"api": {
            "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp",
            "credentials": {"mode": "inject", "header": "X-Api-Key"}}}},
            ["upstreams.api.credentials: Value error, give exactly one of `value_env` or `value_file`"]),
        "unset_env": ({"upstreams": {"api": {
            "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp",
            "credentials": {"mode": "inject", "value_env": "MCP_HUB_TEST_NEVER_SET"}}}},
            ["upstreams.api.credentials: environment variable MCP_HUB_TEST_NEVER_SET is not set"]),
        "open_bind": ({"listen": {"host": "0.0.0.0"}, "upstreams": {"time": time_upstream()}},
                      ["listen.host: refusing to listen on 0.0.0.0 without authentication"]),
        "stdio_passthrough": ({"upstreams": {"time": time_upstream(credentials={"mode": "passthrough"})}},
                              ["upstreams.time.credentials: a caller-owned credential (passthrough, exchange) "
                               "needs an HTTP upstream"]),
    }
    for name, (config, expected) in cases.items():
        path = write(tmp_path / f"{name}.yaml", config)
        for command in (["check", str(path)], ["serve", "--config", str(path), "--port", str(free_port())]):
            out = hub(*command, timeout=60)
            assert out.returncode == 2, (name, command, out.stderr)
            assert out.stderr.startswith(f"config error: {path}"), (name, out.stderr)
            for line in expected:
                assert line.replace("Value error, ", "") in out.stderr, (name, command, out.stderr)
            assert SECRET not in out.stderr + out.stdout and "input_value" not in out.stderr
            assert "serving" not in out.stderr
            no_traceback(out)


def test_unknown_keys_get_a_suggestion_and_duplicate_keys_are_errors(tmp_path: Path) -> None:
    typos = write(tmp_path / "typos.yaml", {
        "lisen": {"port": 9000},
        "group": {},
        "upstreams": {"time": {**time_upstream(), "comand": "x"}},
        "auth": {"mode": "api_key", "api_keys": [{"consumer": "a", "groups": [], "sha256": ALICE_SHA, "grups": []}]},
        "groups": {"dev": {"tools": {"alow": ["*"]}}},
    })
    out = hub("check", str(typos))
    assert out.returncode == 2
    for line in ("lisen: is not a known key; did you mean listen?",
                 "group: is not a known key; did you mean groups?",
                 "upstreams.time.comand: is not a known key; did you mean command?",
                 "auth.api_keys[0].grups: is not a known key; did you mean groups?",
                 "groups.dev.tools.alow: is not a known key; did you mean allow?"):
        assert line in out.stderr, out.stderr
    no_traceback(out)

    twice = write(tmp_path / "twice.yaml", textwrap.dedent("""
        upstreams:
          time: {transport: stdio, command: mcp-server-time}
        groups:
          developer:
            tools: {allow: ["time__*"]}
          developer:
            tools: {allow: ["*"]}
        """).lstrip())
    for command in (["check", str(twice)], ["serve", "--config", str(twice), "--port", str(free_port())]):
        out = hub(*command)
        assert out.returncode == 2, out.stderr
        assert "groups.developer: given twice (lines 4 and 6)" in out.stderr, out.stderr
        no_traceback(out)


def collision_config(on_collision: str | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"upstreams": {"a": time_upstream(prefix="t"), "b": time_upstream(prefix="t")}}
    if on_collision:
        config["listen"] = {"on_collision": on_collision}
    return config


def test_a_name_collision_is_a_config_error_naming_both_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "collide.yaml", collision_config())
    both = "name collision on /mcp: tool 't__get_current_time' is offered by a:get_current_time and b:get_current_time"

    quick = hub("check", str(path))
    assert quick.returncode == 0 and "not checked without starting the upstreams: name collisions" in quick.stdout
    assert f"mcp-hub check --connect {path}" in quick.stdout

    for command in (["check", "--connect", str(path)], ["serve", "--config", str(path), "--port", str(free_port())],
                    ["tools", "--config", str(path)]):
        out = hub(*command)
        assert out.returncode == 2, (command, out.stderr)
        assert f"config error: {path}:" in out.stderr and both in out.stderr, out.stderr
        assert "listen.on_collision is error (the default)" in out.stderr
        assert "serving" not in out.stderr
        no_traceback(out)

    warned = write(tmp_path / "warn.yaml", collision_config("warn"))
    out = hub("check", "--connect", str(warned))
    assert out.returncode == 0, out.stderr
    assert ("warning: name collision (listen.on_collision: warn keeps the first): /mcp: tool 't__get_current_time' "
            "is offered by a:get_current_time and b:get_current_time") in out.stdout
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "By default the gateway refuses to start: it is a config error (exit code 2) that names both sources" in readme
    assert "With `listen.on_collision: warn` it starts anyway" in readme


def test_a_misspelt_secret_never_reaches_a_reload_answer_or_the_log(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "upstreams": {"time": time_upstream()},
        "admin": {"keys": [{"name": "ops", "sha256": ADMIN_SHA}]},
    }
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        broken = {**config, "upstreams": {"time": time_upstream(), "api": {
            "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp",
            "credentials": {"mode": "exchange", "client_id": "gw", "client_secrt": SECRET, "audience": "x"}}}}
        write(gw.config_path, broken)
        answer = httpx2.post(f"{gw.url}/admin/reload", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60)
        assert answer.status_code == 422
        assert "upstreams.api.credentials.client_secrt: is not a known key; did you mean client_secret?" in answer.text
        wait_until(lambda: "config reload refused" in gw.log_text(), what="the file watcher's refusal")
        assert SECRET not in answer.text and SECRET not in gw.log_text()
        assert "input_value" not in answer.text + gw.log_text()


# --- 3. a port in use ------------------------------------------------------------------------------


def test_a_busy_port_fails_before_serving_with_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path / "hub.yaml", {"upstreams": {"time": time_upstream()}})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = hub("serve", "--config", str(path), "--port", str(port), timeout=60)
    assert out.returncode == 3, out.stderr
    assert out.stderr.strip() == (
        f"error: cannot listen on 127.0.0.1:{port}: port {port} is already in use (another mcp-hub, or another "
        f"program: `ss -ltnp 'sport = :{port}'` shows which); stop it, or pick another port with --port or "
        "listen.port")
    no_traceback(out)
    assert "`3`" in (ROOT / "docs" / "cli.md").read_text()


# --- 4. upstreams that cannot be reached say which --------------------------------------------------


def test_a_missing_command_and_an_unreachable_url_are_named(tmp_path: Path) -> None:
    closed = free_port()
    config = {"upstreams": {
        "ghost": {"transport": "stdio", "command": "mcp-hub-test-no-such-server", "reconnect_max_backoff": 1},
        "remote": {"transport": "streamable-http", "connect_timeout": 5, "reconnect_max_backoff": 1,
                   "url": f"http://ops:pa55word@127.0.0.1:{closed}/mcp?token=query-secret#frag"},
    }}
    with run_gateway(config, tmp_path) as gw:
        wait_until(lambda: all(u.get("error") for u in gw.health()["upstreams"].values()), timeout=30,
                   what="both upstreams' errors")
        ups = gw.health()["upstreams"]
        assert ups["ghost"]["error"] == ("command not found: mcp-hub-test-no-such-server (not on PATH and no such "
                                         "file; install it or fix `command`)")
        assert ups["remote"]["error"].startswith(f"cannot connect to http://127.0.0.1:{closed}/mcp: ")
        log = gw.log_text()
        assert "upstream ghost: command not found: mcp-hub-test-no-such-server" in log
        assert f"upstream remote: cannot connect to http://127.0.0.1:{closed}/mcp:" in log
        shown = json.dumps(gw.health()) + log
        for secret in ("pa55word", "query-secret", "frag"):
            assert secret not in shown


# --- 5. tools and explain find the config a user means -----------------------------------------------


def hub_config() -> dict[str, Any]:
    return {
        "upstreams": {"time": time_upstream()},
        "auth": {"mode": "api_key", "api_keys": [{"consumer": "alice", "groups": ["developer"], "sha256": ALICE_SHA}]},
        "default_acl": "deny",
        "groups": {"developer": {"tools": {"allow": ["time__get_current_time"]}}},
    }


def tool_rows(stdout: str) -> list[str]:
    """The tool names of `mcp-hub tools` output (not the header, the total line or a route's title line)."""
    return [line.split()[0] for line in stdout.splitlines()[2:]
            if line.strip() and not line.startswith("/") and not line.startswith("total:")]


def test_tools_and_explain_pick_up_hub_yaml_and_say_when_they_show_the_demo(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    write(folder / "hub.yaml", hub_config())
    found = hub("tools", "--consumer", "alice", cwd=folder)
    assert found.returncode == 0, found.stderr
    assert found.stderr.startswith("using ./hub.yaml (found in the current folder; --config picks another)")
    assert found.stdout.startswith("/mcp (consumer alice, groups developer): 1 of 2 tools")  # alice's key's groups
    assert tool_rows(found.stdout) == ["time__get_current_time"]
    explained = hub("explain", "time__convert_time", "--consumer", "alice", cwd=folder)
    assert explained.returncode == 1 and "for consumer alice, groups developer: denied" in explained.stdout

    other = write(tmp_path / "other.yaml", {"upstreams": {"clock": time_upstream()}})
    chosen = hub("tools", cwd=folder, env={"MCP_HUB_CONFIG": str(other)})
    assert chosen.returncode == 0 and f"using {other} (from MCP_HUB_CONFIG)" in chosen.stderr
    assert "clock__get_current_time" in chosen.stdout

    empty = tmp_path / "empty"
    empty.mkdir()
    demo = hub("tools", cwd=empty)
    assert demo.returncode == 0
    assert demo.stderr.startswith("no --config, no MCP_HUB_CONFIG, no ./hub.yaml: using the embedded demo config")
    assert "demo__echo" in demo.stdout
    nobody = hub("tools", "--consumer", "mallory", cwd=folder)
    assert "note: consumer mallory has no API key in auth.api_keys and no auth.static_groups entry" in nobody.stderr
    for out in (found, explained, chosen, demo, nobody):
        no_traceback(out)


def test_tools_json_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    with subprocess.Popen([sys.executable, "-m", "mcp_hub.cli", "tools", "--json"], cwd=tmp_path,
                          env=gateway_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `| head` that has read its lines before the catalog is printed
        err = proc.stderr.read()
        code = proc.wait(120)
    assert code == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err


# --- 6. an allow pattern that matches nothing -------------------------------------------------------


def test_an_allow_pattern_matching_no_tool_is_logged_at_start(tmp_path: Path) -> None:
    config = {**hub_config(), "groups": {"developer": {"tools": {"allow": ["get_current_time"]}}}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        wait_until(lambda: "serving 1 upstream(s)" in gw.log_text(), what="the serving line")
        line = next(json.loads(x) for x in gw.log_text().splitlines() if "allow pattern" in x)
        assert line["level"] == "warning"
        assert line["event"] == ("allow pattern gives its group no tool: groups.developer.tools.allow[0]: "
                                 "'get_current_time' matches no tool (did you mean time__get_current_time?)")


# --- 7. Claude Code without a key ------------------------------------------------------------------


def claude_list_text(url: str, headers: dict[str, str] | None = None) -> str:
    """What `claude mcp list` prints for URL added with HEADERS (a throwaway Claude Code home)."""
    claude = npm_tool("claude")
    with tempfile.TemporaryDirectory(prefix="claude-home-") as home:
        env = node22_env({"HOME": home, "CLAUDE_CONFIG_DIR": f"{home}/.claude", "DISABLE_AUTOUPDATER": "1",
                          "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})
        add = [claude, "mcp", "add", "--transport", "http", "hub", url]
        for name, value in (headers or {}).items():
            add += ["--header", f"{name}: {value}"]
        subprocess.run(add, env=env, cwd=home, capture_output=True, text=True, timeout=90, check=True)
        listed = subprocess.run([claude, "mcp", "list"], env=env, cwd=home, capture_output=True, text=True, timeout=90)
    return next(line for line in (listed.stdout + listed.stderr).splitlines() if line.startswith("hub:"))


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    config = hub_config()
    config["upstreams"] = {"tiny": python_server("tests.servers.demo_server", "--transport", "stdio")}
    config["groups"] = {"developer": {"tools": {"allow": ["tiny__*"]}}}
    with run_gateway(config, tmp_path_factory.mktemp("keyed"), wait_healthy=True) as gw:
        yield gw


def test_without_oauth_a_401_says_a_key_is_missing_and_how_to_send_it(keyed: RunningGateway) -> None:
    missing = httpx2.post(keyed.mcp, json=INIT, headers=ACCEPT)
    assert missing.status_code == 401
    assert "resource_metadata" not in missing.headers["www-authenticate"]
    assert missing.json()["error_description"] == (
        "API key missing: this gateway needs an API key; send the key as `Authorization: Bearer <key>` "
        "(or `X-Api-Key: <key>`)")
    for header in ({"Authorization": "Bearer mcphub_wrong"}, {"X-Api-Key": "mcphub_wrong"}):
        wrong = httpx2.post(keyed.mcp, json=INIT, headers={**ACCEPT, **header})
        assert wrong.status_code == 401 and "resource_metadata" not in wrong.headers["www-authenticate"]
        assert wrong.json()["error_description"].startswith("unknown API key: the key is wrong or no longer valid")
        assert "`Authorization: Bearer <key>`" in wrong.json()["error_description"]
    # where an OAuth client looks next: an answer that says the same, not a bare 404
    for method, path in (("GET", "/.well-known/oauth-protected-resource/mcp"),
                         ("GET", "/.well-known/oauth-authorization-server"), ("POST", "/register")):
        answer = httpx2.request(method, keyed.url + path)
        assert answer.status_code == 404
        assert "does not use OAuth, it takes an API key" in answer.json()["error_description"]


def test_claude_code_reports_the_missing_key(keyed: RunningGateway) -> None:
    without = claude_list_text(keyed.mcp)
    assert "Failed to connect" in without
    assert "this MCP server does not use OAuth, it takes an API key" in without, without
    assert "--header 'Authorization: Bearer <key>'" in without
    assert "Not Found" not in without  # before: "Dynamic Client Registration rejected (HTTP 404): Not Found"
    wrong = claude_list_text(keyed.mcp, {"Authorization": "Bearer mcphub_wrong"})
    assert "unknown API key: the key is wrong or no longer valid" in wrong, wrong
    assert "Connected" in claude_list_text(keyed.mcp, {"Authorization": f"Bearer {ALICE_KEY}"})


# --- 8. the README and the docs ----------------------------------------------------------------------


def test_readme_links_requirements_and_license() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|examples|src|LICENSE)[^)#]*)\)", readme):
        assert (ROOT / target).exists(), target
    linked = set(re.findall(r"\]\(([^)#]+)\)", readme))
    for needed in ("docs/configuration.md", "docs/cli.md", "docs/policy.md", "docs/admin-api.md",
                   "docs/architecture.md", "examples/", "src/mcp_hub/connectors/", "LICENSE"):
        assert needed in linked, needed
    assert "Python 3.11" in readme and "root" in readme
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    # what the embedded demo offers, as the demo server defines it
    for tool in ("echo", "add", "utc_now", "roll_dice"):
        assert f"`demo__{tool}`" in readme, tool


def test_cli_doc_covers_every_option_and_exit_code() -> None:
    doc = (ROOT / "docs" / "cli.md").read_text()
    from mcp_hub import cli

    for code in (0, cli.EXIT_FAILED, cli.EXIT_CONFIG, cli.EXIT_LISTEN, cli.EXIT_INTERRUPTED, cli.EXIT_BROKEN_PIPE):
        assert f"| `{code}` |" in doc, code

    def options(parser: Any) -> Iterator[str]:
        for action in parser._actions:
            yield from (o for o in action.option_strings if o.startswith("--"))
            for sub in (getattr(action, "choices", None) or {}).values() if hasattr(action, "add_parser") else ():
                yield from options(sub)

    for option in set(options(build_parser())) - {"--help"}:
        assert re.search(re.escape(option) + r"(?![\w-])", doc), option


def test_configuration_reference_matches_the_runtime() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    assert "refuse them at start" not in text
    assert "a stdio upstream refuses them at start" in text
    assert "src/mcp_hub/connectors/" in text
