"""Reading a config: YAML, `${ENV}`, includes, then one validation of every section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mcp_hub.config.env import interpolate
from mcp_hub.config.errors import ConfigError, format_validation_error
from mcp_hub.config.includes import expand_includes
from mcp_hub.config.models import GatewayConfig
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.config.yamlfile import load_yaml


def parse_config(raw: Any, *, source: str | None = None, base_dir: Path | None = None) -> GatewayConfig:
    """Validate a loaded (already interpolated) config tree: every section, every problem reported."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: must be a mapping of keys"], source)
    raw = expand_includes(dict(raw), base_dir=base_dir, source=source)
    # Policy keys (default_acl, groups, budgets, ...) sit at the top level of the file.
    policy_raw = {k: raw.pop(k) for k in list(raw) if k in PolicyConfig.model_fields}
    problems: list[str] = []
    config: GatewayConfig | None = None
    policy: PolicyConfig | None = None
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems += format_validation_error(exc, model=GatewayConfig, root_keys=PolicyConfig.model_fields)
    try:
        policy = PolicyConfig.model_validate(policy_raw)
    except ValidationError as exc:
        problems += format_validation_error(exc, model=PolicyConfig)
    if problems or config is None or policy is None:
        raise ConfigError(problems, source)
    config.policy = policy
    config._base_dir = base_dir
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, interpolate and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read config: {exc.strerror}"], str(path)) from None
    raw = load_yaml(text, str(path))
    try:
        raw = interpolate(raw, env=env)
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path)) from None
    return parse_config(raw, source=str(path), base_dir=path.parent)
