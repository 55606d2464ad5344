"""Serialized listings: tools/list of a big catalog, steady and right after a change, and a big real route.

Three measurements, each on real gateway processes over Streamable HTTP (raw HTTP, so no client-side
parsing is charged to the gateway; a request's time ends when its whole body has arrived):

1. 5,000 visible tools: one upstream process (tests/servers/many_tools.py, 5,000 tools over Streamable
   HTTP) behind the gateway, API keys in two groups. tools/list p50/p99 on a handshake-era session
   (2025-11-25) and as stateless 2026-07-28 requests, interleaved between the targets.
2. The first tools/list after a catalog change: a small OpenAPI document registered (then removed)
   through the admin API, and the next tools/list of the same session timed; several rounds.
3. The issue's big route: GitHub (1,223 operations), Stripe (452), Slack (174) from openapi_specs/
   plus mcp-server-time on /mcp: time from process start to ready (/healthz polled every 10 ms), and the
   first tools/list right after it (a handshake-era session, then a 2026-07-28 request).

With `--baseline CHECKOUT` (e.g. `git worktree add /tmp/catalog-baseline <commit>`), the other
checkout's gateway is measured in the same run, and the ratios baseline/this are printed.
The policy path per tools/call (in-process) follows at the end.

    .venv/bin/python bench/catalog.py [--baseline /tmp/catalog-baseline] [--tools 5000] [--requests 60]
        [--changes 8] [--no-big-route]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import stop, wait_for_port  # noqa: E402
from tests.support.rpc import MCP_HEADERS, answer_of, initialize_request  # noqa: E402
from tests.support.tools import free_port  # noqa: E402

from bench.proc import rss_mib, wait_gateway_ready  # noqa: E402
from mcp_hub.auth.identity import Consumer  # noqa: E402
from mcp_hub.auth.keys import new_api_key  # noqa: E402

HANDSHAKE, MODERN = "2025-11-25", "2026-07-28"
SPECS = {
    "github": ROOT / "openapi_specs" / "github-api.json.gz",
    "stripe": ROOT / "openapi_specs" / "stripe.json",
    "slack": ROOT / "openapi_specs" / "slack.json",
}
CHANGE_BASE_URL = "http://127.0.0.1:9/api"
_ENVELOPE = {"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {},
             "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"}}


class Listing:
    """One caller of one gateway: a handshake-era session (opened on first use) or 2026-07-28 requests."""

    def __init__(self, url: str, key: str, era: str) -> None:
        self.url, self.era = url, era
        self.http = httpx2.Client(timeout=120)
        self.headers = {**MCP_HEADERS, "Mcp-Protocol-Version": era}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.ids = 10
        if era == HANDSHAKE:
            init = self.http.post(url, json=initialize_request(era, "bench"), headers=self.headers)
            self.headers["Mcp-Session-Id"] = init.headers["mcp-session-id"]
            self.http.post(url, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        else:
            self.headers["Mcp-Method"] = "tools/list"

    def list_tools(self) -> tuple[float, httpx2.Response]:
        """One tools/list round trip: seconds until the whole answer arrived, and the response."""
        self.ids += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.ids, "method": "tools/list"}
        if self.era == MODERN:
            body["params"] = {"_meta": _ENVELOPE}
        started = time.perf_counter()
        response = self.http.post(self.url, headers=self.headers, json=body)
        return time.perf_counter() - started, response

    def count(self, response: httpx2.Response) -> tuple[int, int]:
        """(tools in the answer, bytes of the answer), read after timing."""
        answer = answer_of(response, self.ids)
        if "result" not in answer:
            raise SystemExit(f"tools/list failed: {json.dumps(answer)[:300]}")
        return len(answer["result"]["tools"]), len(response.content)

    def close(self) -> None:
        if self.era == HANDSHAKE:
            self.http.delete(self.url, headers=self.headers)
        self.http.close()


def _start(tmp: Path, name: str, config: dict[str, Any], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcp_hub.cli", "serve", "-c", str(tmp / f"{name}.yaml"), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115
        start_new_session=True)
    return proc, port


def _envs(baseline: Path | None) -> dict[str, dict[str, str]]:
    """Each target's environment: its checkout's package first on the path, so `-m mcp_hub.cli` runs its code."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = {"mcp-hub": dict(env, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}")}
    if baseline is not None:
        out["baseline"] = dict(env, PYTHONPATH=f"{baseline.resolve() / 'src'}:{ROOT}")
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def _change_document(number: int) -> dict[str, Any]:
    return {"openapi": "3.0.3", "info": {"title": f"change {number}", "version": "1"},
            "paths": {f"/ping{number}": {"get": {"operationId": f"ping{number}", "summary": "Ping the service.",
                                                 "responses": {"200": {"description": "ok"}}}}}}


def big_listing(args: argparse.Namespace, tmp: Path, envs: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Measurements 1 and 2 for every target; figures per target."""
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.many_tools", "--count", str(args.tools), "--port", str(up_port)],
        cwd=ROOT, env=envs["mcp-hub"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    all_key, all_hash = new_api_key()
    some_key, some_hash = new_api_key()
    admin_key, admin_hash = new_api_key()
    config = {
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": "alice", "groups": ["all"], "sha256": all_hash},
            {"consumer": "bob", "groups": ["some"], "sha256": some_hash}]},
        "admin": {"keys": [{"name": "bench", "sha256": admin_hash}], "allowed_base_urls": [CHANGE_BASE_URL]},
        "upstreams": {"up": {"transport": "streamable-http", "url": f"http://127.0.0.1:{up_port}/mcp",
                             "health_interval": 60}},
        "default_acl": "deny",
        "groups": {"all": {"tools": {"allow": ["*"]}},
                   "some": {"tools": {"allow": ["up__tool_00*", "up__tool_1*"], "deny": ["*1"]}}},
    }
    gateways: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    figures: dict[str, dict[str, float]] = {name: {} for name in envs}
    try:
        wait_for_port(up_port, proc=upstream, timeout=120)
        for name, env in envs.items():
            gateways[name] = _start(tmp, f"list-{name}", config, env)
        for proc, port in gateways.values():
            wait_gateway_ready(port, proc, timeout=180)
        urls = {name: f"http://127.0.0.1:{port}/mcp" for name, (_, port) in gateways.items()}
        callers = {(name, era): Listing(urls[name], all_key, era) for name in envs for era in (HANDSHAKE, MODERN)}
        # the first tools/list of the process (every cache cold), then the steady state, interleaved
        for (name, era), caller in callers.items():
            first, response = caller.list_tools()
            count, size = caller.count(response)
            figures[name][f"cold {era}"] = first * 1000
            figures[name]["tools"], figures[name]["bytes"] = count, size
        times: dict[tuple[str, str], list[float]] = {key: [] for key in callers}
        for _ in range(args.requests):
            for key, caller in callers.items():
                times[key].append(caller.list_tools()[0])
        for (name, era), values in times.items():
            figures[name][f"p50 {era}"] = _pct(values, 0.5)
            figures[name][f"p99 {era}"] = _pct(values, 0.99)
        some = {name: Listing(urls[name], some_key, HANDSHAKE) for name in envs}
        for name, caller in some.items():
            figures[name]["group some tools"] = caller.count(caller.list_tools()[1])[0]
        # measurement 2: change the catalog (register / remove through the admin API), then list
        changes: dict[str, list[float]] = {name: [] for name in envs}
        admin_ms: dict[str, list[float]] = {name: [] for name in envs}
        for number in range(args.changes):
            for name, (_, port) in gateways.items():
                admin = f"http://127.0.0.1:{port}/admin/openapi"
                headers = {"Authorization": f"Bearer {admin_key}"}
                started = time.perf_counter()
                if number % 2 == 0:
                    r = httpx2.post(admin, headers=headers, timeout=60, json={
                        "name": "change", "document": _change_document(number), "base_url": CHANGE_BASE_URL})
                else:
                    r = httpx2.delete(f"{admin}/change", headers=headers, timeout=60)
                admin_ms[name].append(time.perf_counter() - started)
                if r.status_code >= 300:
                    raise SystemExit(f"{name}: admin change failed: {r.status_code} {r.text[:300]}")
                caller = callers[(name, HANDSHAKE)]
                elapsed, response = caller.list_tools()
                expected = args.tools + (1 if number % 2 == 0 else 0)
                if caller.count(response)[0] != expected:
                    raise SystemExit(f"{name}: the listing after change {number} does not show it")
                changes[name].append(elapsed)
        for name in envs:
            figures[name]["after change p50"] = _pct(changes[name], 0.5)
            figures[name]["after change max"] = max(changes[name]) * 1000
            figures[name]["admin change p50"] = _pct(admin_ms[name], 0.5)
            figures[name]["rss"] = rss_mib(gateways[name][0].pid)
        for caller in [*callers.values(), *some.values()]:
            caller.close()
    finally:
        for proc, _ in gateways.values():
            stop(proc)
        stop(upstream)
    return figures


def big_route(tmp: Path, envs: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Measurement 3, one target at a time (the machine's two cores for it alone)."""
    config = {
        "upstreams": {"time": {"transport": "stdio", "command": str(Path(sys.executable).parent / "mcp-server-time"),
                               "args": ["--local-timezone", "UTC"]}},
        "openapi": {name: {"spec": str(path)} for name, path in SPECS.items()},
    }
    figures: dict[str, dict[str, float]] = {}
    for name, env in envs.items():
        started = time.perf_counter()
        proc, port = _start(tmp, f"route-{name}", config, env)
        try:
            _ready_now(port, proc, timeout=300)
            ready = time.perf_counter() - started
            url = f"http://127.0.0.1:{port}/mcp"
            out: dict[str, float] = {"ready s": ready}
            for era in (HANDSHAKE, MODERN):
                caller = Listing(url, "", era)
                first, response = caller.list_tools()
                out[f"first {era}"] = first * 1000
                out["tools"], out["bytes"] = caller.count(response)
                out[f"second {era}"] = caller.list_tools()[0] * 1000
                caller.close()
            out["rss"] = rss_mib(proc.pid)
            figures[name] = out
        finally:
            stop(proc)
    return figures


def _ready_now(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until the gateway reports every upstream up, polling every 10 ms: the listing that follows comes
    as soon as a client could send it (before the gateway has prepared its listings in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json().get("status") == "ok":
                return
        except (httpx2.HTTPError, ValueError):
            pass
        time.sleep(0.01)
    raise SystemExit(f"the gateway's upstreams did not come up within {timeout:g}s")


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
    arguments = {"text": "x" * 100}

    async def run() -> tuple[float, float]:
        t0 = time.perf_counter()
        for _ in range(iterations):
            pass
        base = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(iterations):
            decision = access.decide(consumer, "tool", tool.name, "up01")
            record = CallRecord(consumer, tool.name, "up01", decision.allowed, decision.rule, arguments=arguments)
            await meter.admit(record)
            await meter.settle(record, CallOutcome.OK, result=result)
        return (time.perf_counter() - t0) / iterations * 1e6, base / iterations * 1e6

    return anyio.run(run)


def _table(title: str, figures: dict[str, dict[str, float]], rows: list[tuple[str, str, str | None]]) -> None:
    """Rows (label, figure key, target) per target, with baseline/this ratios when both ran."""
    names = list(figures)
    print(f"\n{title}")
    print(f"  {'':<44}" + "".join(f"{n:>14}" for n in names) + ("   baseline/this" if "baseline" in names else ""))
    for label, key, target in rows:
        values = [figures[n].get(key, float("nan")) for n in names]
        line = f"  {label:<44}" + "".join(f"{v:>14.1f}" for v in values)
        if "baseline" in names and figures["mcp-hub"].get(key):
            line += f"   {figures['baseline'][key] / figures['mcp-hub'][key]:>8.1f}x"
        if target:
            line += f"   (target {target})"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="also measure the gateway of another checkout (e.g. a git worktree of an earlier commit)")
    parser.add_argument("--tools", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--changes", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--no-big-route", action="store_true", help="skip the GitHub+Stripe+Slack+time route")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-catalog-"))
    envs = _envs(args.baseline)
    listing = big_listing(args, tmp, envs)
    some = int(listing["mcp-hub"]["group some tools"])
    print(f"1,2. one upstream of {args.tools} tools (tools/list answer {listing['mcp-hub']['bytes'] / 1e6:.2f} MB, "
          f"{int(listing['mcp-hub']['tools'])} tools for group `all`, {some} for group `some`); "
          f"{args.requests} interleaved requests per target and era; load {os.getloadavg()[0]:.2f}")
    _table("tools/list, ms", listing, [
        ("first of the process, 2025-11-25 session", f"cold {HANDSHAKE}", None),
        ("first of the process, 2026-07-28", f"cold {MODERN}", None),
        ("p50, 2025-11-25 session", f"p50 {HANDSHAKE}", "<= 5"),
        ("p99, 2025-11-25 session", f"p99 {HANDSHAKE}", None),
        ("p50, 2026-07-28", f"p50 {MODERN}", "<= 5"),
        ("p99, 2026-07-28", f"p99 {MODERN}", None),
        (f"first after a change, p50 of {args.changes}", "after change p50", "<= 50"),
        (f"first after a change, max of {args.changes}", "after change max", None),
        ("the admin request making the change, p50", "admin change p50", None),
        ("gateway RSS, MB", "rss", None),
    ])
    if not args.no_big_route:
        route = big_route(tmp, envs)
        tools, size = int(route["mcp-hub"]["tools"]), route["mcp-hub"]["bytes"]
        print(f"\n3. GitHub + Stripe + Slack + time on /mcp: {tools} tools, tools/list answer {size / 1e6:.1f} MB")
        _table("from process start, s / ms", route, [
            ("start to ready (all upstreams up), s", "ready s", None),
            ("first tools/list, 2025-11-25 session, ms", f"first {HANDSHAKE}", "< 500"),
            ("next tools/list, 2025-11-25 session, ms", f"second {HANDSHAKE}", None),
            ("first tools/list, 2026-07-28, ms", f"first {MODERN}", None),
            ("next tools/list, 2026-07-28, ms", f"second {MODERN}", None),
            ("gateway RSS, MB", "rss", None),
        ])
    per_call, base = policy_path(args.iterations)
    print(f"\npolicy path per tools/call (ACL + admit + charge + cost + metrics + audit line): {per_call:.1f} us "
          f"(empty loop {base:.2f} us; target < 200 us)")


if __name__ == "__main__":
    main()
