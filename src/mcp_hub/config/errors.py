"""Config errors: every problem names its key path and the reason, never a secret's value."""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

TRANSPORTS = ("stdio", "sse", "streamable-http")


class ConfigError(Exception):
    """A config that cannot be used; each line names a key path and the reason."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)))


# --- walking a model's types along an error location ----------------------------------------------


def _unwrap(annotation: Any) -> Any:
    """`Annotated[X, ...]` -> X, `X | None` -> X (a union of several types stays a union)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
            continue
        if origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _members(annotation: Any) -> list[Any]:
    """The models a (possibly union) type may be."""
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [_unwrap(a) for a in typing.get_args(annotation) if _is_model(_unwrap(a))]
    return [annotation] if _is_model(annotation) else []


def _field(model: type[BaseModel], key: str) -> Any | None:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            return info.annotation
    return None


def _keys_of(annotation: Any) -> list[str]:
    keys: list[str] = []
    for model in _members(annotation):
        keys += [info.alias or name for name, info in model.model_fields.items() if not info.exclude]
    return keys


def _tags_of(annotation: Any) -> dict[str, Any]:
    """Tag value -> member model, for a union of models told apart by a Literal field."""
    tags: dict[str, Any] = {}
    for model in _members(annotation):
        for info in model.model_fields.values():
            if typing.get_origin(info.annotation) is typing.Literal and info.is_required():
                for value in typing.get_args(info.annotation):
                    tags.setdefault(str(value), model)
    return tags


class _Walk:
    """The shown key path of an error location, and the type found at each step."""

    def __init__(self, root: Any, loc: Iterable[Any]) -> None:
        self.parts: list[str] = []
        self.container: Any = None  # the type holding the last location part
        self.at: Any = root  # the type at the end of the location
        current: Any = root
        for part in loc:
            self.container = current
            current = self._step(current, part)
        self.at = current

    def _show(self, part: Any) -> None:
        if isinstance(part, int):
            self.parts.append(f"[{part}]")
        else:
            self.parts.append(str(part))

    def _step(self, current: Any, part: Any) -> Any:
        if part == "[key]":
            return None  # pydantic's marker for an error in a mapping's key
        annotation = _unwrap(current) if current is not None else None
        if annotation is None:
            if not (isinstance(part, str) and ("[" in part or part in TRANSPORTS)):
                self._show(part)
            return None
        origin = typing.get_origin(annotation)
        if _is_model(annotation):
            self._show(part)
            return _field(annotation, str(part))
        if origin in (typing.Union, types.UnionType):
            tags = _tags_of(annotation)
            if isinstance(part, str) and part in tags:
                return tags[part]  # the branch pydantic chose: not a key of the file
            for model in _members(annotation):
                found = _field(model, str(part))
                if found is not None:
                    self._show(part)
                    return found
            return annotation  # a branch label (`function-after[...]`, a type name): not a key
        if origin is dict:
            self._show(part)
            return typing.get_args(annotation)[1]
        if origin is list:
            self._show(part)
            return typing.get_args(annotation)[0]
        self._show(part)
        return None

    @property
    def path(self) -> str:
        out = ""
        for part in self.parts:
            out += part if part.startswith("[") or not out else f".{part}"
        return out


def _format_error(err: Mapping[str, Any], prefix: str = "", model: Any = None,
                  root_keys: Iterable[str] = ()) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    walk = _Walk(model, loc)
    path = walk.path
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        key = str(ctx.get("discriminator", "")).strip("'")
        path = f"{path}.{key}" if path else key
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",") if t.strip()]
        tags = tags or list(_tags_of(walk.at)) or list(TRANSPORTS)
        if kind == "union_tag_invalid":
            message = f"must be one of {', '.join(tags)} (got {ctx.get('tag')!r})"
        else:
            message = f"is required: one of {', '.join(tags)}"
    elif kind == "extra_forbidden":
        message = "is not a known key"
        known = _keys_of(walk.container) if model is not None else []
        if len(walk.parts) == 1:
            known += list(root_keys)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6) if loc else []
        if close:
            message += f"; did you mean {close[0]}?"
    elif kind == "missing":
        message = "is required"
    elif kind == "string_pattern_mismatch" and loc and loc[-1] == "[key]":
        message = f"is not a valid name (letters, digits, _ and -, at most 48): {err.get('input')!r}"
    else:
        message = str(err.get("msg", "is invalid"))
        message = message.removeprefix("Value error, ")
    full = f"{prefix}.{path}" if prefix and path else (prefix or path or "<root>")
    return f"{full}: {message}"


def format_validation_error(exc: ValidationError, prefix: str = "", model: Any = None,
                            root_keys: Iterable[str] = ()) -> list[str]:
    """Turn pydantic errors into `key.path: reason` lines.

    `model` is the type that was validated: with it, union branch labels are left out of key paths
    and an unknown key gets the closest known key of its section as a suggestion (`root_keys` adds
    keys another model takes at the top level). The messages never include the rejected value.
    """
    keys = list(root_keys)
    return [_format_error(e, prefix, model, keys) for e in exc.errors()]
