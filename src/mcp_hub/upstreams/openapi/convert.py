"""OpenAPI documents (2.0, 3.0, 3.1) to MCP tools, one tool per operation.

`convert_document` returns the tools, and for each tool an `OperationBinding`: everything needed
to turn the tool's arguments back into an HTTP request (method, path template, where each argument
goes and how it is serialized, how the body is encoded). Operations that cannot be converted are
listed in `skipped` with the reason; one odd operation never fails the whole document.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urljoin

import mcp_types as types
from openapi_pydantic.v3.v3_1 import Server

from mcp_hub.config.openapi import OperationSelector
from mcp_hub.upstreams.openapi.refs import DocumentError, RefResolver
from mcp_hub.upstreams.openapi.schema import PatternReport, SchemaTranslator, contains_ref, make_nullable_free
from mcp_hub.upstreams.openapi.swagger2 import upgrade_swagger2

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Property names some LLM APIs accept in input schemas (Anthropic's rule).
ARG_NAME = re.compile(r"^[a-zA-Z0-9_.-]{1,64}$")
MAX_DESCRIPTION = 4000
# Per OpenAPI, Accept, Content-Type and Authorization parameters are ignored; the HTTP client owns
# the framing headers, and a wrong Content-Length from a caller would break the request.
IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization", "content-length", "host",
                             "transfer-encoding", "connection"})

Location = Literal["path", "query", "header", "cookie"]
BodyKind = Literal["json", "form", "multipart", "text", "binary"]


@dataclass(frozen=True, slots=True)
class ParameterBinding:
    """One path, query, header or cookie parameter: argument name, wire name and serialization."""

    arg: str
    name: str
    location: Location
    style: str
    explode: bool
    required: bool = False
    allow_reserved: bool = False
    # Set when the parameter uses `content` instead of `schema`: the value is serialized as JSON.
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class PartEncoding:
    """How one property of a form or multipart body is encoded (the OpenAPI Encoding Object)."""

    content_type: str | None = None
    style: str = "form"
    explode: bool = True
    # Whether the document set `style`/`explode` itself (multipart honours them only then).
    declared_style: bool = False


@dataclass(frozen=True, slots=True)
class BodyBinding:
    """The request body: its media type, encoding, and which arguments make it up.

    `fields` maps argument names to body property names when the body's properties were spread
    into the tool's arguments; otherwise the whole body is the argument `arg`.
    """

    media_type: str
    kind: BodyKind
    required: bool
    arg: str | None = None
    fields: Mapping[str, str] | None = None
    encoding: Mapping[str, PartEncoding] = field(default_factory=dict)
    binary_fields: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OperationBinding:
    """What a tool call needs to become an HTTP request; kept out of the `Tool` itself."""

    tool_name: str
    method: str
    path: str
    operation_id: str | None
    parameters: tuple[ParameterBinding, ...]
    body: BodyBinding | None
    # An operation- or path-level `servers` entry overrides the document's base URL.
    server_url: str | None = None
    # False when the operation declares `security: []`.
    needs_auth: bool = True
    has_output_schema: bool = False
    # The answer is not a JSON object: the output schema wraps it as `{"result": <answer>}`.
    output_wrapped: bool = False
    # The operation's `tags` (strings only, document order), for grouping and search.
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SkippedOperation:
    """An operation that produced no tool, and why."""

    method: str
    path: str
    operation_id: str | None
    reason: str


@dataclass(slots=True)
class ConvertedDocument:
    """The result of converting one document."""

    title: str
    openapi_version: str
    tools: list[types.Tool]
    bindings: dict[str, OperationBinding]
    skipped: list[SkippedOperation]
    servers: list[str]
    security_schemes: dict[str, dict[str, Any]]
    operations: int
    # Patterns Python's `re` could not compile as written: translated ones, and dropped ones (the
    # warnings), each with its document, JSON pointer and tools.
    patterns_translated: list[PatternReport] = field(default_factory=list)
    warnings: list[PatternReport] = field(default_factory=list)


@dataclass(slots=True)
class _Operation:
    method: str
    path: str
    op: dict[str, Any]
    item: dict[str, Any]
    uri: str
    item_uri: str
    operation_id: str | None
    name: str = ""
    # Where the operation and its path item stand in their documents (JSON pointers, for reports).
    pointer: str = ""
    item_pointer: str = ""


class DocumentFormatError(DocumentError):
    """A document that is not OpenAPI 2.0/3.x at all."""


# -- names -----------------------------------------------------------------------------------


def _short_hash(text: str, length: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def sanitize_tool_name(raw: str) -> str:
    """`raw` made to match `^[a-zA-Z0-9_-]{1,64}$`; names too long keep a prefix and a short hash.

    Returns "" when nothing usable is left.
    """
    name = re.sub(r"[^a-zA-Z0-9_-]+", "_", raw).strip("_")
    name = re.sub(r"__+", "_", name)
    if len(name) > 64:
        # Deterministic: the same raw name always gives the same short name.
        name = f"{name[:55].rstrip('_-')}_{_short_hash(raw, 8)}"
    return name


def _fallback_name(method: str, path: str) -> str:
    return sanitize_tool_name(f"{method}_{path.replace('{', '').replace('}', '')}") or method


def _with_suffix(name: str, suffix: str) -> str:
    return f"{name[: 63 - len(suffix)].rstrip('_-')}_{suffix}"


def assign_names(operations: list[_Operation]) -> None:
    """Give every operation a unique valid tool name, the same on every run for the same document."""
    used: set[str] = set()
    for op in operations:
        name = sanitize_tool_name(op.operation_id) if op.operation_id else ""
        if not name:
            name = _fallback_name(op.method, op.path)
        if name in used:
            # Later duplicates get a suffix derived from method and path, not from their position.
            name = _with_suffix(name, _short_hash(f"{op.method.upper()} {op.path}", 6))
            counter = 2
            base = name
            while name in used:
                name = _with_suffix(base, str(counter))
                counter += 1
        used.add(name)
        op.name = name


def _arg_name(raw: str) -> str:
    name = re.sub(r"[^a-zA-Z0-9_.-]+", "_", raw).strip("_")
    if len(name) > 64:
        name = f"{name[:55]}_{_short_hash(raw, 8)}"
    return name or "param"


def _unique(name: str, used: set[str], location: str) -> str:
    """A free argument name: `name`, else `<location>_<name>`, else with a counter."""
    if name not in used:
        return name
    candidate = _arg_name(f"{location}_{name}")
    counter = 2
    while candidate in used:
        candidate = _arg_name(f"{location}_{name}_{counter}")
        counter += 1
    return candidate


# -- selection -------------------------------------------------------------------------------


def _glob_regex(glob: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(glob):
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _matches(selector: OperationSelector, op: _Operation) -> str | None:
    """Which part of `selector` matches the operation (for skip reasons), or None."""
    if op.operation_id in selector.operations or op.name in selector.operations:
        return "operations"
    tags = op.op.get("tags") or []
    if isinstance(tags, list) and any(tag in selector.tags for tag in tags if isinstance(tag, str)):
        return "tags"
    for pattern in selector.paths:
        method, _, glob = pattern.strip().partition(" ")
        if not glob:
            method, glob = "", method
        if method and method.lower() != op.method:
            continue
        if _glob_regex(glob.strip()).match(op.path):
            return "paths"
    return None


def _selection_reason(op: _Operation, include: OperationSelector | None, exclude: OperationSelector | None) -> str | None:
    if include is not None and not include.is_empty() and _matches(include, op) is None:
        return "not selected by include"
    if exclude is not None and (part := _matches(exclude, op)) is not None:
        return f"excluded by exclude.{part}"
    return None


# -- documents -------------------------------------------------------------------------------


def normalize_document(doc: Any, name: str) -> tuple[dict[str, Any], str]:
    """The document as OpenAPI 3.x (Swagger 2.0 upgraded) and its version string."""
    if not isinstance(doc, dict):
        raise DocumentFormatError(f"{name}: not an OpenAPI document (top level is a {type(doc).__name__})")
    if str(doc.get("swagger", "")).startswith("2"):
        return upgrade_swagger2(doc), "2.0"
    version = doc.get("openapi")
    if not isinstance(version, str) or not version.startswith("3."):
        raise DocumentFormatError(
            f"{name}: not an OpenAPI 2.0/3.x document (no 'openapi: 3.x' or 'swagger: 2.0' field)"
        )
    if not isinstance(doc.get("paths", {}), dict):
        raise DocumentFormatError(f"{name}: 'paths' is not a mapping")
    return doc, version


def server_urls(servers: Any, spec_uri: str) -> list[str]:
    """The URLs of a `servers` list, variables replaced by their defaults, relative ones resolved."""
    out = []
    for raw in servers if isinstance(servers, list) else []:
        try:
            server = Server.model_validate(raw)
        except Exception:  # noqa: BLE001 - a malformed entry is skipped, not fatal
            continue
        url = server.url
        for var, spec in (server.variables or {}).items():
            url = url.replace("{" + var + "}", str(spec.default))
        if not url.startswith(("http://", "https://")):
            # Relative to where the document came from; meaningless for a local file.
            url = urljoin(spec_uri, url) if spec_uri.startswith(("http://", "https://")) else url
        out.append(url)
    return out


def _description(op: dict[str, Any], method: str, path: str) -> str:
    parts = [p.strip() for p in (op.get("summary"), op.get("description")) if isinstance(p, str) and p.strip()]
    if len(parts) == 2 and parts[1].startswith(parts[0]):
        parts = parts[1:]
    text = "\n\n".join(parts) or f"{method.upper()} {path}"
    if op.get("deprecated") is True:
        text = f"(deprecated) {text}"
    if len(text) > MAX_DESCRIPTION:
        text = text[: MAX_DESCRIPTION - 1].rstrip() + "…"
    return text


def _annotations(method: str, title: str | None) -> types.ToolAnnotations:
    if method in ("get", "head", "options"):
        return types.ToolAnnotations(title=title, read_only_hint=True, open_world_hint=True)
    if method == "delete":
        return types.ToolAnnotations(
            title=title, read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        )
    if method == "put":
        return types.ToolAnnotations(
            title=title, read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=True
        )
    if method == "patch":
        return types.ToolAnnotations(title=title, read_only_hint=False, destructive_hint=True, open_world_hint=True)
    return types.ToolAnnotations(title=title, read_only_hint=False, destructive_hint=False, open_world_hint=True)


def _is_json(media: str) -> bool:
    base = media.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "*/*" or base.endswith("/json")


def _body_kind(media: str) -> BodyKind:
    base = media.split(";", 1)[0].strip().lower()
    if _is_json(base):
        return "json"
    if base == "application/x-www-form-urlencoded":
        return "form"
    if base.startswith("multipart/"):
        return "multipart"
    if base.startswith("text/") or base.endswith(("/xml", "+xml")) or base in ("application/yaml",):
        return "text"
    return "binary"


_KIND_ORDER = {"json": 0, "form": 1, "multipart": 2, "text": 3, "binary": 4}


class DocumentConverter:
    """Converts one normalized (3.x) document; holds the translators shared by its operations."""

    def __init__(self, doc: dict[str, Any], version: str, resolver: RefResolver) -> None:
        self.doc = doc
        self.version = version
        self.resolver = resolver
        openapi31 = version.startswith("3.") and not version.startswith("3.0")
        self.inputs = SchemaTranslator(resolver, openapi31=openapi31, mode="input")
        self.outputs = SchemaTranslator(resolver, openapi31=openapi31, mode="output")
        self.uri = resolver.root_uri
        self._reports: dict[tuple[str, str], PatternReport] = {}

    def operations(self) -> tuple[list[_Operation], list[SkippedOperation]]:
        """Every operation of the document, in document order, and path items that failed."""
        found: list[_Operation] = []
        skipped: list[SkippedOperation] = []
        for path, raw_item in (self.doc.get("paths") or {}).items():
            path = str(path)
            try:
                item, item_uri, item_pointer = self.deref_at(raw_item, self.uri, "/paths/" + _escape(path))
            except DocumentError as exc:
                skipped.append(SkippedOperation("*", path, None, str(exc)))
                continue
            if not isinstance(item, dict):
                continue
            for method, op in item.items():  # document order: names of duplicates depend on it
                if method not in HTTP_METHODS or not isinstance(op, dict):
                    continue
                op_id = op.get("operationId")
                found.append(_Operation(method, path, op, item, item_uri, item_uri,
                                        op_id if isinstance(op_id, str) and op_id.strip() else None,
                                        pointer=f"{item_pointer}/{method}", item_pointer=item_pointer))
        return found, skipped

    def take_reports(self) -> list[PatternReport]:
        """Pattern reports the last operation met, one per place in the document (input and output
        schemas share one)."""
        out: dict[tuple[str, str], PatternReport] = {}
        for report in self.inputs.take_reports() + self.outputs.take_reports():
            key = (report.document, report.pointer)
            out[key] = self._reports.setdefault(key, report)
        return list(out.values())

    def all_reports(self) -> list[PatternReport]:
        """Every pattern report of the converted operations, in order of discovery."""
        return list(self._reports.values())

    def deref_at(self, node: Any, uri: str, pointer: str) -> tuple[Any, str, str]:
        """`resolver.deref`, also telling the JSON pointer of what it arrives at."""
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            found = self.resolver.resolve(node["$ref"], uri)
            if found.key in seen:
                raise DocumentError(f"$ref {node['$ref']!r} is a cycle of references")
            seen.add(found.key)
            node, uri, pointer = found.value, found.uri, found.pointer
        return node, uri, pointer

    def security_schemes(self) -> dict[str, dict[str, Any]]:
        """`components.securitySchemes`, references followed."""
        out: dict[str, dict[str, Any]] = {}
        schemes = (self.doc.get("components") or {}).get("securitySchemes") or {}
        for name, raw in schemes.items() if isinstance(schemes, dict) else []:
            try:
                scheme, _ = self.resolver.deref(raw, self.uri)
            except DocumentError:
                continue
            if isinstance(scheme, dict):
                out[str(name)] = scheme
        return out

    def convert(self, op: _Operation) -> tuple[types.Tool, OperationBinding]:
        """One operation to a tool and its binding; raises on problems the caller reports as skips."""
        props: dict[str, Any] = {}
        required: list[str] = []
        deps: frozenset[str] = frozenset()
        used: set[str] = set()
        params: list[ParameterBinding] = []

        for param, uri, where_at in self._parameters(op):
            name = param.get("name")
            where = param.get("in")
            if not isinstance(name, str) or where not in ("path", "query", "header", "cookie"):
                raise ValueError(f"parameter {name!r} has an invalid name or location {where!r}")
            if where == "header" and name.lower() in IGNORED_HEADERS:
                continue
            schema_raw, content_type, schema_at = self._parameter_schema(param, uri)
            schema, more = self.inputs.translate(schema_raw, uri, where_at + schema_at)
            deps |= more
            schema = dict(schema) if isinstance(schema, dict) else {}
            for key in ("description",):
                if isinstance(param.get(key), str) and param[key].strip() and key not in schema:
                    schema[key] = param[key]
            if param.get("deprecated") is True:
                schema["deprecated"] = True
            if "example" in param and "examples" not in schema and not contains_ref(param["example"]):
                schema["examples"] = [param["example"]]
            arg = _unique(_arg_name(name), used, where)
            used.add(arg)
            is_required = where == "path" or param.get("required") is True
            default_style = {"path": "simple", "header": "simple", "query": "form", "cookie": "form"}[where]
            style = param.get("style") if isinstance(param.get("style"), str) else default_style
            explode = param.get("explode")
            if not isinstance(explode, bool):
                explode = style == "form"
            params.append(ParameterBinding(arg, name, where, style, explode, is_required,
                                           param.get("allowReserved") is True, content_type))
            props[arg] = schema
            if is_required:
                required.append(arg)

        # Path templates naming a parameter the document forgot: still a required string.
        declared = {p.name for p in params if p.location == "path"}
        for name in re.findall(r"{([^{}/]+)}", op.path):
            if name not in declared:
                arg = _unique(_arg_name(name), used, "path")
                used.add(arg)
                params.append(ParameterBinding(arg, name, "path", "simple", False, True))
                props[arg] = {"type": "string"}
                required.append(arg)

        body, body_deps = self._body(op, props, required, used)
        deps |= body_deps

        input_schema: dict[str, Any] = {"type": "object", "properties": props}
        if required:
            input_schema["required"] = required
        if deps:
            input_schema["$defs"] = self.inputs.closure(deps)

        output_schema, wrapped = self._output_schema(op)
        security = op.op.get("security")
        needs_auth = not (isinstance(security, list) and len(security) == 0)
        server_url = None
        for servers in (op.op.get("servers"), op.item.get("servers")):
            urls = server_urls(servers, self.resolver.root_uri)
            if urls:
                server_url = urls[0]
                break
        summary = op.op.get("summary")
        title = summary.strip() if isinstance(summary, str) and summary.strip() else None
        tool = types.Tool(
            name=op.name,
            title=title,
            description=_description(op.op, op.method, op.path),
            input_schema=input_schema,
            output_schema=output_schema,
            annotations=_annotations(op.method, title),
        )
        binding = OperationBinding(
            tool_name=op.name, method=op.method.upper(), path=op.path, operation_id=op.operation_id,
            parameters=tuple(params), body=body, server_url=server_url, needs_auth=needs_auth,
            has_output_schema=output_schema is not None, output_wrapped=wrapped,
            tags=tuple(t for t in op.op.get("tags") if isinstance(t, str)) if isinstance(op.op.get("tags"), list) else (),
        )
        return tool, binding

    # -- parts -------------------------------------------------------------------------------

    def _parameters(self, op: _Operation) -> list[tuple[dict[str, Any], str, str]]:
        """Path-level then operation-level parameters (with their document and JSON pointer); the
        operation's win on (name, in)."""
        merged: dict[tuple[str, str], tuple[dict[str, Any], str, str]] = {}
        for raw_list, uri, at in ((op.item.get("parameters"), op.item_uri, op.item_pointer),
                                  (op.op.get("parameters"), op.uri, op.pointer)):
            for index, raw in enumerate(raw_list if isinstance(raw_list, list) else []):
                param, param_uri, param_at = self.deref_at(raw, uri, f"{at}/parameters/{index}")
                if not isinstance(param, dict):
                    raise ValueError("a parameter is not an object")
                merged[(str(param.get("name")), str(param.get("in")))] = (param, param_uri, param_at)
        return list(merged.values())

    def _parameter_schema(self, param: dict[str, Any], uri: str) -> tuple[Any, str | None, str]:
        """The parameter's schema, its media type when given as `content`, and the schema's pointer
        relative to the parameter."""
        if "schema" in param:
            return param["schema"], None, "/schema"
        content = param.get("content")
        if isinstance(content, dict) and content:
            media, entry = next(iter(content.items()))
            schema = entry.get("schema", {}) if isinstance(entry, dict) else {}
            return schema, str(media), f"/content/{_escape(str(media))}/schema"
        return {"type": "string"}, None, ""

    def _body(
        self, op: _Operation, props: dict[str, Any], required: list[str], used: set[str]
    ) -> tuple[BodyBinding | None, frozenset[str]]:
        raw = op.op.get("requestBody")
        if raw is None:
            return None, frozenset()
        body, uri, body_at = self.deref_at(raw, op.uri, f"{op.pointer}/requestBody")
        if not isinstance(body, dict) or not isinstance(body.get("content"), dict) or not body["content"]:
            return None, frozenset()
        candidates = sorted(
            ((str(media), entry) for media, entry in body["content"].items()),
            key=lambda pair: _KIND_ORDER[_body_kind(pair[0])],
        )
        media, entry = candidates[0]
        kind = _body_kind(media)
        entry = entry if isinstance(entry, dict) else {}
        schema_raw = entry.get("schema", {} if kind in ("json", "form", "multipart") else {"type": "string"})
        schema, deps = self.inputs.translate(schema_raw, uri, f"{body_at}/content/{_escape(media)}/schema")
        body_required = body.get("required") is True
        description = body.get("description") if isinstance(body.get("description"), str) else None
        if media.split(";")[0].strip() == "*/*":
            media = "application/json"

        if kind in ("text", "binary"):
            node = dict(schema) if isinstance(schema, dict) else {}
            if kind == "binary" or node.get("format") == "binary":
                node = {"type": "string", "contentEncoding": "base64",
                        "description": (description + " " if description else "") + "(base64-encoded content)"}
            elif "type" not in node and "$ref" not in node:
                node["type"] = "string"
            arg = _unique("body", used, "request")
            used.add(arg)
            props[arg] = node
            if body_required:
                required.append(arg)
            binary = frozenset({arg}) if node.get("contentEncoding") == "base64" and kind == "binary" else frozenset()
            return BodyBinding(media, kind, body_required, arg=arg, binary_fields=binary), deps

        target = self.inputs.target(schema)
        encoding = self._encoding(entry) if kind in ("form", "multipart") else {}
        flat_props = target.get("properties") if isinstance(target, dict) else None
        body_required_props = [r for r in (target.get("required") or [])] if isinstance(target, dict) else []
        can_flatten = (
            isinstance(target, dict)
            and isinstance(flat_props, dict)
            and target is schema  # a recursive root stays whole under `body`
            and self.inputs.is_object(target)
            and not any(k in target for k in ("allOf", "anyOf", "oneOf", "not", "if", "patternProperties"))
            and target.get("additionalProperties") in (None, False)
            and all(ARG_NAME.match(name) and name not in used for name in flat_props)
            and (body_required or not body_required_props)
        )
        binary_props = frozenset(
            name for name, prop in (flat_props or {}).items()
            if _is_binary(self.inputs.target(prop))
        )
        if can_flatten and flat_props:
            assert isinstance(target, dict) and isinstance(flat_props, dict)
            fields = {}
            for name, prop in flat_props.items():
                props[name] = prop
                used.add(name)
                fields[name] = name
            required.extend(r for r in body_required_props if r in flat_props)
            return BodyBinding(media, kind, body_required, fields=fields, encoding=encoding,
                               binary_fields=binary_props), deps
        node = dict(schema) if isinstance(schema, dict) else {"allOf": [schema]}
        if description and "description" not in node:
            node["description"] = description
        arg = _unique("body", used, "request")
        used.add(arg)
        props[arg] = node
        if body_required:
            required.append(arg)
        return BodyBinding(media, kind, body_required, arg=arg, encoding=encoding, binary_fields=binary_props), deps

    def _encoding(self, entry: dict[str, Any]) -> dict[str, PartEncoding]:
        out = {}
        raw = entry.get("encoding")
        for name, enc in raw.items() if isinstance(raw, dict) else []:
            if not isinstance(enc, dict):
                continue
            style = enc.get("style") if isinstance(enc.get("style"), str) else "form"
            explode = enc.get("explode")
            out[str(name)] = PartEncoding(
                content_type=enc.get("contentType") if isinstance(enc.get("contentType"), str) else None,
                style=style,
                explode=explode if isinstance(explode, bool) else style == "form",
                declared_style=isinstance(enc.get("style"), str) or isinstance(explode, bool),
            )
        return out

    def _output_schema(self, op: _Operation) -> tuple[dict[str, Any] | None, bool]:
        """The tool's output schema, and whether it wraps a non-object answer as `result`."""
        responses = op.op.get("responses")
        if not isinstance(responses, dict):
            return None, False
        success = [(str(code), raw) for code, raw in responses.items() if str(code).startswith("2")]
        if len(success) != 1:
            return None, False  # several success shapes (or none): the answer's shape is not one schema
        response, uri, at = self.deref_at(success[0][1], op.uri, f"{op.pointer}/responses/{_escape(success[0][0])}")
        content = response.get("content") if isinstance(response, dict) else None
        if not isinstance(content, dict):
            return None, False
        for media, entry in content.items():
            if _is_json(str(media)) and isinstance(entry, dict) and "schema" in entry:
                schema, deps = self.outputs.translate(entry["schema"], uri, f"{at}/content/{_escape(str(media))}/schema")
                if not self.outputs.is_object(schema):
                    # Structured content is a JSON object: an array, string or number answer is
                    # described, and sent, as `{"result": <answer>}` (the MCP SDK's convention).
                    out = {"type": "object", "properties": {"result": schema}, "required": ["result"]}
                    if deps:
                        out["$defs"] = self.outputs.closure(deps)
                    return out, True
                out = dict(schema) if isinstance(schema, dict) else {}
                if "$ref" in out:
                    out["type"] = "object"
                out = make_nullable_free(out)
                if deps:
                    out["$defs"] = self.outputs.closure(deps)
                return out, False
        return None, False


def _escape(token: str) -> str:
    """A JSON pointer token."""
    return token.replace("~", "~0").replace("/", "~1")


def _is_binary(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    if schema.get("format") == "binary" or schema.get("contentEncoding") == "base64":
        return True
    items = schema.get("items")
    return isinstance(items, dict) and (items.get("format") == "binary" or items.get("contentEncoding") == "base64")


def convert_document(
    doc: Any,
    resolver: RefResolver,
    *,
    include: OperationSelector | None = None,
    exclude: OperationSelector | None = None,
    name: str | None = None,
) -> ConvertedDocument:
    """Convert a parsed document into tools, bindings and skipped operations.

    `resolver` knows where the document came from (for relative `$ref`s and servers). Names are
    assigned over all operations before `include`/`exclude` apply, so a tool keeps its name when
    the selection changes.
    """
    label = name or resolver.root_uri
    normalized, version = normalize_document(doc, label)
    if normalized is not doc:
        resolver = resolver.with_root(normalized)
    converter = DocumentConverter(normalized, version, resolver)
    operations, skipped = converter.operations()
    assign_names(operations)
    tools: list[types.Tool] = []
    bindings: dict[str, OperationBinding] = {}
    for op in operations:
        reason = _selection_reason(op, include, exclude)
        if reason is not None:
            skipped.append(SkippedOperation(op.method.upper(), op.path, op.operation_id, reason))
            continue
        try:
            tool, binding = converter.convert(op)
        except (DocumentError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            skipped.append(SkippedOperation(op.method.upper(), op.path, op.operation_id,
                                            f"{type(exc).__name__}: {exc}"))
            converter.take_reports()
            continue
        for report in converter.take_reports():
            report.tools.append(tool.name)
        tools.append(tool)
        bindings[tool.name] = binding
    info = normalized.get("info") if isinstance(normalized.get("info"), dict) else {}
    # Only patterns of converted tools count (a shared schema met in both translators: once).
    reports = [r for r in converter.all_reports() if r.tools]
    return ConvertedDocument(
        title=str(info.get("title", "")) if info else "",
        openapi_version=version,
        tools=tools,
        bindings=bindings,
        skipped=skipped,
        servers=server_urls(normalized.get("servers"), resolver.root_uri),
        security_schemes=converter.security_schemes(),
        operations=len(operations),
        patterns_translated=[r for r in reports if not r.dropped],
        warnings=[r for r in reports if r.dropped],
    )


def iter_operation_keys(doc: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """(METHOD, path) of every operation in a 3.x document, for counting."""
    for path, item in (doc.get("paths") or {}).items():
        if isinstance(item, dict):
            for method in HTTP_METHODS:
                if isinstance(item.get(method), dict):
                    yield method.upper(), str(path)
