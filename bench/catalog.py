"""Catalog size: 5,000 tools across 50 upstreams, tools/list for one group, and the policy path.

One upstream process serves 100 tools over Streamable HTTP; the gateway connects to it 50 times
under 50 prefixes (50 upstream sessions, 5,000 exposed tools) with ACL rules for two groups.
Prints: tools/list time per request for each group (first and repeated), the gateway's RSS before
and after, and the added cost of the policy path per tools/call measured in-process.

    .venv/bin/python bench/catalog.py [--upstreams 50] [--tools 100] [--requests 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import stop, wait_for_port  # noqa: E402
from tests.support.tools import free_port  # noqa: E402

from bench.proc import rss_mib, wait_gateway_ready  # noqa: E402
from mcp_hub.auth.identity import Consumer  # noqa: E402
from mcp_hub.auth.keys import new_api_key  # noqa: E402


def list_tools(url: str, key: str) -> tuple[float, int]:
    """One session: initialize, then time a tools/list round trip (raw HTTP, so no client-side parsing
    cost is charged to the gateway)."""
    headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {key}",
               "Content-Type": "application/json"}
    with httpx2.Client(timeout=60) as http:
        init = http.post(url, headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "0"}}})
        sid = init.headers["mcp-session-id"]
        headers |= {"Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}
        http.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        t0 = time.perf_counter()
        r = http.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
        elapsed = time.perf_counter() - t0
        http.delete(url, headers=headers)  # end the session, as a client leaving would
        return elapsed, r.text.count('"name":"')


def policy_path(iterations: int) -> tuple[float, float]:
    """Per-call cost of ACL decision + budget admit/charge + cost + metrics + audit, in microseconds,
    against an empty loop."""
    import anyio
    import mcp_types as types

    from mcp_hub.config.policy import PolicyConfig
    from mcp_hub.core.access import Access
    from mcp_hub.metering.meter import Meter
    from mcp_hub.metering.observability import configure_logging
    from mcp_hub.metering.record import CallOutcome, CallRecord

    configure_logging(json=True, stream=open(os.devnull, "w"))  # noqa: SIM115 - lives for the run
    policy = PolicyConfig.model_validate({
        "default_acl": "deny",
        "groups": {"dev": {"tools": {"allow": ["up0*__*"], "deny": ["up00__tool_0001"]},
                           "budgets": [{"tokens": 10**12, "window": "1 hour"}]}},
    })
    access, meter = Access(policy), Meter(policy)
    consumer = Consumer("alice", ("dev",))
    tool = types.Tool(name="up01__tool_0002", input_schema={"type": "object"})
    result = types.CallToolResult(content=[types.TextContent(type="text", text="x" * 100)]).model_dump(
        by_alias=True, mode="json", exclude_none=True)
    args = {"text": "x" * 100}

    async def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        for _ in range(iterations):
            pass
        base = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(iterations):
            decision = access.decide(consumer, "tool", tool.name, "up01")
            record = CallRecord(consumer, tool.name, "up01", decision.allowed, decision.rule, arguments=args)
            await meter.admit(record)
            await meter.settle(record, CallOutcome.OK, result=result)
        return (time.perf_counter() - t0) / iterations * 1e6, base / iterations * 1e6

    return anyio.run(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstreams", type=int, default=50)
    parser.add_argument("--tools", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=20000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-catalog-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    up_port, gw_port = free_port(), free_port()
    dev_key, dev_hash = new_api_key()
    admin_key, admin_hash = new_api_key()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.many_tools", "--count", str(args.tools), "--port", str(up_port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    config = {
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": "alice", "groups": ["dev"], "sha256": dev_hash},
            {"consumer": "root", "groups": ["admin"], "sha256": admin_hash}]},
        "upstreams": {f"up{i:02d}": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                                     "health_interval": 60}
                      for i in range(args.upstreams)},
        "default_acl": "deny",
        "groups": {"dev": {"tools": {"allow": ["up0*__*", "up1*__tool_00*"], "deny": ["*__tool_0001"]}},
                   "admin": {"tools": {"allow": ["*"]}}},
    }
    (tmp / "gw.yaml").write_text(yaml.safe_dump(config))
    gateway = subprocess.Popen(
        [sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(tmp / "gw.yaml"), "--port", str(gw_port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "gw.log", "wb"), start_new_session=True)
    try:
        wait_for_port(up_port, proc=upstream)
        wait_gateway_ready(gw_port, gateway, timeout=120)
        rss_before = rss_mib(gateway.pid)
        url = f"http://127.0.0.1:{gw_port}/mcp"
        print(f"{args.upstreams} upstreams x {args.tools} tools = {args.upstreams * args.tools} tools; "
              f"gateway RSS after connecting: {rss_before:.0f} MB")
        for group, key in (("dev", dev_key), ("admin", admin_key)):
            first, count = list_tools(url, key)
            times = [list_tools(url, key)[0] for _ in range(args.requests)]
            print(f"tools/list for group {group:<6} {count:>5} tools visible: first {first * 1000:7.1f} ms, "
                  f"then p50 {statistics.median(times) * 1000:7.1f} ms, max {max(times) * 1000:7.1f} ms")
        print(f"gateway RSS after the listings: {rss_mib(gateway.pid):.0f} MB")
    finally:
        stop(gateway)
        stop(upstream)
    per_call, base = policy_path(args.iterations)
    print(f"policy path per tools/call (ACL + admit + charge + cost + metrics + audit line): {per_call:.1f} us "
          f"(empty loop {base:.2f} us; target < 200 us)")


if __name__ == "__main__":
    main()
