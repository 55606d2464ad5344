"""Sustained load through one mcp-hub process: many concurrent sessions, a mix of tools and upstreams.

Upstreams: two demo servers over Streamable HTTP and one over stdio (started here). Clients: N MCP
sessions over Streamable HTTP, driven with plain HTTP requests (a thin JSON-RPC client, so the load
generator costs the shared CPU as little as possible), calling echo and add round-robin across the
three upstreams. Prints calls/s, p50/p99 latency and errors, and for the gateway process: RSS after
warm-up and at the end (flat within 10%?), open file descriptors, threads and child processes
before and after the run (leaks?).

    .venv/bin/python bench/load.py [--calls 100000] [--sessions 100] [--warmup 2000] [--payload 100]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import stop, wait_for_http, wait_for_port  # noqa: E402
from tests.support.rpc import answer_of  # noqa: E402
from tests.support.tools import free_port  # noqa: E402

from bench.proc import cpu_seconds  # noqa: E402

PROTOCOL = "2025-06-18"
ACCEPT = "application/json, text/event-stream"
UPSTREAMS = ("http_a", "http_b", "stdio")


# --- the gateway process, seen from /proc ---------------------------------------------------


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


@dataclass
class Snapshot:
    rss_mib: float
    fds: int
    threads: int
    children: int

    @classmethod
    def of(cls, pid: int) -> Snapshot:
        return cls(status_kib(pid, "VmRSS") / 1024, open_fds(pid), status_kib(pid, "Threads"), len(children(pid)))

    def __str__(self) -> str:
        return f"RSS {self.rss_mib:.0f} MiB, {self.fds} fds, {self.threads} threads, {self.children} children"


# --- a thin MCP client over plain HTTP ------------------------------------------------------


class Session:
    """One MCP session: initialize, then tools/call requests, then DELETE."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self.http, self.url = http, url
        self.headers: dict[str, str] = {}
        self.next_id = 1

    async def open(self) -> None:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "load", "version": "0"}}}
        response = await self.http.post(self.url, json=init, headers={"Accept": ACCEPT})
        response.raise_for_status()
        self.headers = {"Accept": ACCEPT, "Mcp-Session-Id": response.headers["mcp-session-id"],
                        "Mcp-Protocol-Version": PROTOCOL}
        await self.http.post(self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                             headers=self.headers)

    async def call(self, tool: str, arguments: dict[str, Any]) -> str | None:
        """None on success, else why the call failed."""
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                "params": {"name": tool, "arguments": arguments}}
        response = await self.http.post(self.url, json=body, headers=self.headers)
        answer = answer_of(response, self.next_id)
        if "error" in answer:
            return str(answer["error"].get("message"))
        if answer["result"].get("isError"):
            return str(answer["result"]["content"][0].get("text"))
        return None

    async def close(self) -> None:
        await self.http.delete(self.url, headers=self.headers)


@dataclass
class Run:
    """Calls to make between all sessions of a phase, and what they measured (when `record`)."""

    total: int
    mix: list[tuple[str, dict[str, Any]]]
    record: bool = True
    issued: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    measured_from: float = 0.0


async def worker(run: Run, session: Session) -> None:
    while run.issued < run.total:
        index = run.issued
        run.issued += 1
        tool, arguments = run.mix[index % len(run.mix)]
        started = time.perf_counter()
        try:
            problem = await session.call(tool, arguments)
        except Exception as exc:  # noqa: BLE001 - counted, the run goes on
            problem = f"{type(exc).__name__}: {exc}"
        if run.record:
            run.latencies.append(time.perf_counter() - started)
            if problem is not None:
                run.errors.append(f"{tool}: {problem}"[:200])
        elif problem is not None:
            raise RuntimeError(f"warm-up call failed: {tool}: {problem}")


async def phase(url: str, run: Run, sessions: int, on_start: Any = None, on_end: Any = None) -> None:
    """Open `sessions` sessions, let them make `run.total` calls between them, close them and their connections."""
    limits = httpx2.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    async with httpx2.AsyncClient(timeout=120, limits=limits) as http:
        opened = [Session(http, url) for _ in range(sessions)]
        for session in opened:
            await session.open()
        if on_start is not None:
            on_start()
        async with anyio.create_task_group() as tg:
            for session in opened:
                tg.start_soon(worker, run, session)
        if on_end is not None:
            on_end()
        for session in opened:
            await session.close()


async def drive(url: str, pids: dict[str, int], args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up phase (its sessions closed), then the measured phase with fresh sessions."""
    pid = pids["gateway"]
    payload = "x" * args.payload
    mix = [(f"{up}__{tool}", arguments) for up in UPSTREAMS
           for tool, arguments in (("echo", {"text": payload}), ("add", {"a": 2, "b": 3}))]
    figures: dict[str, Any] = {"rss_timeline": []}
    async with httpx2.AsyncClient(timeout=30) as http:
        await phase(url, Run(total=args.warmup, mix=mix, record=False), args.sessions)
        await anyio.sleep(3)  # why: let the gateway drop the closed sessions and expire idle upstream connections (2 s)
        figures["baseline"] = Snapshot.of(pid)
        run = Run(total=args.calls, mix=mix)
        cpu_before = {name: cpu_seconds(p) for name, p in pids.items()}
        cpu_before["load generator"] = sum(os.times()[:2])

        def started() -> None:
            figures["with_sessions"] = Snapshot.of(pid)
            run.measured_from = time.perf_counter()

        async def sample() -> None:
            next_report = args.calls // 10
            while run.issued < run.total:
                await anyio.sleep(2)
                figures["rss_timeline"].append(status_kib(pid, "VmRSS") / 1024)
                if run.issued >= next_report:
                    rate = len(run.latencies) / max(time.perf_counter() - run.measured_from, 1e-9)
                    print(f"  {run.issued:>7} calls, {rate:.0f} calls/s, RSS {figures['rss_timeline'][-1]:.0f} MiB",
                          file=sys.stderr)
                    next_report += args.calls // 10

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            await phase(url, run, args.sessions, started, lambda: figures.__setitem__("at_end", Snapshot.of(pid)))
        figures["elapsed"] = time.perf_counter() - run.measured_from
        cpu_after = {name: cpu_seconds(p) for name, p in pids.items()}
        cpu_after["load generator"] = sum(os.times()[:2])
        figures["cpu_ms_per_call"] = {name: (cpu_after[name] - cpu_before[name]) * 1000 / max(len(run.latencies), 1)
                                      for name in cpu_before}
        health = (await http.get(url.rsplit("/mcp", 1)[0] + "/healthz")).json()
    await anyio.sleep(3)  # why: closed sessions dropped, idle upstream connections expired (2 s), before counting
    figures["after_close"] = Snapshot.of(pid)
    figures["tasks"] = health.get("tasks") or health.get("asyncio_tasks")
    figures["run"] = run
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100_000, help="measured calls (after warm-up)")
    parser.add_argument("--sessions", type=int, default=100, help="concurrent MCP sessions")
    parser.add_argument("--warmup", type=int, default=2000, help="calls before measuring starts")
    parser.add_argument("--payload", type=int, default=100, help="bytes of text sent to echo")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-load-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    port_a, port_b, gw_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], log: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / log, "wb"),
                                start_new_session=True)
        procs.append(proc)
        return proc

    demo = [sys.executable, "-m", "tests.servers.demo_server"]
    try:
        up_a = start([*demo, "--transport", "streamable-http", "--port", str(port_a)], "a.log")
        up_b = start([*demo, "--transport", "streamable-http", "--port", str(port_b)], "b.log")
        config = {"upstreams": {
            "http_a": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port_a}/mcp"},
            "http_b": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port_b}/mcp"},
            "stdio": {"transport": "stdio", "command": sys.executable,
                      "args": ["-m", "tests.servers.demo_server", "--transport", "stdio"],
                      "env": {"PYTHONPATH": str(ROOT)}},
        }}
        (tmp / "gw.yaml").write_text(yaml.safe_dump(config))
        wait_for_port(port_a, proc=up_a)
        wait_for_port(port_b, proc=up_b)
        gateway = start([sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(tmp / "gw.yaml"),
                         "--port", str(gw_port)], "gw.log")
        base = f"http://127.0.0.1:{gw_port}"
        wait_for_http(f"{base}/healthz", proc=gateway, timeout=60)
        deadline = time.monotonic() + 60
        while httpx2.get(f"{base}/healthz").json()["status"] != "ok":
            if time.monotonic() > deadline:
                raise SystemExit(f"upstreams did not come up; see {tmp / 'gw.log'}")
            time.sleep(0.2)
        idle = Snapshot.of(gateway.pid)
        load_before = os.getloadavg()
        wall = time.perf_counter()
        print(f"load: {args.calls} calls (+{args.warmup} warm-up) over {args.sessions} sessions, "
              f"{len(UPSTREAMS)} upstreams x echo/add; load average {load_before[0]:.2f}", file=sys.stderr)
        stdio_upstream = children(gateway.pid)
        pids = {"gateway": gateway.pid, "upstream http_a": up_a.pid, "upstream http_b": up_b.pid}
        if stdio_upstream:
            pids["upstream stdio"] = stdio_upstream[0]
        figures = anyio.run(drive, f"{base}/mcp", pids, args)
        wall = time.perf_counter() - wall
        report(args, figures, idle, wall, load_before)
    finally:
        for proc in reversed(procs):
            stop(proc)


def report(args: argparse.Namespace, figures: dict[str, Any], idle: Snapshot, wall: float,
           load_before: tuple[float, float, float]) -> None:
    run: Run = figures["run"]
    latencies = sorted(run.latencies)
    n = len(latencies)
    warm: Snapshot = figures["with_sessions"]
    end: Snapshot = figures["at_end"]
    base: Snapshot = figures["baseline"]
    closed: Snapshot = figures["after_close"]
    growth = (end.rss_mib - warm.rss_mib) / warm.rss_mib
    timeline = figures["rss_timeline"] or [end.rss_mib]
    print(f"\nmcp-hub under load: {args.sessions} sessions, {n} measured calls, mix of echo/add on "
          f"2 Streamable HTTP + 1 stdio upstreams")
    print(f"  throughput   {n / figures['elapsed']:.0f} calls/s over {figures['elapsed']:.1f}s "
          f"(whole run incl. start-up {wall:.0f}s)")
    print(f"  latency      p50 {latencies[n // 2] * 1000:.1f} ms   p99 {latencies[int(n * 0.99) - 1] * 1000:.1f} ms   "
          f"max {latencies[-1] * 1000:.0f} ms   mean {statistics.mean(latencies) * 1000:.1f} ms")
    print(f"  errors       {len(run.errors)}" + (f"  e.g. {run.errors[0]}" if run.errors else ""))
    print(f"  gateway      idle, before any call: {idle}")
    print(f"               after the warm-up, its sessions closed: {base}")
    print(f"               measured phase, {args.sessions} sessions open: {warm}")
    print(f"               at the end of it: {end}")
    print(f"               its sessions closed: {closed}")
    cpu = figures["cpu_ms_per_call"]
    print("  CPU per call " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items()))
    print(f"  RSS          after warm-up {warm.rss_mib:.0f} MiB -> end {end.rss_mib:.0f} MiB ({growth:+.1%}; "
          f"{'flat' if abs(growth) <= 0.10 else 'NOT flat'} within 10%), range during run "
          f"{min(timeline):.0f}-{max(timeline):.0f} MiB")
    # why: compared with the state after the warm-up, so pooled upstream connections opened once are not "leaks"
    leaks = [what for what, a, b in (("fds", base.fds, closed.fds), ("children", base.children, closed.children),
                                     ("threads", base.threads, closed.threads)) if b > a]
    print(f"  leaks        {'none' if not leaks else 'MORE ' + ', '.join(leaks) + ' than after the warm-up'} "
          f"(fds {base.fds}->{closed.fds}, children {base.children}->{closed.children}, "
          f"threads {base.threads}->{closed.threads}; idle before any call: {idle.fds} fds)")
    tasks = figures["tasks"]
    print(f"  asyncio tasks {tasks if tasks is not None else 'not available (/healthz reports no task count)'}")
    load_after = os.getloadavg()
    print(f"  load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at end (2 cores shared with "
          "the load generator and the upstreams)")


if __name__ == "__main__":
    main()
