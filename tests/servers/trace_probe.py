"""An upstream that tells what W3C trace context reached it.

    python -m tests.servers.trace_probe --port PORT        (Streamable HTTP on 127.0.0.1:PORT/mcp)

Its `probe` tool answers, as JSON, the `traceparent` HTTP header of the request that carried the call
and the `traceparent` of the call's `_meta`; the `probe://context/{label}` resources answers the same for a
resources/read.
"""

from __future__ import annotations

import json
from typing import Any

from mcp.server.mcpserver import Context, MCPServer

from tests.servers._common import build_parser, serve

server = MCPServer("trace-probe")


def _seen(ctx: Context[Any, Any]) -> str:
    headers = ctx.headers or {}
    meta = ctx.request_context.meta
    meta_value = meta.get("traceparent") if isinstance(meta, dict) else getattr(meta, "traceparent", None)
    return json.dumps({"header": headers.get("traceparent"), "meta": meta_value})


@server.tool()
async def probe(ctx: Context[Any, Any], note: str = "") -> str:
    """The trace context this call arrived with: {"header": ..., "meta": ...}."""
    return _seen(ctx)


@server.resource("probe://context/{label}")
async def context_resource(label: str, ctx: Context[Any, Any]) -> str:
    """The trace context this read arrived with."""
    return _seen(ctx)


if __name__ == "__main__":
    serve(server, build_parser("trace-probe upstream", 8771).parse_args())
