"""/healthz and /metrics tell an outsider nothing: liveness only without a key, detail with a scrape or admin
key, and the same answer for a hidden tool and a missing one in every counter a caller could watch."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import MCPError

from tests.support.clients import bearer_client
from tests.support.gateway import SCRAPE_HEADERS, RunningGateway, python_server, run_gateway
from tests.support.tools import free_port

DEV_KEY = "dev-key-for-monitoring-tests-000"
ADMIN_KEY = "admin-key-for-monitoring-tests-0"
SCRAPE = "scrape-key-for-monitoring-tests"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("monitoring")
    config = {
        "auth": {"mode": "api_key", "api_keys": [{"consumer": "dev", "groups": ["developer"],
                                                    "sha256": _digest(DEV_KEY)}]},
        "admin": {"keys": [{"name": "ops", "sha256": _digest(ADMIN_KEY)}],
                  "scrape_keys": [{"name": "prometheus", "sha256": _digest(SCRAPE)}]},
        "default_acl": "deny",
        "groups": {"developer": {"tools": {"allow": ["demo__echo"]}}},
        "upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio"),
                      "secretive": python_server("tests.servers.demo_server", "--transport", "stdio")},
    }
    with run_gateway(config, tmp, wait_healthy=True) as gw:
        yield gw


WITHOUT = {
    "no header": {},
    "a caller's API key": {"Authorization": f"Bearer {DEV_KEY}"},
    "a wrong key": {"Authorization": "Bearer not-a-key"},
    "basic scheme": {"Authorization": f"Basic {SCRAPE}"},
    "key as X-Api-Key": {"X-Api-Key": SCRAPE},
    "bearer without a token": {"Authorization": "Bearer"},
}


@pytest.mark.parametrize("who", sorted(WITHOUT))
def test_healthz_without_a_monitoring_key_is_liveness_only(guarded: RunningGateway, who: str) -> None:
    response = httpx2.get(f"{guarded.url}/healthz", headers=WITHOUT[who], timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert "secretive" not in response.text and "demo" not in response.text


@pytest.mark.parametrize("who", sorted(WITHOUT))
def test_metrics_without_a_monitoring_key_is_refused(guarded: RunningGateway, who: str) -> None:
    response = httpx2.get(f"{guarded.url}/metrics", headers=WITHOUT[who], timeout=10)
    assert response.status_code == 401
    assert "scrape_keys" in response.json()["message"]
    assert "mcp_hub_" not in response.text and "secretive" not in response.text


@pytest.mark.parametrize("key", [SCRAPE, ADMIN_KEY])
def test_a_scrape_or_admin_key_reads_the_detail(guarded: RunningGateway, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    health = httpx2.get(f"{guarded.url}/healthz", headers=headers, timeout=10).json()
    assert set(health["upstreams"]) == {"demo", "secretive"}
    metrics = httpx2.get(f"{guarded.url}/metrics", headers=headers, timeout=10)
    assert metrics.status_code == 200 and "mcp_hub_" in metrics.text


async def test_counters_do_not_tell_a_hidden_tool_from_a_missing_one(guarded: RunningGateway) -> None:
    """The detail an operator reads moves the same way for a hidden tool and a missing one."""

    def counters() -> dict[str, Any]:
        return httpx2.get(f"{guarded.url}/healthz", headers=SCRAPE_HEADERS, timeout=10).json()["direct_calls"]

    async with bearer_client(guarded.mcp, DEV_KEY) as client:
        deltas, errors = [], []
        for name in ("secretive__echo", "nosuch__echo"):
            before = counters()
            with pytest.raises(MCPError) as refused:
                await client.call_tool(name, {"text": "x"})
            after = counters()
            errors.append((refused.value.error.code, refused.value.error.message.replace(name, "NAME")))
            deltas.append({k: after[k] - before[k] for k in ("served", "handed_to_sdk")})
        assert deltas[0] == deltas[1], deltas
        assert errors[0] == errors[1], errors


def test_a_gateway_with_no_credential_at_all_shows_detail(tmp_path: Path) -> None:
    """Local development: nothing is guarded, so neither is the detail (documented)."""
    port = free_port()
    config = f"""upstreams:
  demo: {{transport: stdio, command: {python_server('x')['command']}, args: [-m, tests.servers.demo_server, --transport, stdio], env: {{PYTHONPATH: {python_server('x')['env']['PYTHONPATH']}}}}}
admin: {{}}
"""
    with run_gateway(config, tmp_path, port=port) as gw:
        health = httpx2.get(f"{gw.url}/healthz", timeout=10).json()
        assert "upstreams" in health
        assert httpx2.get(f"{gw.url}/metrics", timeout=10).status_code == 200
