"""The context economy: what a route's tool catalog costs each caller, and the compact catalog past a budget.

Every tool `tools/list` returns is paid for from the model's context on every turn. For each route and
group set the gateway measures the listing as the client receives it (`catalog.counter`, the estimate by
default). Within `catalog.max_tokens` nothing changes. Over it, the caller's listing is the compact
catalog: the `always` tools it may see, plus four meta-tools that reach everything else it may use:

    browse    the toolsets (upstream, then the document's tag or path) with one line and a tool count each
    search    ranked search (catalog/search.py) over the tools the caller may see
    describe  full schemas of named tools
    call      any tool the caller may call, by its exposed name, through the one tools/call path

Everything here starts from `Gateway.visible_tools` (the ACL's listing for the caller's group set), so a
meta-tool finds, describes and calls only what the caller may see, and a hidden tool is unknown exactly
as a missing one. A plan (measure, listing, search index) is a function of (route, group set, view
version, config): the serialized listing cache of the SDK binding stays correct without knowing of it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog.compact import compact_tool
from mcp_hub.catalog.schemas import first_error
from mcp_hub.catalog.search import SearchIndex, ToolDoc, tool_doc
from mcp_hub.catalog.tokens import (
    TokenCounter,
    estimate_tokens,
    load_counter,
    wire_tool,
)
from mcp_hub.config import ConfigError, GatewayConfig
from mcp_hub.config.catalog import DEFAULT_META_TOOLS, CatalogConfig
from mcp_hub.core.calls import CallAnswer, Caller, ToolCalls, ToolRequest

if TYPE_CHECKING:
    from mcp_hub.core.hub import Gateway, Route

logger = logging.getLogger(__name__)

ROLES = tuple(DEFAULT_META_TOOLS)  # browse, search, describe, call
MAX_SEARCH_RESULTS = 50
MAX_DESCRIBE = 20
MAX_BROWSE = 200
# Plans and group sets remembered (old view versions are dropped first).
MAX_PLANS = 512
MAX_SEEN = 256
MAX_TOOL_TEXTS = 50_000


# -- settings: the levels of `catalog:` that apply to one route and group set ---------------------


@dataclass(frozen=True, slots=True)
class CatalogSettings:
    """The `catalog:` settings for one route and group set, with the levels combined."""

    max_tokens: int | None = None
    warn_tokens: int | None = None
    always: tuple[str, ...] = ()
    counter: str | None = None
    max_description: int | None = None
    names: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_META_TOOLS))
    # Where the counter was set (its key path), for the error of a counter that cannot be loaded.
    counter_key: str = "catalog.counter"

    @property
    def measured(self) -> bool:
        """Whether listings are measured as they are served (a budget or a warning threshold applies)."""
        return self.max_tokens is not None or self.warn_tokens is not None

    @property
    def roles(self) -> dict[str, str]:
        """exposed name -> role of the meta-tools."""
        return {name: role for role, name in self.names.items()}


def catalog_levels(config: GatewayConfig, path: str, groups: Iterable[str]) -> list[tuple[str, CatalogConfig]]:
    """The `catalog:` entries that apply, least specific first, with their key paths: the top level, the
    route's `servers:` entry, then the caller's groups (sorted)."""
    levels: list[tuple[str, CatalogConfig]] = []
    if config.catalog is not None:
        levels.append(("catalog", config.catalog))
    for index, route in enumerate(config.servers):
        if route.path == path and route.catalog is not None:
            levels.append((f"servers[{index}].catalog", route.catalog))
    for group in sorted(set(groups)):
        policy = config.policy.groups.get(group)
        if policy is not None and policy.catalog is not None:
            levels.append((f"groups.{group}.catalog", policy.catalog))
    return levels


def combine(levels: list[tuple[str, CatalogConfig]]) -> CatalogSettings:
    """One set of settings from the levels: a route's entry overrides the top level and a group's overrides
    both; of several groups, the smallest number wins (a catalog that fits every group's budget) and the
    first group (by name) that sets a name or counter; `always` globs add up."""
    numbers: dict[str, int | None] = {"max_tokens": None, "warn_tokens": None, "max_description": None}
    group_numbers: dict[str, list[int]] = {key: [] for key in numbers}
    always: list[str] = []
    counter, counter_key = None, "catalog.counter"
    names = dict(DEFAULT_META_TOOLS)
    group_counter_set = False
    group_names: set[str] = set()
    for key_path, level in levels:
        in_group = key_path.startswith("groups.")
        for key in numbers:
            value = getattr(level, key)
            if value is None:
                continue
            if in_group:
                group_numbers[key].append(value)
            else:
                numbers[key] = value
        always += [p for p in level.always if p not in always]
        if level.counter is not None and not (in_group and group_counter_set):
            counter, counter_key = level.counter, f"{key_path}.counter"
            group_counter_set = group_counter_set or in_group
        for role in ROLES:
            value = getattr(level.meta_tools, role)
            if value is None or (in_group and role in group_names):
                continue
            names[role] = value
            if in_group:
                group_names.add(role)
    for key, values in group_numbers.items():
        if values:
            numbers[key] = min(values)
    return CatalogSettings(max_tokens=numbers["max_tokens"], warn_tokens=numbers["warn_tokens"],
                           always=tuple(always), counter=counter, max_description=numbers["max_description"],
                           names=names, counter_key=counter_key)


def check_config(config: GatewayConfig) -> None:
    """What the config models cannot check alone: every counter loads, and on every route the meta-tools of
    each group have four different names. Raises `ConfigError` naming the key paths."""
    problems: list[str] = []
    paths = ["/mcp", *[r.path for r in config.servers if r.path != "/mcp"]]
    seen: set[str] = set()
    for path in paths:
        for groups in [(), *[(g,) for g in config.policy.groups]]:
            levels = catalog_levels(config, path, groups)
            for key_path, level in levels:
                if level.counter is None or key_path in seen:
                    continue
                seen.add(key_path)
                try:
                    load_counter(level.counter)
                except ValueError as exc:
                    problems.append(f"{key_path}.counter: {exc}")
            names = combine(levels).names
            if len(set(names.values())) != len(names):
                where = f"groups.{groups[0]}" if groups else "catalog"
                problem = (f"{where}.catalog.meta_tools: on {path} the meta-tools would share a name "
                           f"({', '.join(f'{r}: {n}' for r, n in names.items())})")
                if problem not in problems:
                    problems.append(problem)
    if problems:
        raise ConfigError(problems)


# -- plans: one route's catalog for one group set, measured ---------------------------------------


@dataclass(slots=True)
class CatalogPlan:
    """What one group set gets on one route at one view version."""

    route: str
    group_key: tuple[str, ...]
    settings: CatalogSettings
    full: list[types.Tool]  # what the ACL shows the caller
    tokens: int  # of the full listing, as the client would receive it
    compact: bool
    listed: list[types.Tool]  # what tools/list answers
    listed_tokens: int
    counter: TokenCounter
    by_name: dict[str, types.Tool] = field(default_factory=dict)
    docs: list[ToolDoc] | None = None
    index: SearchIndex | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)


def meta_tools(settings: CatalogSettings, total: int) -> list[types.Tool]:
    """The four meta-tools of a compact catalog, under their configured names."""
    n = settings.names
    also = f"Use {n['search']} to find a tool, {n['describe']} for its parameters, then {n['call']} (or call it " \
        "by its name directly)."
    specs: list[tuple[str, str, dict[str, Any]]] = [
        (n["browse"],
         f"This server has {total} tools; only a few are listed. Without arguments, lists its toolsets (by "
         f"service, then area) with one line and the number of tools each; with `toolset`, lists that toolset's "
         f"tools (name and one line). {also}",
         {"type": "object", "properties": {
             "toolset": {"type": "string", "description": "A toolset name from an earlier answer, e.g. `github/repos`."},
             "limit": {"type": "integer", "minimum": 1, "maximum": MAX_BROWSE,
                       "description": f"Most tools to list from a toolset (default 50, at most {MAX_BROWSE})."}}}),
        (n["search"],
         f"Search the {total} tools of this server by what they do (words of their names, descriptions, "
         f"parameters, tags and paths). Returns the best matches: name, one line and a score, best first. {also}",
         {"type": "object", "required": ["query"], "properties": {
             "query": {"type": "string", "description": "What you want to do, in plain words."},
             "toolset": {"type": "string", "description": "Only tools of this toolset (and its sub-toolsets)."},
             "limit": {"type": "integer", "minimum": 1, "maximum": MAX_SEARCH_RESULTS,
                       "description": f"How many results (default 10, at most {MAX_SEARCH_RESULTS})."}}}),
        (n["describe"],
         "The full definitions (description, input schema, output schema) of tools named by an earlier search "
         f"or browse answer. Names not known here are listed under `unknown`. {also}",
         {"type": "object", "required": ["names"], "properties": {
             "names": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_DESCRIBE,
                       "description": f"Exposed tool names (at most {MAX_DESCRIBE})."}}}),
        (n["call"],
         "Call a tool of this server by its exposed name with its arguments (see its schema with "
         f"{n['describe']}). The answer is the tool's own.",
         {"type": "object", "required": ["name"], "properties": {
             "name": {"type": "string", "description": "The tool's exposed name."},
             "arguments": {"type": "object", "description": "The tool's arguments."}}}),
    ]
    return [types.Tool(name=name, description=text, input_schema=schema) for name, text, schema in specs]


class Economy:
    """Measures each route's catalog per group set and serves the compact catalog past its budget."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        check_config(gateway.config)
        self._settings: dict[tuple[str, tuple[str, ...]], tuple[GatewayConfig, CatalogSettings]] = {}
        self._plans: dict[tuple[Any, ...], CatalogPlan] = {}
        self._counters: dict[str | None, TokenCounter] = {}
        self._json: dict[int, tuple[types.Tool, str]] = {}
        # (route, group set) -> a consumer of it, for the metric at scrape time.
        self._seen: dict[tuple[str, tuple[str, ...]], Consumer] = {}

    # -- settings and plans ----------------------------------------------------------------------

    def settings(self, path: str, group_key: tuple[str, ...]) -> CatalogSettings:
        config = self.gateway.config
        key = (path, group_key)
        cached = self._settings.get(key)
        if cached is not None and cached[0] is config:
            return cached[1]
        if len(self._settings) > 4096:
            self._settings.clear()
        found = combine(catalog_levels(config, path, group_key))
        if len(set(found.names.values())) != len(found.names):  # two groups' names clash: keep the defaults
            logger.warning("catalog meta-tool names clash for groups %s on %s; using the default names",
                           ",".join(group_key) or "-", path)
            found = dataclasses.replace(found, names=dict(DEFAULT_META_TOOLS))
        self._settings[key] = (config, found)
        return found

    def counter(self, spec: str | None, key_path: str = "catalog.counter") -> TokenCounter:
        found = self._counters.get(spec)
        if found is None:
            try:
                found = _fenced(load_counter(spec), key_path)
            except ValueError as exc:  # checked at start; a reload may bring a bad one
                logger.error("%s: %s; counting with the estimate", key_path, exc)
                found = estimate_tokens
            self._counters[spec] = found
        return found

    def listed(self, route: Route, consumer: Consumer, full: list[types.Tool]) -> list[types.Tool]:
        """The tools `tools/list` gives this caller: `full` (what the ACL shows), or the compact catalog."""
        settings = self.settings(route.path, consumer.group_key)
        self._remember(route.path, consumer)
        if not settings.measured:
            return full
        return self.plan(route, consumer, full).listed

    def plan(self, route: Route, consumer: Consumer, full: list[types.Tool] | None = None) -> CatalogPlan:
        """The caller's catalog on `route`, measured; built once per route, group set and view version."""
        view = route.view
        key = (route.path, view.version, id(view), consumer.group_key, id(self.gateway.config))
        found = self._plans.get(key)
        if found is not None:
            return found
        if full is None:
            full = self.gateway.visible_tools(view, consumer)
        settings = self.settings(route.path, consumer.group_key)
        counter = self.counter(settings.counter, settings.counter_key)
        tokens = counter(self._listing_text(full))
        listed, listed_tokens, compact = full, tokens, False
        if settings.max_tokens is not None and tokens > settings.max_tokens:
            shorter = self._compact_listing(settings, full)
            shorter_tokens = counter(self._listing_text(shorter))
            # a catalog smaller than the meta-tools themselves is served as it is
            if shorter_tokens < tokens:
                listed, listed_tokens, compact = shorter, shorter_tokens, True
        plan = CatalogPlan(route.path, consumer.group_key, settings, full, tokens, compact, listed, listed_tokens,
                           counter, by_name={t.name: t for t in full})
        self._report(plan)
        if len(self._plans) >= MAX_PLANS or any(k[1] != view.version for k in self._plans):
            self._forget_old(view.version)
        self._plans[key] = plan
        if len(self._json) > 2 * sum(len(p.full) for p in self._plans.values()) + 1024:
            live = {id(t) for p in self._plans.values() for t in p.full}
            self._json = {k: v for k, v in self._json.items() if k in live}
        return plan

    def _forget_old(self, version: int) -> None:
        """Drop the plans of older view versions (all of them past MAX_PLANS: they are rebuilt on use)."""
        self._plans = {k: v for k, v in self._plans.items() if k[1] == version}
        if len(self._plans) >= MAX_PLANS:
            self._plans = {}

    def _listing_text(self, tools: list[types.Tool]) -> str:
        """The compact JSON of `{"tools": [...]}` as the client receives it (catalog.tokens.wire_json of the
        wire form; pydantic writes the same text several times faster). Each tool's text is kept while the
        tool object lives: a rebuild keeps the objects of upstreams that did not change."""
        return '{"tools":[' + ",".join(self._tool_json(t) for t in tools) + "]}"

    def _tool_json(self, tool: types.Tool) -> str:
        entry = self._json.get(id(tool))
        if entry is not None and entry[0] is tool:
            return entry[1]
        text = tool.model_dump_json(by_alias=True, exclude_none=True)
        if len(self._json) > MAX_TOOL_TEXTS:
            self._json.clear()
        self._json[id(tool)] = (tool, text)
        return text

    def _compact_listing(self, settings: CatalogSettings, full: list[types.Tool]) -> list[types.Tool]:
        shadowed = set(settings.names.values())
        kept = [t for t in full if t.name not in shadowed
                and any(fnmatch.fnmatchcase(t.name, p) for p in settings.always)]
        listed = [types.Tool.model_validate(compact_tool(wire_tool(t), max_description=settings.max_description),
                                            by_name=False) for t in kept]
        return listed + meta_tools(settings, len(full))

    def _report(self, plan: CatalogPlan) -> None:
        """The plan's metric sample, and the log lines an operator should see."""
        group = ",".join(plan.group_key) or "-"
        self.gateway.meter.metrics.set_catalog_tokens(plan.route, plan.group_key, plan.listed_tokens)
        settings = plan.settings
        if settings.warn_tokens is not None and plan.tokens > settings.warn_tokens:
            served = (f"; served compact ({plan.listed_tokens} tokens, max_tokens {settings.max_tokens})"
                      if plan.compact else "")
            logger.warning("catalog of group %s on %s costs %d tokens (%d tools), over warn_tokens %d%s",
                           group, plan.route, plan.tokens, len(plan.full), settings.warn_tokens, served)
        if plan.compact and settings.max_tokens is not None and plan.listed_tokens > settings.max_tokens:
            logger.warning("compact catalog of group %s on %s costs %d tokens, still over max_tokens %d: "
                           "fewer `always` tools or a max_description would help", group, plan.route,
                           plan.listed_tokens, settings.max_tokens)

    def _remember(self, path: str, consumer: Consumer) -> None:
        key = (path, consumer.group_key)
        if key not in self._seen and len(self._seen) < MAX_SEEN:
            self._seen[key] = consumer

    def samples(self) -> list[tuple[str, tuple[str, ...], int]]:
        """(route, group set, tokens as listed) for every group set that listed a route: the metric at scrape
        time (measured once per view version)."""
        out = []
        for (path, group_key), consumer in list(self._seen.items()):
            route = self.gateway.routes.get(path)
            if route is not None:
                out.append((path, group_key, self.plan(route, consumer).listed_tokens))
        return out

    def report(self, route: Route, consumer: Consumer) -> dict[str, Any]:
        """What the admin API and `mcp-hub tools` show of a caller's catalog on a route."""
        plan = self.plan(route, consumer)
        settings = plan.settings
        return {
            "tokens": plan.tokens,
            "listed_tokens": plan.listed_tokens,
            "compact": plan.compact,
            "max_tokens": settings.max_tokens,
            "warn_tokens": settings.warn_tokens,
            "counter": settings.counter or "estimate",
            "listed": [t.name for t in plan.listed] if plan.compact else None,
            "meta_tools": dict(settings.names) if plan.compact else None,
            "tool_tokens": {t.name: plan.counter(self._tool_json(t)) for t in plan.full},
        }

    # -- the meta-tools ----------------------------------------------------------------------------

    def meta_role(self, route: Route, consumer: Consumer, name: str) -> str | None:
        """The meta-tool `name` stands for when the caller's catalog on `route` is compact; else None."""
        settings = self.settings(route.path, consumer.group_key)
        role = settings.roles.get(name) if settings.max_tokens is not None else None
        if role is None or not self.plan(route, consumer).compact:
            return None
        return role

    async def answer(
        self, route: Route, caller: Caller, request: ToolRequest, role: str, calls: ToolCalls
    ) -> CallAnswer:
        """A meta-tool call: browse, search and describe answered here; call through the one tools/call path."""
        plan = self.plan(route, caller.consumer)
        tool = next(t for t in meta_tools(plan.settings, len(plan.full)) if t.name == request.name)
        arguments = request.arguments or {}
        problem = first_error(tool.input_schema, arguments)
        if problem is not None:
            self.gateway.meter.audit_request(caller.consumer, "tools/call", request.name, "-", "invalid", 0.0)
            raise MCPError(code=types.INVALID_PARAMS, message=f"Invalid arguments for tool {request.name}: {problem}")
        if role == "call":
            inner = dataclasses.replace(request, name=arguments["name"], arguments=arguments.get("arguments"))
            return await calls.call(route, caller, inner)
        started = time.perf_counter()
        if role == "describe":
            payload = self._describe(plan, arguments["names"])
        else:
            index = await self._index(route, plan)
            payload = self._browse(index, arguments) if role == "browse" else self._search(index, arguments)
        self.gateway.meter.audit_request(caller.consumer, "tools/call", request.name, "-", "ok",
                                         (time.perf_counter() - started) * 1000)
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return CallAnswer(result={"content": [{"type": "text", "text": text}], "structuredContent": payload,
                                 "isError": False})

    def _describe(self, plan: CatalogPlan, names: list[str]) -> dict[str, Any]:
        tools, unknown = [], []
        for name in dict.fromkeys(names):
            tool = plan.by_name.get(name)
            if tool is None:
                unknown.append(name)  # missing or hidden: the same to the caller
            else:
                tools.append(compact_tool(wire_tool(tool)))
        return {"tools": tools, "unknown": unknown}

    def _search(self, index: SearchIndex, arguments: dict[str, Any]) -> dict[str, Any]:
        hits = index.search(arguments["query"], limit=int(arguments.get("limit", 10)),
                            toolset=arguments.get("toolset"))
        return {"tools": [{"name": h.name, "description": h.summary, "score": h.score} for h in hits]}

    def _browse(self, index: SearchIndex, arguments: dict[str, Any]) -> dict[str, Any]:
        toolset = arguments.get("toolset")
        if toolset is None:
            return {"toolsets": [{"name": t.name, "description": t.summary, "tools": t.count}
                                 for t in index.toolsets()]}
        hits = index.search("", limit=int(arguments.get("limit", 50)), toolset=toolset)
        return {"toolset": toolset, "tools": [{"name": h.name, "description": h.summary} for h in hits]}

    async def _index(self, route: Route, plan: CatalogPlan) -> SearchIndex:
        """The plan's search index, built on first use (in a worker thread: a large catalog takes a while)."""
        async with plan.lock:
            if plan.index is None:
                docs = self._docs(route, plan)
                plan.index = await anyio.to_thread.run_sync(SearchIndex, docs)
            return plan.index

    def _docs(self, route: Route, plan: CatalogPlan) -> list[ToolDoc]:
        """A search document per visible tool, with an OpenAPI operation's tags and path."""
        docs = []
        for tool in plan.full:
            entry = route.view.tools.get(tool.name)
            upstream_name = entry[1].upstream if entry else ""
            tags: tuple[str, ...] = ()
            path = ""
            binding_of = getattr(self.gateway.upstreams.get(upstream_name), "binding", None)
            binding = binding_of(entry[1].original) if callable(binding_of) and entry else None
            if binding is not None:
                tags, path = tuple(binding.tags), f"{binding.method} {binding.path}"
            docs.append(tool_doc(tool, upstream=upstream_name or tool.name, tags=tags, path=path))
        return docs


def _fenced(counter: TokenCounter, key_path: str) -> TokenCounter:
    """A configured counter that fails (raises, or returns no count) is reported and replaced by the estimate
    for that text: a listing must not fail because of it."""
    if counter is estimate_tokens:
        return counter

    def count(text: str) -> int:
        try:
            return counter(text)
        except Exception as exc:  # noqa: BLE001 - any failure of a user's function
            logger.error("%s: the token counter failed (%s); counting with the estimate", key_path, exc)
            return estimate_tokens(text)

    return count
