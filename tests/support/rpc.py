"""Reading JSON-RPC answers out of raw Streamable HTTP responses (for tests that speak HTTP directly)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2


def answer_of(response: httpx2.Response, request_id: Any) -> dict[str, Any]:
    """The JSON-RPC message answering `request_id`, from a JSON body or an SSE stream."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return dict(response.json())
    # why: SSE lines end at CR or LF only; str.splitlines would also split on U+0085 inside the JSON
    for line in re.split(r"\r\n|\r|\n", response.text):
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if message.get("id") == request_id:
                return dict(message)
    raise ValueError(f"HTTP {response.status_code}: no answer to {request_id!r} in {response.text[:300]!r}")


MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def initialize_request(version: str = "2025-06-18", client: str = "test") -> dict[str, Any]:
    """A raw JSON-RPC `initialize` request (id 1) for tests that speak HTTP directly."""
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": client, "version": "0"}}}
