"""The public documents in openapi_specs/ (2.0, 3.0, 3.1; JSON, YAML, gzip) all convert cleanly."""

from __future__ import annotations

import functools
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mcp_hub.upstreams.openapi import ConvertedDocument, convert_source
from tests.support.tools import ROOT

SPECS = ROOT / "openapi_specs"
DOCUMENTS = sorted(p for p in SPECS.iterdir() if p.name.endswith((".json", ".yaml", ".yml", ".gz")))
NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Tools whose schemas are checked per document: check_schema takes ~0.1 s on a 13 KB schema, and the
# whole corpus (4,300 tools) takes minutes; bench/openapi_corpus.py checks every one of them.
SAMPLE = 5


@functools.cache
def timed_conversion(path: Path) -> tuple[ConvertedDocument, float]:
    """Each document converted once per run, with the time it took."""
    began = time.perf_counter()
    converted = convert_source(str(path))
    return converted, time.perf_counter() - began


def converted_document(path: Path) -> ConvertedDocument:
    return timed_conversion(path)[0]


def outside_refs(schema: dict[str, Any]) -> list[str]:
    defs = schema.get("$defs", {})
    found = re.findall(r'"\$ref": "((?:[^"\\]|\\.)*)"', json.dumps(schema))
    return [r for r in found if not (r.startswith("#/$defs/") and r[len("#/$defs/"):] in defs)]


def test_corpus_is_large_and_varied() -> None:
    assert len(DOCUMENTS) >= 20
    suffixes = {"".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix for p in DOCUMENTS}
    assert {".json", ".yaml", ".json.gz"} <= suffixes
    assert sum(p.stat().st_size for p in SPECS.iterdir()) < 30 * 1024 * 1024


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_document_converts(path: Path) -> None:
    converted = converted_document(path)
    assert not converted.skipped, converted.skipped[:3]
    assert len(converted.tools) == converted.operations
    names = [tool.name for tool in converted.tools]
    assert all(NAME.match(name) for name in names) and len(set(names)) == len(names)
    step = max(1, len(converted.tools) // SAMPLE)
    for tool in converted.tools[::step]:
        for schema in (tool.input_schema, tool.output_schema):
            if schema is not None:
                Draft202012Validator.check_schema(schema)
                assert not outside_refs(schema)


def test_versions_covered() -> None:
    versions = {converted_document(p).openapi_version[:3] for p in DOCUMENTS}
    assert {"2.0", "3.0", "3.1"} <= versions


def test_github_converts_in_a_few_seconds() -> None:
    converted, took = timed_conversion(SPECS / "github-api.json.gz")
    assert len(converted.tools) > 1000
    assert took < 10, f"GitHub's description took {took:.1f}s"
    issues = converted.bindings["issues_create"]
    assert (issues.method, issues.path) == ("POST", "/repos/{owner}/{repo}/issues")
    tool = next(t for t in converted.tools if t.name == "issues_create")
    assert {"owner", "repo", "title"} <= set(tool.input_schema["properties"])
