"""tools/call latency and throughput: directly against a Streamable HTTP upstream and through mcp-hub.

Targets, all in front of one demo server (its `echo` tool, 2026-07-28 over Streamable HTTP), called by
handshake-era SDK clients on stateful sessions (what Claude Code and VS Code speak today), or with
`--mode auto` by 2026-07-28 clients:
- direct: the upstream itself;
- mcp-hub: the gateway as configured by default (tools/call through its direct HTTP entry, transport/direct.py);
- mcp-hub/sdk: the same gateway with `listen.direct_calls: false` (every request framed by the SDK's
  server session; the call path and the upstream channel behind it are the same), to show what the
  direct entry saves;
- baseline (with `--baseline CHECKOUT`): the default gateway of another checkout, e.g. the commit before
  a change, in the same run.
With `--policy`, the targets are direct, mcp-hub (no policy) and mcp-hub/policy: the same gateway with a
production-like policy (API key auth, an ACL, two token budgets, a rate limit, costs) counted in a real
Redis the bench starts (redis-server on a free loopback port, stopped at the end); `--baseline` then runs
the other checkout with that policy too (`baseline/policy`, its own Redis). Besides throughput and CPU it
prints, per policy target, Redis round trips per call (INFO commandstats before/after: EVALSHA/EVAL per
call, and every command including those a script ran; then MONITOR over 50 sequential calls: the commands
clients sent per call) and Redis CPU per call.
The upstream answers JSON by default, as the gateway's direct path does when nothing is streamed
before the answer: the SDK client keeps its HTTP connection after a JSON answer and reconnects after
an SSE one, so with SSE answers (`--upstream-answers sse`, the SDK server's default) the direct
baseline pays a TCP connection per call that the gateway's callers do not.
All are measured in one interleaved run (direct, mcp-hub, mcp-hub/sdk, direct, ...) so the ratios
compare like with like on a shared 2-core machine. Prints a table and the ratios against direct.

    .venv/bin/python bench/overhead.py [--seconds 5] [--rounds 2] [--payload 100] [--mode legacy|auto]
        [--upstream-protocol auto|legacy] [--upstream-answers json|sse] [--policy | --tracing]
        [--load sdk|wrk] [--baseline CHECKOUT]
With `--load wrk`, wrk replays the SDK clients' requests (a handshake-era session opened as they open it,
then tools/call POSTs on C keep-alive connections; bench/wrkload.py) for about 0.1 ms of CPU per call
instead of the SDK clients' 2.5-3.5 ms, so the ratios show the server side rather than a load generator
that shares the two cores with what it measures.
With `--tracing`, the targets are direct, mcp-hub (tracing off) and mcp-hub/tracing (every request traced,
exported over OTLP/HTTP by the batch processor to a local receiver, bench/otlp_sink.py, which counts the
spans); it prints the cost of tracing on per call (gateway CPU ms/call and the throughput ratio on/off) and,
with `--baseline`, tracing off against the other checkout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import stop, wait_for_port  # noqa: E402
from tests.support.tools import free_port  # noqa: E402

import bench.compare  # noqa: E402
import bench.wrkload  # noqa: E402
from bench.compare import load  # noqa: E402
from bench.proc import aggregate, cpu_seconds, measure, wait_gateway_ready  # noqa: E402
from mcp_hub.auth.keys import new_api_key  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--payload", type=int, default=100)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--mode", choices=["legacy", "auto"], default="legacy", help="the SDK clients' mode")
    parser.add_argument("--upstream-answers", choices=["json", "sse"], default="json",
                        help="how the upstream answers a handshake-era POST: JSON (like the gateway, so the SDK "
                        "client keeps its connection either way) or SSE (the SDK server's default: the client "
                        "reconnects for every call made directly)")
    parser.add_argument("--upstream-protocol", choices=["auto", "legacy"], default="auto",
                        help="how the gateway speaks to the upstream: 2026-07-28 (auto) or a handshake-era session")
    parser.add_argument("--load", choices=["sdk", "wrk"], default="sdk",
                        help="the load generator: SDK clients (what Claude Code and VS Code are; they cost more CPU "
                        "per call than what they measure, on the same cores) or wrk replaying their requests on "
                        "one handshake-era session (bench/wrkload.py; needs wrk on PATH)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also measure the gateway of another checkout (e.g. a git worktree of an earlier "
                        "commit), in the same interleaved run: target `baseline`")
    parser.add_argument("--policy", action="store_true",
                        help="measure direct, mcp-hub without policy and mcp-hub/policy: API key auth, an ACL, two "
                        "token budgets, a rate limit and costs, counted in a Redis the bench starts; with "
                        "--baseline, the other checkout runs that policy too (baseline/policy)")
    parser.add_argument("--tracing", action="store_true",
                        help="measure direct, mcp-hub with tracing off and mcp-hub/tracing: the same gateway tracing "
                        "every request (always sampled), exported over OTLP/HTTP by the batch processor to a local "
                        "receiver (bench/otlp_sink.py); with --baseline, the other checkout as `baseline` (off)")
    args = parser.parse_args()
    if args.policy:
        policy_main(args)
        return
    if args.tracing:
        tracing_main(args)
        return
    payload = "x" * args.payload
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-"))
    up_port, gw_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")  # this checkout's package, whatever is installed
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http", "--port", str(up_port),
         *(["--json-response"] if args.upstream_answers == "json" else [])],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    config = {"upstreams": {"up": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                                   "protocol": args.upstream_protocol}}}
    (tmp / "gw.yaml").write_text(yaml.safe_dump(config))
    (tmp / "gw-sdk.yaml").write_text(yaml.safe_dump({**config, "listen": {"direct_calls": False}}))
    sdk_port, base_port = free_port(), free_port()
    runs = [(gw_port, "gw.yaml", env), (sdk_port, "gw-sdk.yaml", env)]
    if args.baseline is not None:
        # the other checkout's package first on the path, so `-m mcp_hub.cli` runs its code
        runs.append((base_port, "gw.yaml", dict(env, PYTHONPATH=f"{args.baseline.resolve() / 'src'}:{ROOT}")))
    gateways = {
        port: subprocess.Popen(
            [sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(tmp / name), "--port", str(port)],
            cwd=ROOT, env=run_env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{port}.log", "wb"),
            start_new_session=True,
        )
        for port, name, run_env in runs
    }
    try:
        wait_for_port(up_port, proc=upstream)
        for port, gateway in gateways.items():
            wait_gateway_ready(port, gateway, timeout=60)
        targets = {
            "direct": (f"http://127.0.0.1:{up_port}/mcp", "echo", upstream.pid),
            "mcp-hub": (f"http://127.0.0.1:{gw_port}/mcp", "up__echo", gateways[gw_port].pid),
            "mcp-hub/sdk": (f"http://127.0.0.1:{sdk_port}/mcp", "up__echo", gateways[sdk_port].pid),
        }
        if args.baseline is not None:
            targets["baseline"] = (f"http://127.0.0.1:{base_port}/mcp", "up__echo", gateways[base_port].pid)
        results = measure(targets, lambda url, tool, c: _load(args, url, tool, c, payload),
                          args.rounds, args.concurrency, upstream.pid)
        print(f"tools/call echo, {args.payload}-byte payload, {_clients(args)}, upstream protocol "
              f"{args.upstream_protocol}, upstream answers {args.upstream_answers}, "
              f"{args.rounds} interleaved rounds of {args.seconds:g}s, load {os.getloadavg()[0]:.2f}")
        summary = print_table(results, list(targets), 12)
        print()
        for c in args.concurrency:
            d = summary[("direct", c)]
            for name in [n for n in targets if n != "direct"]:
                g = summary[(name, c)]
                print(f"C={c}: throughput {name}/direct = {g['rate'] / d['rate']:.2f}"
                      + (" (target >= 0.50)" if name == "mcp-hub" else "")
                      + f"; added p50 = {g['p50'] - d['p50']:.2f} ms"
                      + (" (target <= 2 ms)" if c == 1 and name == "mcp-hub" else "")
                      + f"; cpu {g['cpu']:.2f} ms/call")
        print(f"direct-path calls served / handed to the SDK: {_direct_counts(gw_port)}")
    finally:
        for gateway in gateways.values():
            stop(gateway)
        stop(upstream)


def _load(args: argparse.Namespace, url: str, tool: str, c: int, payload: str,
          headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One measurement with the chosen load generator (`headers`: wrk's extra request headers)."""
    if args.load == "wrk":
        return bench.wrkload.load(url, tool, c, args.seconds, payload, headers)
    return anyio.run(load, url, tool, c, args.seconds, payload, args.mode)


def _clients(args: argparse.Namespace) -> str:
    return "wrk on one handshake-era session" if args.load == "wrk" else f"{args.mode} SDK clients"


# -- --policy ----------------------------------------------------------------------------------------


def _policy_config(base: dict[str, Any], key_digest: str, redis_url: str) -> dict[str, Any]:
    """A production-like policy: API keys, a deny-by-default ACL, two token budgets (the group's, and each
    consumer's output tokens), a rate limit and costs, in Redis. Limits are far above what the run uses."""
    return {
        **base,
        "auth": {"mode": "api_key", "api_keys": [{"consumer": "bench", "groups": ["developer"], "sha256": key_digest}]},
        "default_acl": "deny",
        "groups": {"developer": {
            "tools": {"allow": ["up__*"], "deny": ["up__add_tool", "up__crash"]},
            "budgets": [
                {"tokens": 10**11, "window": "1 day", "count": "total"},
                {"tokens": 10**10, "window": "1 hour", "count": "output", "per": "consumer"},
            ],
            "rate_limits": [{"requests": 10**8, "window": "1 minute", "per": "consumer"}],
        }},
        "costs": {"up__*": {"per_call": 0.001, "per_1k_tokens": 0.002}},
        "storage": redis_url,
    }


@contextlib.contextmanager
def _redis(tmp: Path) -> Iterator[tuple[str, int, subprocess.Popen[bytes]]]:
    """redis-server on a free loopback port: (url, port, process); stopped at the end."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port(port, proc=proc)
        yield f"redis://127.0.0.1:{port}", port, proc
    finally:
        stop(proc)


def _redis_command(port: int, *args: str) -> bytes:
    """One command over a plain socket, its raw reply (enough for INFO and CONFIG RESETSTAT)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join([b"*%d\r\n" % len(args)] + [b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args]))
        data = b""
        while True:
            data += sock.recv(65536)
            if data.startswith(b"$"):
                size = int(data[1:data.index(b"\r\n")])
                if len(data) >= data.index(b"\r\n") + 2 + size + 2:
                    return data
            elif data.endswith(b"\r\n"):
                return data


def _commandstats(port: int) -> dict[str, int]:
    """Calls per command from INFO commandstats (commands a script ran count too)."""
    stats: dict[str, int] = {}
    for line in _redis_command(port, "INFO", "commandstats").decode().splitlines():
        if line.startswith("cmdstat_"):
            name, fields = line[len("cmdstat_"):].split(":", 1)
            stats[name] = int(dict(f.split("=") for f in fields.split(","))["calls"])
    return stats


def _monitored_round_trips(port: int, url: str, key: str, calls: int, payload: str, mode: str) -> float:
    """Commands clients sent to Redis (MONITOR, not those a script ran) per call, over `calls` sequential calls."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as monitor:
        monitor.sendall(b"MONITOR\r\n")
        reader = monitor.makefile("rb")
        assert reader.readline().startswith(b"+OK")

        async def run() -> None:
            async with _keyed_client(url, key, mode) as client:
                await client.call_tool("up__echo", {"text": payload})  # the session is open before counting
                _redis_command(port, "ECHO", "bench-start")
                for _ in range(calls):
                    await client.call_tool("up__echo", {"text": payload})
                _redis_command(port, "ECHO", "bench-end")

        anyio.run(run)
        counted, sent = False, 0
        while True:
            line = reader.readline().decode()
            if '"bench-start"' in line:
                counted = True
            elif '"bench-end"' in line:
                return sent / calls
            elif counted and " lua]" not in line:
                sent += 1


@contextlib.asynccontextmanager
async def _keyed_client(url: str, key: str, mode: str) -> Any:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


@contextlib.contextmanager
def _sending_key(key: str) -> Iterator[None]:
    """bench.compare.load's clients, with the API key on every request (its Client made with our HTTP client)."""
    original = bench.compare.Client

    def make(url: str, **kwargs: Any) -> Client:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
        return original(streamable_http_client(url, http_client=http), **kwargs)

    bench.compare.Client = make  # type: ignore[assignment,misc]
    try:
        yield
    finally:
        bench.compare.Client = original  # type: ignore[misc]


def policy_main(args: argparse.Namespace) -> None:
    payload = "x" * args.payload
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http", "--port", str(up_port),
         *(["--json-response"] if args.upstream_answers == "json" else [])],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    config = {"upstreams": {"up": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                                   "protocol": args.upstream_protocol}}}
    key, digest = new_api_key()
    with contextlib.ExitStack() as stack:
        stack.callback(stop, upstream)
        policy_targets = ["mcp-hub/policy"] + (["baseline/policy"] if args.baseline is not None else [])
        redis = {name: stack.enter_context(_redis(tmp)) for name in policy_targets}
        runs: dict[str, tuple[dict[str, Any], dict[str, str]]] = {"mcp-hub": (config, env)}
        for name in policy_targets:
            run_env = env if name == "mcp-hub/policy" else dict(
                env, PYTHONPATH=f"{args.baseline.resolve() / 'src'}:{ROOT}")
            runs[name] = (_policy_config(config, digest, redis[name][0]), run_env)
        gateways = start_gateways(stack, tmp, runs)
        wait_for_port(up_port, proc=upstream)
        targets = gateway_targets(up_port, upstream, gateways)
        keyed = {targets[name][0] for name in policy_targets}

        def run(url: str, tool: str, c: int) -> dict[str, Any]:
            if args.load == "wrk":
                return _load(args, url, tool, c, payload, {"authorization": f"Bearer {key}"} if url in keyed else None)
            with _sending_key(key) if url in keyed else contextlib.nullcontext():
                return _load(args, url, tool, c, payload)

        stats_before = {name: _commandstats(redis[name][1]) for name in policy_targets}
        redis_cpu = {name: cpu_seconds(redis[name][2].pid) for name in policy_targets}
        started = time.monotonic()
        results = measure(targets, run, args.rounds, args.concurrency, upstream.pid)
        elapsed = time.monotonic() - started
        redis_cpu = {name: cpu_seconds(redis[name][2].pid) - redis_cpu[name] for name in policy_targets}
        # calls per policy target, the C warm-up calls of each measurement included (they reach Redis too)
        calls_of = {name: sum(r["calls"] + c for (n, c), rounds in results.items() if n == name for r in rounds)
                    for name in policy_targets}
        redis_per_call = {name: redis_cpu[name] * 1000 / max(calls_of[name], 1) for name in policy_targets}
        stats_after = {name: _commandstats(redis[name][1]) for name in policy_targets}

        print(f"tools/call echo, {args.payload}-byte payload, {_clients(args)}, upstream protocol "
              f"{args.upstream_protocol}, upstream answers {args.upstream_answers}, {args.rounds} interleaved rounds "
              f"of {args.seconds:g}s ({elapsed:.0f}s in all), load {os.getloadavg()[0]:.2f}")
        print("mcp-hub/policy: API key auth, deny-by-default ACL, 2 token budgets, 1 rate limit, costs, Redis storage")
        summary = print_table(results, list(targets), 16)
        print()
        for c in args.concurrency:
            d, plain = summary[("direct", c)], summary[("mcp-hub", c)]
            for name in [n for n in targets if n != "direct"]:
                g = summary[(name, c)]
                line = f"C={c}: throughput {name}/direct = {g['rate'] / d['rate']:.2f}"
                if name.endswith("/policy"):
                    line += (" (target >= 0.80)" if name == "mcp-hub/policy" and c == 16 else "")
                    line += f", /mcp-hub = {g['rate'] / plain['rate']:.2f}"
                print(line + f"; added p50 = {g['p50'] - d['p50']:.2f} ms; cpu {g['cpu']:.2f} ms/call")
        print()
        print("CPU per call on the whole machine (2 cores; the load generator is one process): "
              "load generator + upstream + gateway (+ redis-server)")
        for c in args.concurrency:
            for name in targets:
                g = summary[(name, c)]
                gateway = 0.0 if name == "direct" else g["cpu"]
                total = g["loadgen_cpu"] + g["upstream_cpu"] + gateway + redis_per_call.get(name, 0.0)
                print(f"C={c} {name:<16} {g['loadgen_cpu']:.2f} + {g['upstream_cpu']:.2f} + {gateway:.2f}"
                      + (f" + {redis_per_call[name]:.2f}" if name in redis_per_call else "") + f" = {total:.2f} ms")
        print()
        for name in policy_targets:
            calls = calls_of[name]
            delta = {k: v - stats_before[name].get(k, 0) for k, v in stats_after[name].items()}
            scripts = delta.get("evalsha", 0) + delta.get("eval", 0)
            total = sum(v for k, v in delta.items() if k not in ("info", "config|resetstat"))
            trips = _monitored_round_trips(redis[name][1], targets[name][0], key, 50, payload, args.mode)
            print(f"{name}: Redis per call, {calls} calls: EVALSHA+EVAL {scripts / calls:.2f}, all commands "
                  f"(with those scripts ran) {total / calls:.2f}; commands sent per call (MONITOR, 50 sequential "
                  f"calls) {trips:.2f}; redis-server cpu {redis_cpu[name] * 1000 / calls:.3f} ms/call")


# -- --tracing ---------------------------------------------------------------------------------------


def tracing_main(args: argparse.Namespace) -> None:
    """Tracing off vs on vs direct (and a `--baseline` checkout, off), in one interleaved run."""
    payload = "x" * args.payload
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}  # only the config turns tracing on
    up_port, sink_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http", "--port",
             str(up_port), *(["--json-response"] if args.upstream_answers == "json" else [])],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        stack.callback(stop, upstream)
        sink = subprocess.Popen([sys.executable, str(ROOT / "bench" / "otlp_sink.py"), str(sink_port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        stack.callback(stop, sink)
        config = {"upstreams": {"up": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                                       "protocol": args.upstream_protocol}}}
        traced = {**config, "tracing": {"enabled": True, "endpoint": f"http://127.0.0.1:{sink_port}",
                                        "sample_ratio": 1.0}}
        runs: dict[str, tuple[dict[str, Any], dict[str, str]]] = {"mcp-hub": (config, env),
                                                                  "mcp-hub/tracing": (traced, env)}
        if args.baseline is not None:
            runs["baseline"] = (config, dict(env, PYTHONPATH=f"{args.baseline.resolve() / 'src'}:{ROOT}"))
        gateways = start_gateways(stack, tmp, runs)
        wait_for_port(up_port, proc=upstream)
        wait_for_port(sink_port, proc=sink)
        targets = gateway_targets(up_port, upstream, gateways)
        results = measure(targets, lambda url, tool, c: anyio.run(load, url, tool, c, args.seconds, payload, args.mode),
                          args.rounds, args.concurrency, upstream.pid)
        stop(gateways["mcp-hub/tracing"][0])  # its last batch is exported on the way out
        spans = httpx2.get(f"http://127.0.0.1:{sink_port}/count", timeout=5).json()

        print(f"tools/call echo, {args.payload}-byte payload, {args.mode} clients, upstream protocol "
              f"{args.upstream_protocol}, upstream answers {args.upstream_answers}, {args.rounds} interleaved rounds "
              f"of {args.seconds:g}s, load {os.getloadavg()[0]:.2f}")
        print("mcp-hub/tracing: every request traced (sample ratio 1), OTLP/HTTP batch export to a local receiver")
        summary = print_table(results, list(targets), 17)
        print()
        for c in args.concurrency:
            d, off, on = summary[("direct", c)], summary[("mcp-hub", c)], summary[("mcp-hub/tracing", c)]
            line = (f"C={c}: throughput mcp-hub/direct = {off['rate'] / d['rate']:.2f}, mcp-hub/tracing/direct = "
                    f"{on['rate'] / d['rate']:.2f}; tracing on/off: throughput {on['rate'] / off['rate']:.2f}, "
                    f"cpu +{on['cpu'] - off['cpu']:.3f} ms/call ({on['cpu']:.2f} vs {off['cpu']:.2f}), "
                    f"p50 +{on['p50'] - off['p50']:.2f} ms")
            if ("baseline", c) in summary:
                base = summary[("baseline", c)]
                line += (f"; tracing off vs baseline: throughput {off['rate'] / base['rate']:.2f}, "
                         f"cpu {off['cpu'] - base['cpu']:+.3f} ms/call")
            print(line)
        calls = sum(r["calls"] for (n, _), rounds in results.items() if n == "mcp-hub/tracing" for r in rounds)
        print(f"receiver: {spans['spans']} spans in {spans['exports']} exports for {calls} traced calls "
              f"({spans['spans'] / max(calls, 1):.2f} spans/call)")


def start_gateways(stack: contextlib.ExitStack, tmp: Path, runs: dict[str, tuple[dict[str, Any], dict[str, str]]]
                   ) -> dict[str, tuple[subprocess.Popen[bytes], int]]:
    """`mcp-hub serve` per named (config, environment) on a free port, stopped with `stack`: (process, port)."""
    gateways = {}
    for name, (config, run_env) in runs.items():
        stem = name.replace("/", "-")
        (tmp / f"{stem}.yaml").write_text(yaml.safe_dump(config))
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(tmp / f"{stem}.yaml"), "--port", str(port)],
            cwd=ROOT, env=run_env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{stem}.log", "wb"),  # noqa: SIM115
            start_new_session=True,
        )
        stack.callback(stop, proc)
        gateways[name] = (proc, port)
    return gateways


def gateway_targets(up_port: int, upstream: subprocess.Popen[bytes],
                    gateways: dict[str, tuple[subprocess.Popen[bytes], int]]) -> dict[str, tuple[str, str, int]]:
    """Direct, then each gateway once it is ready: name -> (MCP URL, tool, process id)."""
    targets = {"direct": (f"http://127.0.0.1:{up_port}/mcp", "echo", upstream.pid)}
    for name, (proc, port) in gateways.items():
        wait_gateway_ready(port, proc, timeout=60)
        targets[name] = (f"http://127.0.0.1:{port}/mcp", "up__echo", proc.pid)
    return targets


def print_table(results: dict[tuple[str, int], list[dict[str, Any]]], order: list[str],
                width: int) -> dict[tuple[str, int], dict[str, float]]:
    """One row per (target, concurrency), targets in `order`, with the first error of a target that had
    any; returns the aggregated figures."""
    print(f"{'target':<{width}}{'C':>4}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu ms/call':>13}"
          f"{'RSS MB':>9}{'upstream cpu':>14}{'loadgen cpu':>13}")
    summary: dict[tuple[str, int], dict[str, float]] = {}
    for (name, c), rounds in sorted(results.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        agg = aggregate(rounds)
        summary[(name, c)] = agg
        print(f"{name:<{width}}{c:>4}{agg['rate']:>10.0f}{agg['p50']:>9.2f}{agg['p99']:>9.2f}{agg['errors']:>8}"
              f"{agg['cpu']:>13.2f}{agg['rss']:>9.0f}{agg.get('upstream_cpu', float('nan')):>14.2f}"
              f"{agg.get('loadgen_cpu', float('nan')):>13.2f}")
        if agg["errors"]:
            print(f"   first error: {next(r['first_error'] for r in rounds if r['errors'])}")
    return summary


def _direct_counts(port: int) -> str:
    """The gateway's own count of calls it served on the direct path (from /healthz)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        counts = json.load(response).get("direct_calls", {})
    return f"{counts.get('served')} / {counts.get('handed_to_sdk')}"


if __name__ == "__main__":
    main()
