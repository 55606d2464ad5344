"""The gateway judged from outside: the MCP conformance suite, the MCP inspector CLI, Claude Code."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.clients import claude_mcp_list, inspector_call_tool, inspector_list_tools
from tests.support.conformance import run_conformance
from tests.support.gateway import RunningGateway, python_server, run_gateway
from tests.support.processes import running, wait_for_port
from tests.support.tools import ROOT, free_port


@pytest.fixture(scope="module")
def conformance_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, RunningGateway]]:
    """The conformance server over Streamable HTTP, and a gateway exposing it unprefixed on /mcp/conf."""
    tmp = tmp_path_factory.mktemp("conformance")
    port = free_port()
    args = [sys.executable, "-m", "tests.servers.conformance_server", "--transport", "streamable-http",
            "--port", str(port)]
    with running(args, cwd=ROOT, log=tmp / "conformance-server.log") as proc:
        wait_for_port(port, proc=proc)
        direct = f"http://127.0.0.1:{port}/mcp"
        config = {
            "upstreams": {
                "conf": {"transport": "streamable-http", "url": direct},
                "demo": python_server("tests.servers.demo_server", "--transport", "stdio"),
            },
            "servers": [{"path": "/mcp/conf", "upstreams": ["conf"], "prefix": False}],
        }
        with run_gateway(config, tmp, wait_healthy=True) as gw:
            yield direct, gw


def test_conformance_through_gateway_equals_direct(
    conformance_setup: tuple[str, RunningGateway], tmp_path: Path, record_property: Any
) -> None:
    direct_url, gw = conformance_setup
    direct = run_conformance(direct_url, tmp_path / "direct")
    through = run_conformance(f"{gw.url}/mcp/conf", tmp_path / "gateway")
    print(f"conformance: direct {direct.passed}/{len(direct.scenarios)} scenarios, "
          f"through mcp-hub {through.passed}/{len(through.scenarios)}")
    record_property("conformance_direct", direct.passed)
    record_property("conformance_gateway", through.passed)
    assert len(direct.scenarios) >= 30
    assert set(through.scenarios) == set(direct.scenarios)
    regressions = sorted(n for n, s in direct.scenarios.items() if s == "pass" and through.scenarios[n] != "pass")
    assert not regressions, through.failure_report()
    assert through.passed == direct.passed


def test_inspector_lists_and_calls_through_gateway(conformance_setup: tuple[str, RunningGateway]) -> None:
    _, gw = conformance_setup
    names = [t["name"] for t in inspector_list_tools(gw.mcp)]
    assert "demo__echo" in names and "conf__test_simple_text" in names
    result = inspector_call_tool(gw.mcp, "demo__add", {"a": 20, "b": 22})
    assert not result.get("isError")
    assert result["structuredContent"] == {"sum": 42}


def test_claude_code_connects_to_gateway(conformance_setup: tuple[str, RunningGateway]) -> None:
    _, gw = conformance_setup
    assert claude_mcp_list(gw.mcp) == "Connected"
