"""`${VAR}` and `${VAR:-default}` in config values.

A value that is one `${...}` and nothing else, at a key whose model expects a list, becomes a list
when what it gives is a YAML sequence: `required_scopes: ${SCOPES:-[mcp:tools, mcp:read]}`, or
`SCOPES='[a, b]'` (a block sequence `- a` works too; an empty value gives an empty list). Everywhere
else the result stays the string it reads as: `headers: {X-Tags: "${TAGS}"}` keeps `[a, b]` as text.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel

from mcp_hub.config.errors import ConfigError
from mcp_hub.config.models import GatewayConfig
from mcp_hub.config.policy import PolicyConfig

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# The top level of a config file: the gateway's sections and the policy keys beside them.
_ROOTS: tuple[Any, ...] = (GatewayConfig, PolicyConfig)
_LIST_ORIGINS = (list, tuple, set, frozenset, Sequence)


def interpolate(
    value: Any, path: str = "", env: Mapping[str, str] | None = None, _keys: tuple[str | int, ...] = ()
) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a loaded YAML tree.

    `path` names the tree in error messages; the tree is read as a whole config file (or a connector,
    which has the same top-level keys) to know which keys expect lists.
    """
    env = os.environ if env is None else env
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError([f"{path or '<root>'}: environment variable {name} is not set (use ${{{name}:-default}})"])

        whole = _ENV_RE.fullmatch(value.strip())
        if whole is not None and expects_list(_keys):
            return _as_list(sub(whole), path)
        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: interpolate(v, f"{path}.{k}" if path else str(k), env, (*_keys, str(k))) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", env, (*_keys, i)) for i, v in enumerate(value)]
    return value


def _as_list(text: str, path: str) -> Any:
    """A YAML sequence's items; an empty text, none; anything else, the text unchanged."""
    stripped = text.strip()
    if not stripped:
        return []
    if not (stripped.startswith("[") or stripped.startswith("- ") or stripped == "-"):
        return text  # one plain value: the model says what it makes of it
    try:
        loaded = yaml.safe_load(stripped)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path or '<root>'}: the value is not a valid YAML list: "
                           f"{getattr(exc, 'problem', None) or exc}"]) from None
    return loaded if isinstance(loaded, list) else text


def expects_list(keys: tuple[str | int, ...]) -> bool:
    """Whether the config key at `keys` (mapping keys and list indexes from the top) takes a list."""
    if not keys:
        return False
    types_at: list[Any] = list(_ROOTS)
    for key in keys:
        types_at = [child for tp in types_at for child in _children(tp, key)]
        if not types_at:
            return False
    return any(_is_list(tp) for tp in types_at)


def _variants(tp: Any) -> Iterator[Any]:
    """The types a value of annotation `tp` may take: unions and `Annotated` unwrapped."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        yield from _variants(typing.get_args(tp)[0])
    elif origin is typing.Union or origin is types.UnionType:
        for arg in typing.get_args(tp):
            yield from _variants(arg)
    else:
        yield tp


def _children(tp: Any, key: str | int) -> Iterator[Any]:
    for variant in _variants(tp):
        origin = typing.get_origin(variant)
        if isinstance(variant, type) and issubclass(variant, BaseModel):
            if isinstance(key, str):
                for name, field in variant.model_fields.items():
                    if key in (name, field.alias):
                        yield field.annotation
        elif origin in (dict, Mapping) and isinstance(key, str):
            args = typing.get_args(variant)
            if len(args) == 2:
                yield args[1]
        elif origin in _LIST_ORIGINS and isinstance(key, int):
            args = typing.get_args(variant)
            if args:
                yield args[0]


def _is_list(tp: Any) -> bool:
    return any(typing.get_origin(v) in _LIST_ORIGINS for v in _variants(tp))
