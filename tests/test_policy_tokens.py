"""Token counting: the default estimate, pluggable counters, and upstream-reported usage."""

from __future__ import annotations

import pytest
from mcp.types import CallToolResult, TextContent

from mcp_hub.policy.tokens import (
    CharEstimate,
    TokenCounter,
    counter_names,
    get_counter,
    register_counter,
    usage_from_meta,
)


def test_estimate_is_about_four_chars_per_token_over_compact_json() -> None:
    counter = get_counter("estimate")
    assert isinstance(counter, TokenCounter)
    assert counter.count(None) == 0
    assert counter.count("") == 0
    assert counter.count("abcd") == 1
    assert counter.count("abcde") == 2
    # {"a":1,"b":[1,2]} is 17 characters compact.
    assert counter.count({"a": 1, "b": [1, 2]}) == 5
    assert counter.count({"text": "x" * 400}) == 103


def test_estimate_reads_sdk_models() -> None:
    result = CallToolResult(content=[TextContent(type="text", text="y" * 100)])
    tokens = get_counter().count(result)
    assert 25 < tokens <= 50  # the text plus the JSON around it
    assert "structuredContent" not in result.model_dump_json(by_alias=True, exclude_none=True)


def test_bytes_counter_and_registration() -> None:
    assert get_counter("bytes").count("é" * 8) == 4
    assert get_counter("estimate").count("é" * 8) == 2

    class Words:
        def count(self, obj: object) -> int:
            return len(str(obj).split())

    register_counter("words", Words)
    assert "words" in counter_names()
    assert get_counter("words").count("three little words") == 3
    with pytest.raises(KeyError, match="unknown token counter 'nope'"):
        get_counter("nope")
    assert CharEstimate(per_token=2).count("abcd") == 2


@pytest.mark.parametrize(("meta", "expected"), [
    ({"usage": {"input_tokens": 12, "output_tokens": 30}}, (12, 30)),
    ({"usage": {"inputTokens": 5, "outputTokens": 6}}, (5, 6)),
    ({"usage": {"prompt_tokens": 7, "completion_tokens": 8}}, (7, 8)),
    ({"usage": {"output_tokens": 9}}, (0, 9)),
    ({"io.mcp-hub/usage": {"input_tokens": 1, "output_tokens": 2}}, (1, 2)),
    ({"mcp-hub/usage": {"input_tokens": 3}}, (3, 0)),
    ({"usage": {"input_tokens": -1, "output_tokens": "7"}}, None),
    ({"usage": {"input_tokens": True}}, None),
    ({"usage": "lots"}, None),
    ({"progressToken": 1}, None),
    ({}, None),
    (None, None),
])
def test_usage_from_meta(meta: object, expected: tuple[int, int] | None) -> None:
    assert usage_from_meta(meta) == expected  # type: ignore[arg-type]
