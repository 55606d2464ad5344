"""Counting tokens: a small pluggable `TokenCounter` interface and upstream-reported usage.

Counters are picked by name from the config (`token_counter: estimate`). Built in:

- ``estimate``: about 4 characters per token over the compact JSON of the object (fast; the
  usual rule of thumb for English text and JSON with Claude/GPT tokenizers).
- ``bytes``: about 4 UTF-8 bytes per token (counts non-Latin text higher than ``estimate``).

Register another with `register_counter(name, factory)` before the config is loaded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from mcp_hub.config.policy import TOKEN_COUNTERS

__all__ = [
    "TokenCounter",
    "CharEstimate",
    "counter_names",
    "get_counter",
    "register_counter",
    "usage_from_meta",
]


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens an object (arguments, a result, a string) would cost a model."""

    def count(self, obj: Any) -> int:
        """The number of tokens in `obj`; never negative."""
        ...


def _compact_text(obj: Any) -> str:
    """The compact JSON text of `obj` (strings as they are), which is what a model would read."""
    if obj is None:
        return ""
    if isinstance(obj, str):
        return obj
    dump = getattr(obj, "model_dump_json", None)
    if callable(dump):  # pydantic models (SDK results): serialized in Rust, by alias, without nulls
        return str(dump(by_alias=True, exclude_none=True))
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)
    if callable(dump):
        return dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(obj, bytes | bytearray):
        return obj.decode("utf-8", "replace")
    return str(obj)


class CharEstimate:
    """Estimates tokens as characters (or UTF-8 bytes) divided by `per_token`, rounded up."""

    def __init__(self, per_token: float = 4.0, *, utf8_bytes: bool = False) -> None:
        self.per_token = per_token
        self.utf8_bytes = utf8_bytes

    def count(self, obj: Any) -> int:
        """Tokens in the compact JSON of `obj`; 0 for None or an empty string."""
        text = _compact_text(obj)
        size = len(text.encode("utf-8")) if self.utf8_bytes else len(text)
        return math.ceil(size / self.per_token)


_REGISTRY: dict[str, Callable[[], TokenCounter]] = {
    "estimate": CharEstimate,
    "bytes": lambda: CharEstimate(utf8_bytes=True),
}


def register_counter(name: str, factory: Callable[[], TokenCounter]) -> None:
    """Make a counter selectable by `name` in the config."""
    _REGISTRY[name] = factory
    TOKEN_COUNTERS.add(name)


def counter_names() -> set[str]:
    """The names `token_counter:` accepts."""
    return set(_REGISTRY)


def get_counter(name: str = "estimate") -> TokenCounter:
    """A new counter by name; KeyError names the known ones."""
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown token counter {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


# Where upstreams report usage in a result's `_meta`, in the order tried.
_USAGE_KEYS = ("usage", "io.mcp-hub/usage", "mcp-hub/usage")
_INPUT_KEYS = ("input_tokens", "inputTokens", "prompt_tokens", "promptTokens")
_OUTPUT_KEYS = ("output_tokens", "outputTokens", "completion_tokens", "completionTokens")


def usage_from_meta(result_meta: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """Upstream-reported token usage from a result's `_meta`, as (input, output), or None.

    Accepted: `_meta.usage` (or `_meta["io.mcp-hub/usage"]`, `_meta["mcp-hub/usage"]`) holding
    `input_tokens`/`output_tokens` (also camelCase `inputTokens`/`outputTokens`, or OpenAI-style
    `prompt_tokens`/`completion_tokens`). Values must be non-negative integers; a missing side
    counts as 0; nothing usable returns None so the caller falls back to its own count.
    """
    if not isinstance(result_meta, Mapping):
        return None
    for key in _USAGE_KEYS:
        usage = result_meta.get(key)
        if not isinstance(usage, Mapping):
            continue
        found_in, tokens_in = _first_int(usage, _INPUT_KEYS)
        found_out, tokens_out = _first_int(usage, _OUTPUT_KEYS)
        if found_in or found_out:
            return tokens_in, tokens_out
    return None


def _first_int(usage: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[bool, int]:
    for key in keys:
        value = usage.get(key)
        # bool is an int subclass; `true` tokens is a bug upstream, not a count.
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return True, value
    return False, 0
