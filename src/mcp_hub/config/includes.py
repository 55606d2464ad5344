"""Ready-made upstream definitions that a config includes by name (`include: [time, git]`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp_hub.config.env import interpolate
from mcp_hub.config.errors import ConfigError
from mcp_hub.config.yamlfile import load_yaml

# The shipped connectors are package data (mcp_hub/connectors/*.yaml), so they come with every install.
CONNECTORS_DIR = Path(__file__).resolve().parents[1] / "connectors"


def connector_path(name: str, base_dir: Path | None = None) -> Path | None:
    """Find a connector by name (connectors/NAME.yaml) or by path relative to the config."""
    candidates = []
    if name.endswith((".yaml", ".yml")):
        candidates.append((base_dir or Path.cwd()) / name)
    candidates.append(CONNECTORS_DIR / f"{name}.yaml")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def available() -> list[str]:
    """Names of the shipped connectors."""
    return sorted(p.stem for p in CONNECTORS_DIR.glob("*.yaml")) if CONNECTORS_DIR.is_dir() else []


def expand_includes(raw: dict[str, Any], *, base_dir: Path | None, source: str | None) -> dict[str, Any]:
    """Merge included connectors' `upstreams` and `openapi` entries under the config's own.

    The config's own entries win over an included one with the same name, so a connector can be
    included and then adjusted.
    """
    includes = raw.get("include") or []
    if not isinstance(includes, list):
        raise ConfigError(["include: must be a list of connector names"], source)
    included: dict[str, dict[str, Any]] = {"upstreams": {}, "openapi": {}}
    for index, name in enumerate(includes):
        path = connector_path(str(name), base_dir)
        if path is None:
            known = ", ".join(available()) or "none"
            raise ConfigError([f"include[{index}]: no connector named {name!r} (known: {known})"], source)
        try:
            loaded = load_yaml(path.read_text(), str(path))
        except ConfigError as exc:
            raise ConfigError([f"include[{index}] ({path.name}): {p}" for p in exc.problems], source) from None
        data = interpolate(loaded or {}, f"include[{index}]")
        for section, entries in included.items():
            entries.update(data.get(section) or {})
    for section, entries in included.items():
        if entries:
            # Included connectors in the order given, then the config's own (which win on a name).
            raw[section] = {**entries, **(raw.get(section) or {})}
    return raw
