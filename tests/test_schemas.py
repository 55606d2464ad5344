"""`catalog/schemas.py`: one compiled validator per schema, the wording of the first violation."""

from __future__ import annotations

import contextlib
import gc
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_hub.catalog.schemas import MAX_WORDING, SchemaValidators, fast_validator, first_error, validator

ITEM: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "owner": {
            "type": "object",
            "properties": {"login": {"type": "string"}, "manager": {"$ref": "#/properties/owner"}},
        },
    },
}


def test_valid_arguments_give_none() -> None:
    assert first_error(ITEM, {"name": "box", "tags": ["a"], "owner": {"login": "x", "manager": {"login": "y"}}}) is None


def test_invalid_nested_path_is_named() -> None:
    problem = first_error(ITEM, {"name": "box", "owner": {"manager": {"login": 5}}})
    assert problem == "owner/manager/login: 5 is not of type 'string'"
    assert first_error(ITEM, {"name": "box", "tags": ["a", 7]}) == "tags/1: 7 is not of type 'string'"


def test_top_level_violation_and_first_by_path() -> None:
    assert first_error(ITEM, {}) == "arguments: 'name' is a required property"
    assert first_error(ITEM, {}, root="structuredContent") == "structuredContent: 'name' is a required property"
    # Several violations: the one first in path order (the top level comes before any property).
    assert first_error(ITEM, {"tags": "x", "owner": 1}) == "arguments: 'name' is a required property"
    assert first_error(ITEM, {"name": "n", "tags": "x", "owner": 1}) == "owner: 1 is not of type 'object'"


def test_wording_is_capped() -> None:
    schema = {"type": "object", "properties": {"x": {"enum": ["v" * 300, "w" * 300]}}}
    problem = first_error(schema, {"x": 1})
    assert problem is not None and len(problem) == MAX_WORDING and problem.startswith("x: 1 is not one of")


def test_draft_2020_12_unless_the_schema_names_another() -> None:
    tuple_schema = {"type": "array", "prefixItems": [{"type": "integer"}]}
    assert isinstance(validator(tuple_schema), jsonschema.Draft202012Validator)
    assert first_error(tuple_schema, ["no"]) == "0: 'no' is not of type 'integer'"
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "prefixItems": [{"type": "integer"}]}
    assert isinstance(validator(draft7), jsonschema.Draft7Validator)
    assert first_error(draft7, ["no"]) is None  # prefixItems means nothing in draft 7


def test_broken_schema_never_blocks_a_call() -> None:
    cache = SchemaValidators()
    for broken in (
        {"type": "object", "required": "name"},  # would otherwise demand properties "n", "a", "m", "e"
        {"type": "strnig"},
        {"type": "object", "properties": {"s": {"type": "string", "pattern": "(unclosed"}}},
    ):
        assert cache.validator(broken) is None, broken
        assert cache.first_error(broken, {"s": "x"}) is None
    # Valid against the meta-schema but failing during validation: no verdict, remembered as broken.
    unresolvable = {"type": "object", "properties": {"a": {"$ref": "https://schemas.invalid/a.json"}}}
    assert cache.first_error(unresolvable, {"a": 1}) is None
    assert cache.validator(unresolvable) is None


def test_cache_hit_returns_the_same_validator() -> None:
    cache = SchemaValidators()
    first = cache.validator(ITEM)
    assert first is not None and cache.validator(ITEM) is first and len(cache) == 1
    # Keyed by identity: an equal schema that is another object (a rebuilt catalog) gets its own entry.
    copy = {**ITEM}
    assert cache.validator(copy) is not first and len(cache) == 2


def test_eviction_bound() -> None:
    cache = SchemaValidators(max_entries=3)
    schemas = [{"type": "object", "properties": {f"p{n}": {"type": "integer"}}} for n in range(5)]
    compiled = [cache.validator(schema) for schema in schemas[:3]]
    assert cache.validator(schemas[0]) is compiled[0]  # schema 0 is now the most recently used
    cache.validator(schemas[3])
    cache.validator(schemas[4])
    assert len(cache) == 3
    assert cache.validator(schemas[0]) is compiled[0]  # kept
    assert cache.validator(schemas[1]) is not compiled[1]  # evicted, compiled again


def test_no_stale_hit_after_a_schema_is_gone() -> None:
    cache = SchemaValidators(max_entries=1)
    cache.validator({"type": "integer"})
    cache.validator({"type": "string"})  # evicts the first: its schema may now be freed
    gc.collect()
    for _ in range(50):  # new objects may reuse freed ids: each must still get its own validator
        schema = {"type": "boolean"}
        assert cache.first_error(schema, 1) == "arguments: 1 is not of type 'boolean'"


# -- the Rust check first, the Python walk for a misfit ---------------------------------------------------


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["name", "tags", "owner", "login",
                                                                                  "manager", "n", "x"]), inner,
                                                                 max_size=4),
    max_leaves=12,
)
WIDE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "multipleOf": 3},
        "x": {"anyOf": [{"type": "string", "pattern": "^[a-z]+$", "maxLength": 5}, {"type": "null"}]},
        "tags": {"type": "array", "uniqueItems": True, "prefixItems": [{"type": "string"}]},
    },
    "dependentRequired": {"n": ["x"]},
}


@settings(max_examples=400, deadline=None)
@given(instance=_JSON, which=st.sampled_from([ITEM, WIDE]))
def test_the_verdict_is_the_python_validators_on_any_instance(instance: Any, which: dict[str, Any]) -> None:
    """The fast check only ever says "fits" where jsonschema says so too: the verdict and the wording are
    jsonschema's, whatever the instance."""
    expected = min(jsonschema.Draft202012Validator(which).iter_errors(instance),
                   key=lambda e: list(e.absolute_path), default=None)
    got = first_error(which, instance)
    assert (got is None) == (expected is None), (instance, got, expected)
    fast = fast_validator(which)
    assert fast is not None
    try:
        assert fast.is_valid(instance) == (expected is None)
    except (ValueError, OverflowError):  # an integer past 64 bits: the Python walk decides, as above
        pass


@contextlib.contextmanager
def _recording_schema_host() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server that serves `{"type": "string"}` for any path and records every request: (base URL, paths)."""
    hits: list[str] = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            body = b'{"type": "string"}'
            self.send_response(200)
            self.send_header("content-type", "application/schema+json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", hits
    finally:
        server.shutdown()


def test_an_external_ref_is_never_fetched() -> None:
    """A tool schema naming a remote `$ref` (an upstream's to choose) makes the gateway request nothing: the
    schema counts as broken for that instance, which never blocks a call; no Rust validator is built for it."""
    with _recording_schema_host() as (base, hits):
        schema = {"type": "object", "properties": {"a": {"$ref": f"{base}/s.json"}}}
        assert fast_validator(schema) is None
        assert first_error(schema, {"b": 1}) is None  # nothing to resolve for this instance
        assert first_error(schema, {"a": 1}) is None  # unresolvable, not fetched: the call goes on
        assert hits == []


def test_structured_output_checked_on_the_direct_channel_without_fetching() -> None:
    """The direct channel's output check (as the SDK client's): a fit passes, a misfit is worded by jsonschema,
    and an output schema with a remote `$ref` is refused as an invalid schema, with nothing fetched."""
    import mcp_types as types
    from mcp.shared.exceptions import MCPError

    from mcp_hub.upstreams.direct import DirectChannel

    with _recording_schema_host() as (base, hits):
        channel = DirectChannel(None, {}, "2026-07-28", headers={}, credentials=None)  # type: ignore[arg-type]
        channel.learn([
            types.Tool(name="sum", input_schema={"type": "object"}, output_schema={
                "type": "object", "properties": {"total": {"type": "integer"}}, "required": ["total"]}),
            types.Tool(name="remote", input_schema={"type": "object"}, output_schema={
                "type": "object", "properties": {"a": {"$ref": f"{base}/out.json"}}}),
        ])
        channel.check_output("sum", {"content": [], "structuredContent": {"total": 3}})
        with pytest.raises(MCPError, match="Invalid structured content returned by tool sum: 'total' is a required"):
            channel.check_output("sum", {"content": [], "structuredContent": {}})
        with pytest.raises(MCPError, match="Invalid schema for tool remote"):
            channel.check_output("remote", {"content": [], "structuredContent": {"a": 1}})
        assert hits == []
