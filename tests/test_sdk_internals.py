"""The SDK's private attributes the gateway relies on (sdk_internals.py), pinned against the installed SDK."""

from __future__ import annotations

from typing import Any

import mcp
import pytest
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

from mcp_hub import sdk_internals
from mcp_hub.config import parse_config
from mcp_hub.runtime import build_gateway
from mcp_hub.transport.app import build_app


def test_the_installed_sdk_has_every_internal_the_gateway_uses() -> None:
    # An SDK upgrade that moves one of these fails here first, instead of silently turning the direct entry off.
    assert sdk_internals.check() == [], f"mcp {mcp.__version__ if hasattr(mcp, '__version__') else '?'}"


def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk_internals, "_negotiate_auto", None)
    assert sdk_internals.check() == ["mcp.client._probe.negotiate_auto"]


def test_session_table_reads_the_managers_sessions() -> None:
    manager = StreamableHTTPSessionManager(app=object())  # type: ignore[arg-type]
    table = sdk_internals.session_table(manager)
    assert table is not None and table == {}
    assert sdk_internals.session_owners(manager) == {}


def _health_of(monkeypatch: pytest.MonkeyPatch, missing: list[str], direct_calls: bool = True) -> dict[str, Any]:
    monkeypatch.setattr(sdk_internals, "direct_entry_missing", lambda: missing)
    config = parse_config({"listen": {"direct_calls": direct_calls}})
    gateway = build_gateway(config)
    build_app(gateway)
    return gateway.health()["direct_calls"]


def test_healthz_says_the_direct_entry_is_off_when_the_sdk_lacks_what_it_needs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        health = _health_of(monkeypatch, ["StreamableHTTPSessionManager._server_instances"])
    assert health["on"] is False
    assert "StreamableHTTPSessionManager._server_instances" in health["off"]
    assert "direct HTTP entry off" in caplog.text


def test_healthz_says_the_direct_entry_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    health = _health_of(monkeypatch, [])
    assert health["on"] is True and "off" not in health
    assert _health_of(monkeypatch, [], direct_calls=False)["off"] == "listen.direct_calls is false"
