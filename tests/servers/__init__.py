"""Real MCP servers the test suite starts as subprocesses (upstreams for the gateway, and references).

Each module runs with `python -m tests.servers.<name>` from the repository root.
"""
