"""`${VAR}` and `${VAR:-default}` in config values."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from mcp_hub.config.errors import ConfigError

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, path: str = "", env: Mapping[str, str] | None = None) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string of a loaded YAML tree."""
    env = os.environ if env is None else env
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError([f"{path or '<root>'}: environment variable {name} is not set (use ${{{name}:-default}})"])

        return _ENV_RE.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    return value
