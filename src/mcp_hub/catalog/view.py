"""The merged catalog: exposed names, collisions, and exposed name -> (upstream, original name)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import mcp_types as types
from mcp.shared.uri_template import UriTemplate

TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
MAX_NAME = 64
_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
# Resource URIs served by two upstreams of one route are exposed under this scheme instead.
HUB_URI_SCHEME = "mcphub"


@dataclass(slots=True)
class UpstreamCatalog:
    """What one upstream offers, under its own (original) names."""

    tools: list[types.Tool] = field(default_factory=list)
    resources: list[types.Resource] = field(default_factory=list)
    resource_templates: list[types.ResourceTemplate] = field(default_factory=list)
    prompts: list[types.Prompt] = field(default_factory=list)



def sanitize_name(name: str, max_len: int = MAX_NAME) -> str:
    """Map any name onto ^[a-zA-Z0-9_-]{1,64}$, deterministically.

    Other characters become `_`; a name that changed or is too long gets an 8-hex suffix from the
    original, so two different originals never sanitize to the same result by accident.
    """
    clean = _UNSAFE.sub("_", name)
    if clean and clean == name and len(clean) <= max_len:
        return clean
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    if clean == name:  # only too long
        return f"{clean[: max_len - 9]}_{digest}"
    clean = clean.strip("_") or "tool"
    room = max_len - 9
    return f"{clean[:room]}_{digest}"


def exposed_name(prefix: str, separator: str, name: str) -> str:
    """`<prefix><separator><name>`, or `name` when the prefix is empty, made valid."""
    return sanitize_name(f"{prefix}{separator}{name}" if prefix else name)


@dataclass(frozen=True, slots=True)
class Source:
    """Where an exposed item comes from, and its canonical name: the name it has under its upstream's prefix
    (as on `/mcp`), the same on every route; the ACL decides on it."""

    upstream: str
    original: str
    canonical: str = ""


@dataclass(frozen=True, slots=True)
class Target:
    """What a request addresses, resolved: the name the ACL decides on, and where it is served.

    `acl_kind` is tool, prompt or resource (templates are decided as resources).
    """

    acl_kind: str
    name: str
    upstream: str
    original: str
    item: Any = None


@dataclass(slots=True)
class CatalogView:
    """What one route (virtual server) exposes, built from its upstreams' catalogs.

    Immutable once built: a change builds a new view, so a request holds a consistent snapshot.
    """

    version: int
    tools: dict[str, tuple[types.Tool, Source]] = field(default_factory=dict)
    prompts: dict[str, tuple[types.Prompt, Source]] = field(default_factory=dict)
    resources: dict[str, tuple[types.Resource, Source]] = field(default_factory=dict)
    templates: list[tuple[types.ResourceTemplate, UriTemplate | None, str]] = field(default_factory=list)
    # Tool and prompt names offered by two upstreams: the first keeps the name (config order).
    collisions: list[str] = field(default_factory=list)
    # Resource URIs offered by several upstreams, exposed under mcphub:// URIs instead.
    shared_uris: list[str] = field(default_factory=list)
    tool_list: list[types.Tool] = field(default_factory=list)
    prompt_list: list[types.Prompt] = field(default_factory=list)
    resource_list: list[types.Resource] = field(default_factory=list)
    template_list: list[types.ResourceTemplate] = field(default_factory=list)
    upstream_of_uri_cache: dict[str, str] = field(default_factory=dict)
    # The upstreams this route exposes.
    upstream_names: frozenset[str] = frozenset()
    # (kind, exposed name) -> the upstream's own tool or prompt object, so the next view can keep the
    # exposed copy of an item that did not change (and what was derived from it, e.g. its wire form).
    origins: dict[tuple[str, str], Any] = field(default_factory=dict)

    def tool(self, name: str) -> tuple[types.Tool, Source] | None:
        return self.tools.get(name)

    def input_schema(self, name: str) -> Mapping[str, Any] | None:
        entry = self.tools.get(name)
        return entry[0].input_schema if entry else None

    # -- the one resolver: what a request addresses -> (upstream, original identity) ----------------

    def resolve_tool(self, name: str) -> Target | None:
        entry = self.tools.get(name)
        return Target("tool", entry[1].canonical or name, entry[1].upstream, entry[1].original, entry[0]) \
            if entry else None

    def resolve_prompt(self, name: str) -> Target | None:
        entry = self.prompts.get(name)
        return Target("prompt", entry[1].canonical or name, entry[1].upstream, entry[1].original, entry[0]) \
            if entry else None

    def resolve_uri(self, uri: str) -> Target | None:
        """The resource a URI addresses on this route: a listed resource, an `mcphub://<upstream>/<uri>` of
        an upstream this route exposes (for a URI that upstream lists or one of its templates matches),
        or a URI exactly one of the route's templates matches. Anything else is not found.

        The ACL decides on the resource's own URI (as its upstream serves it), whatever form addressed it,
        so a rule on `note://*` holds for `mcphub://<upstream>/note%3A...` too."""
        entry = self.resources.get(uri)
        if entry is not None:
            return Target("resource", entry[1].original, entry[1].upstream, entry[1].original, entry[0])
        if uri.startswith(f"{HUB_URI_SCHEME}://"):
            upstream, _, quoted = uri[len(HUB_URI_SCHEME) + 3 :].partition("/")
            original = unquote(quoted)
            if upstream not in self.upstream_names:
                return None
            listed = any(s.upstream == upstream and s.original == original for _, s in self.resources.values())
            if not listed and upstream not in self._template_owners(original):
                return None
            return Target("resource", original, upstream, original, None)
        cached = self.upstream_of_uri_cache.get(uri)
        if cached is not None:
            return Target("resource", uri, cached, uri, None)
        owners = self._template_owners(uri)
        if len(owners) != 1:
            return None
        upstream = owners.pop()
        if len(self.upstream_of_uri_cache) < 10_000:
            self.upstream_of_uri_cache[uri] = upstream
        return Target("resource", uri, upstream, uri, None)

    def resolve_template(self, uri_template: str) -> Target | None:
        """A resource template by its URI template (what completion's `ref/resource` names)."""
        for template, _, upstream in self.templates:
            if template.uri_template == uri_template:
                return Target("resource", uri_template, upstream, uri_template, template)
        return None

    def _template_owners(self, uri: str) -> set[str]:
        return {up for _, tpl, up in self.templates if tpl is not None and tpl.match(uri) is not None}

    def target_of(self, kind: str, item: Any) -> Target | None:
        """The target of a listed item (a listing asks the same decision as a request for the item)."""
        if kind == "tool":
            return self.resolve_tool(item.name)
        if kind == "prompt":
            return self.resolve_prompt(item.name)
        if kind == "resource":
            entry = self.resources.get(str(item.uri))
            return Target("resource", entry[1].original, entry[1].upstream, entry[1].original, item) if entry else None
        template, _, upstream = item  # kind "template": an entry of `templates`
        return Target("resource", template.uri_template, upstream, template.uri_template, template)


def _copy_named(item: Any, name: str) -> Any:
    update: dict[str, Any] = {} if item.name == name else {"name": name}
    if isinstance(item, types.Tool):
        update.update(_schema_fixes(item))
    return item.model_copy(update=update) if update else item


def _schema_fixes(tool: types.Tool) -> dict[str, Any]:
    """Make a tool's schemas listable: MCP requires both to be objects with `"type": "object"`.

    One upstream's sloppy schema (e.g. an output schema that is only an `allOf`) must not make
    `tools/list` fail for every client of the route. A schema without a type gets `"type": "object"`
    (which the tool's arguments and structured results are anyway); an output schema of another
    type is dropped (its results still arrive as content).
    """
    fixes: dict[str, Any] = {}
    schema = tool.input_schema
    if not isinstance(schema, dict) or schema.get("type") != "object":
        fixes["input_schema"] = {**(schema if isinstance(schema, dict) else {}), "type": "object"}
    out = tool.output_schema
    if out is not None:
        if not isinstance(out, dict) or out.get("type", "object") != "object":
            fixes["output_schema"] = None
        elif "type" not in out:
            fixes["output_schema"] = {**out, "type": "object"}
    return fixes


def build_view(
    version: int,
    catalogs: Sequence[tuple[str, str, UpstreamCatalog]],
    *,
    separator: str = "__",
    prefixes: Mapping[str, str] | None = None,
    previous: CatalogView | None = None,
) -> CatalogView:
    """Merge (upstream name, prefix on this route, catalog) triples into one view.

    `prefixes` gives each upstream's own prefix (the one it has on `/mcp`), which makes the canonical
    names the ACL decides on; by default the route's prefix is it. Collisions are recorded with both
    sources named; the entry seen first (upstreams in config order) stays, so a running route never
    changes meaning under its clients. Items the `previous` view exposed from the same upstream object under
    the same name and source are carried over as they were.
    """
    view = CatalogView(version=version, upstream_names=frozenset(name for name, _, _ in catalogs))
    for upstream, prefix, catalog in catalogs:
        own = (prefixes or {}).get(upstream, prefix)
        _add_named(view, view.tools, "tool", catalog.tools, upstream, prefix, separator, own, previous)
        _add_named(view, view.prompts, "prompt", catalog.prompts, upstream, prefix, separator, own, previous)
        for template in catalog.resource_templates:
            try:
                compiled: UriTemplate | None = UriTemplate.parse(template.uri_template)
            except Exception:  # noqa: BLE001 - an unparsable template is listed but never routed by match
                compiled = None
            view.templates.append((template, compiled, upstream))
    # Resource URIs: unchanged when one upstream serves them, namespaced when several do.
    owners: dict[str, list[tuple[types.Resource, str]]] = {}
    for upstream, _prefix, catalog in catalogs:
        for resource in catalog.resources:
            owners.setdefault(str(resource.uri), []).append((resource, upstream))
    for uri, served in owners.items():
        if len(served) == 1:
            resource, upstream = served[0]
            view.resources[uri] = (resource, Source(upstream, uri))
            continue
        view.shared_uris.append(
            f"resource {uri!r} is offered by {', '.join(u for _, u in served)}; exposed as {HUB_URI_SCHEME}:// URIs"
        )
        for resource, upstream in served:
            hub_uri = f"{HUB_URI_SCHEME}://{upstream}/{quote(uri, safe='')}"
            view.resources[hub_uri] = (resource.model_copy(update={"uri": hub_uri}), Source(upstream, uri))
    view.tool_list = [t for t, _ in view.tools.values()]
    view.prompt_list = [p for p, _ in view.prompts.values()]
    view.resource_list = [r for r, _ in view.resources.values()]
    view.template_list = [t for t, _, _ in view.templates]
    return view


def _add_named(
    view: CatalogView,
    index: dict[str, tuple[Any, Source]],
    kind: str,
    items: Iterable[Any],
    upstream: str,
    prefix: str,
    separator: str,
    own_prefix: str,
    previous: CatalogView | None = None,
) -> None:
    """Add an upstream's tools or prompts under their exposed names; a taken name is a collision."""
    for item in items:
        name = exposed_name(prefix, separator, item.name)
        canonical = name if own_prefix == prefix else exposed_name(own_prefix, separator, item.name)
        if name in index:
            other = index[name][1]
            view.collisions.append(
                f"{kind} {name!r} is offered by {other.upstream}:{other.original} and {upstream}:{item.name}"
            )
            continue
        source = Source(upstream, item.name, canonical)
        kept = None
        if previous is not None and previous.origins.get((kind, name)) is item:
            kept = (previous.tools if kind == "tool" else previous.prompts).get(name)
        index[name] = kept if kept is not None and kept[1] == source else (_copy_named(item, name), source)
        view.origins[(kind, name)] = item


def names(items: Iterable[Any]) -> list[str]:
    return [item.name for item in items]
