"""The config served when `mcp-hub serve` is given none."""

from __future__ import annotations

import sys
from typing import Any


def default_config_tree() -> dict[str, Any]:
    """Demo upstreams that need nothing outside the package."""
    return {
        "upstreams": {
            "demo": {
                "transport": "stdio",
                "command": sys.executable,
                "args": ["-m", "mcp_hub.demo.server"],
            }
        },
    }
