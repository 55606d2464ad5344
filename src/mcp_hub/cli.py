"""The `mcp-hub` command: serve, check, tools, keys, openapi."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from mcp_hub import __version__
from mcp_hub.config import ConfigError, GatewayConfig, load_config, parse_config


def _load(path: str | None) -> GatewayConfig:
    if path:
        return load_config(path)
    from mcp_hub.demo.default import default_config_tree

    return parse_config(default_config_tree(), source="<embedded default>")


def _configure_logging(verbose: bool) -> None:
    try:
        from mcp_hub.observability import configure_logging

        configure_logging(level=logging.DEBUG if verbose else logging.INFO)
    except ImportError:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.host:
        config.listen.host = args.host
    if args.port is not None:
        config.listen.port = args.port
    if args.stateless:
        config.listen.stateless = True
    _configure_logging(args.verbose)
    from mcp_hub.runtime import build_gateway

    gateway = build_gateway(config, config_path=args.config, check_listen=not args.stdio)
    if args.stdio:
        anyio.run(_serve_stdio, gateway)
        return 0
    import uvicorn

    from mcp_hub.app import build_app

    app = build_app(gateway)
    where = f"http://{config.listen.host}:{config.listen.port}/mcp"
    print(f"mcp-hub {__version__} serving {len(gateway.upstreams)} upstream(s) at {where}", file=sys.stderr)
    uvicorn.run(app, host=config.listen.host, port=config.listen.port, log_level="warning", lifespan="on")
    return 0


async def _serve_stdio(gateway: Any) -> None:
    from mcp.server.stdio import stdio_server

    from mcp_hub.gateway import ALL_ROUTE

    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        server = gateway.routes[ALL_ROUTE].server
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        tg.cancel_scope.cancel()


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    names = list(config.upstreams) + list(config.openapi)
    routes = ["/mcp", *[r.path for r in config.servers if r.path != "/mcp"]]
    print(f"{args.config}: valid ({len(names)} upstream(s): {', '.join(names) or 'none'}; routes: {', '.join(routes)})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-hub", description="One MCP server in front of many.")
    parser.add_argument("--version", action="version", version=f"mcp-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (embedded demo config when none is given)")
    serve.add_argument("--config", "-c", help="YAML config file")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout instead of HTTP")
    serve.add_argument("--stateless", action="store_true", help="stateless Streamable HTTP (no session affinity)")
    serve.add_argument("--verbose", "-v", action="store_true")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config without starting anything")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)

    try:
        from mcp_hub import cli_extra

        cli_extra.register(sub)
    except ImportError:
        pass
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a config that validates but cannot be served (e.g. open bind without auth)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def _path(p: str) -> Path:
    return Path(p)


if __name__ == "__main__":
    sys.exit(main())
