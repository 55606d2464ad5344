"""The newest MCP conformance suite, directly against a reference server and through the gateway.

The reference server (tests/servers/reference_server.py) is written the way independent servers are:
its handshake-era tools ask the client mid-call, its 2026-07-28 tools answer with InputRequiredResult,
and its capability checks read what the client declared. For each requirement set of the suite
(2025-11-25 at the handshake wire format, 2026-07-28 at the per-request one) and each way the gateway
may reach the upstream (`protocol: auto` and `legacy`), every scenario that passes against the server
alone must pass through a gateway route that exposes it unprefixed. The sets of passing scenarios are
compared, not the counts; a scenario that passes only on an isError result does not count as passing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.conformance import (
    NEXT_TOOL,
    ConformanceResult,
    RequirementSet,
    load_requirements,
    run_conformance,
)
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.processes import running, wait_for_port
from tests.support.tools import ROOT, free_port, node22, npm_tool

REVISIONS = ("2025-11-25", "2026-07-28")
UPSTREAM_PROTOCOLS = ("auto", "legacy")
# why: a scenario that hangs (a request the relay never answers) ends at this limit, not the default 30 s
SCENARIO_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def reference_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reference server over Streamable HTTP (stateful sessions and 2026-07-28 requests on one endpoint)."""
    # why: with the suite or Node 22 missing, fail under CI (skip elsewhere) before starting anything
    npm_tool(NEXT_TOOL)
    node22()
    tmp = tmp_path_factory.mktemp("reference")
    port = free_port()
    args = [sys.executable, "-m", "tests.servers.reference_server", "--port", str(port)]
    with running(args, cwd=ROOT, log=tmp / "reference-server.log") as proc:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module", params=UPSTREAM_PROTOCOLS)
def gateway(
    request: pytest.FixtureRequest, reference_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RunningGateway]]:
    """A gateway whose route /mcp/ref exposes the reference server unprefixed, reached with `protocol: P`."""
    protocol = request.param
    tmp = tmp_path_factory.mktemp(f"gateway-{protocol}")
    config = {
        "upstreams": {"ref": {"transport": "streamable-http", "url": reference_url, "protocol": protocol}},
        "servers": [{"path": "/mcp/ref", "upstreams": ["ref"], "prefix": False}],
    }
    with run_gateway(config, tmp, wait_healthy=True) as gw:
        yield protocol, gw


def _tally(result: ConformanceResult, required: RequirementSet) -> str:
    scored = required.scored & set(result.scenarios)
    return (
        f"{len(result.passing)}/{len(result.scenarios)} scenarios pass "
        f"({len(result.passing & scored)}/{len(required.scored)} scored)"
    )


@pytest.mark.parametrize("revision", REVISIONS)
def test_scenarios_passing_directly_pass_through_the_gateway(
    revision: str,
    reference_url: str,
    gateway: tuple[str, RunningGateway],
    tmp_path: Path,
    record_property: Any,
) -> None:
    protocol, gw = gateway
    route_url = f"{gw.url}/mcp/ref"
    required = load_requirements(revision)
    started = time.monotonic()
    common: dict[str, Any] = {
        "expected_failures": [],
        "requirements": revision,
        "tool": NEXT_TOOL,
        "timeout": 900.0,
        "scenario_timeout_ms": SCENARIO_TIMEOUT_MS,
    }
    direct = run_conformance(reference_url, tmp_path / "direct", **common)
    through = run_conformance(route_url, tmp_path / "gateway", **common)
    lost = sorted(direct.passing - through.passing)
    gained = sorted(through.passing - direct.passing)

    print(f"\n[requirements {revision}, upstream protocol {protocol}] {time.monotonic() - started:.1f} s")
    print(f"  direct:  {_tally(direct, required)}")
    print(f"  gateway: {_tally(through, required)}")
    if lost:
        print(f"  pass directly, not through the gateway ({len(lost)}):")
        print("    " + through.failure_report(lost).replace("\n", "\n    "))
        print(f"  gateway log: {gw.log}")
    if gained:
        print(f"  pass through the gateway only: {', '.join(gained)}")
    record_property(f"conformance_{revision}_direct", len(direct.passing))
    record_property(f"conformance_{revision}_{protocol}_gateway", len(through.passing))

    # why: the comparison proves something only if the reference server alone meets the requirement set
    assert direct.scenarios, direct.output[-3000:]
    unmet = sorted(required.scored - direct.passing)
    assert not unmet, "the reference server misses scored scenarios:\n" + direct.failure_report(unmet)
    assert not lost, f"pass directly but not through the gateway: {lost}\n" + through.failure_report(lost)
