"""Property tests: for generated OpenAPI documents, however odd, conversion yields valid tools.

Documents are drawn with arbitrary operationIds and paths, schemas with every keyword in valid and
invalid forms, `$ref`s between components (cycles included) and to components that do not exist.
Whatever comes in: tool names match `^[a-zA-Z0-9_-]{1,64}$` and are unique, every input and output
schema passes Draft 2020-12 `check_schema` and refers to nothing outside itself, and an operation
that cannot be converted is reported as skipped instead of failing the document.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from mcp_hub.upstreams.openapi import inspect_document, sanitize_tool_name

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
COMPONENTS = ["A", "B", "C", "Node", "Missing"]  # "Missing" is never defined

texts = st.text(max_size=30)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False), texts)
refs = st.sampled_from([*COMPONENTS, "A", "Node"]).map(lambda name: {"$ref": f"#/components/schemas/{name}"})


def schema_keywords(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional={
        "type": st.one_of(st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "null",
                                           "file", "bogus"]),
                          st.lists(st.sampled_from(["string", "integer", "null"]), max_size=3)),
        "nullable": st.booleans(),
        "format": st.sampled_from(["date-time", "binary", "byte", "int64", "email"]),
        "enum": st.lists(scalars, max_size=3),
        "default": scalars,
        "example": scalars,
        "pattern": st.sampled_from(["^[a-z]+$", "(unclosed", "\\p{L}", "[0-9]{2,}"]),
        "minimum": st.one_of(st.integers(-3, 3), st.just("5")),
        "exclusiveMinimum": st.one_of(st.booleans(), st.integers(0, 3)),
        "maxLength": st.one_of(st.integers(-1, 10), st.just(2.5)),
        "required": st.one_of(st.lists(st.one_of(texts, st.integers()), max_size=3), st.booleans()),
        "properties": st.dictionaries(texts, children, max_size=3),
        "additionalProperties": st.one_of(st.booleans(), children),
        "items": st.one_of(children, st.lists(children, max_size=2)),
        "allOf": st.lists(children, max_size=2),
        "oneOf": st.lists(children, max_size=2),
        "anyOf": st.lists(children, max_size=2),
        "not": children,
        "readOnly": st.booleans(),
        "writeOnly": st.booleans(),
        "description": st.one_of(texts, st.integers()),
        "discriminator": st.just({"propertyName": "kind"}),
        "x-vendor": scalars,
    })


schemas = st.recursive(
    st.one_of(refs, schema_keywords(st.just({}))),
    lambda children: st.one_of(refs, schema_keywords(children), st.just(True), st.just("not a schema")),
    max_leaves=8,
)

parameters = st.fixed_dictionaries(
    {"name": texts, "in": st.sampled_from(["path", "query", "header", "cookie", "query", "body"])},
    optional={"required": st.booleans(), "schema": schemas, "style": st.sampled_from(["form", "simple", "deepObject"]),
              "explode": st.booleans(), "description": texts,
              "content": st.just({"application/json": {"schema": {"type": "object"}}})},
)
media = st.sampled_from(["application/json", "application/x-www-form-urlencoded", "multipart/form-data",
                         "text/plain", "application/octet-stream", "application/xml", "*/*", "image/png"])
bodies = st.fixed_dictionaries({"content": st.dictionaries(media, st.fixed_dictionaries({}, optional={"schema": schemas}),
                                                           max_size=2)},
                               optional={"required": st.booleans(), "description": texts})
responses = st.dictionaries(
    st.sampled_from(["200", "201", "204", "400", "default", "2XX"]),
    st.fixed_dictionaries({"description": texts}, optional={"content": st.dictionaries(media, st.fixed_dictionaries(
        {}, optional={"schema": schemas}), max_size=2)}),
    max_size=3,
)
operations = st.fixed_dictionaries(
    {"responses": responses},
    optional={"operationId": st.one_of(texts, st.text(min_size=60, max_size=120)),
              "summary": texts, "parameters": st.lists(parameters, max_size=4), "requestBody": bodies,
              "tags": st.lists(texts, max_size=2), "security": st.just([]), "deprecated": st.booleans()},
)
path_items = st.dictionaries(st.sampled_from(["get", "put", "post", "delete", "patch", "head", "parameters"]),
                             operations, min_size=1, max_size=4)
paths = st.dictionaries(
    st.lists(st.one_of(texts, st.just("{id}"), st.just("{name}")), min_size=1, max_size=3).map(lambda s: "/" + "/".join(s)),
    path_items, min_size=1, max_size=4,
)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from(["3.0.3", "3.1.0"]))
    components = {name: draw(schemas) for name in ("A", "B", "C")}
    if draw(st.booleans()):
        # A guaranteed cycle: Node -> children -> Node.
        components["Node"] = {"type": "object", "properties": {"children": {"type": "array", "items": {
            "$ref": "#/components/schemas/Node"}}, "value": draw(schemas)}}
    doc = {"openapi": version, "info": {"title": "generated", "version": "1"}, "paths": draw(paths),
           "components": {"schemas": components}}
    for item in doc["paths"].values():
        if "parameters" in item:
            item["parameters"] = draw(st.lists(parameters, max_size=2))
        for op in (v for k, v in item.items() if k != "parameters"):
            # Often enough, bodies and answers that reach the components (and their cycles).
            target = draw(st.sampled_from(COMPONENTS[:-1]))
            if draw(st.booleans()):
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"item": {"$ref": f"#/components/schemas/{target}"},
                                                     "more": draw(schemas)}}}}}
            if draw(st.booleans()):
                op["responses"] = {"200": {"description": "ok", "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"data": {"$ref": f"#/components/schemas/{target}"}}}}}}}
    return doc


def outside_refs(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})
    found = re.findall(r'"\$ref": "((?:[^"\\]|\\.)*)"', json.dumps(schema))
    return [r for r in found if not (r.startswith("#/$defs/") and r[len("#/$defs/"):] in defs)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents())
def test_generated_documents_give_valid_tools(document: dict[str, Any]) -> None:
    tools, skipped = inspect_document(document)
    names = [tool.name for tool in tools]
    assert all(NAME.match(name) for name in names), names
    assert len(set(names)) == len(names)
    for tool in tools:
        for schema in (tool.input_schema, tool.output_schema):
            if schema is None:
                continue
            Draft202012Validator.check_schema(schema)
            assert not outside_refs(schema), outside_refs(schema)
            json.dumps(schema)  # JSON all the way down
        assert tool.input_schema["type"] == "object"
        if tool.output_schema is not None:
            assert tool.output_schema["type"] == "object"
    for skip in skipped:
        assert skip.reason and isinstance(skip.reason, str)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_sanitized_names_are_valid_and_stable(raw: str) -> None:
    name = sanitize_tool_name(raw)
    assert name == "" or NAME.match(name)
    assert sanitize_tool_name(raw) == name
