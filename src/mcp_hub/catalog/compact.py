"""Lossless compaction of tool schemas: fewer tokens, the same validation and the same meaning.

`compact_schema` walks a JSON Schema (2020-12) by its keywords, so that data (`const`, `enum`,
`default`, `examples`) and property *names* are never mistaken for keywords, and applies:

1. Titles that restate a name: a `title` of a property schema (or of a `$defs` entry) that equals
   the property's (entry's) name once case and separators are ignored (`"title": "Repo Name"` on
   `repo_name`). `title` is an annotation: validation never reads it, and the name says the same.
2. Empty descriptions: `"description": ""` (or only whitespace) says nothing.
3. Keywords that restate the JSON Schema default, where the result is provably the same:
   `minLength: 0`, `minItems: 0`, `minProperties: 0`, `minContains: 1` (only beside `contains`),
   `uniqueItems: false`, `required: []`, `properties: {}`, `patternProperties: {}`,
   `dependentRequired: {}`, `dependentSchemas: {}`, `$defs: {}`, `deprecated: false`,
   `readOnly: false`, `writeOnly: false`. `additionalProperties: true` and `items: true` (or
   `{}`) are also the defaults but count as "evaluated" for `unevaluatedProperties` /
   `unevaluatedItems`, so they are dropped only when neither keyword occurs in the schema.
4. Identical `$defs` entries: entries whose (compacted) JSON is identical are merged into the first
   one and every `$ref` to the others (`#/$defs/<name>` and pointers below it) is rewritten; this
   repeats until nothing changes (merging two entries can make others identical). Skipped when the
   schema uses `$id`, `$anchor`, `$dynamicAnchor` or `$dynamicRef` below its root, where a
   reference's meaning depends on where it sits, or a `$ref` that is not a plain `#` fragment.

Nothing else is touched: every constraint, `description`, `default`, `examples`, `format`,
`pattern` and unknown keyword stays. The input is never modified; the result shares no mutable
parts with it. `compact_schema(compact_schema(s)) == compact_schema(s)`.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

# Keywords whose value is a map of name -> subschema.
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
# Keywords whose value is one subschema.
_SCHEMA_ONE = ("not", "if", "then", "else", "additionalProperties", "unevaluatedProperties",
               "unevaluatedItems", "contains", "propertyNames", "additionalItems", "items")
# Keywords whose value is a list of subschemas (`items` as a list is draft 2019-09 and earlier).
_SCHEMA_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")

# Rule 3: keyword -> the value that equals its absence.
_NEUTRAL: dict[str, Any] = {
    "minLength": 0,
    "minItems": 0,
    "minProperties": 0,
    "uniqueItems": False,
    "required": [],
    "properties": {},
    "patternProperties": {},
    "dependentRequired": {},
    "dependentSchemas": {},
    "$defs": {},
    "deprecated": False,
    "readOnly": False,
    "writeOnly": False,
}
_IDENTITY_KEYWORDS = ("$id", "$anchor", "$dynamicAnchor", "$dynamicRef")
_NAME_NOISE = re.compile(r"[^0-9a-z]+")
_DEFS_REF = "#/$defs/"


def _same_name(title: Any, name: str) -> bool:
    if not isinstance(title, str):
        return False
    a, b = _NAME_NOISE.sub("", title.lower()), _NAME_NOISE.sub("", name.lower())
    return bool(a) and a == b


def _equal(a: Any, b: Any) -> bool:
    """JSON equality (so `0 == False` does not count as the same)."""
    return type(a) is type(b) and a == b


def _subschemas(node: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if isinstance(value, dict):
            out.extend(value.values())
    for key in _SCHEMA_ONE:
        value = node.get(key)
        if isinstance(value, dict):
            out.append(value)
    for key in _SCHEMA_LIST:
        value = node.get(key)
        if isinstance(value, list):
            out.extend(value)
    return out


def _uses(schema: Any, keywords: tuple[str, ...], *, below_root: bool = False) -> bool:
    """Whether any schema node (the root too unless `below_root`) has one of `keywords`."""
    stack: list[tuple[Any, bool]] = [(schema, True)]
    while stack:
        node, is_root = stack.pop()
        if not isinstance(node, dict):
            continue
        if not (below_root and is_root) and any(k in node for k in keywords):
            return True
        stack.extend((child, False) for child in _subschemas(node))
    return False


def _compact_node(node: Any, *, open_defaults: bool) -> Any:
    """Rules 1-3 on one schema node and, recursively, its subschemas (the node is a fresh copy)."""
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("description"), str) and not node["description"].strip():
        del node["description"]
    for key, neutral in _NEUTRAL.items():
        if key in node and _equal(node[key], neutral):
            del node[key]
    if "contains" in node and _equal(node.get("minContains"), 1):
        del node["minContains"]
    if open_defaults:
        for key in ("additionalProperties", "items"):
            if key in node and (node[key] is True or _equal(node[key], {})):
                del node[key]
    for key in _SCHEMA_MAPS:
        value = node.get(key)
        if not isinstance(value, dict):
            continue
        for name, sub in value.items():
            if isinstance(sub, dict) and key in ("properties", "$defs", "definitions") and _same_name(sub.get("title"), name):
                del sub["title"]
            value[name] = _compact_node(sub, open_defaults=open_defaults)
    for key in _SCHEMA_ONE:
        if isinstance(node.get(key), dict):
            node[key] = _compact_node(node[key], open_defaults=open_defaults)
    for key in _SCHEMA_LIST:
        if isinstance(node.get(key), list):
            node[key] = [_compact_node(sub, open_defaults=open_defaults) for sub in node[key]]
    return node


def _escape(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _rewrite_refs(node: Any, renames: dict[str, str]) -> None:
    """Point `$ref`s at merged `$defs` entries to the entry kept."""
    stack = [node]
    while stack:
        current = stack.pop()
        if not isinstance(current, dict):
            continue
        ref = current.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS_REF):
            head, sep, rest = ref[len(_DEFS_REF):].partition("/")
            target = renames.get(_unescape(head))
            if target is not None:
                current["$ref"] = f"{_DEFS_REF}{_escape(target)}{sep}{rest}"
        stack.extend(_subschemas(current))


def _refs(node: Any) -> list[Any]:
    out, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            if "$ref" in current:
                out.append(current["$ref"])
            stack.extend(_subschemas(current))
    return out


def _dedupe_defs(schema: dict[str, Any]) -> None:
    """Rule 4, in place, until no two `$defs` entries are identical. Skipped when a `$ref` is not a
    plain fragment (`#...`): an absolute form of the same target would not be rewritten."""
    if not all(isinstance(ref, str) and ref.startswith("#") for ref in _refs(schema)):
        return
    while True:
        defs = schema.get("$defs")
        if not isinstance(defs, dict) or len(defs) < 2:
            return
        first: dict[str, str] = {}
        renames: dict[str, str] = {}
        for name, sub in defs.items():
            key = json.dumps(sub, sort_keys=True, separators=(",", ":"))
            if key in first:
                renames[name] = first[key]
            else:
                first[key] = name
        if not renames:
            return
        for name in renames:
            del defs[name]
        _rewrite_refs(schema, renames)


def compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A smaller schema that accepts exactly the same instances and means the same (see the module
    docstring for the rules)."""
    if not isinstance(schema, dict):
        return schema
    result = copy.deepcopy(schema)
    open_defaults = not _uses(result, ("unevaluatedProperties", "unevaluatedItems"))
    result = _compact_node(result, open_defaults=open_defaults)
    if not _uses(result, _IDENTITY_KEYWORDS, below_root=True) and "$dynamicRef" not in result:
        _dedupe_defs(result)
    return result


def cap_description(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters at a word, ending with `…` when cut."""
    if max_chars < 1:
        raise ValueError("max_description must be at least 1")
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    if " " in cut.strip() and not text[max_chars - 1].isspace():
        cut = cut.rstrip().rsplit(None, 1)[0] if cut.rstrip() else cut
    return cut.rstrip() + "…"


def compact_tool(tool: dict[str, Any], *, max_description: int | None = None) -> dict[str, Any]:
    """A wire-form tool with its `inputSchema` and `outputSchema` compacted, `annotations.title`
    dropped when it equals the tool's `title` (the spec shows `title` first, so the copy is never
    read) and, when `max_description` is given, its description cut to that many characters at a
    word (marked with `…`). The input is not modified."""
    out = dict(tool)
    for key in ("inputSchema", "outputSchema"):
        if isinstance(out.get(key), dict):
            out[key] = compact_schema(out[key])
    annotations = out.get("annotations")
    if isinstance(annotations, dict) and "title" in annotations and _equal(annotations["title"], out.get("title")):
        out["annotations"] = {k: v for k, v in annotations.items() if k != "title"}
    if max_description is not None and isinstance(out.get("description"), str):
        out["description"] = cap_description(out["description"], max_description)
    return out
