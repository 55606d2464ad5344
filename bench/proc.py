"""What the benchmarks share: process figures from /proc, waiting for a gateway, interleaved measuring."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
from tests.support.processes import wait_for_http


def rss_mib(pid: int) -> float:
    """Resident set size in MiB (NaN once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_gateway_ready(port: int, proc: Any, timeout: float) -> None:
    """Wait until the gateway on `port` answers /healthz and reports every upstream up."""
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc, timeout=timeout)
    deadline = time.monotonic() + timeout
    while httpx2.get(f"http://127.0.0.1:{port}/healthz").json()["status"] != "ok":
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway's upstreams did not come up within {timeout:g}s")
        time.sleep(0.2)


def measure(
    targets: dict[str, tuple[str, str, int]],
    run: Callable[[str, str, int], dict[str, Any]],
    rounds: int,
    concurrency: list[int],
    upstream_pid: int | None = None,
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Interleaved rounds: every target at every concurrency, `run(url, tool, C)` each time, with the
    target process's CPU per call and RSS added to each result, and the upstream's CPU per call
    (`upstream_pid`). The load generator's own CPU per call is the load's (`loadgen_cpu`)."""
    results: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for c in concurrency:
            for name, (url, tool, pid) in targets.items():
                cpu0 = cpu_seconds(pid)
                up0 = cpu_seconds(upstream_pid) if upstream_pid is not None else 0.0
                r = run(url, tool, c)
                calls = max(r["calls"], 1)
                r["cpu_ms_per_call"] = (cpu_seconds(pid) - cpu0) * 1000 / calls
                if upstream_pid is not None:
                    r["upstream_cpu"] = (cpu_seconds(upstream_pid) - up0) * 1000 / calls
                r["rss"] = rss_mib(pid)
                results.setdefault((name, c), []).append(r)
    return results


def aggregate(runs: list[dict[str, Any]]) -> dict[str, float]:
    """One target's rounds at one concurrency: mean rate and CPU, median p50, worst p99, all errors, peak RSS."""
    extra = {key: statistics.mean(r[key] for r in runs) for key in ("loadgen_cpu", "upstream_cpu")
             if all(key in r for r in runs)}
    return {
        **extra,
        "rate": statistics.mean(r["rate"] for r in runs),
        "p50": statistics.median(r["p50"] for r in runs),
        "p99": max(r["p99"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "cpu": statistics.mean(r["cpu_ms_per_call"] for r in runs),
        "rss": max(r["rss"] for r in runs),
    }
