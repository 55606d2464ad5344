"""Convert every document in openapi_specs/ and report how well the OpenAPI connector does.

Per document: OpenAPI version, operations, tools produced, skipped operations, invalid tool names
(must be 0), schemas failing Draft 2020-12 `check_schema` or pointing outside themselves (must
be 0), the size of the tool list as JSON, and conversion time. Then totals, with what the connector
did before with what Python's `re` rejects (every such pattern dropped without a word) and with
non-object JSON answers (no output schema): patterns translated / reported as dropped, and tools
whose output schema now wraps the answer as `result`.

    .venv/bin/python bench/openapi_corpus.py [--no-check] [DIR]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from mcp_hub.upstreams.openapi import DocumentError, convert_source

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
DOCUMENT_SUFFIXES = (".json", ".yaml", ".yml", ".json.gz", ".yaml.gz", ".yml.gz")


def outside_refs(schema: Any) -> list[str]:
    """`$ref`s that do not point into the schema's own `$defs`."""
    found: list[str] = []
    defs = schema.get("$defs", {}) if isinstance(schema, dict) else {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not (ref.startswith("#/$defs/") and ref[len("#/$defs/"):] in defs):
                found.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def bad_schemas(tools: list[Any]) -> int:
    """How many input/output schemas are invalid Draft 2020-12 or refer outside themselves."""
    bad = 0
    for tool in tools:
        for schema in (tool.input_schema, tool.output_schema):
            if schema is None:
                continue
            try:
                Draft202012Validator.check_schema(schema)
            except SchemaError:
                bad += 1
                continue
            if outside_refs(schema):
                bad += 1
    return bad


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 when any name or schema is invalid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "openapi_specs"))
    parser.add_argument("--no-check", action="store_true", help="skip the (slow) schema validation")
    options = parser.parse_args(argv)
    paths = sorted(p for p in Path(options.folder).rglob("*") if p.name.endswith(DOCUMENT_SUFFIXES))
    header = f"{'document':34} {'ver':5} {'ops':>5} {'tools':>5} {'skip':>4} {'badname':>7} {'badschema':>9} {'MB':>6} {'secs':>6}"
    print(header)
    print("-" * len(header))
    totals = {"docs": 0, "ok": 0, "ops": 0, "tools": 0, "skipped": 0, "bad_names": 0, "bad_schemas": 0,
              "seconds": 0.0, "bytes": 0, "translated": 0, "reported": 0, "wrapped": 0}
    for path in paths:
        totals["docs"] += 1
        started = time.perf_counter()
        try:
            converted = convert_source(str(path))
        except DocumentError as exc:
            print(f"{path.name:34} FAILED: {exc}")
            continue
        seconds = time.perf_counter() - started
        names = [tool.name for tool in converted.tools]
        bad_names = sum(not NAME.match(n) for n in names) + (len(names) - len(set(names)))
        bad = 0 if options.no_check else bad_schemas(converted.tools)
        size = len(json.dumps([t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in converted.tools]))
        totals["ok"] += 1
        totals["ops"] += converted.operations
        totals["tools"] += len(converted.tools)
        totals["skipped"] += len(converted.skipped)
        totals["bad_names"] += bad_names
        totals["bad_schemas"] += bad
        totals["seconds"] += seconds
        totals["bytes"] += size
        totals["translated"] += len(converted.patterns_translated)
        totals["reported"] += len(converted.warnings)
        totals["wrapped"] += sum(b.output_wrapped for b in converted.bindings.values())
        print(f"{path.name:34} {converted.openapi_version:5} {converted.operations:5} {len(converted.tools):5} "
              f"{len(converted.skipped):4} {bad_names:7} {bad:9} {size / 1e6:6.2f} {seconds:6.2f}")
        for skip in converted.skipped[:3]:
            print(f"    skipped {skip.method} {skip.path}: {skip.reason}")
    print("-" * len(header))
    share = totals["tools"] / totals["ops"] if totals["ops"] else 1.0
    print(f"documents converted without error: {totals['ok']}/{totals['docs']}")
    print(f"operations: {totals['ops']}, tools: {totals['tools']} ({share:.1%}), skipped: {totals['skipped']}")
    print(f"invalid tool names: {totals['bad_names']}, invalid or open schemas: "
          f"{'not checked' if options.no_check else totals['bad_schemas']}")
    print(f"tool list JSON: {totals['bytes'] / 1e6:.1f} MB, conversion time: {totals['seconds']:.2f} s")
    rejected = totals["translated"] + totals["reported"]
    print(f"patterns Python's re rejects: {rejected} (before: all dropped silently); now translated "
          f"{totals['translated']}, dropped and reported {totals['reported']}, dropped silently 0")
    print(f"tools with a non-object JSON answer: {totals['wrapped']} (before: no output schema; now "
          "wrapped as {\"result\": ...})")
    return 1 if totals["bad_names"] or totals["bad_schemas"] or totals["ok"] != totals["docs"] else 0


if __name__ == "__main__":
    sys.exit(main())
