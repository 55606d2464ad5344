"""Catalog token counting: the estimate rule, pluggable counters, tools/list as the client receives it."""

from __future__ import annotations

import json
import math

import mcp.types
import pytest

from mcp_hub.catalog.tokens import estimate_tokens, listing_tokens, load_counter, tool_tokens, wire_tool


def word_count(text: str) -> int:
    """A counter `load_counter` imports by `tests.test_catalog_tokens:word_count`."""
    return len(text.split())


def not_a_count(text: str) -> str:
    return "many"


NOT_CALLABLE = 42


def test_estimate_is_ceil_of_characters_over_four() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100
    assert estimate_tokens("東京東京東") == 2  # code points, not bytes


def test_load_counter_defaults_and_names() -> None:
    assert load_counter(None) is estimate_tokens
    assert load_counter("estimate") is estimate_tokens
    by_bytes = load_counter("bytes")
    assert by_bytes("東京東京東") == math.ceil(15 / 4)  # 15 UTF-8 bytes
    assert by_bytes("abcd") == 1


def test_load_counter_imports_a_function() -> None:
    counter = load_counter("tests.test_catalog_tokens:word_count")
    assert counter("three little words") == 3
    assert load_counter("json:dumps.__call__") is not None  # dotted attributes resolve


@pytest.mark.parametrize(("spec", "message"), [
    ("", "token counter must be"),
    ("  ", "token counter must be"),
    ("tiktoken-ish", "neither a known name"),
    ("module_without_function", "neither a known name"),
    ("a.b:", "neither a known name"),
    (":f", "neither a known name"),
    ("no_such_module_for_mcp_hub:count", "cannot import module 'no_such_module_for_mcp_hub'"),
    ("tests.test_catalog_tokens:missing", "has no attribute 'missing'"),
    ("tests.test_catalog_tokens:NOT_CALLABLE", "is not callable"),
    ("os.path:join; rm -rf /", "neither a known name"),
])
def test_load_counter_refuses_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        load_counter(spec)


def test_a_counter_that_returns_no_count_fails_clearly() -> None:
    counter = load_counter("tests.test_catalog_tokens:not_a_count")
    with pytest.raises(TypeError, match="not a count"):
        counter("text")


TOOLS = [
    mcp.types.Tool(name="time__get_current_time", title="Current time", description="Get the time in a zone — “now”.",
                   input_schema={"type": "object", "properties": {"timezone": {"type": "string"}},
                                 "required": ["timezone"]},
                   annotations=mcp.types.ToolAnnotations(read_only_hint=True)),
    mcp.types.Tool(name="github__repos_get", description="Get a repository: owner/repo, <b>東京</b>",
                   input_schema={"type": "object"}, output_schema={"type": "object", "properties": {}}),
]


def test_listing_tokens_is_the_compact_json_of_the_result() -> None:
    wire = [wire_tool(t) for t in TOOLS]
    assert "inputSchema" in wire[0] and "outputSchema" not in wire[0]  # camelCase, no nulls
    text = json.dumps({"tools": wire}, separators=(",", ":"), ensure_ascii=False)
    assert listing_tokens(wire) == math.ceil(len(text) / 4)
    # The same text, character for character, as the SDK's own serialization of the result.
    sdk = mcp.types.ListToolsResult(tools=TOOLS).model_dump_json(by_alias=True, exclude_none=True, include={"tools"})
    assert json.loads(sdk) == {"tools": wire}
    assert len(sdk) == len(text)
    assert listing_tokens(wire, word_count) == len(text.split())
    assert listing_tokens([]) == estimate_tokens('{"tools":[]}')


def test_tool_tokens() -> None:
    wire = [wire_tool(t) for t in TOOLS]
    for tool in wire:
        assert tool_tokens(tool) == math.ceil(len(json.dumps(tool, separators=(",", ":"), ensure_ascii=False)) / 4)
    # A listing costs about the sum of its tools (commas and the wrapper aside).
    assert abs(listing_tokens(wire) - sum(tool_tokens(t) for t in wire)) <= 5
