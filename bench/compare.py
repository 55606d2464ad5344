"""mcp-hub against another MCP gateway: the same load on the same upstream, directly and through both.

Targets, all in front of ONE demo server (its `echo` tool over Streamable HTTP):
- direct: the upstream itself;
- mcp-hub: this repository's gateway;
- FastMCP proxy: `fastmcp.server.create_proxy(URL)` served with `run(transport="http")`, from fastmcp 4.1.2
  installed by this script into its own venv, `.tools/fastmcp-venv` (never into the project's).

Each measurement opens C SDK client sessions (`mcp.Client`, one per worker) and calls `echo` with a
100-byte text for a fixed time. The targets are measured interleaved (direct, mcp-hub, FastMCP, direct, ...)
so the ratios compare like with like on a shared machine; the load average is printed with the results.

    .venv/bin/python bench/compare.py [--seconds 5] [--rounds 2] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import yaml
from mcp import Client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import stop, wait_for_port  # noqa: E402
from tests.support.tools import free_port  # noqa: E402

from bench.proc import aggregate, measure, wait_gateway_ready  # noqa: E402

FASTMCP_VENV = ROOT / ".tools" / "fastmcp-venv"
FASTMCP_VERSION = "4.1.2"  # 4.1.3+ needs a certifi the registry here does not serve
PROXY_SCRIPT = """
import sys
from fastmcp.server import create_proxy

create_proxy(sys.argv[1]).run(transport="http", host="127.0.0.1", port=int(sys.argv[2]), show_banner=False)
"""


def fastmcp_python() -> Path:
    """The FastMCP venv's interpreter, creating the venv and installing fastmcp on first use."""
    python = FASTMCP_VENV / "bin" / "python"
    probe = [str(python), "-c", f"import fastmcp, sys; sys.exit(fastmcp.__version__ != '{FASTMCP_VERSION}')"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"installing fastmcp {FASTMCP_VERSION} into {FASTMCP_VENV} (about a minute)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(FASTMCP_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    f"fastmcp=={FASTMCP_VERSION}"], check=True)
    return python


async def load(
    url: str, tool: str, concurrency: int, seconds: float, payload: str, mode: str = "legacy"
) -> dict[str, Any]:
    """C sessions calling `tool` for `seconds`; calls, rate, p50, p99 and errors. `mode` is the SDK client's:
    legacy (handshake era, a stateful session) or auto (2026-07-28, self-contained requests)."""
    latencies: list[float] = []
    errors: list[str] = []
    deadline = 0.0

    async def worker(client: Client) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                result = await client.call_tool(tool, {"text": payload})
                if result.is_error:
                    errors.append(str(result.content[0])[:120])
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                errors.append(f"{type(exc).__name__}: {exc}"[:120])
            latencies.append(time.perf_counter() - started)

    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(url, mode=mode)) for _ in range(concurrency)]
        for client in clients:
            await client.list_tools()
            await client.call_tool(tool, {"text": payload})  # why: warm the path before measuring
        deadline = time.perf_counter() + seconds
        started, cpu_started = time.perf_counter(), time.process_time()
        async with anyio.create_task_group() as tg:
            for client in clients:
                tg.start_soon(worker, client)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    latencies.sort()
    n = len(latencies)
    return {
        "calls": n,
        "rate": n / elapsed,
        "p50": latencies[n // 2] * 1000 if n else float("nan"),
        "p99": latencies[max(int(n * 0.99) - 1, 0)] * 1000 if n else float("nan"),
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        # this process's CPU per call while the calls ran (sessions opened before and closed after not counted)
        "loadgen_cpu": cpu * 1000 / n if n else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over all targets")
    parser.add_argument("--payload", type=int, default=100, help="bytes of text sent to echo")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()
    payload = "x" * args.payload
    fastmcp = fastmcp_python()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-compare-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    up_port, hub_port, fm_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"
    (tmp / "hub.yaml").write_text(yaml.safe_dump({"upstreams": {"up": {"transport": "streamable-http",
                                                                       "url": upstream_url}}}))
    (tmp / "fastmcp_proxy.py").write_text(PROXY_SCRIPT)
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], log: str, cmd_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=cmd_env or env, stdout=subprocess.DEVNULL,
                                stderr=open(tmp / log, "wb"), start_new_session=True)
        procs.append(proc)
        return proc

    try:
        upstream = start([sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http",
                          "--port", str(up_port)], "upstream.log")
        wait_for_port(up_port, proc=upstream)
        hub = start([sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(tmp / "hub.yaml"), "--port",
                     str(hub_port)], "hub.log")
        # why: the FastMCP venv must not see this repository's modules or the project's venv
        proxy = start([str(fastmcp), str(tmp / "fastmcp_proxy.py"), upstream_url, str(fm_port)], "fastmcp.log",
                      {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
        wait_gateway_ready(hub_port, hub, timeout=60)
        wait_for_port(fm_port, proc=proxy, timeout=60)
        targets = {
            "direct": (upstream_url, "echo", upstream.pid),
            "mcp-hub": (f"http://127.0.0.1:{hub_port}/mcp", "up__echo", hub.pid),
            "FastMCP proxy": (f"http://127.0.0.1:{fm_port}/mcp", "echo", proxy.pid),
        }
        load_before = os.getloadavg()
        results = measure(targets, lambda url, tool, c: anyio.run(load, url, tool, c, args.seconds, payload),
                          args.rounds, args.concurrency)
        report(args, targets, results, load_before)
    finally:
        for proc in reversed(procs):
            stop(proc)


def report(args: argparse.Namespace, targets: dict[str, Any], results: dict[tuple[str, int], list[dict[str, Any]]],
           load_before: tuple[float, float, float]) -> None:
    load_after = os.getloadavg()
    print(f"tools/call echo, {args.payload}-byte payload, one upstream (demo server, Streamable HTTP); "
          f"{args.rounds} interleaved round(s) of {args.seconds:g}s per target and concurrency")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} cores "
          "(shared with other work: compare the ratios, not the absolute figures)")
    print(f"{'target':<15}{'C':>4}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}{'cpu ms/call':>13}"
          f"{'RSS MiB':>9}")
    summary: dict[tuple[str, int], dict[str, float]] = {}
    for c in args.concurrency:
        for name in targets:
            runs = results[(name, c)]
            agg = aggregate(runs)
            summary[(name, c)] = agg
            print(f"{name:<15}{c:>4}{agg['rate']:>10.1f}{agg['p50']:>10.2f}{agg['p99']:>10.2f}{agg['errors']:>8}"
                  f"{agg['cpu']:>13.2f}{agg['rss']:>9.0f}")
            first = next((r["first_error"] for r in runs if r["first_error"]), "")
            if first:
                print(f"{'':<19}first error: {first}")
    print("(cpu ms/call: CPU used by the target's own process per call; for direct, by the upstream)")
    print()
    for c in args.concurrency:
        direct, hub, fm = (summary[(n, c)] for n in ("direct", "mcp-hub", "FastMCP proxy"))
        hub_vs_fm = hub["rate"] / fm["rate"] if fm["rate"] else float("inf")
        hub_vs_direct = hub["rate"] / direct["rate"]
        targets_text = " (targets: >= 3x FastMCP, >= 0.50 of direct)" if c == 16 else ""
        print(f"C={c}: mcp-hub / FastMCP proxy = {hub_vs_fm:.1f}x; mcp-hub / direct = {hub_vs_direct:.2f}; "
              f"FastMCP / direct = {fm['rate'] / direct['rate']:.2f}; added p50 mcp-hub {hub['p50'] - direct['p50']:.1f} ms,"
              f" FastMCP {fm['p50'] - direct['p50']:.1f} ms{targets_text}")


if __name__ == "__main__":
    main()
