"""Conversion of OpenAPI documents to tools: names, schemas, bindings, selection, skips (pure functions)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mcp_hub.upstreams.openapi import (
    DocumentError,
    OpenAPIUpstreamConfig,
    convert_source,
    inspect_document,
    sanitize_tool_name,
)
from tests.support.tools import ROOT

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def doc(paths: dict[str, Any], *, version: str = "3.0.3", **extra: Any) -> dict[str, Any]:
    return {"openapi": version, "info": {"title": "t", "version": "1"}, "paths": paths, **extra}


def op(**fields: Any) -> dict[str, Any]:
    return {"responses": {"200": {"description": "ok"}}, **fields}


def tools_of(document: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    tools, skipped = inspect_document(document, **kwargs)
    assert not skipped, skipped
    return {tool.name: tool for tool in tools}


def check(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    text = json.dumps(schema)
    for ref in re.findall(r'"\$ref": "([^"]*)"', text):
        assert ref.startswith("#/$defs/") and ref.split("/")[-1] in schema.get("$defs", {}), ref


# -- names -----------------------------------------------------------------------------------


def test_names_sanitized_shortened_and_deduplicated() -> None:
    long_id = "a" * 100
    document = doc({
        "/repos/{owner}/{repo}": {
            "get": op(operationId="repos/get"),
            "post": op(operationId="repos/get"),  # duplicate operationId
            "put": op(operationId=long_id),
            "delete": op(),  # no operationId
            "patch": op(operationId="日本語"),  # nothing usable left
        },
    })
    names = list(tools_of(document))
    assert names[0] == "repos_get"
    assert names[1].startswith("repos_get_") and len(names[1]) == len("repos_get_") + 6
    assert names[2] == sanitize_tool_name(long_id) and len(names[2]) == 64 and names[2].startswith("a" * 55)
    assert names[3] == "delete_repos_owner_repo"
    assert names[4] == "patch_repos_owner_repo"
    assert all(NAME.match(n) for n in names) and len(set(names)) == len(names)
    assert list(tools_of(document)) == names  # deterministic


def test_annotations_follow_the_method() -> None:
    tools = tools_of(doc({"/x": {m: op(operationId=m) for m in ("get", "post", "put", "patch", "delete")}}))
    assert tools["get"].annotations.read_only_hint is True
    assert tools["delete"].annotations.destructive_hint is True
    assert tools["put"].annotations.idempotent_hint is True
    assert tools["post"].annotations.read_only_hint is False and tools["post"].annotations.destructive_hint is False


def test_description_from_summary_and_description() -> None:
    tools = tools_of(doc({"/x": {"get": op(operationId="a", summary="Short.", description="Longer text.",
                                            deprecated=True)}}))
    assert tools["a"].description == "(deprecated) Short.\n\nLonger text."
    assert tools["a"].title == "Short."


# -- schemas ---------------------------------------------------------------------------------


def test_parameters_keep_keywords_and_openapi30_nullable_becomes_a_type_array() -> None:
    params = [
        {"name": "state", "in": "query", "required": True,
         "schema": {"type": "string", "enum": ["open", "closed"], "default": "open", "nullable": True}},
        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}, "example": "2020-01-01"},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0, "exclusiveMinimum": True,
                                                     "maximum": 100}},
        {"name": "filter[status]", "in": "query", "schema": {"type": "string"}},
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "id", "in": "query", "schema": {"type": "string"}},
        {"name": "Authorization", "in": "header", "schema": {"type": "string"}},
        {"name": "pattern", "in": "query", "schema": {"type": "string", "pattern": "(?<=\\p{L}"}},
    ]
    tool = tools_of(doc({"/x/{id}": {"get": op(operationId="list", parameters=params)}}))["list"]
    props = tool.input_schema["properties"]
    assert props["state"] == {"type": ["string", "null"], "enum": ["open", "closed", None], "default": "open"}
    assert props["since"] == {"type": "string", "format": "date-time", "examples": ["2020-01-01"]}
    assert props["limit"] == {"type": "integer", "exclusiveMinimum": 0, "maximum": 100}
    assert "filter_status" in props and "query_id" in props and "id" in props
    assert "Authorization" not in props
    assert props["pattern"] == {"type": "string"}  # an invalid regex is dropped, not copied
    assert tool.input_schema["required"] == ["state", "id"]
    check(tool.input_schema)


def test_composition_keywords_survive() -> None:
    schemas = {
        "Cat": {"type": "object", "properties": {"kind": {"type": "string", "const": "cat"}, "meows": {"type": "boolean"}}},
        "Dog": {"type": "object", "properties": {"kind": {"type": "string"}, "barks": {"type": "boolean"}}},
        "Pet": {"oneOf": [{"$ref": "#/components/schemas/Cat"}, {"$ref": "#/components/schemas/Dog"}],
                "discriminator": {"propertyName": "kind"}},
        "Named": {"allOf": [{"$ref": "#/components/schemas/Cat"}, {"type": "object", "properties": {"name": {"type": "string"}}}]},
    }
    body = {"required": True, "content": {"application/json": {"schema": {"type": "object", "properties": {
        "pet": {"$ref": "#/components/schemas/Pet"},
        "named": {"$ref": "#/components/schemas/Named"},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
    }}}}}
    document = doc({"/pets": {"post": op(operationId="add", requestBody=body)}}, components={"schemas": schemas})
    tool = tools_of(document)["add"]
    props = tool.input_schema["properties"]
    assert [b["properties"]["kind"] for b in props["pet"]["oneOf"]] == [{"type": "string", "const": "cat"},
                                                                        {"type": "string"}]
    assert "discriminator" not in props["pet"]
    assert len(props["named"]["allOf"]) == 2 and props["either"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}
    check(tool.input_schema)


def test_recursive_schemas_become_local_defs() -> None:
    schemas = {
        "Node": {"type": "object", "properties": {"value": {"type": "integer"},
                                                  "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                                                  "peer": {"$ref": "#/components/schemas/Peer"}}},
        "Peer": {"type": "object", "properties": {"back": {"$ref": "#/components/schemas/Node"}}},
    }
    body = {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}
    response = {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}}
    document = doc({"/tree": {"post": {"operationId": "put", "requestBody": body, "responses": response},
                              "get": {"operationId": "peer", "responses": {"200": {"description": "ok", "content": {
                                  "application/json": {"schema": {"$ref": "#/components/schemas/Peer"}}}}}}}},
                   components={"schemas": schemas})
    tools = tools_of(document)
    schema = tools["put"].input_schema
    assert schema["properties"]["body"] == {"$ref": "#/$defs/Node"}
    assert schema["$defs"]["Node"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Node"}
    check(schema)
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"body": {"value": 1, "children": [{"value": 2, "peer": {"back": {"value": 3}}}]}})
    assert not validator.is_valid({"body": {"value": "x"}})
    for name in ("put", "peer"):
        assert tools[name].output_schema is not None and tools[name].output_schema["type"] == "object"
        check(tools[name].output_schema)


def test_relative_file_refs(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "pet.yaml").write_text(
        "Pet:\n  type: object\n  required: [name]\n  properties:\n    name: {type: string}\n"
        "    tag: {$ref: 'common.yaml#/Tag'}\n")
    (tmp_path / "schemas" / "common.yaml").write_text("Tag: {type: string, maxLength: 10}\n")
    (tmp_path / "api.yaml").write_text(
        "openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    post:\n      operationId: add\n"
        "      requestBody:\n        required: true\n        content:\n          application/json:\n"
        "            schema: {$ref: 'schemas/pet.yaml#/Pet'}\n      responses: {'200': {description: ok}}\n")
    tools, skipped = inspect_document(str(tmp_path / "api.yaml"))
    assert not skipped
    assert tools[0].input_schema["properties"] == {"name": {"type": "string"}, "tag": {"type": "string", "maxLength": 10}}
    assert tools[0].input_schema["required"] == ["name"]


def test_openapi31_features() -> None:
    schemas = {"Base": {"type": "object", "properties": {"id": {"type": "integer"}}}}
    params = [{"name": "q", "in": "query", "schema": {"type": ["string", "null"], "examples": ["x"]}}]
    body = {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": {
            "base": {"$ref": "#/components/schemas/Base", "description": "overridden"},
            "ints": {"type": "array", "prefixItems": [{"type": "integer"}], "items": False},
            "kind": {"const": "k"},
        }}}}}
    tool = tools_of(doc({"/x": {"post": op(operationId="x", parameters=params, requestBody=body)}},
                        version="3.1.0", components={"schemas": schemas}))["x"]
    props = tool.input_schema["properties"]
    assert props["q"] == {"type": ["string", "null"], "examples": ["x"]}
    assert props["base"]["description"] == "overridden" and props["base"]["properties"] == {"id": {"type": "integer"}}
    assert props["ints"] == {"type": "array", "prefixItems": [{"type": "integer"}], "items": False}
    assert props["kind"] == {"const": "k"}
    check(tool.input_schema)


def test_read_only_and_write_only_properties() -> None:
    schema = {"type": "object", "required": ["id", "name"], "properties": {
        "id": {"type": "string", "readOnly": True}, "name": {"type": "string"},
        "password": {"type": "string", "writeOnly": True}}}
    document = doc({"/u": {"post": {"operationId": "create", "requestBody": {"required": True, "content": {
        "application/json": {"schema": schema}}}, "responses": {"201": {"description": "ok", "content": {
            "application/json": {"schema": schema}}}}}}})
    tool = tools_of(document)["create"]
    assert set(tool.input_schema["properties"]) == {"name", "password"} and tool.input_schema["required"] == ["name"]
    assert set(tool.output_schema["properties"]) == {"id", "name"}
    # Output schemas describe shapes: answers with nulls or extra values still validate.
    assert Draft202012Validator(tool.output_schema).is_valid({"id": None, "extra": 1})


def test_bodies_form_multipart_text_and_binary() -> None:
    form = {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
        "type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}}}
    upload = {"content": {"multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"}}}}}}
    text_body = {"content": {"text/plain": {"schema": {"type": "string"}}}}
    raw = {"content": {"application/octet-stream": {}}}
    both = {"content": {"application/xml": {"schema": {"type": "object"}},
                        "application/json": {"schema": {"type": "object", "properties": {"j": {"type": "integer"}}}}}}
    document = doc({"/f": {"post": op(operationId="form", requestBody=form), "put": op(operationId="upload", requestBody=upload),
                           "patch": op(operationId="text", requestBody=text_body), "delete": op(operationId="raw", requestBody=raw),
                           "get": op(operationId="both", requestBody=both)}})
    converted = convert_source(document)
    tools = {t.name: t for t in converted.tools}
    assert tools["form"].input_schema["required"] == ["a"] and converted.bindings["form"].body.kind == "form"
    assert tools["upload"].input_schema["properties"]["file"]["contentEncoding"] == "base64"
    assert converted.bindings["upload"].body.binary_fields == frozenset({"file"})
    assert tools["text"].input_schema["properties"]["body"] == {"type": "string"}
    assert converted.bindings["raw"].body.kind == "binary"
    assert converted.bindings["both"].body.media_type == "application/json"  # JSON preferred


def test_output_schema_only_for_a_single_json_object_answer() -> None:
    obj = {"application/json": {"schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}
    arr = {"application/json": {"schema": {"type": "array", "items": {"type": "string"}}}}
    document = doc({"/o": {
        "get": {"operationId": "obj", "responses": {"200": {"description": "", "content": obj}, "404": {"description": ""}}},
        "put": {"operationId": "arr", "responses": {"200": {"description": "", "content": arr}}},
        "post": {"operationId": "two", "responses": {"200": {"description": "", "content": obj}, "204": {"description": ""}}},
    }})
    tools = tools_of(document)
    assert tools["obj"].output_schema == {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}
    # A non-object answer is wrapped as `result` (tests/test_openapi_output_schema.py covers it end to end).
    assert tools["arr"].output_schema == {"type": "object", "required": ["result"], "properties": {
        "result": {"type": ["array", "null"], "items": {"type": ["string", "null"]}}}}
    assert tools["two"].output_schema is None


def test_broken_operation_is_skipped_with_its_reason() -> None:
    document = doc({"/ok": {"get": op(operationId="ok")},
                    "/bad": {"get": op(operationId="bad", parameters=[{"$ref": "#/components/parameters/Nope"}])},
                    "/bad2": {"get": op(operationId="bad2", parameters=[{"name": "x", "in": "body"}])}})
    tools, skipped = inspect_document(document)
    assert [t.name for t in tools] == ["ok"]
    reasons = {s.operation_id: s.reason for s in skipped}
    assert "'#/components/parameters/Nope'" in reasons["bad"] and "does not resolve" in reasons["bad"]
    assert "invalid name or location 'body'" in reasons["bad2"]


def test_include_and_exclude() -> None:
    document = doc({
        "/pets": {"get": op(operationId="listPets", tags=["pets"]), "post": op(operationId="addPet", tags=["pets"])},
        "/pets/{id}": {"delete": op(operationId="deletePet", tags=["pets"])},
        "/store/order": {"get": op(operationId="getOrder", tags=["store"])},
    })
    config = OpenAPIUpstreamConfig.model_validate({"spec": "x", "include": {"tags": ["pets"]},
                                                   "exclude": {"paths": ["DELETE /pets/*"], "operations": ["addPet"]}})
    tools, skipped = inspect_document(document, config=config)
    assert [t.name for t in tools] == ["listPets"]
    assert {s.operation_id: s.reason for s in skipped} == {
        "addPet": "excluded by exclude.operations", "deletePet": "excluded by exclude.paths",
        "getOrder": "not selected by include"}
    deep = OpenAPIUpstreamConfig.model_validate({"spec": "x", "include": {"paths": ["/pets/**", "/store/*"]}})
    assert [t.name for t in inspect_document(document, config=deep)[0]] == ["deletePet", "getOrder"]


def test_swagger2_is_upgraded() -> None:
    tools, skipped = inspect_document(str(ROOT / "openapi_specs" / "petstore-2.0.yaml"))
    assert not skipped and len(tools) == 20
    converted = convert_source(str(ROOT / "openapi_specs" / "petstore-2.0.yaml"))
    assert converted.servers == ["http://petstore.swagger.io/v2"]
    find = converted.bindings["findPetsByStatus"].parameters[0]
    assert (find.location, find.style, find.explode) == ("query", "form", True)  # collectionFormat: multi
    assert converted.bindings["updatePetWithForm"].body.kind == "form"
    assert converted.bindings["uploadFile"].body.kind == "multipart"
    add = {t.name: t for t in tools}["addPet"]
    assert add.input_schema["required"] == ["name", "photoUrls"]  # #/definitions/Pet resolved and flattened
    assert converted.security_schemes["api_key"] == {"type": "apiKey", "name": "api_key", "in": "header"}


@pytest.mark.parametrize(("document", "message"), [
    ([1, 2], "not an OpenAPI document (top level is a list)"),
    ({"openapi": "2.5"}, "not an OpenAPI 2.0/3.x document"),
    ({"openapi": "3.0.0", "paths": []}, "'paths' is not a mapping"),
])
def test_documents_that_are_not_openapi(document: Any, message: str) -> None:
    with pytest.raises(DocumentError, match=re.escape(message)):
        inspect_document(document)  # type: ignore[arg-type]


def test_yaml_timestamps_stay_strings(tmp_path: Path) -> None:
    (tmp_path / "d.yaml").write_text(
        "openapi: 3.0.0\ninfo: {title: t, version: 1}\npaths:\n  /x:\n    get:\n      operationId: x\n"
        "      parameters:\n        - {name: d, in: query, schema: {type: string, default: 2020-01-01}}\n"
        "      responses: {200: {description: ok}}\n")
    tools, _ = inspect_document(str(tmp_path / "d.yaml"))
    assert tools[0].input_schema["properties"]["d"]["default"] == "2020-01-01"
    json.dumps(tools[0].input_schema)
