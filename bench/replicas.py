"""Replicas without affinity: what shared sessions cost per call, and what a killed replica breaks.

    python bench/replicas.py                 # defaults: 8 sessions x 150 calls per setup
    python bench/replicas.py --sessions 4 --calls 100

One run, one machine, three setups measured in turn with the same load (handshake-era SDK sessions
calling the demo upstream's `echo`):

- `one, local`: one gateway, no `sessions:` (the baseline);
- `one, shared`: one gateway with `sessions: redis://...`;
- `three, shared`: three gateways behind HAProxy (round-robin, no stickiness), sessions shared.

For each: gateway CPU per call (user + system time of the gateway processes, not their upstreams or the
client, from /proc), Redis commands per call (`INFO commandstats`, all commands; the subscription's
own traffic included), and sessions adopted. Then the kill run: the same load through HAProxy, one
replica killed a third of the way in; every call is classed as ok, failed while in flight on the
killed replica (started before the kill, ended after it), or failed otherwise; a session "continued"
when it made successful calls after the kill without initializing again.

Figures are ratios within this run (the machine is shared): compare `shared` rows with `local`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gateway import RunningGateway, python_server, run_gateway  # noqa: E402
from tests.support.haproxy import run_haproxy  # noqa: E402
from tests.support.processes import redis_server  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def redis_commands(url: str) -> int:
    """Commands Redis has run (sum of `calls=` in INFO commandstats), with a raw RESP round trip."""
    host, port = url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port.split("/")[0])), timeout=5) as s:
        s.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n") or data.count(b"\r\n") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            header, _, rest = data.partition(b"\r\n")
            if header.startswith(b"$") and len(rest) >= int(header[1:]):
                break
    total = 0
    for line in data.decode().splitlines():
        if line.startswith("cmdstat_") and "calls=" in line:
            total += int(line.split("calls=", 1)[1].split(",", 1)[0])
    return total


def config(redis_url: str | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "upstreams": {"demo": python_server("tests.servers.demo_server", "--transport", "stdio")},
        "listen": {"max_sessions_per_consumer": 1000},
    }
    if redis_url is not None:
        cfg["sessions"] = redis_url
    return cfg


async def session_load(url: str, sessions: int, calls: int, log: list[tuple[int, float, float, bool]]) -> list[bool]:
    """`sessions` SDK sessions making `calls` calls each; appends (session, start, end, ok) per call.
    Returns, per session, whether it ended without an error at the protocol level."""
    finished = [False] * sessions

    async def one(index: int) -> None:
        http = httpx2.AsyncClient(timeout=30)
        with contextlib.suppress(Exception):
            async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
                await client.list_tools()
                for i in range(calls):
                    started = time.monotonic()
                    try:
                        result = await client.call_tool("demo__echo", {"text": f"{index}-{i}"})
                        ok = not result.is_error
                    except Exception:  # noqa: BLE001 - counted, the session goes on
                        ok = False
                    log.append((index, started, time.monotonic(), ok))
            finished[index] = True

    async with anyio.create_task_group() as tg:
        for index in range(sessions):
            tg.start_soon(one, index)
    return finished


def measure(name: str, url: str, gateways: list[RunningGateway], redis_url: str, sessions: int,
            calls: int) -> dict[str, Any]:
    anyio.run(session_load, url, 2, 5, [])  # warm-up: upstream sessions, listing caches
    cpu0 = sum(cpu_seconds(gw.proc.pid) for gw in gateways)
    redis0 = redis_commands(redis_url)
    log: list[tuple[int, float, float, bool]] = []
    started = time.monotonic()
    anyio.run(session_load, url, sessions, calls, log)
    wall = time.monotonic() - started
    cpu = sum(cpu_seconds(gw.proc.pid) for gw in gateways) - cpu0
    commands = redis_commands(redis_url) - redis0
    ok = sum(1 for entry in log if entry[3])
    adopted = sum(gw.log_text().count("adopted on replica") for gw in gateways)
    return {"setup": name, "calls": len(log), "ok": ok, "cpu_ms_per_call": 1000 * cpu / max(ok, 1),
            "redis_per_call": commands / max(ok, 1), "calls_per_s": ok / wall, "adopted": adopted}


@contextlib.contextmanager
def replicas(tmp: Path, redis_url: str | None, n: int, prefix: str) -> Iterator[list[RunningGateway]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(run_gateway(config(redis_url), tmp, wait_healthy=True, name=f"{prefix}{i}"))
               for i in range(n)]


def kill_run(tmp: Path, redis_url: str, sessions: int, calls: int) -> dict[str, Any]:
    with replicas(tmp, redis_url, 3, "kill") as gateways, \
            run_haproxy([(f"r{i}", gw.port) for i, gw in enumerate(gateways)], tmp / "kill-lb") as lb:
        log: list[tuple[int, float, float, bool]] = []
        killed_at: list[float] = []

        async def run() -> list[bool]:
            async def killer() -> None:
                while len(log) < sessions * calls // 3:  # noqa: ASYNC110 - polls a plain list the load fills
                    await anyio.sleep(0.01)
                gateways[2].proc.kill()
                killed_at.append(time.monotonic())

            async with anyio.create_task_group() as tg:
                tg.start_soon(killer)
                finished = await session_load(f"{lb.url}/mcp", sessions, calls, log)
            return finished

        finished = anyio.run(run)
        kill = killed_at[0]
        in_flight = [e for e in log if not e[3] and e[1] <= kill <= e[2]]
        other = [e for e in log if not e[3] and not (e[1] <= kill <= e[2])]
        continued = {e[0] for e in log if e[3] and e[1] > kill}
        return {"calls": len(log), "ok": sum(1 for e in log if e[3]), "failed_in_flight": len(in_flight),
                "failed_otherwise": len(other), "sessions": sessions, "sessions_continued": len(continued),
                "sessions_ended_cleanly": sum(finished)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--calls", type=int, default=150)
    args = parser.parse_args()
    os.environ.setdefault("PATH", "")
    os.environ["PATH"] += os.pathsep + "/usr/sbin"  # Debian's haproxy
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as name:
        tmp = Path(name)
        rows = []
        with redis_server(tmp) as redis_url:
            with replicas(tmp, None, 1, "local") as [gw]:
                rows.append(measure("one, local", gw.mcp, [gw], redis_url, args.sessions, args.calls))
            with replicas(tmp, redis_url, 1, "shared") as [gw]:
                rows.append(measure("one, shared", gw.mcp, [gw], redis_url, args.sessions, args.calls))
            with replicas(tmp, redis_url, 3, "three") as gateways, \
                    run_haproxy([(f"r{i}", gw.port) for i, gw in enumerate(gateways)], tmp) as lb:
                rows.append(measure("three, shared", f"{lb.url}/mcp", gateways, redis_url, args.sessions,
                                    args.calls))
            (tmp / "kill-lb").mkdir()
            killed = kill_run(tmp, redis_url, args.sessions, args.calls)
        base = rows[0]["cpu_ms_per_call"]
        print(f"\n{args.sessions} sessions x {args.calls} calls of demo__echo per setup")
        print(f"{'setup':<16}{'ok/calls':>12}{'CPU ms/call':>13}{'vs local':>10}{'Redis cmds/call':>17}"
              f"{'calls/s':>9}{'adopted':>9}")
        for row in rows:
            print(f"{row['setup']:<16}{row['ok']:>6}/{row['calls']:<5}{row['cpu_ms_per_call']:>13.3f}"
                  f"{row['cpu_ms_per_call'] / base:>10.2f}{row['redis_per_call']:>17.3f}{row['calls_per_s']:>9.0f}"
                  f"{row['adopted']:>9}")
        print("\nkill one of three replicas a third of the way through the load:")
        for key, value in killed.items():
            print(f"  {key:<24}{value}")


if __name__ == "__main__":
    main()
