"""`tools/call` load from wrk (a C HTTP load generator) instead of Python SDK clients.

The SDK clients of `bench/compare.load` cost 2.5 to 3.5 ms of CPU per call, more than the upstream or the
gateway, and they run on the same two cores: a direct run is bound by the load generator, and through the
gateway the load generator competes with what it measures. wrk replays the requests an SDK client sends on
a handshake-era session (`initialize` and `notifications/initialized` first, with the same headers; then
`tools/call` POSTs with fresh ids on C keep-alive connections), for a small fraction of that CPU, so the
ratio to direct shows the server side: the upstream, the gateway and Redis.

Every run checks one call's answer (a JSON-RPC result, not an error) before it starts, and counts non-2xx
answers and socket errors as errors. wrk must be on PATH (Debian: `apt-get install wrk`).
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx2
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request

_VERSION = "2025-11-25"


def _session(url: str, extra: dict[str, str]) -> dict[str, str]:
    """Open a handshake-era session as the SDK client does; the headers its calls carry."""
    headers = {**MCP_HEADERS, **extra}
    opened = httpx2.post(url, headers=headers, timeout=30, json=initialize_request(_VERSION, "wrk"))
    opened.raise_for_status()
    headers = {**headers, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": _VERSION}
    httpx2.post(url, headers=headers, timeout=30,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"}).raise_for_status()
    return headers


def _script(headers: dict[str, str], tool: str, payload: str) -> str:
    """A wrk Lua script: POST tools/call with these headers, a new id per request."""
    body = json.dumps({"jsonrpc": "2.0", "id": 0, "method": "tools/call",
                       "params": {"name": tool, "arguments": {"text": payload}}}, separators=(",", ":"))
    before, after = body.split('"id":0')
    lines = ['wrk.method = "POST"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines += ["local n = 0", "request = function()", "  n = n + 1",
              f"  return wrk.format(nil, nil, nil, {json.dumps(before)} .. '\"id\":' .. n .. {json.dumps(after)})",
              "end"]
    return "\n".join(lines) + "\n"


def _ms(out: str, percentile: int) -> float:
    """A latency percentile of wrk's `--latency` table, in ms (wrk writes 812.00us, 1.23ms, 2.01s, 1.50m)."""
    found = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", out, re.MULTILINE)
    if found is None:
        raise SystemExit(f"wrk printed no {percentile}% latency:\n{out}")
    return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[found.group(2)]


def load(url: str, tool: str, concurrency: int, seconds: float, payload: str,
         headers: dict[str, str] | None = None) -> dict[str, Any]:
    """C wrk connections calling `tool` for `seconds` on one session; the fields of `bench.compare.load`."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("--load wrk needs wrk on PATH (Debian: apt-get install wrk)")
    session = _session(url, headers or {})
    probe = httpx2.post(url, headers=session, timeout=30, json={
        "jsonrpc": "2.0", "id": "probe", "method": "tools/call", "params": {"name": tool, "arguments": {"text": payload}}})
    try:
        answer = answer_of(probe, "probe")
    except ValueError:
        answer = {}
    if "result" not in answer or answer["result"].get("isError"):
        raise SystemExit(f"{url}: a call does not succeed, nothing to measure: {probe.text[:200]}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_script(session, tool, payload))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", script.name, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        Path(script.name).unlink()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    calls = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {
        "calls": calls,
        "rate": rate,
        "p50": _ms(out, 50),
        "p99": _ms(out, 99),
        "errors": errors,
        "first_error": "non-2xx answers or socket errors (wrk's count)" if errors else "",
        "loadgen_cpu": cpu * 1000 / calls if calls else float("nan"),
    }
