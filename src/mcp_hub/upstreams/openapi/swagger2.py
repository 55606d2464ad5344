"""Swagger 2.0 to OpenAPI 3.0: just enough of the upgrade for tool generation.

Covers servers (host, basePath, schemes), `definitions`, body and formData parameters (to request
bodies), collectionFormat (to style/explode), responses (to content), security definitions.
`$ref`s to `#/definitions/...` are rewritten; shared `#/parameters/...` and `#/responses/...` are
inlined where operations use them.
"""

from __future__ import annotations

from typing import Any

_COLLECTION = {
    "csv": ("form", False),
    "ssv": ("spaceDelimited", False),
    "pipes": ("pipeDelimited", False),
    "multi": ("form", True),
    "tsv": ("form", False),  # no 3.0 equivalent; comma-separated is the nearest
}
_SCHEMA_KEYS = ("type", "format", "items", "enum", "default", "minimum", "maximum", "exclusiveMinimum",
                "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "uniqueItems",
                "multipleOf", "description")
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch")


def _rewrite_refs(node: Any) -> Any:
    """A copy of `node` with `#/definitions/X` references pointing at `#/components/schemas/X`."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/definitions/"):
                out[key] = "#/components/schemas/" + value[len("#/definitions/"):]
            else:
                out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


def _local(doc: dict[str, Any], node: Any, section: str) -> Any:
    """Inline a `#/parameters/X` or `#/responses/X` reference of the Swagger document."""
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        prefix = f"#/{section}/"
        if node["$ref"].startswith(prefix):
            return doc.get(section, {}).get(node["$ref"][len(prefix):], node)
    return node


def _items_schema(param: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of a non-body Swagger parameter (or of its `items`)."""
    schema = {k: param[k] for k in _SCHEMA_KEYS if k in param and k != "description"}
    if isinstance(schema.get("items"), dict):
        schema["items"] = _items_schema(schema["items"])
    if schema.get("type") == "file":
        schema["type"] = "string"
        schema["format"] = "binary"
    return schema


def _operation(doc: dict[str, Any], op: dict[str, Any], shared: list[Any]) -> dict[str, Any]:
    consumes = op.get("consumes") or doc.get("consumes") or ["application/json"]
    produces = op.get("produces") or doc.get("produces") or ["application/json"]
    out = {k: v for k, v in op.items() if k not in ("parameters", "responses", "consumes", "produces")}
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*shared, *(op.get("parameters") or [])]:
        param = _local(doc, raw, "parameters")
        if isinstance(param, dict):
            merged[(str(param.get("name")), str(param.get("in")))] = param
    params: list[dict[str, Any]] = []
    form: dict[str, Any] = {}
    form_required: list[str] = []
    for param in merged.values():
        where = param.get("in")
        if where == "body":
            out["requestBody"] = {
                "required": bool(param.get("required")),
                "description": param.get("description", ""),
                "content": {media: {"schema": param.get("schema", {})} for media in consumes},
            }
        elif where == "formData":
            prop = _items_schema(param)
            if "description" in param:
                prop["description"] = param["description"]
            form[str(param.get("name"))] = prop
            if param.get("required"):
                form_required.append(str(param.get("name")))
        elif where in ("path", "query", "header"):
            new = {k: param[k] for k in ("name", "in", "description", "required", "deprecated",
                                         "allowEmptyValue") if k in param}
            new["schema"] = _items_schema(param)
            if param.get("type") == "array":
                style, explode = _COLLECTION.get(param.get("collectionFormat", "csv"), ("form", False))
                new["style"] = "simple" if where in ("path", "header") else style
                new["explode"] = explode
            params.append(new)
    if form:
        multipart = any(p.get("format") == "binary" for p in form.values()) or "multipart/form-data" in consumes
        media = "multipart/form-data" if multipart else "application/x-www-form-urlencoded"
        schema: dict[str, Any] = {"type": "object", "properties": form}
        if form_required:
            schema["required"] = form_required
        out["requestBody"] = {"required": bool(form_required), "content": {media: {"schema": schema}}}
    if params:
        out["parameters"] = params
    responses: dict[str, Any] = {}
    for code, raw in (op.get("responses") or {}).items():
        response = _local(doc, raw, "responses")
        if not isinstance(response, dict):
            continue
        new = {"description": response.get("description", "")}
        if "schema" in response:
            new["content"] = {media: {"schema": response["schema"]} for media in produces}
        responses[str(code)] = new
    out["responses"] = responses
    return out


def _security_schemes(definitions: dict[str, Any]) -> dict[str, Any]:
    schemes: dict[str, Any] = {}
    for name, sec in definitions.items():
        if not isinstance(sec, dict):
            continue
        kind = sec.get("type")
        if kind == "basic":
            schemes[name] = {"type": "http", "scheme": "basic"}
        elif kind == "apiKey":
            schemes[name] = {"type": "apiKey", "name": sec.get("name"), "in": sec.get("in")}
        elif kind == "oauth2":
            flow = {"implicit": "implicit", "password": "password", "application": "clientCredentials",
                    "accessCode": "authorizationCode"}.get(sec.get("flow", ""), "clientCredentials")
            body = {k: sec[k] for k in ("authorizationUrl", "tokenUrl") if k in sec}
            body["scopes"] = sec.get("scopes", {})
            schemes[name] = {"type": "oauth2", "flows": {flow: body}}
    return schemes


def upgrade_swagger2(doc: dict[str, Any]) -> dict[str, Any]:
    """Return an OpenAPI 3.0 document equivalent (for tool generation) to a Swagger 2.0 one."""
    doc = _rewrite_refs(doc)
    host = doc.get("host")
    base_path = doc.get("basePath", "") or ""
    servers = []
    if host:
        schemes = [s for s in doc.get("schemes") or ["https"] if s in ("http", "https")] or ["https"]
        for scheme in sorted(schemes, key=lambda s: s != "https"):  # https first when offered
            servers.append({"url": f"{scheme}://{host}{base_path}"})
    elif base_path:
        servers.append({"url": base_path})
    paths: dict[str, Any] = {}
    for path, item in (doc.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        shared = item.get("parameters") or []
        new_item: dict[str, Any] = {}
        for method in _METHODS:
            if isinstance(item.get(method), dict):
                new_item[method] = _operation(doc, item[method], shared)
        paths[path] = new_item
    out: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": doc.get("info", {}),
        "paths": paths,
        "components": {
            "schemas": doc.get("definitions") or {},
            "securitySchemes": _security_schemes(doc.get("securityDefinitions") or {}),
        },
    }
    if servers:
        out["servers"] = servers
    for key in ("security", "tags"):
        if key in doc:
            out[key] = doc[key]
    return out
