"""An upstream whose `wait` tool records, in a file, whether it finished or was cancelled.

    python -m tests.servers.cancel_probe MARKER_FILE   (stdio)
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
from mcp.server.mcpserver import MCPServer

marker = Path(sys.argv[1])
server = MCPServer("cancel-probe")


@server.tool()
async def wait(seconds: float) -> str:
    """Sleep; write 'cancelled' to the marker file if the call is cancelled, 'finished' otherwise."""
    marker.write_text("started")
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        marker.write_text("cancelled")
        raise
    marker.write_text("finished")
    return "done"


if __name__ == "__main__":
    server.run("stdio")
