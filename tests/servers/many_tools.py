"""An upstream with many tools, for catalog-size benchmarks.

    python -m tests.servers.many_tools --count 100 --port P   (Streamable HTTP at /mcp)
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer


def build(count: int) -> MCPServer:
    server = MCPServer("many-tools")
    for i in range(count):
        server.add_tool(_make(i), name=f"tool_{i:04d}", description=f"Tool number {i}: echoes its text.",
                        structured_output=False)
    return server


def _make(number: int) -> object:
    def tool(text: str, repeat: int = 1) -> str:
        return f"{number}:" + text * repeat

    return tool


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--port", type=int, default=3950)
    args = parser.parse_args()
    build(args.count).run("streamable-http", host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
