"""Assembles a gateway from a config: upstreams, pipeline (policy, metrics, audit) and auth."""

from __future__ import annotations

from mcp_hub.config import GatewayConfig
from mcp_hub.gateway import Gateway


def build_gateway(config: GatewayConfig, *, config_path: str | None = None) -> Gateway:
    """A ready-to-run gateway for `config` (nothing is started yet)."""
    return Gateway(config)
