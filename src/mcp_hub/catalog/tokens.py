"""What a catalog costs in a model's context: tokens of `tools/list` as the client receives it.

The default estimate is the project's one rule (see `mcp_hub.policy.tokens`): one token per four
characters (Unicode code points), rounded up, of the compact JSON text. Another counter is a plain
function `str -> int` named by `package.module:function` (for example a real tokenizer's), or the
name of a counter registered with `mcp_hub.policy.tokens.register_counter` (`bytes`).
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import mcp.types

from mcp_hub.policy.tokens import counter_names, get_counter

TokenCounter = Callable[[str], int]

CHARS_PER_TOKEN = 4
_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def estimate_tokens(text: str) -> int:
    """ceil(characters / 4): the usual rule of thumb for English text and JSON."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _checked(func: Callable[[str], Any], spec: str) -> TokenCounter:
    def count(text: str) -> int:
        value = func(text)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise TypeError(f"token counter {spec!r} returned {type(value).__name__} {value!r}, not a count")
        return value

    count.__name__ = f"counter<{spec}>"
    return count


def load_counter(spec: str | None) -> TokenCounter:
    """The counter `spec` names: None or `estimate` -> `estimate_tokens`; a registered counter name
    (`bytes`); or `package.module:function` (a callable taking the text, returning a count).

    Raises ValueError naming the problem for anything else.
    """
    if spec is None or spec == "estimate":
        return estimate_tokens
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("token counter must be 'estimate', a registered name or 'package.module:function'")
    if ":" not in spec and spec in counter_names():
        counter = get_counter(spec)
        return _checked(lambda text: counter.count(text), spec)
    if not _SPEC.match(spec):
        raise ValueError(
            f"token counter {spec!r} is neither a known name ({', '.join(sorted(counter_names()))}) "
            "nor 'package.module:function'"
        )
    module_name, _, attr_path = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"token counter {spec!r}: cannot import module {module_name!r} ({exc})") from None
    for attr in attr_path.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise ValueError(f"token counter {spec!r}: {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ValueError(f"token counter {spec!r} is not callable")
    return _checked(target, spec)


def wire_json(value: Any) -> str:
    """The compact JSON text a client receives: no spaces, non-ASCII characters as they are."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def wire_tool(tool: mcp.types.Tool) -> dict[str, Any]:
    """A tool in the SDK's wire form (camelCase keys, no nulls), as `tools/list` sends it."""
    return tool.model_dump(by_alias=True, exclude_none=True, mode="json")


def listing_tokens(tools: Sequence[dict[str, Any]], counter: TokenCounter = estimate_tokens) -> int:
    """Tokens of the `tools/list` result `{"tools": [...]}` for these wire-form tools."""
    return counter(wire_json({"tools": list(tools)}))


def tool_tokens(tool: dict[str, Any], counter: TokenCounter = estimate_tokens) -> int:
    """Tokens of one wire-form tool's JSON (a listing costs about the sum of its tools)."""
    return counter(wire_json(tool))
