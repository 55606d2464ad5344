"""Config errors: every problem names its key path and the reason, never a secret's value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

TRANSPORTS = ("stdio", "sse", "streamable-http")


class ConfigError(Exception):
    """A config that cannot be used; each line names a key path and the reason."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)))


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in TRANSPORTS or part in ("function-after[_http_url(), str]",):
            continue  # the discriminated-union branch name is noise in a key path
        else:
            out += f".{part}" if out else str(part)
    return out


def _format_error(err: Mapping[str, Any], prefix: str = "") -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    path = _format_loc(loc)
    if kind == "union_tag_invalid":
        path = f"{path}.{ctx.get('discriminator', '').strip(chr(39))}" if path else "transport"
        message = f"must be one of {', '.join(TRANSPORTS)} (got {ctx.get('tag')!r})"
    elif kind == "union_tag_not_found":
        path = f"{path}.{ctx.get('discriminator', '').strip(chr(39))}"
        message = f"is required: one of {', '.join(TRANSPORTS)}"
    elif kind == "extra_forbidden":
        message = "is not a known key"
    elif kind == "missing":
        message = "is required"
    elif kind == "string_pattern_mismatch" and loc and loc[-1] == "[key]":
        message = f"is not a valid name (letters, digits, _ and -, at most 48): {err.get('input')!r}"
    else:
        message = str(err.get("msg", "is invalid"))
        message = message.removeprefix("Value error, ")
    path = path.replace(".[key]", "")
    full = f"{prefix}.{path}" if prefix and path else (prefix or path or "<root>")
    return f"{full}: {message}"


def format_validation_error(exc: ValidationError, prefix: str = "") -> list[str]:
    """Turn pydantic errors into `key.path: reason` lines."""
    return [_format_error(e, prefix) for e in exc.errors()]
