"""`catalog/schemas.py`: one compiled validator per schema, the wording of the first violation."""

from __future__ import annotations

import gc
from typing import Any

import jsonschema

from mcp_hub.catalog.schemas import MAX_WORDING, SchemaValidators, first_error, validator

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
