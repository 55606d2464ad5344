"""The `mcp-hub` command: serve, check, tools, explain, keys, openapi, reload, status.

`tools` and `explain` work offline from a config (the upstreams are started in-process) or against a
running gateway through its admin API (`--url`, with `--admin-key` or MCP_HUB_ADMIN_KEY). Without
`--config`, `serve`, `tools` and `explain` use MCP_HUB_CONFIG, then ./hub.yaml, then the embedded demo
(and say which). Exit codes (docs/cli.md): 0 success, 1 a failed operation (or `explain`: not allowed),
2 a config error, 3 the HTTP address cannot be listened on, 130 interrupted, 141 stdout closed early.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar

import anyio

from mcp_hub import __version__
from mcp_hub.config import ConfigError, GatewayConfig, load_config, parse_config

T = TypeVar("T")
ADMIN_KEY_ENV = "MCP_HUB_ADMIN_KEY"
CONFIG_ENV = "MCP_HUB_CONFIG"
DEFAULT_CONFIG = "hub.yaml"
EMBEDDED = "<embedded default>"

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_LISTEN = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program whose reader went away


class CliError(Exception):
    """A command that failed for a reason worth one line on stderr (exit code 1)."""


class ListenError(Exception):
    """The HTTP address cannot be listened on (exit code 3)."""


def config_path(given: str | None) -> str | None:
    """The config file a command uses: `--config`, else MCP_HUB_CONFIG, else ./hub.yaml when it
    exists; None for the embedded demo. Says on stderr where an implicit choice came from."""
    if given:
        return given
    from_env = os.environ.get(CONFIG_ENV)
    if from_env:
        print(f"using {from_env} (from {CONFIG_ENV})", file=sys.stderr)
        return from_env
    if Path(DEFAULT_CONFIG).is_file():
        print(f"using ./{DEFAULT_CONFIG} (found in the current folder; --config picks another)", file=sys.stderr)
        return DEFAULT_CONFIG
    print(f"no --config, no {CONFIG_ENV}, no ./{DEFAULT_CONFIG}: using the embedded demo config "
          "(one demo upstream; see `mcp-hub serve --help`)", file=sys.stderr)
    return None


def _load(path: str | None) -> GatewayConfig:
    if path:
        return load_config(path)
    from mcp_hub.demo.default import default_config_tree

    return parse_config(default_config_tree(), source=EMBEDDED)


def _configure_logging(verbose: bool) -> None:
    try:
        from mcp_hub.metering.observability import configure_logging

        configure_logging(level=logging.DEBUG if verbose else logging.INFO)
    except ImportError:
        logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr)


def _as_config_error(exc: BaseException, source: str | None) -> ConfigError | None:
    """A start-up failure that is the config's fault (two upstreams offering one name), as a config error."""
    from mcp_hub.core.hub import CollisionError

    found: BaseException | None = exc
    while isinstance(found, BaseExceptionGroup) and found.exceptions:
        found = next((e for e in found.exceptions if _as_config_error(e, source) is not None), found.exceptions[0])
    if isinstance(found, ConfigError):
        return found
    if isinstance(found, CollisionError):
        return ConfigError([
            *(f"name collision on {line}" for line in found.collisions),
            "listen.on_collision is error (the default): give one of the upstreams another prefix, or set "
            "listen.on_collision: warn to keep the first one's (config order)",
        ], source or EMBEDDED)
    return None


# --- progress on stderr --------------------------------------------------------------------------


class Progress:
    """A spinner with elapsed seconds on stderr while slow work runs; only the final line when stderr
    is not a terminal (logs and CI output stay clean)."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.final: str | None = None
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tty = self.stream.isatty()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        if self._tty:
            # A thread, so the spinner turns while the event loop or a worker thread is busy.
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            self.stream.write(f"\r{self.FRAMES[frame % 4]} {self.label} ({self.elapsed:.1f}s)\x1b[K")
            self.stream.flush()
            frame += 1

    def done(self, final: str) -> None:
        """The line printed when the work ends (elapsed seconds are appended)."""
        self.final = final

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\x1b[K")
        outcome = self.final or (f"{self.label}: failed" if kind else f"{self.label}: done")
        self.stream.write(f"{outcome} ({self.elapsed:.1f}s)\n")
        self.stream.flush()


# --- serve and check -----------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    config = _load(path)
    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.stateless:
        overrides["stateless"] = True
    for key, value in overrides.items():
        setattr(config.listen, key, value)
    _configure_logging(args.verbose)
    from mcp_hub.runtime import prepare

    # The same checks as `mcp-hub check`; runtime OpenAPI registrations are read, so they survive restarts.
    gateway = anyio.run(functools.partial(prepare, config, path, check_listen=not args.stdio))
    gateway.listen_overrides = overrides  # a reload keeps the command line's host, port and mode
    try:
        if args.stdio:
            anyio.run(_serve_stdio, gateway)
        else:
            _serve_http(gateway, config, path)
    except Exception as exc:  # noqa: BLE001 - a start-up failure the config explains is a config error
        problem = _as_config_error(exc, path)
        if problem is None:
            raise
        raise problem from None
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, before anything is announced; `ListenError` says why it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror}); "
                          "set listen.host (or --host) to an address of this machine") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if exc.errno == errno.EADDRINUSE:
            hint = (f"port {port} is already in use (another mcp-hub, or another program: `ss -ltnp "
                    f"'sport = :{port}'` shows which); stop it, or pick another port with --port or listen.port")
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = f"{host} is not an address of this machine; set listen.host (or --host)"
        elif exc.errno == errno.EACCES:
            hint = "permission denied (ports below 1024 need privileges); pick a port above 1023"
        else:
            hint = exc.strerror or str(exc)
        raise ListenError(f"cannot listen on {where}: {hint}") from None
    sock.set_inheritable(True)
    return sock


def _serve_http(gateway: Any, config: GatewayConfig, path: str | None) -> None:
    from mcp_hub.runtime import serve_http, warn_unmatched_allow_patterns

    host = config.listen.host
    sock = _bind(host, config.listen.port)  # before anything says "serving"
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def ready() -> None:
        warn_unmatched_allow_patterns(gateway)
        source = path or "the embedded demo config"
        print(f"mcp-hub {__version__} serving {len(gateway.upstreams)} upstream(s) from {source} "
              f"at http://{shown}:{port}/mcp", file=sys.stderr, flush=True)

    try:
        serve_http(gateway, sock, ready)
    finally:
        sock.close()


async def _serve_stdio(gateway: Any) -> None:
    from mcp.server.stdio import stdio_server

    from mcp_hub.core.hub import ALL_ROUTE
    from mcp_hub.runtime import warn_unmatched_allow_patterns

    async with anyio.create_task_group() as tg:
        await tg.start(gateway.run)
        warn_unmatched_allow_patterns(gateway)
        server = gateway.routes[ALL_ROUTE].server
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
        tg.cancel_scope.cancel()


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from mcp_hub.runtime import check_config

    anyio.run(check_config, config, args.config)
    names = list(config.upstreams) + list(config.openapi)
    routes = ["/mcp", *[r.path for r in config.servers if r.path != "/mcp"]]
    print(f"{args.config}: valid ({len(names)} upstream(s): {', '.join(names) or 'none'}; routes: {', '.join(routes)})")
    if not args.connect:
        print("not checked without starting the upstreams: name collisions and allow patterns that match no "
              f"tool (`mcp-hub check --connect {args.config}` starts them, as `mcp-hub tools` does)")
        return 0
    # Collisions are a config error here when serve would refuse them (listen.on_collision: error); the
    # upstreams that are not up and the allow patterns that match no tool are warned about on stderr.
    collisions = run_offline(args.config, lambda gateway: list(gateway.collisions))
    for line in collisions:
        print(f"warning: name collision (listen.on_collision: warn keeps the first): {line}")
    if not collisions:
        print("no name collisions")
    return 0


# --- a gateway in this process, or a running one through its admin API ---------------------------


def run_offline(config_path: str | None, compute: Callable[[Any], T]) -> T:
    """Start the config's upstreams in this process, wait for their first connection, and compute."""
    config = _load(config_path)
    try:
        return anyio.run(_offline, config, config_path, compute)
    except Exception as exc:  # noqa: BLE001 - a start-up failure the config explains is a config error
        problem = _as_config_error(exc, config_path)
        if problem is None:
            raise
        raise problem from None


async def _offline(config: GatewayConfig, config_path: str | None, compute: Callable[[Any], T]) -> T:
    from mcp_hub.runtime import prepare, unmatched_allow_patterns

    gateway = await prepare(config, config_path, check_listen=False)
    count = len(gateway.upstreams)
    try:
        with Progress(f"connecting to {count} upstream(s)") as progress:
            async with anyio.create_task_group() as tg:
                await tg.start(gateway.run)
                states = {name: up.state.value for name, up in gateway.upstreams.items()}
                up = sum(1 for s in states.values() if s == "up")
                down = sorted(n for n, s in states.items() if s != "up")
                progress.done(f"connected to {up} of {count} upstream(s)" + (f"; not up: {', '.join(down)}" if down else ""))
                for name in down:
                    error = gateway.upstreams[name].last_error
                    print(f"warning: upstream {name} is {states[name]}" + (f": {error}" if error else ""), file=sys.stderr)
                for line in unmatched_allow_patterns(gateway):
                    print(f"warning: {line}", file=sys.stderr)
                result = compute(gateway)
                tg.cancel_scope.cancel()
    finally:
        if gateway.auth is not None:
            await gateway.auth.aclose()
    return result


class AdminClient:
    """Calls a running gateway's admin API with an admin credential (never printed)."""

    def __init__(self, url: str, key: str | None, path: str = "/admin", timeout: float = 120.0) -> None:
        if not key:
            raise CliError(f"the admin API needs a credential: pass --admin-key or set {ADMIN_KEY_ENV}")
        base = url.rstrip("/")
        base = base.removesuffix("/mcp")  # people paste the MCP URL; the admin API sits beside it
        self.base = base + "/" + path.strip("/")
        self._headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        self.timeout = timeout

    def request(self, method: str, endpoint: str, *, params: Any = None, body: Any = None) -> Any:
        """One admin call; errors become `CliError` with the API's own message."""
        import httpx2

        url = f"{self.base}/{endpoint.lstrip('/')}"
        try:
            response = httpx2.request(method, url, params=params, json=body, headers=self._headers,
                                      timeout=self.timeout)
        except httpx2.HTTPError as exc:
            raise CliError(f"cannot reach the admin API at {self.base}: {type(exc).__name__}: {exc}") from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code >= 400:
            if response.status_code == 404 and not isinstance(data, dict):
                raise CliError(f"{self.base}: not found (is the admin API enabled? set admin.keys in the config)")
            message = data.get("message") or data.get("error_description") if isinstance(data, dict) else None
            problems = data.get("problems") if isinstance(data, dict) else None
            text = f"admin API answered {response.status_code}: {message or response.reason_phrase}"
            if problems:
                text += "\n  " + "\n  ".join(problems)
            raise CliError(text)
        return data


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.url, args.admin_key or os.environ.get(ADMIN_KEY_ENV), args.admin_path)


def _groups(args: argparse.Namespace) -> list[str]:
    from mcp_hub.admin.api import split_groups

    return split_groups(*(args.group or []), args.groups)


def _offline_groups(args: argparse.Namespace, config: GatewayConfig) -> list[str]:
    """The groups given on the command line, plus those the consumer's API keys give (auth.api_keys),
    as the gateway would see them when that consumer calls with its key."""
    groups = _groups(args)
    if not args.consumer:
        return groups
    keys = [entry for entry in config.auth.api_keys if entry.consumer == args.consumer]
    for entry in keys:
        groups += [g for g in entry.groups if g not in groups]
    if not keys and not groups and args.consumer not in config.auth.static_groups:
        print(f"note: consumer {args.consumer} has no API key in auth.api_keys and no auth.static_groups "
              "entry, so no groups; give them with --group", file=sys.stderr)
    return groups


def _consumer_params(args: argparse.Namespace) -> dict[str, str]:
    params: dict[str, str] = {}
    groups = _groups(args)
    if groups:
        params["groups"] = ",".join(groups)
    if args.consumer:
        params["consumer"] = args.consumer
    return params


# --- rendering -----------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    """Columns padded to their widest cell; the last column is cut to the terminal width."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    total = shutil.get_terminal_size((120, 24)).columns
    room = max(20, total - sum(widths[:-1]) - 2 * (len(headers) - 1))
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        last = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        print("  ".join([*cells, last]).rstrip(), file=out)


def _who(consumer: dict[str, Any]) -> str:
    groups = ", ".join(consumer["groups"]) or "none"
    return f"consumer {consumer['name']}, groups {groups}"


def print_catalog(catalog: dict[str, Any], out: TextIO | None = None) -> None:
    """A catalog (as `admin.catalog_for` builds it) as tables, one section per route."""
    out = out or sys.stdout  # looked up per call: tests and callers may swap stdout
    for path, route in catalog["routes"].items():
        totals = route["totals"]
        print(f"{path} ({_who(catalog['consumer'])}): {len(route['tools'])} of {totals['tools']} tools, "
              f"{len(route['prompts'])} of {totals['prompts']} prompts, "
              f"{len(route['resources'])} of {totals['resources']} resources", file=out)
        if route["tools"]:
            _table(["TOOL", "UPSTREAM", "TOKENS", "DESCRIPTION"],
                   [[t["name"], t["upstream"], f"{t.get('tokens', 0):,}", t["description"]] for t in route["tools"]],
                   out)
        if route.get("catalog"):
            _print_catalog_cost(route["catalog"], out)
        if route["prompts"]:
            print(file=out)
            _table(["PROMPT", "UPSTREAM", "DESCRIPTION"],
                   [[p["name"], p["upstream"], p["description"]] for p in route["prompts"]], out)
        if route["resources"]:
            print(file=out)
            _table(["RESOURCE", "UPSTREAM", "NAME"], [[r["uri"], r["upstream"], r["name"]] for r in route["resources"]], out)
        print(file=out)
    down = {n: s for n, s in catalog.get("upstreams", {}).items() if s != "up"}
    if down:
        print("not up (their items are missing above): " + ", ".join(f"{n} ({s})" for n, s in down.items()), file=out)


def _print_catalog_cost(cost: dict[str, Any], out: TextIO) -> None:
    """The total tokens of a route's catalog, and what tools/list gives past the budget (core/economy.py)."""
    budget = f" of max_tokens {cost['max_tokens']:,}" if cost.get("max_tokens") is not None else ""
    print(f"total: {cost['tokens']:,} tokens{budget} (tools/list as the client receives it; counter "
          f"{cost['counter']})", file=out)
    if cost.get("compact"):
        print(f"over the budget: tools/list gives the compact catalog, {cost['listed_tokens']:,} tokens: "
              + ", ".join(cost["listed"] or []), file=out)


def print_explanation(result: dict[str, Any], out: TextIO | None = None) -> None:
    """An explain answer in words."""
    out = out or sys.stdout
    verdict = "allowed" if result["allowed"] else "denied"
    where = f" (upstream {result['upstream']})" if result.get("upstream") else ""
    print(f"{result['kind']} {result['name']} on {result['route']}{where} for {_who(result['consumer'])}: {verdict}",
          file=out)
    print(f"  reason: {result['reason']}", file=out)
    if result.get("rule"):
        print(f"  rule:   {result['rule']}", file=out)
    for limit in result.get("limits") or []:
        print(f"  limit:  {limit}", file=out)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --- tools and explain ---------------------------------------------------------------------------


def cmd_tools(args: argparse.Namespace) -> int:
    route = None if args.route == "all" else args.route
    if args.url:
        params = {**_consumer_params(args), **({"route": route} if route else {})}
        catalog = _admin(args).request("GET", "catalog", params=params)
    else:
        from mcp_hub.admin.api import catalog_for, consumer_for

        def compute(gateway: Any) -> dict[str, Any]:
            groups = _offline_groups(args, gateway.config)
            return catalog_for(gateway, consumer_for(gateway, args.consumer, groups), route)

        catalog = _offline_admin(config_path(args.config), compute)
    if args.json:
        _print_json(catalog)
    else:
        print_catalog(catalog)
    return 0


def _offline_admin(path: str | None, compute: Callable[[Any], T]) -> T:
    from mcp_hub.admin.api import AdminError

    try:
        return run_offline(path, compute)
    except AdminError as exc:
        raise CliError(exc.message) from None


def cmd_explain(args: argparse.Namespace) -> int:
    kind = "prompt" if args.prompt else "resource" if args.resource else "tool"
    if args.url:
        params = {kind: args.name, **_consumer_params(args), **({"route": args.route} if args.route else {})}
        result = _admin(args).request("GET", "explain", params=params)
    else:
        from mcp_hub.admin.api import consumer_for, explain_for

        def compute(gateway: Any) -> dict[str, Any]:
            groups = _offline_groups(args, gateway.config)
            return explain_for(gateway, consumer_for(gateway, args.consumer, groups), kind, args.name, args.route)

        result = _offline_admin(config_path(args.config), compute)
    if args.json:
        _print_json(result)
    else:
        print_explanation(result)
    return 0 if result["allowed"] else 1


# --- keys ----------------------------------------------------------------------------------------


def cmd_keys_new(args: argparse.Namespace) -> int:
    from mcp_hub.auth.keys import new_api_key

    key, digest = new_api_key()
    groups = [g.strip() for g in (args.groups or "").split(",") if g.strip()]
    if args.json:
        _print_json({"key": key, "sha256": digest})
        return 0
    print("API key (give it to its user now; it is not stored anywhere):")
    print(f"  {key}")
    print("SHA-256 (the only thing the config keeps):")
    print(f"  {digest}")
    print()
    if args.admin:
        print("For the admin API, add to the config:")
        print("admin:")
        print("  keys:")
        print(f"    - name: {args.admin}")
        print(f"      sha256: {digest}")
    else:
        print("Add to the config:")
        print("auth:")
        print("  mode: api_key")
        print("  api_keys:")
        print(f"    - consumer: {args.consumer or 'CHANGE-ME'}")
        print(f"      groups: [{', '.join(groups)}]")
        print(f"      sha256: {digest}")
    return 0


# --- openapi -------------------------------------------------------------------------------------


def cmd_openapi_inspect(args: argparse.Namespace) -> int:
    from mcp_hub.upstreams.openapi import DocumentError, OpenAPIUpstreamConfig, convert_source

    selection: dict[str, dict[str, list[str]]] = {}
    for side in ("include", "exclude"):
        for part in ("operations", "tags", "paths"):
            values = getattr(args, f"{side}_{part}") or []
            if values:
                selection.setdefault(side, {})[part] = values
    config = OpenAPIUpstreamConfig.model_validate({"spec": args.spec, **selection})
    try:
        with Progress(f"converting {args.spec}") as progress:
            converted = convert_source(args.spec, config=config)
            progress.done(f"{args.spec}: {len(converted.tools)} tools, {len(converted.skipped)} skipped")
    except (DocumentError, OSError) as exc:
        raise CliError(f"cannot use {args.spec}: {exc}") from None
    tools = []
    for tool in converted.tools:
        binding = converted.bindings.get(tool.name)
        tools.append({
            "name": tool.name,
            "method": binding.method.upper() if binding else "",
            "path": binding.path if binding else "",
            "description": (tool.description or "").strip().splitlines()[0] if (tool.description or "").strip() else "",
        })
    skipped = [{"method": s.method, "path": s.path, "operation_id": s.operation_id, "reason": s.reason}
               for s in converted.skipped]
    report = {"title": converted.title, "openapi_version": converted.openapi_version,
              "operations": converted.operations, "servers": converted.servers, "tools": tools, "skipped": skipped,
              "warnings": [w.as_dict() for w in converted.warnings]}
    if args.json:
        _print_json(report)
        return 0
    title = f"{converted.title} " if converted.title else ""
    print(f"{title}(OpenAPI {converted.openapi_version}): {converted.operations} operations, "
          f"{len(tools)} tools, {len(skipped)} skipped")
    print(f"base URL: {converted.servers[0] if converted.servers else 'none in the document (set base_url)'}")
    if tools:
        print()
        _table(["TOOL", "METHOD", "PATH", "DESCRIPTION"],
               [[t["name"], t["method"], t["path"], t["description"]] for t in tools], sys.stdout)
    if skipped:
        print()
        print("skipped operations:")
        for s in skipped:
            op = f" ({s['operation_id']})" if s["operation_id"] else ""
            print(f"  {s['method']} {s['path']}{op}: {s['reason']}")
    if converted.warnings:
        print()
        print("patterns dropped (no Python equivalent):")
        for warning in converted.warnings:
            print(f"  {warning.message()}")
    return 0


def _external_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            yield ref
        for value in node.values():
            yield from _external_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _external_refs(value)


def cmd_openapi_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if "://" in args.spec or args.remote:
        body["spec"] = args.spec  # fetched (or read) by the gateway
    else:
        from mcp_hub.upstreams.openapi.refs import DocumentError, load_sync, source_uri

        try:
            document = load_sync(source_uri(args.spec))
        except (DocumentError, OSError) as exc:
            raise CliError(f"cannot read {args.spec}: {exc}") from None
        refs = sorted(set(_external_refs(document)))
        if refs:
            raise CliError(f"{args.spec} refers to other files ({', '.join(refs[:3])}); serve it over HTTP and pass "
                           "the URL, or put it in the gateway's admin.spec_dirs and pass --remote")
        body["document"] = document
    for key in ("base_url", "prefix"):
        value = getattr(args, key)
        if value is not None:
            body[key] = value
    if args.route:
        body["routes"] = args.route
    client = _admin(args)
    # The gateway fetches and converts the document before it answers: large ones take a while.
    with Progress(f"registering {args.name}") as progress:
        result = client.request("POST", "openapi", body=body)
        progress.done(f"registered {args.name}")
    if args.json:
        _print_json(result)
        return 0
    tools = result["tools"]
    shown = ", ".join(tools[:5]) + (f", … ({len(tools) - 5} more)" if len(tools) > 5 else "")
    print(f"registered {result['name']}: {len(tools)} tools ({shown}); {len(result['skipped'])} operations skipped")
    print(f"persisted in {result['store']}")
    return 0


def cmd_openapi_list(args: argparse.Namespace) -> int:
    result = _admin(args).request("GET", "openapi")
    if args.json:
        _print_json(result)
        return 0
    rows = [[r["name"], r["state"], str(r["tools"]), r["spec"] or "(inline document)", r["base_url"] or "(document)"]
            for r in result["registrations"]]
    if rows:
        _table(["NAME", "STATE", "TOOLS", "SPEC", "BASE URL"], rows, sys.stdout)
    print(f"{len(rows)} registration(s) in {result['store']}")
    return 0


def cmd_openapi_remove(args: argparse.Namespace) -> int:
    _admin(args).request("DELETE", f"openapi/{args.name}")
    print(f"removed {args.name}")
    return 0


# --- running gateway -----------------------------------------------------------------------------


def cmd_reload(args: argparse.Namespace) -> int:
    summary = _admin(args).request("POST", "reload")
    if args.json:
        _print_json(summary)
        return 0
    print(f"reloaded {summary.pop('reloaded')}")
    for key, names in summary.items():
        if names:
            print(f"  {key.replace('_', ' ')}: {', '.join(names)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    health = _admin(args).request("GET", "upstreams")
    if args.json:
        _print_json(health)
        return 0
    print(f"status {health['status']} (mcp-hub {health.get('version', '?')})")
    rows = [[name, u["kind"], u["state"], str(u["tools"]), u.get("source", ""), u.get("error", "")]
            for name, u in health["upstreams"].items()]
    _table(["UPSTREAM", "KIND", "STATE", "TOOLS", "SOURCE", "ERROR"], rows, sys.stdout)
    for line in health.get("collisions", []):
        print(f"collision: {line}")
    return 0


# --- the parser ----------------------------------------------------------------------------------


def _target_options(parser: argparse.ArgumentParser, *, offline: bool) -> None:
    if offline:
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--config", "-c", help="a config file: its upstreams are started in this process "
                           f"(default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG}, else the embedded demo config)")
        where.add_argument("--url", help="a running gateway (e.g. http://127.0.0.1:8000), through its admin API")
    else:
        parser.add_argument("--url", required=True, help="the running gateway, e.g. http://127.0.0.1:8000")
    parser.add_argument("--admin-key", help=f"admin credential (better: set {ADMIN_KEY_ENV}, so it stays out of `ps`)")
    parser.add_argument("--admin-path", default="/admin", help="where the admin API is served: the gateway's "
                        "admin.path (default /admin)")


def _consumer_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--group", "-g", action="append", help="a group of the consumer (repeat, or G1,G2)")
    parser.add_argument("--groups", help="the consumer's groups, comma-separated")
    parser.add_argument("--consumer", help="the consumer's name (with --config, the groups of its API keys in "
                        "auth.api_keys are merged in; its auth.static_groups always)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-hub", description="One MCP server in front of many.")
    parser.add_argument("--version", action="version", version=f"mcp-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway (embedded demo config when none is given)")
    serve.add_argument("--config", "-c", help=f"YAML config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG}, "
                       "else the embedded demo config)")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--stdio", action="store_true", help="serve MCP over stdin/stdout instead of HTTP")
    serve.add_argument("--stateless", action="store_true", help="stateless Streamable HTTP (no session affinity)")
    serve.add_argument("--verbose", "-v", action="store_true", help="debug logging (upstream traffic, auth decisions)")
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config as `serve` would, without starting anything")
    check.add_argument("config")
    check.add_argument("--connect", action="store_true", help="also start the upstreams (as `tools` does) to find "
                       "name collisions and allow patterns that match no tool")
    check.set_defaults(func=cmd_check)

    tools = sub.add_parser("tools", help="the tools, prompts and resources a group sees")
    _target_options(tools, offline=True)
    _consumer_options(tools)
    tools.add_argument("--route", default="/mcp", help="route (virtual server) to show, or `all` (default /mcp)")
    tools.add_argument("--json", action="store_true", help="print JSON (the admin API's catalog answer)")
    tools.set_defaults(func=cmd_tools)

    explain = sub.add_parser("explain", help="why a group may or may not use a tool (exit 0 allowed, 1 not)")
    explain.add_argument("name", help="exposed name of the tool (or prompt, or resource URI)")
    kind = explain.add_mutually_exclusive_group()
    kind.add_argument("--prompt", action="store_true", help="NAME is a prompt")
    kind.add_argument("--resource", action="store_true", help="NAME is a resource URI")
    _target_options(explain, offline=True)
    _consumer_options(explain)
    explain.add_argument("--route", help="route (virtual server); default /mcp")
    explain.add_argument("--json", action="store_true")
    explain.set_defaults(func=cmd_explain)

    keys = sub.add_parser("keys", help="API keys and admin keys").add_subparsers(dest="keys_command", required=True)
    new = keys.add_parser("new", help="print a new key and the SHA-256 digest the config stores")
    new.add_argument("--consumer", help="consumer name for the config snippet")
    new.add_argument("--groups", help="groups for the config snippet, comma-separated")
    new.add_argument("--admin", metavar="NAME", help="print an admin.keys snippet for NAME instead")
    new.add_argument("--json", action="store_true", help='print {"key": ..., "sha256": ...}')
    new.set_defaults(func=cmd_keys_new)

    openapi = sub.add_parser("openapi", help="REST APIs from OpenAPI documents").add_subparsers(
        dest="openapi_command", required=True)
    inspect = openapi.add_parser("inspect", help="the tools a document would produce, and what it skips and why")
    inspect.add_argument("spec", help="path or http(s) URL of the document (.json, .yaml, .gz)")
    for side in ("include", "exclude"):
        inspect.add_argument(f"--{side}-operation", dest=f"{side}_operations", action="append", metavar="ID",
                             help=f"{side} this operationId (or tool name); repeatable")
        inspect.add_argument(f"--{side}-tag", dest=f"{side}_tags", action="append", metavar="TAG",
                             help=f"{side} operations with this tag; repeatable")
        inspect.add_argument(f"--{side}-path", dest=f"{side}_paths", action="append", metavar="GLOB",
                             help=f"{side} paths matching this glob (may start with a method: 'GET /pets/*')")
    inspect.add_argument("--json", action="store_true")
    inspect.set_defaults(func=cmd_openapi_inspect)

    add = openapi.add_parser("add", help="register a document with a running gateway (persisted)")
    add.add_argument("name", help="upstream name (tools become NAME__tool unless --prefix)")
    add.add_argument("spec", help="URL the gateway fetches, or a local file sent as the document")
    add.add_argument("--base-url", help="where calls go (default: the document's servers)")
    add.add_argument("--prefix", help="tool name prefix (default: the name; empty for none)")
    add.add_argument("--route", action="append", help="also expose it on this virtual server (repeatable)")
    add.add_argument("--remote", action="store_true", help="SPEC is a path on the gateway host (in admin.spec_dirs)")
    _target_options(add, offline=False)
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_openapi_add)

    listing = openapi.add_parser("list", help="runtime registrations of a running gateway")
    _target_options(listing, offline=False)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_openapi_list)

    remove = openapi.add_parser("remove", help="drop a runtime registration")
    remove.add_argument("name")
    _target_options(remove, offline=False)
    remove.set_defaults(func=cmd_openapi_remove)

    reload = sub.add_parser("reload", help="make a running gateway reload its config file")
    _target_options(reload, offline=False)
    reload.add_argument("--json", action="store_true")
    reload.set_defaults(func=cmd_reload)

    status = sub.add_parser("status", help="upstream states of a running gateway")
    _target_options(status, offline=False)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LISTEN
    except BrokenPipeError:
        # The reader of stdout went away (`mcp-hub tools --json | head`): nothing more to say to it.
        # Point stdout at /dev/null so the interpreter's final flush does not fail a second time.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except ValueError as exc:  # a config that validates but cannot be served
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
