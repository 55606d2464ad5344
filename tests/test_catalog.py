"""Catalog merging as pure functions: names, collisions, schemas made listable, URI routing."""

from __future__ import annotations

import mcp_types as types
from hypothesis import given
from hypothesis import strategies as st
from mcp_types import methods as _methods

from mcp_hub.catalog.view import TOOL_NAME_RE, build_view, exposed_name, sanitize_name
from mcp_hub.upstreams.base import UpstreamCatalog


def tool(name: str, **extra: object) -> types.Tool:
    return types.Tool(name=name, input_schema=extra.pop("input_schema", {"type": "object"}), **extra)


@given(st.text(min_size=1, max_size=200), st.text(min_size=0, max_size=20))
def test_exposed_names_are_always_valid_and_deterministic(name: str, prefix: str) -> None:
    exposed = exposed_name(prefix, "__", name)
    assert TOOL_NAME_RE.match(exposed)
    assert exposed == exposed_name(prefix, "__", name)


@given(st.lists(st.text(min_size=1, max_size=100), min_size=2, max_size=20, unique=True))
def test_different_names_never_sanitize_alike(names: list[str]) -> None:
    # a changed name carries a hash of its original, so distinct originals stay distinct
    assert len({sanitize_name(n) for n in names}) == len(names)


def test_long_names_keep_a_hash_of_the_original() -> None:
    a, b = "x" * 70 + "a", "x" * 70 + "b"
    assert len(sanitize_name(a)) == 64 and sanitize_name(a) != sanitize_name(b)
    assert sanitize_name("get weather/now") == sanitize_name("get weather/now")
    assert sanitize_name("get weather/now") != sanitize_name("get_weather_now")


def test_collisions_name_both_sources_and_the_first_keeps_the_name() -> None:
    view = build_view(1, [("a", "", UpstreamCatalog(tools=[tool("echo")])),
                          ("b", "", UpstreamCatalog(tools=[tool("echo"), tool("other")]))])
    assert view.tools["echo"][1].upstream == "a"
    assert view.collisions == ["tool 'echo' is offered by a:echo and b:echo"]
    assert "other" in view.tools


def test_sloppy_schemas_are_made_listable_for_every_revision() -> None:
    tools = [
        tool("only_allof_out", output_schema={"allOf": [{"type": "object", "properties": {"x": {"type": "string"}}}]}),
        tool("array_out", output_schema={"type": "array"}),
        tool("untyped_in", input_schema={"properties": {"a": {"type": "integer"}}}),
    ]
    view = build_view(1, [("up", "up", UpstreamCatalog(tools=tools))])
    listed = types.ListToolsResult(tools=view.tool_list).model_dump(by_alias=True, mode="json", exclude_none=True)
    for version in ("2024-11-05", "2025-06-18", "2025-11-25", "2026-07-28"):
        _methods.serialize_server_result("tools/list", version, listed)
    by_name = {t.name: t for t in view.tool_list}
    assert by_name["up__only_allof_out"].output_schema["type"] == "object"
    assert by_name["up__array_out"].output_schema is None
    assert by_name["up__untyped_in"].input_schema["properties"] == {"a": {"type": "integer"}}


def test_shared_resource_uris_are_namespaced_and_routable() -> None:
    res = types.Resource(uri="demo://readme", name="readme")
    view = build_view(1, [("a", "a", UpstreamCatalog(resources=[res])), ("b", "b", UpstreamCatalog(resources=[res]))])
    uris = sorted(view.resources)
    assert uris == ["mcphub://a/demo%3A%2F%2Freadme", "mcphub://b/demo%3A%2F%2Freadme"]
    source = view.resolve_uri(uris[1])
    assert source is not None and (source.upstream, source.original) == ("b", "demo://readme")
    templates = [types.ResourceTemplate(uri_template="item://{id}", name="item")]
    view = build_view(2, [("a", "a", UpstreamCatalog(resource_templates=templates))])
    found = view.resolve_uri("item://42")
    assert found is not None and found.upstream == "a"
    assert view.resolve_uri("nothing://here") is None
