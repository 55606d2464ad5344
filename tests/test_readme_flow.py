"""Follows the README's "Quickstart: groups in Claude Code" step by step, with the commands and the
config taken from the README text itself: keys, config, `tools` / `explain`, serve, Claude Code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from tests.support.clients import claude_mcp_list, sdk_session
from tests.support.gateway import gateway_env, run_gateway
from tests.support.tools import ROOT, executable

SECTION = "## Quickstart: groups in Claude Code"
README_URL = "http://127.0.0.1:8000"


def quickstart() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    return text[start:end if end != -1 else None]


def blocks(section: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order, with the list indentation removed."""
    out = []
    for match in re.finditer(r"^( *)```(\w+)\n(.*?)^\1```", section, re.M | re.S):
        indent = len(match[1])
        body = "\n".join(line[indent:] for line in match[3].splitlines())
        out.append((match[2], body + "\n"))
    return out


def commands(body: str) -> list[list[str]]:
    """The command lines of a shell block, split like a shell would (comments dropped)."""
    out = []
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(shlex.split(line, comments=True))
    return out


def mcp_hub(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_hub.cli", *args], env=gateway_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_readme_steps_work(tmp_path: Path) -> None:
    steps = blocks(quickstart())
    assert [lang for lang, _ in steps] == ["bash", "bash", "yaml", "bash", "bash", "bash"], steps

    # 1. install: the test environment has the project and the time server already
    install = commands(steps[0][1])
    assert "mcp-server-time" in install[0]
    executable("mcp-server-time")

    # 2. a key for each caller, exactly as the README runs it
    keys: dict[str, tuple[str, str]] = {}
    for cmd in commands(steps[1][1]):
        assert cmd[:3] == ["mcp-hub", "keys", "new"], cmd
        out = mcp_hub(cmd[1:], tmp_path)
        assert out.returncode == 0, out.stderr
        key = re.search(r"^  (mcphub_\S+)$", out.stdout, re.M)
        digest = re.search(r"^      sha256: ([0-9a-f]{64})$", out.stdout, re.M)
        assert key and digest, out.stdout
        keys[cmd[cmd.index("--consumer") + 1]] = (key[1], digest[1])
    assert set(keys) == {"alice", "bob"}

    # 3. the config, with the digests pasted where the README says
    config = steps[2][1]
    for name, (_, digest) in keys.items():
        placeholder = f"{name.upper()}_SHA256"
        assert placeholder in config
        config = config.replace(placeholder, digest)
    (tmp_path / "hub.yaml").write_text(config)

    # 4. what each group gets, before anyone connects
    listing, explanation = commands(steps[3][1])
    tools = mcp_hub(listing[1:], tmp_path)
    assert tools.returncode == 0, tools.stderr
    rows = [line.split()[0] for line in tools.stdout.splitlines()[2:]
            if line.strip() and not line.startswith("total:")]  # the tools, not the tokens total
    assert rows == ["time__get_current_time"], tools.stdout
    explained = mcp_hub(explanation[1:], tmp_path)
    assert explained.returncode == 1 and ": denied" in explained.stdout
    assert "rule:   default_acl: deny" in explained.stdout

    # 5. serve it (on a free port instead of 8000) and add it to Claude Code with alice's key
    (serve,) = commands(steps[4][1])
    assert serve == ["mcp-hub", "serve", "--config", "hub.yaml"]
    add, listed = commands(steps[5][1])
    assert listed == ["claude", "mcp", "list"]
    assert add[:6] == ["claude", "mcp", "add", "--transport", "http", "hub"] and add[6] == f"{README_URL}/mcp"
    header_name, _, header_value = add[add.index("--header") + 1].partition(": ")
    with run_gateway(config, tmp_path, name="hub", wait_healthy=True) as gw:
        url = add[6].replace(README_URL, gw.url)
        alice_key, bob_key = keys["alice"][0], keys["bob"][0]
        assert claude_mcp_list(url, {header_name: header_value.replace("ALICE_KEY", alice_key)}) == "Connected"

        # what Claude Code would list: alice one tool, bob both; a wrong key is refused
        async def names(key: str) -> list[str]:
            async with sdk_session(url, headers={"Authorization": f"Bearer {key}"}) as client:
                return sorted(t.name for t in (await client.list_tools()).tools)

        import anyio

        assert anyio.run(names, alice_key) == ["time__get_current_time"]
        assert anyio.run(names, bob_key) == ["time__convert_time", "time__get_current_time"]
        wrong = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                            headers={"Authorization": "Bearer mcphub_wrong",
                                     "Accept": "application/json, text/event-stream"})
        assert wrong.status_code == 401
        for key in (alice_key, bob_key):
            assert key not in gw.log_text()


@pytest.mark.parametrize("section", ["## Add it to Claude Code", "## Add it to VS Code", "## Replicas"])
def test_readme_sections_exist(section: str) -> None:
    text = (ROOT / "README.md").read_text()
    assert section in text
    assert text.index("## The two commands") < text.index(SECTION) < text.index(section)
