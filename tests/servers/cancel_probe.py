"""An upstream whose `wait` tool records, in a file, whether it finished or was cancelled.

    python -m tests.servers.cancel_probe MARKER_FILE          (stdio)
    python -m tests.servers.cancel_probe MARKER_FILE PORT     (2026-07-28 Streamable HTTP on 127.0.0.1:PORT/mcp)
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

marker = Path(sys.argv[1])
server = MCPServer("cancel-probe")


def _mark(state: str) -> None:
    marker.write_text(state)  # a few bytes: not worth a thread


@server.tool()
async def wait(seconds: float) -> str:
    """Sleep; write 'cancelled' to the marker file if the call is cancelled, 'finished' otherwise."""
    _mark("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        _mark("cancelled")
        raise
    _mark("finished")
    return "done"


if __name__ == "__main__":
    if len(sys.argv) > 2:
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run("stdio")
