"""Lossless schema compaction (mcp_hub.catalog.compact): each rule, idempotence, and the same validation
verdicts as the original on instances generated from real converted OpenAPI documents."""

from __future__ import annotations

import copy
import functools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mcp_hub.catalog.compact import cap_description, compact_schema, compact_tool
from mcp_hub.catalog.tokens import listing_tokens
from mcp_hub.upstreams.openapi import convert_source
from tests.support.tools import ROOT

# -- each rule --------------------------------------------------------------------------------


def test_titles_that_restate_the_name_go() -> None:
    schema = {
        "type": "object",
        "title": "Arguments",
        "properties": {
            "repo_name": {"type": "string", "title": "Repo Name"},
            "per-page": {"type": "integer", "title": "PerPage"},
            "owner": {"type": "string", "title": "The account owner"},
            "title": {"type": "string", "title": "Title"},  # a property called "title"
        },
        "$defs": {"simple-user": {"type": "object", "title": "Simple User"},
                  "team": {"type": "object", "title": "Full Team"}},
    }
    out = compact_schema(schema)
    assert out["title"] == "Arguments"  # the root has no name to restate
    assert "title" not in out["properties"]["repo_name"]
    assert "title" not in out["properties"]["per-page"]
    assert out["properties"]["owner"]["title"] == "The account owner"
    assert out["properties"]["title"] == {"type": "string"}  # the property stays, its restating title goes
    assert "title" not in out["$defs"]["simple-user"]
    assert out["$defs"]["team"]["title"] == "Full Team"


def test_empty_descriptions_go_and_others_stay() -> None:
    out = compact_schema({"type": "object", "description": " ", "properties": {
        "a": {"type": "string", "description": ""}, "b": {"type": "string", "description": "B."}}})
    assert out == {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string", "description": "B."}}}


def test_keywords_restating_their_defaults_go() -> None:
    schema = {"type": "object", "required": [], "properties": {
        "s": {"type": "string", "minLength": 0, "deprecated": False, "readOnly": False, "writeOnly": False},
        "l": {"type": "array", "minItems": 0, "uniqueItems": False, "items": {}, "contains": {"type": "string"},
              "minContains": 1},
        "o": {"type": "object", "properties": {}, "patternProperties": {}, "minProperties": 0,
              "additionalProperties": True, "dependentRequired": {}, "dependentSchemas": {}},
    }, "$defs": {}}
    assert compact_schema(schema) == {"type": "object", "properties": {
        "s": {"type": "string"}, "l": {"type": "array", "contains": {"type": "string"}}, "o": {"type": "object"}}}


def test_non_default_values_and_data_stay() -> None:
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 0, "minLength": 1, "default": 0, "uniqueItems": True},
        "d": {"type": "object", "default": {"title": "D", "description": "", "required": []},
              "const": {"minLength": 0}, "enum": [{"title": "x"}], "examples": [{"description": ""}]},
        "b": {"type": "boolean", "minItems": False, "readOnly": True, "deprecated": True},
        "m": {"minContains": 1},  # without `contains`, kept (it is then meaningless but not ours to judge)
    }, "additionalProperties": False}
    assert compact_schema(schema) == schema


def test_open_defaults_kept_when_unevaluated_keywords_read_them() -> None:
    schema = {"allOf": [{"additionalProperties": True}], "unevaluatedProperties": False,
              "properties": {"l": {"items": True, "prefixItems": [{"type": "string"}]}}}
    assert compact_schema(schema) == schema
    # The same without unevaluated*: both go.
    assert compact_schema({"allOf": [{"additionalProperties": True}], "properties": {"l": {"items": True}}}) == {
        "allOf": [{}], "properties": {"l": {}}}


def test_identical_defs_are_merged_and_refs_rewritten() -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/user"}, "b": {"$ref": "#/$defs/owner"},
                       "c": {"$ref": "#/$defs/owner/properties/login"}, "d": {"$ref": "#/$defs/a~1b"},
                       "e": {"items": {"$ref": "#/$defs/wrapper2"}}},
        "$defs": {
            "user": {"type": "object", "properties": {"login": {"type": "string"}}},
            "owner": {"type": "object", "properties": {"login": {"type": "string", "description": ""}}},
            "a/b": {"type": "object", "properties": {"login": {"type": "string"}}},
            "wrapper1": {"type": "array", "items": {"$ref": "#/$defs/user"}},
            "wrapper2": {"type": "array", "items": {"$ref": "#/$defs/owner"}},  # identical once owner -> user
        },
    }
    out = compact_schema(schema)
    assert sorted(out["$defs"]) == ["user", "wrapper1"]
    assert out["properties"] == {"a": {"$ref": "#/$defs/user"}, "b": {"$ref": "#/$defs/user"},
                                 "c": {"$ref": "#/$defs/user/properties/login"}, "d": {"$ref": "#/$defs/user"},
                                 "e": {"items": {"$ref": "#/$defs/wrapper1"}}}
    validator, original = Draft202012Validator(out), Draft202012Validator(schema)
    for instance in ({"a": {"login": "x"}, "b": {"login": 1}}, {"c": "x", "d": {"login": "y"}},
                     {"e": [[{"login": 2}]]}, {"e": [[{"login": "z"}]]}, {"c": 3}):
        assert validator.is_valid(instance) == original.is_valid(instance)


@pytest.mark.parametrize("schema", [
    {"$defs": {"a": {"type": "string"}, "b": {"type": "string", "$id": "urn:b"}}, "$ref": "#/$defs/b"},
    {"$defs": {"a": {"type": "string", "$anchor": "x"}, "b": {"type": "string", "$anchor": "x"}}},
    {"$id": "urn:root", "$defs": {"a": {"type": "string"}, "b": {"type": "string"}},
     "properties": {"p": {"$ref": "urn:root#/$defs/b"}}},
])
def test_defs_are_not_merged_where_references_depend_on_place(schema: dict[str, Any]) -> None:
    assert compact_schema(schema)["$defs"].keys() == schema["$defs"].keys()


def test_the_input_is_not_modified_and_shares_nothing() -> None:
    schema = {"type": "object", "properties": {"x": {"title": "X", "enum": [[1]]}}, "$defs": {"a": {}, "b": {}}}
    before = copy.deepcopy(schema)
    out = compact_schema(schema)
    assert schema == before
    out["properties"]["x"]["enum"][0].append(2)
    assert schema == before


def test_compact_tool_caps_descriptions_and_drops_a_repeated_annotation_title() -> None:
    tool = {"name": "t", "title": "Get a thing", "description": "Gets one thing by its identifier, quickly.",
            "inputSchema": {"type": "object", "properties": {"id": {"type": "string", "title": "ID"}}},
            "outputSchema": {"type": "object", "required": []},
            "annotations": {"title": "Get a thing", "readOnlyHint": True}}
    out = compact_tool(tool)
    assert out["inputSchema"] == {"type": "object", "properties": {"id": {"type": "string"}}}
    assert out["outputSchema"] == {"type": "object"}
    assert out["annotations"] == {"readOnlyHint": True}
    assert out["description"] == tool["description"] and out["title"] == "Get a thing"
    assert compact_tool(tool, max_description=20)["description"] == "Gets one thing by…"
    assert compact_tool(tool, max_description=200)["description"] == tool["description"]
    other = dict(tool, annotations={"title": "Shown instead", "readOnlyHint": True})
    assert compact_tool(other)["annotations"]["title"] == "Shown instead"
    assert tool["annotations"]["title"] == "Get a thing"  # not modified


def test_cap_description() -> None:
    assert cap_description("short", 10) == "short"
    assert cap_description("exactly ten", 11) == "exactly ten"
    assert cap_description("one two three four", 10) == "one two…"
    assert cap_description("abcdefghijklmnop", 5) == "abcd…"
    assert len(cap_description("word " * 100, 50)) <= 50
    with pytest.raises(ValueError):
        cap_description("x", 0)


# -- real schemas -----------------------------------------------------------------------------

DOCUMENTS = ("slack.json", "stripe.json", "github-api.json.gz", "train-travel-3.1.yaml", "petstore-3.1.yaml",
             "discourse-3.1.json", "xkcd.json", "spotify.json", "trello.json", "schema-types-3.1.yaml",
             "polymorphism-3.0.yaml", "schema-circular-3.0.yaml")
SAMPLE_PER_DOCUMENT = 40


@functools.cache
def real_tools() -> list[dict[str, Any]]:
    """A deterministic sample of wire-form tools from several converted documents."""
    rng = random.Random(14)
    tools: list[dict[str, Any]] = []
    for name in DOCUMENTS:
        converted = convert_source(str(ROOT / "openapi_specs" / name))
        wire = [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in converted.tools]
        tools.extend(rng.sample(wire, min(SAMPLE_PER_DOCUMENT, len(wire))))
    return tools


class Instances:
    """Instances for one schema: built to match it (required properties, const/enum/examples/default,
    one branch of anyOf/oneOf), then mutated to break it (missing required, wrong types, extra
    properties). Both kinds are needed: identical verdicts only mean something if some are False."""

    def __init__(self, root: dict[str, Any], rng: random.Random) -> None:
        self.root, self.rng = root, rng

    def resolve(self, node: Any) -> Any:
        for _ in range(10):
            ref = node.get("$ref") if isinstance(node, dict) else None
            if not (isinstance(ref, str) and ref.startswith("#/")):
                return node
            target: Any = self.root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, dict) else None
            node = target
        return node

    def build(self, node: Any, depth: int = 0) -> Any:
        node = self.resolve(node)
        if not isinstance(node, dict) or depth > 5:
            return None
        rng = self.rng
        if "const" in node:
            return copy.deepcopy(node["const"])
        if isinstance(node.get("enum"), list) and node["enum"]:
            return copy.deepcopy(rng.choice(node["enum"]))
        if isinstance(node.get("examples"), list) and node["examples"] and rng.random() < 0.5:
            return copy.deepcopy(rng.choice(node["examples"]))
        if "default" in node and rng.random() < 0.3:
            return copy.deepcopy(node["default"])
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list) and node[key]:
                return self.build(rng.choice(node[key]), depth + 1)
        if isinstance(node.get("allOf"), list) and node["allOf"]:
            merged: dict[str, Any] = {}
            for part in node["allOf"]:
                value = self.build(part, depth + 1)
                if isinstance(value, dict):
                    merged.update(value)
            if merged:
                return merged
        kind = node.get("type")
        if isinstance(kind, list):
            kind = rng.choice(kind) if kind else None
        if kind is None:
            kind = "object" if "properties" in node else "array" if "items" in node else rng.choice(["string", "integer"])
        if kind == "object":
            props = node.get("properties") if isinstance(node.get("properties"), dict) else {}
            required = [r for r in node.get("required", []) if isinstance(r, str)]
            chosen = set(required) | {p for p in props if rng.random() < 0.4}
            return {p: self.build(props.get(p, {}), depth + 1) for p in sorted(chosen)}
        if kind == "array":
            return [self.build(node.get("items", {}), depth + 1) for _ in range(rng.randint(0, 2))]
        if kind == "integer":
            return rng.choice([0, 1, 7, 100, -3])
        if kind == "number":
            return rng.choice([0, 1.5, -2.25, 1e6])
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "null":
            return None
        return rng.choice(["", "x", "hello world", "2024-01-01T00:00:00Z", "a@b.example", "ABC-123"])

    def breakages(self, good: Any) -> list[Any]:
        out: list[Any] = [None, [], "text", 12, {"zz_unexpected": True}]
        node = self.resolve(self.root)
        if isinstance(good, dict) and good:
            key = self.rng.choice(sorted(good))
            out.append({k: v for k, v in good.items() if k != key})
            out.append({**good, key: 12345})
            out.append({**good, key: "not-a-number"})
            out.append({**good, key: None})
            out.append({**good, key: [{"nested": 1}]})
        if isinstance(node, dict) and isinstance(node.get("properties"), dict) and node["properties"]:
            key = self.rng.choice(sorted(node["properties"]))
            out.append({key: {}})
            out.append({key: [1, "a", None]})
        if isinstance(good, dict):
            out.append({**good, "zz_unexpected": 1})
        return out


def verdict(validator: Draft202012Validator, instance: Any) -> bool | str:
    try:
        return validator.is_valid(instance)
    except Exception as exc:  # noqa: BLE001 - the same failure on both sides counts as the same verdict
        return type(exc).__name__


def test_compaction_is_lossless_on_real_schemas() -> None:
    rng = random.Random(2026)
    schemas = [(t["name"], t[key]) for t in real_tools() for key in ("inputSchema", "outputSchema") if key in t]
    assert len(schemas) > 400
    outcomes = {True: 0, False: 0}
    changed = 0
    before = after = 0
    for name, schema in schemas:
        compacted = compact_schema(schema)
        assert compact_schema(compacted) == compacted, f"{name}: not idempotent"
        Draft202012Validator.check_schema(compacted)
        changed += compacted != schema
        before += len(json.dumps(schema, separators=(",", ":")))
        after += len(json.dumps(compacted, separators=(",", ":")))
        original_validator, compact_validator = Draft202012Validator(schema), Draft202012Validator(compacted)
        generator = Instances(schema, rng)
        instances = [generator.build(schema) for _ in range(4)]
        instances += generator.breakages(instances[0])
        for instance in instances:
            expected = verdict(original_validator, instance)
            assert verdict(compact_validator, instance) == expected, f"{name}: {json.dumps(instance)[:200]}"
            if isinstance(expected, bool):
                outcomes[expected] += 1
    # The check means something: both verdicts are common, and compaction did change schemas.
    assert outcomes[True] > 1000 and outcomes[False] > 1000, outcomes
    assert changed > 50
    assert after < before
    print(f"\n{len(schemas)} schemas ({changed} changed): {before:,} -> {after:,} characters "
          f"({(before - after) / before:.2%} saved); verdicts {outcomes}")


def test_compact_tools_are_idempotent_and_smaller_on_real_tools() -> None:
    tools = real_tools()
    compacted = [compact_tool(t) for t in tools]
    assert [compact_tool(t) for t in compacted] == compacted
    assert listing_tokens(compacted) < listing_tokens(tools)
    for original, small in zip(tools, compacted, strict=True):
        assert small["name"] == original["name"] and small.get("description") == original.get("description")


def test_documents_exist() -> None:
    missing = [name for name in DOCUMENTS if not Path(ROOT / "openapi_specs" / name).exists()]
    assert not missing
