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
The upstream answers JSON by default, as the gateway's direct path does when nothing is streamed
before the answer: the SDK client keeps its HTTP connection after a JSON answer and reconnects after
an SSE one, so with SSE answers (`--upstream-answers sse`, the SDK server's default) the direct
baseline pays a TCP connection per call that the gateway's callers do not.
All are measured in one interleaved run (direct, mcp-hub, mcp-hub/sdk, direct, ...) so the ratios
compare like with like on a shared 2-core machine. Prints a table and the ratios against direct.

    .venv/bin/python bench/overhead.py [--seconds 5] [--rounds 2] [--payload 100] [--mode legacy|auto]
        [--upstream-protocol auto|legacy] [--upstream-answers json|sse]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import anyio
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import stop, wait_for_port  # noqa: E402
from tests.support.tools import free_port  # noqa: E402

from bench.compare import load  # noqa: E402
from bench.proc import aggregate, measure, wait_gateway_ready  # noqa: E402


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
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also measure the gateway of another checkout (e.g. a git worktree of an earlier "
                        "commit), in the same interleaved run: target `baseline`")
    args = parser.parse_args()
    payload = "x" * args.payload
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-bench-"))
    up_port, gw_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
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
        results = measure(targets, lambda url, tool, c: anyio.run(load, url, tool, c, args.seconds, payload, args.mode),
                          args.rounds, args.concurrency)
        print(f"tools/call echo, {args.payload}-byte payload, {args.mode} clients, upstream protocol "
              f"{args.upstream_protocol}, upstream answers {args.upstream_answers}, "
              f"{args.rounds} interleaved rounds of {args.seconds:g}s, load {os.getloadavg()[0]:.2f}")
        print(f"{'target':<12}{'C':>4}{'calls/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cpu ms/call':>13}{'RSS MB':>9}")
        summary: dict[tuple[str, int], dict[str, float]] = {}
        order = list(targets)
        for (name, c), runs in sorted(results.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
            agg = aggregate(runs)
            summary[(name, c)] = agg
            print(f"{name:<12}{c:>4}{agg['rate']:>10.0f}{agg['p50']:>9.2f}{agg['p99']:>9.2f}{agg['errors']:>8}"
                  f"{agg['cpu']:>13.2f}{agg['rss']:>9.0f}")
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


def _direct_counts(port: int) -> str:
    """The gateway's own count of calls it served on the direct path (from /healthz)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        counts = json.load(response).get("direct_calls", {})
    return f"{counts.get('served')} / {counts.get('handed_to_sdk')}"


if __name__ == "__main__":
    main()
