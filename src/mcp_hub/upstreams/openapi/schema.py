"""OpenAPI Schema Objects (3.0 and 3.1) to self-contained JSON Schema Draft 2020-12.

`SchemaTranslator` walks a schema, inlining every `$ref` it meets, except references that close a
cycle: such a target becomes a `$defs` entry of the tool's own schema and is referred to as
`#/$defs/<Name>`, so the result never points outside itself. Keywords are copied through a
whitelist that checks each value, so an odd document cannot produce a schema that fails
`Draft202012Validator.check_schema` (a `minimum: "5"` is dropped, not copied). Regular expressions
(`pattern`, `patternProperties`) that Python's `re` does not compile are translated where an exact
equivalent exists (`patterns.python_pattern`), else dropped; either way each one is recorded in
`reports` with the document and JSON pointer where it stands and the tools it affects.

Two modes:
- `input`: what a caller sends. `readOnly` properties are left out; `format: binary` strings become
  base64 text (`contentEncoding: base64`).
- `output`: what the API answers, used as a tool's `outputSchema`. Real APIs often answer a little
  outside their documents (an undocumented null, a new enum value), and MCP clients validate
  structured results against the output schema, so this mode keeps the shape (types, properties,
  items, descriptions) and drops assertions (`required`, `enum`, `pattern`, bounds,
  `additionalProperties: false`), and every type also admits null.

Translated nodes are memoized and shared between tools: treat them as read-only.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from mcp_hub.upstreams.openapi.patterns import python_pattern
from mcp_hub.upstreams.openapi.refs import RefResolver

Mode = Literal["input", "output"]

JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
EMPTY: frozenset[str] = frozenset()
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"})
# Keywords kept in output mode: the shape of the answer, no assertions beyond it.
OUTPUT_KEEP = frozenset(
    {"type", "properties", "items", "prefixItems", "additionalProperties", "patternProperties", "allOf",
     "anyOf", "title", "description", "default", "deprecated", "format", "examples", "contentMediaType",
     "contentEncoding", "readOnly", "writeOnly", "$ref"}
)
_NON_NEGATIVE_INT = ("maxLength", "minLength", "maxItems", "minItems", "maxProperties", "minProperties",
                     "maxContains", "minContains")
_NUMBERS = ("maximum", "minimum")
_DEF_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
# A referenced schema whose translation is larger than this (JSON characters) goes to `$defs`.
INLINE_LIMIT = 2000
# Output schemas expand `$ref`s this many levels deep; below that a value is described, not specified.
MAX_OUTPUT_REF_DEPTH = 2


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def contains_ref(value: Any) -> bool:
    """Whether a data value (example, default) holds a `$ref` object: a broken example reference."""
    if isinstance(value, dict):
        return "$ref" in value or any(contains_ref(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_ref(v) for v in value)
    return False


def _too_big(node: Any) -> bool:
    """Whether a translated schema is worth a `$defs` entry rather than a copy at each use."""
    if not isinstance(node, dict) or set(node) == {"$ref"}:
        return False
    return len(json.dumps(node, separators=(",", ":"), default=str)) > INLINE_LIMIT


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


@dataclass(slots=True)
class PatternReport:
    """A regular expression of the document that Python's `re` does not compile as written:
    translated (`translated` is what the schema holds now) or dropped (`reason` says why)."""

    document: str
    # JSON pointer, in `document`, of the `pattern` value or of the `patternProperties` key.
    pointer: str
    keyword: str
    pattern: str
    translated: str | None
    reason: str | None
    rules: tuple[str, ...] = ()
    tools: list[str] = field(default_factory=list)

    @property
    def dropped(self) -> bool:
        return self.translated is None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "pattern_dropped" if self.dropped else "pattern_translated",
                               "document": self.document, "pointer": self.pointer, "keyword": self.keyword,
                               "pattern": self.pattern, "tools": list(self.tools)}
        if self.dropped:
            out["reason"] = self.reason
        else:
            out["translated"] = self.translated
            out["rules"] = list(self.rules)
        return out

    def message(self) -> str:
        where = f"{self.document}#{self.pointer}"
        tools = ", ".join(self.tools[:5]) + (f" and {len(self.tools) - 5} more" if len(self.tools) > 5 else "")
        if self.dropped:
            return (f"{self.keyword} {self.pattern!r} at {where} dropped from the schema of {tools or 'no tool'}: "
                    f"{self.reason}")
        return f"{self.keyword} {self.pattern!r} at {where} translated to {self.translated!r}"


class SchemaTranslator:
    """Translates OpenAPI schemas of one document into JSON Schema, one mode per instance."""

    def __init__(self, resolver: RefResolver, *, openapi31: bool, mode: Mode) -> None:
        self._resolver = resolver
        self._openapi31 = openapi31
        self._mode = mode
        self._memo: dict[tuple[str, int], tuple[Any, frozenset[str]]] = {}
        self._in_progress: set[str] = set()
        self._recursive: set[str] = set()
        self._def_names: dict[str, str] = {}
        self._taken_names: set[str] = set()
        self.defs: dict[str, Any] = {}
        self._def_deps: dict[str, frozenset[str]] = {}
        # Patterns met that `re` does not compile as written, by (document, pointer).
        self.reports: dict[tuple[str, str], PatternReport] = {}
        # Which reports each memoized node holds, and the sets collecting them while walking (the
        # outermost one is the current operation's), so every tool using a node is named.
        self._memo_reports: dict[tuple[str, int], frozenset[tuple[str, str]]] = {}
        self._collecting: list[set[tuple[str, str]]] = [set()]

    # -- public ------------------------------------------------------------------------------

    def translate(self, schema: Any, base_uri: str, pointer: str = "") -> tuple[Any, frozenset[str]]:
        """Translate one schema found in the document at `base_uri`.

        `pointer` is where `schema` stands in that document (for reports). Returns the JSON Schema
        node and the `$defs` names it refers to (pass both to `bundle` once the node sits inside
        the tool's schema).
        """
        return self._walk(schema, base_uri, 0, pointer)

    def take_reports(self) -> list[PatternReport]:
        """The pattern reports met since the last call (one operation's), and start a new collection."""
        found, self._collecting[0] = self._collecting[0], set()
        return [self.reports[key] for key in sorted(found)]

    def _collect(self, keys: set[tuple[str, str]] | frozenset[tuple[str, str]]) -> None:
        for bucket in self._collecting:
            bucket.update(keys)

    def _pattern(self, value: Any, base: str, pointer: str, keyword: str) -> str | None:
        """`value` as a pattern Python compiles (translated if need be), or None; recorded when not as written."""
        if not isinstance(value, str):
            return None
        result = python_pattern(value)
        if result.pattern == value:
            return value
        key = (base, pointer)
        if key not in self.reports:
            self.reports[key] = PatternReport(base, pointer, keyword, value, result.pattern, result.reason,
                                              result.rules)
        self._collect({key})
        return result.pattern

    def closure(self, deps: frozenset[str]) -> dict[str, Any]:
        """The `$defs` entries `deps` need, including the ones those entries refer to."""
        out: dict[str, Any] = {}
        todo = list(deps)
        while todo:
            name = todo.pop()
            if name in out:
                continue
            out[name] = self.defs[name]
            todo.extend(self._def_deps.get(name, EMPTY))
        return {name: out[name] for name in sorted(out)}

    def target(self, node: Any) -> Any:
        """The schema behind a local `#/$defs/X` reference (or `node` itself)."""
        if isinstance(node, dict) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/$defs/"):
            return self.defs.get(node["$ref"][len("#/$defs/"):], node)
        return node

    def is_object(self, node: Any) -> bool:
        """Whether instances of `node` are JSON objects (as far as the schema says)."""
        node = self.target(node)
        if not isinstance(node, dict):
            return False
        kind = node.get("type")
        if kind == "object" or (isinstance(kind, list) and "object" in kind and len(set(kind) - {"null"}) == 1):
            return True
        if kind is None and ("properties" in node or "additionalProperties" in node):
            return True
        return kind is None and any(self.is_object(part) for part in node.get("allOf", ()))

    # -- walking -----------------------------------------------------------------------------

    def _walk(self, node: Any, base: str, depth: int = 0, pointer: str = "") -> tuple[Any, frozenset[str]]:
        if isinstance(node, bool):
            return node, EMPTY
        if not isinstance(node, dict):
            return {}, EMPTY  # not a schema: accept anything rather than fail the operation
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._walk_ref(node, ref, base, depth, pointer)
        return self._walk_keywords(node, base, depth, pointer=pointer)

    def _walk_ref(
        self, node: dict[str, Any], ref: str, base: str, depth: int, pointer: str = ""
    ) -> tuple[Any, frozenset[str]]:
        found = self._resolver.resolve(ref, base)
        key = found.key
        output = self._mode == "output"
        if output and depth >= MAX_OUTPUT_REF_DEPTH:
            # Output schemas describe; deep detail of big APIs (Stripe: ~700 KB per answer) helps no one.
            label = found.pointer.rsplit("/", 1)[-1] or "value"
            return {"description": f"{_unescape(label)} (not expanded)"}, EMPTY
        memo_key = (key, depth if output else 0)
        if key in self._in_progress:
            # A cycle: keep it as a reference into the tool's own $defs.
            self._recursive.add(key)
            name = self._def_name(key, found.pointer)
            out: Any = {"$ref": f"#/$defs/{name}"}
            deps = frozenset({name})
        elif memo_key in self._memo:
            out, deps = self._memo[memo_key]
            self._collect(self._memo_reports.get(memo_key, frozenset()))
        else:
            self._in_progress.add(key)
            self._collecting.append(set())
            try:
                out, deps = self._walk(found.value, found.uri, depth + 1, found.pointer)
            finally:
                self._in_progress.discard(key)
                held = self._collecting.pop()
            if held:
                self._memo_reports[memo_key] = frozenset(held)
            if key in self._recursive or _too_big(out):
                # Recursive or large: one $defs entry per tool instead of a copy at every use.
                name = self._def_name(key, found.pointer)
                if name not in self.defs:
                    self.defs[name] = out
                    self._def_deps[name] = deps - {name}
                out, deps = {"$ref": f"#/$defs/{name}"}, frozenset({name})
            self._memo[memo_key] = (out, deps)
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if not siblings:
            return out, deps
        return self._merge_siblings(out, deps, siblings, base, depth, pointer)

    def _merge_siblings(
        self, out: Any, deps: frozenset[str], siblings: dict[str, Any], base: str, depth: int, pointer: str = ""
    ) -> tuple[Any, frozenset[str]]:
        # 3.0 ignores siblings of $ref, but documents use them for descriptions: keep annotations.
        if not self._openapi31:
            siblings = {k: v for k, v in siblings.items() if k in ANNOTATIONS or k in ("example", "nullable")}
            if not siblings:
                return out, deps
        extra, extra_deps = self._walk_keywords(siblings, base, depth, nullable_wrap=False, pointer=pointer)
        if not isinstance(extra, dict) or not extra:
            return out, deps
        deps = deps | extra_deps
        if siblings.get("nullable") is True and not self._openapi31:
            return {"anyOf": [out, {"type": "null"}], **{k: v for k, v in extra.items() if k in ANNOTATIONS}}, deps
        if not isinstance(out, dict):
            return {"allOf": [out], **extra}, deps
        if set(extra) <= ANNOTATIONS or set(out) == {"$ref"}:
            return {**out, **extra}, deps
        return {"allOf": [out], **extra}, deps

    def _def_name(self, key: str, pointer: str) -> str:
        if key in self._def_names:
            return self._def_names[key]
        base = _DEF_NAME.sub("_", pointer.rsplit("/", 1)[-1]).strip("_") or "schema"
        name = base
        if name in self._taken_names:
            name = f"{base}_{hashlib.sha256(key.encode()).hexdigest()[:8]}"
        self._taken_names.add(name)
        self._def_names[key] = name
        return name

    def _walk_keywords(  # noqa: C901 - one flat dispatch over the keywords is easiest to audit
        self, node: dict[str, Any], base: str, depth: int = 0, *, nullable_wrap: bool = True, pointer: str = ""
    ) -> tuple[Any, frozenset[str]]:
        output = self._mode == "output"
        out: dict[str, Any] = {}
        deps = EMPTY

        def sub(value: Any, *where: Any) -> Any:
            nonlocal deps
            at = pointer + "".join("/" + _escape(str(part)) for part in where)
            result, more = self._walk(value, base, depth, at)
            if more:
                deps = deps | more
            return result

        types = _types(node.get("type"))
        nullable = node.get("nullable") is True
        if types is not None:
            if (nullable or (output and types)) and "null" not in types:
                types.append("null")
            if types:
                out["type"] = types[0] if len(types) == 1 else types

        dropped: set[str] = set()
        for key, value in node.items():
            if key in ("type", "nullable", "$ref") or key.startswith("x-"):
                continue
            if output and key not in OUTPUT_KEEP and key not in ("oneOf", "example"):
                continue
            if key == "properties" and isinstance(value, dict):
                props: dict[str, Any] = {}
                for name, raw in value.items():
                    translated = sub(raw, key, name)
                    hidden = self.target(translated)
                    if isinstance(hidden, dict) and hidden.get("writeOnly" if output else "readOnly") is True:
                        dropped.add(str(name))
                        continue
                    props[str(name)] = translated
                out["properties"] = props
            elif key == "patternProperties" and isinstance(value, dict):
                kept = {}
                for raw_pattern, raw in value.items():
                    at = f"{pointer}/{key}/{_escape(str(raw_pattern))}"
                    usable = self._pattern(str(raw_pattern), base, at, key)
                    if usable is not None:
                        kept[usable] = sub(raw, key, raw_pattern)
                out[key] = kept
            elif key in ("dependentSchemas",) and isinstance(value, dict):
                out[key] = {str(p): sub(s, key, p) for p, s in value.items()}
            elif key in ("additionalProperties", "unevaluatedProperties", "unevaluatedItems"):
                if isinstance(value, bool):
                    if not (output and value is False):
                        out[key] = value
                elif isinstance(value, dict):
                    out[key] = sub(value, key)
            elif key == "items":
                if isinstance(value, bool | dict):
                    out["items"] = sub(value, key)
                elif isinstance(value, list) and value:  # draft-4 style tuples
                    out["prefixItems"] = [sub(v, key, i) for i, v in enumerate(value)]
            elif key in ("prefixItems", "allOf", "anyOf", "oneOf"):
                if isinstance(value, list) and value:
                    target = "anyOf" if (output and key == "oneOf") else key
                    parts = [sub(v, key, i) for i, v in enumerate(value)]
                    out[target] = out.get(target, []) + parts
            elif key in ("not", "contains", "propertyNames", "if", "then", "else"):
                if isinstance(value, bool | dict):
                    out[key] = sub(value, key)
            elif key == "required":
                if isinstance(value, list):
                    names = [str(v) for v in value if isinstance(v, str | int) and not isinstance(v, bool)]
                    if names:
                        out["required"] = list(dict.fromkeys(names))
            elif key == "enum":
                if isinstance(value, list):
                    items = list(value)
                    if nullable and None not in items:
                        items.append(None)
                    out["enum"] = items
            elif key == "const":
                if not contains_ref(value):
                    out["const"] = value
            elif key in _NUMBERS:
                if _is_number(value):
                    out[key] = value
            elif key in ("exclusiveMinimum", "exclusiveMaximum"):
                if _is_number(value):
                    out[key] = value
                elif value is True:  # OpenAPI 3.0: a flag on minimum/maximum
                    bound = node.get("minimum" if key == "exclusiveMinimum" else "maximum")
                    if _is_number(bound):
                        out[key] = bound
            elif key == "multipleOf":
                if _is_number(value) and value > 0:
                    out[key] = value
            elif key in _NON_NEGATIVE_INT:
                if _is_number(value) and value >= 0 and float(value).is_integer():
                    out[key] = int(value)
            elif key == "uniqueItems" or key in ("deprecated", "readOnly", "writeOnly"):
                if isinstance(value, bool):
                    out[key] = value
            elif key == "pattern":
                usable = self._pattern(value, base, f"{pointer}/pattern", key)
                if usable is not None:
                    out[key] = usable
            elif key in ("format", "contentEncoding", "contentMediaType"):
                if isinstance(value, str):
                    out[key] = value
            elif key in ("title", "description"):
                if value is not None:
                    out[key] = value if isinstance(value, str) else str(value)
            elif key == "default":
                if not contains_ref(value):
                    out["default"] = value
            elif key == "example":
                if not contains_ref(value):
                    out.setdefault("examples", [value])
            elif key == "examples":
                if isinstance(value, list) and not contains_ref(value):
                    out["examples"] = value
            elif key == "dependentRequired" and isinstance(value, dict):
                out[key] = {
                    str(k): list(dict.fromkeys(str(x) for x in v if isinstance(x, str)))
                    for k, v in value.items() if isinstance(v, list)
                }
            # Anything else (discriminator, xml, externalDocs, $id, $schema, ...) is not needed by callers.

        if "minimum" in out and out.get("exclusiveMinimum") == out["minimum"] and node.get("exclusiveMinimum") is True:
            del out["minimum"]
        if "maximum" in out and out.get("exclusiveMaximum") == out["maximum"] and node.get("exclusiveMaximum") is True:
            del out["maximum"]
        if dropped and "required" in out:
            out["required"] = [name for name in out["required"] if name not in dropped]
            if not out["required"]:
                del out["required"]
        if out.get("format") == "binary" and not output:
            # A model can only send text: file content travels base64-encoded.
            out["contentEncoding"] = "base64"
            hint = "base64-encoded file content"
            out["description"] = f"{out['description']} ({hint})" if out.get("description") else hint
        if nullable and types is None and nullable_wrap and not output:
            # `nullable` without `type` (e.g. on an allOf): null as an alternative.
            return {"anyOf": [out, {"type": "null"}]}, deps
        return out, deps


def _types(raw: Any) -> list[str] | None:
    """The JSON types a schema's `type` names, or None when it names none."""
    if raw is None:
        return None
    values = raw if isinstance(raw, list) else [raw]
    out: list[str] = []
    for value in values:
        if value == "file":  # Swagger 2.0 upload parameters
            value = "string"
        if isinstance(value, str) and value in JSON_TYPES and value not in out:
            out.append(value)
    return out or None


def make_nullable_free(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a root schema whose `type` no longer admits null (an outputSchema root is an object)."""
    kind = schema.get("type")
    if isinstance(kind, list) and "null" in kind:
        rest = [k for k in kind if k != "null"]
        schema = dict(schema)
        schema["type"] = rest[0] if len(rest) == 1 else rest
    return schema
