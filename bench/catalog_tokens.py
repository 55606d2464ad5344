"""Context economy: what one big route's catalog costs, the compact catalog, and catalog search quality.

The route: GitHub (openapi_specs/github-api.json.gz), Stripe (stripe.json) and Slack (slack.json)
registered as OpenAPI upstreams plus `mcp-server-time`, all on /mcp of one real gateway process,
listed through a real MCP client (the SDK's, handshake mode). Prints:

- full catalog: tools, tokens (ceil(chars/4) of the compact JSON `tools/list` result) per upstream
  and in total, bytes, and the time of the first `tools/list`;
- compact catalog: a second gateway with `catalog: {max_tokens: 5000}` at the top level: its
  `tools/list` tokens and tools, the full catalog's tokens as the gateway itself measures them (admin
  API, compared with the client's count above), and the meta-tools at work through the gateway:
  the first `catalog_search` (which builds the caller's index), later searches (p50), a browse and
  a describe;
- search quality on bench/catalog_queries.yaml: recall@1/@5/@10 and MRR of `SearchIndex` and of a
  baseline in the same run (plain BM25 by bm25s over name + description: no stemming, no field
  weights), over all tasks, per kind, and on the two halves (even tasks: the ones the weights were
  tuned on; odd tasks: held out);
- the index's build time and p50 query time on the listed catalog;
- lossless schema compaction (`compact_tool`) of the full catalog: tokens before and after.

    .venv/bin/python bench/catalog_tokens.py [--queries bench/catalog_queries.yaml] [--no-compact-gateway]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import mcp.types
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.clients import sdk_session  # noqa: E402
from tests.support.gateway import run_gateway, wait_until  # noqa: E402

from mcp_hub.catalog.compact import compact_tool  # noqa: E402
from mcp_hub.catalog.search import SearchIndex, ToolDoc, tool_doc  # noqa: E402
from mcp_hub.catalog.tokens import listing_tokens, wire_json, wire_tool  # noqa: E402
from mcp_hub.catalog.view import exposed_name  # noqa: E402
from mcp_hub.upstreams.openapi import convert_source  # noqa: E402

SPECS = {
    "github": ROOT / "openapi_specs" / "github-api.json.gz",
    "stripe": ROOT / "openapi_specs" / "stripe.json",
    "slack": ROOT / "openapi_specs" / "slack.json",
}
SEPARATOR = "__"


def route_config(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The issue's route: three OpenAPI upstreams and the time server, no auth, on /mcp."""
    config: dict[str, Any] = {
        "upstreams": {"time": {"transport": "stdio", "command": str(Path(sys.executable).parent / "mcp-server-time"),
                               "args": ["--local-timezone", "UTC"]}},
        "openapi": {name: {"spec": str(path)} for name, path in SPECS.items()},
    }
    return config | (extra or {})


async def list_tools(url: str) -> tuple[list[mcp.types.Tool], float]:
    """Every tool of the route (following cursors) and the time of the first `tools/list` page.

    The SDK client's default cap on one SSE event (1 MiB) is lifted: the full catalog is one event
    of several MB (`default_client_refuses` reports what a client with the default does)."""
    transport = streamable_http_client(url, max_sse_event_size=None)
    async with Client(transport, mode="legacy", read_timeout_seconds=120) as client:
        started = time.perf_counter()
        result = await client.list_tools()
        first = time.perf_counter() - started
        tools = list(result.tools)
        while result.next_cursor:
            result = await client.list_tools(cursor=result.next_cursor)
            tools.extend(result.tools)
        return tools, first


async def default_client_refuses(url: str) -> str:
    """What the SDK client with its default settings makes of the listing: "ok" or the error."""
    try:
        async with sdk_session(url, mode="legacy", read_timeout_seconds=120) as client:
            await client.list_tools()
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        return f"refused: {exc}"
    return "ok"


def listed(config: dict[str, Any], tmp: Path, name: str) -> tuple[list[mcp.types.Tool], float, str]:
    with run_gateway(config, tmp, name=name) as gateway:
        wait_until(lambda: gateway.health()["status"] == "ok", timeout=180, what="all upstreams up")
        tools, first = anyio.run(list_tools, gateway.mcp)
        return tools, first, anyio.run(default_client_refuses, gateway.mcp)


def upstream_of(name: str) -> str:
    return name.split(SEPARATOR, 1)[0] if SEPARATOR in name else ""


def print_catalog(tools: list[mcp.types.Tool], first: float) -> list[dict[str, Any]]:
    wire = [wire_tool(t) for t in tools]
    by_upstream: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tool in wire:
        by_upstream[upstream_of(tool["name"])].append(tool)
    print(f"{'upstream':10} {'tools':>6} {'tokens':>10} {'tokens/tool':>11}")
    for upstream, group in sorted(by_upstream.items()):
        tokens = listing_tokens(group)
        print(f"{upstream:10} {len(group):6} {tokens:10,} {tokens / len(group):11,.0f}")
    total = listing_tokens(wire)
    size = len(wire_json({"tools": wire}).encode())
    print(f"{'total':10} {len(wire):6} {total:10,}   ({size / 1e6:.1f} MB of JSON; first tools/list {first:.2f} s)")
    return wire


# -- search quality ---------------------------------------------------------------------------


def tool_docs(tools: list[mcp.types.Tool]) -> list[ToolDoc]:
    """ToolDocs of the listed tools, with tags and paths from converting the same documents here."""
    operations: dict[str, tuple[tuple[str, ...], str]] = {}
    for upstream, path in SPECS.items():
        converted = convert_source(str(path))
        for binding in converted.bindings.values():
            exposed = exposed_name(upstream, SEPARATOR, binding.tool_name)
            operations[exposed] = (binding.tags, f"{binding.method} {binding.path}")
    docs = []
    unmatched = [t.name for t in tools if upstream_of(t.name) in SPECS and t.name not in operations]
    if unmatched:
        raise SystemExit(f"listed OpenAPI tools not found by converting the documents: {', '.join(unmatched[:10])}")
    for tool in tools:
        tags, path = operations.get(tool.name, ((), ""))
        docs.append(tool_doc(tool, upstream=upstream_of(tool.name) or tool.name, tags=tags, path=path))
    return docs


class Baseline:
    """Plain BM25 (bm25s defaults: lowercase words, English stop words, no stemming) over each
    tool's name (separators as spaces) and description; one field, no weights."""

    def __init__(self, docs: Sequence[ToolDoc]) -> None:
        import bm25s

        self._bm25s = bm25s
        self.names = [d.name for d in docs]
        corpus = [f"{d.name.replace('_', ' ').replace('-', ' ')} {d.description}" for d in docs]
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, limit: int = 10) -> list[str]:
        tokens = self._bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return []
        results, scores = self.retriever.retrieve(tokens, k=min(limit, len(self.names)), show_progress=False)
        return [self.names[i] for i, s in zip(results[0], scores[0], strict=True) if s > 0]


def quality(ranked: list[list[str]], tasks: list[dict[str, Any]]) -> dict[str, float]:
    out = {"r@1": 0.0, "r@5": 0.0, "r@10": 0.0, "mrr": 0.0}
    for names, task in zip(ranked, tasks, strict=True):
        rank = next((i + 1 for i, n in enumerate(names[:10]) if n in task["expect"]), None)
        if rank:
            out["mrr"] += 1 / rank
            out["r@1"] += rank == 1
            out["r@5"] += rank <= 5
            out["r@10"] += rank <= 10
    return {k: v / len(tasks) for k, v in out.items()} if tasks else out


def print_quality(tools: list[mcp.types.Tool], queries: Path) -> None:
    tasks = yaml.safe_load(queries.read_text())["tasks"]
    names = {t.name for t in tools}
    missing = sorted({e for task in tasks for e in task["expect"] if e not in names})
    if missing:
        raise SystemExit(f"{queries}: expected tools not in the listed catalog: {', '.join(missing)}")
    started = time.perf_counter()
    docs = tool_docs(tools)
    doc_seconds = time.perf_counter() - started
    started = time.perf_counter()
    index = SearchIndex(docs)
    build = time.perf_counter() - started
    ours: list[list[str]] = []
    times = []
    for task in tasks:
        t0 = time.perf_counter()
        hits = index.search(task["query"], limit=10)
        times.append(time.perf_counter() - t0)
        ours.append([h.name for h in hits])
    started = time.perf_counter()
    baseline = Baseline(docs)
    base_build = time.perf_counter() - started
    theirs = [baseline.search(task["query"], 10) for task in tasks]
    print(f"\nsearch quality: {len(tasks)} tasks ({queries.relative_to(ROOT) if queries.is_relative_to(ROOT) else queries}) "
          f"over {len(docs)} tools")
    subsets: list[tuple[str, list[int]]] = [("all", list(range(len(tasks)))),
                                            ("tuned half", list(range(0, len(tasks), 2))),
                                            ("held-out half", list(range(1, len(tasks), 2)))]
    for kind in sorted({t.get("kind", "plain") for t in tasks}):
        subsets.append((f"kind {kind}", [i for i, t in enumerate(tasks) if t.get("kind", "plain") == kind]))
    print(f"{'subset':16} {'n':>4}  {'engine':9} {'r@1':>6} {'r@5':>6} {'r@10':>6} {'MRR':>6}")
    for label, rows in subsets:
        sub = [tasks[i] for i in rows]
        for engine, ranked in (("index", ours), ("bm25", theirs)):
            q = quality([ranked[i] for i in rows], sub)
            print(f"{label:16} {len(rows):4}  {engine:9} {q['r@1']:6.3f} {q['r@5']:6.3f} {q['r@10']:6.3f} {q['mrr']:6.3f}")
    print(f"index build {build * 1000:.0f} ms for {len(docs)} tools (+{doc_seconds:.2f} s converting the documents "
          f"for tags/paths); query p50 {statistics.median(times) * 1000:.2f} ms, max {max(times) * 1000:.2f} ms; "
          f"baseline build {base_build * 1000:.0f} ms")
    print("targets: r@5 >= 0.6, r@10 >= 0.8 (index, all tasks)")


def print_compaction(wire: list[dict[str, Any]]) -> None:
    started = time.perf_counter()
    compacted = [compact_tool(t) for t in wire]
    seconds = time.perf_counter() - started
    print("\nlossless schema compaction (compact_tool, no description cap):")
    for upstream in sorted({upstream_of(t["name"]) for t in wire}):
        before = listing_tokens([t for t in wire if upstream_of(t["name"]) == upstream])
        after = listing_tokens([t for t in compacted if upstream_of(t["name"]) == upstream])
        print(f"  {upstream:10} {before:10,} -> {after:10,} tokens ({(before - after) / before:6.2%} saved)")
    before, after = listing_tokens(wire), listing_tokens(compacted)
    print(f"  {'total':10} {before:10,} -> {after:10,} tokens ({(before - after) / before:6.2%} saved) in {seconds:.2f} s")
    capped = [compact_tool(t, max_description=200) for t in wire]
    print(f"  with a 200-character description cap (lossy, optional): {listing_tokens(capped):,} tokens")


ADMIN_KEY = "catalog-bench-admin-key-0123456789"


async def use_meta_tools(url: str) -> dict[str, Any]:
    """The compact listing, then the meta-tools as an agent would use them, timed."""
    out: dict[str, Any] = {}
    transport = streamable_http_client(url, max_sse_event_size=None)
    async with Client(transport, mode="legacy", read_timeout_seconds=120) as client:
        started = time.perf_counter()
        out["tools"] = (await client.list_tools()).tools
        out["first_list"] = time.perf_counter() - started
        started = time.perf_counter()
        first = await client.call_tool("catalog_search", {"query": "fork a repository"})
        out["first_search"] = time.perf_counter() - started
        out["first_hits"] = [h["name"] for h in (first.structured_content or {}).get("tools", [])][:3]
        times = []
        for query in ("refund a charge", "post a message to a channel", "list open pull requests",
                      "current time in Tokyo", "create a customer", "archive a channel", "star a gist"):
            started = time.perf_counter()
            await client.call_tool("catalog_search", {"query": query})
            times.append(time.perf_counter() - started)
        out["search_p50"] = statistics.median(times)
        browse = await client.call_tool("catalog_browse", {})
        out["toolsets"] = len((browse.structured_content or {}).get("toolsets", []))
        started = time.perf_counter()
        described = await client.call_tool("catalog_describe", {"names": out["first_hits"][:1]})
        out["describe"] = time.perf_counter() - started
        out["described"] = [t["name"] for t in (described.structured_content or {}).get("tools", [])]
        now = await client.call_tool("catalog_call", {"name": "time__get_current_time",
                                                      "arguments": {"timezone": "UTC"}})
        out["call_ok"] = not now.is_error
    return out


def print_compact(tmp: Path, client_tokens: int) -> None:
    import hashlib

    import httpx2

    config = route_config({"catalog": {"max_tokens": 5000},
                           "admin": {"keys": [{"name": "bench",
                                               "sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}]}})
    with run_gateway(config, tmp, name="compact") as gateway:
        wait_until(lambda: gateway.health()["status"] == "ok", timeout=180, what="all upstreams up")
        used = anyio.run(use_meta_tools, gateway.mcp)
        report = httpx2.get(f"{gateway.url}/admin/catalog", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                            timeout=300).json()["routes"]["/mcp"]["catalog"]
    compact_wire = [wire_tool(t) for t in used["tools"]]
    print(f"\ncompact catalog (catalog: {{max_tokens: 5000}}): {len(compact_wire)} tools, "
          f"{listing_tokens(compact_wire):,} tokens (target <= 5,000); first tools/list {used['first_list']:.2f} s; "
          f"tools: {', '.join(t['name'] for t in compact_wire)}")
    same = "equal" if report["tokens"] == client_tokens else f"client counted {client_tokens:,}"
    print(f"  the gateway's own measure (admin API): full {report['tokens']:,} tokens ({same}), listed "
          f"{report['listed_tokens']:,}, compact {report['compact']}")
    print(f"  first catalog_search (builds the index) {used['first_search']:.2f} s, top hits "
          f"{', '.join(used['first_hits'])}; later searches p50 {used['search_p50'] * 1000:.1f} ms; "
          f"catalog_browse: {used['toolsets']} toolsets; catalog_describe {used['describe'] * 1000:.1f} ms "
          f"({', '.join(used['described'])}); catalog_call time__get_current_time ok: {used['call_ok']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=Path, default=ROOT / "bench" / "catalog_queries.yaml")
    parser.add_argument("--no-compact-gateway", action="store_true", help="skip the second (compact) gateway")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mcp-hub-catalog-tokens-"))
    print("full catalog (GitHub + Stripe + Slack + time on /mcp):")
    tools, first, default_client = listed(route_config(), tmp, "full")
    wire = print_catalog(tools, first)
    print(f"the SDK client with its default 1 MiB SSE event cap: {default_client}")
    if not args.no_compact_gateway:
        print_compact(tmp, listing_tokens(wire))
    print_quality(tools, args.queries)
    print_compaction(wire)


if __name__ == "__main__":
    main()
