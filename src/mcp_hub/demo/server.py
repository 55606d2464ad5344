"""A small demo MCP server (stdio) behind the gateway's embedded default config."""

from __future__ import annotations

import datetime as dt
import random

from mcp.server.mcpserver import MCPServer

demo = MCPServer("mcp-hub-demo", instructions="Demo tools served behind mcp-hub's embedded default.")


@demo.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@demo.tool()
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@demo.tool()
def utc_now() -> str:
    """The current UTC time in ISO 8601."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@demo.tool()
def roll_dice(sides: int = 6, count: int = 1) -> list[int]:
    """Roll `count` dice with `sides` sides."""
    if not 1 <= count <= 100 or not 2 <= sides <= 1000:
        raise ValueError("count must be 1..100 and sides 2..1000")
    return [random.randint(1, sides) for _ in range(count)]


@demo.resource("demo://readme", mime_type="text/markdown")
def readme() -> str:
    """What this demo is."""
    return "# mcp-hub demo\nThis server runs behind the gateway's embedded default config.\n"


@demo.prompt()
def summarize(topic: str) -> str:
    """Ask for a short summary of a topic."""
    return f"Summarize {topic} in three sentences."


if __name__ == "__main__":
    demo.run("stdio")
