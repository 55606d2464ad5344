"""The gateway's YAML config: pydantic models, ${ENV} interpolation, errors that name the key path."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,47}$"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config that cannot be used; each line names a key path and the reason."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(where + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems)))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _UpstreamCommon(_Model):
    prefix: str | None = Field(
        default=None, description="Prefix of exposed tool and prompt names; defaults to the upstream's name."
    )
    protocol: Literal["auto", "legacy", "2026-07-28"] = Field(
        default="auto",
        description="auto probes 2026-07-28 and falls back to the initialize handshake; legacy forces it.",
    )
    connect_timeout: float = Field(default=30.0, gt=0, description="Seconds to connect and list the catalog.")
    call_timeout: float = Field(default=300.0, gt=0, description="Seconds a call may take before it fails.")
    health_interval: float = Field(default=15.0, gt=0, description="Seconds between liveness pings.")
    reconnect_max_backoff: float = Field(default=30.0, gt=0, description="Upper bound of the reconnect delay.")
    session_scope: Literal["shared", "per_consumer"] = Field(
        default="shared",
        description="shared: one upstream session for all callers; per_consumer: one per consumer.",
    )
    credentials: dict[str, Any] | None = Field(
        default=None, description="How the gateway authenticates to this upstream (see auth docs)."
    )


class StdioUpstreamConfig(_UpstreamCommon):
    transport: Literal["stdio"]
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None


class _HttpUpstreamConfig(_UpstreamCommon):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value


class SseUpstreamConfig(_HttpUpstreamConfig):
    transport: Literal["sse"]


class StreamableHttpUpstreamConfig(_HttpUpstreamConfig):
    transport: Literal["streamable-http"]


UpstreamConfig = Annotated[
    StdioUpstreamConfig | SseUpstreamConfig | StreamableHttpUpstreamConfig, Field(discriminator="transport")
]
TRANSPORTS = ("stdio", "sse", "streamable-http")


class ServerRoute(_Model):
    """A virtual server: a path that exposes a chosen set of upstreams."""

    path: str = Field(pattern=r"^/[A-Za-z0-9/_.-]*$")
    upstreams: list[str] | None = Field(default=None, description="Upstreams exposed here; all when absent.")
    prefix: bool = Field(default=True, description="false exposes the upstreams' own names.")
    authorization_servers: list[str] | None = Field(
        default=None,
        description="For an upstream that runs its own OAuth (the GitHub remote MCP pattern): callers identify "
        "to the gateway with X-Api-Key and bring the upstream's token in Authorization; this route's protected "
        "resource metadata names these authorization servers, with the route as the resource.",
    )


class ListenConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    stateless: bool = Field(default=False, description="Stateless Streamable HTTP: replicas need no affinity.")
    json_response: bool = False
    direct_calls: bool = Field(
        default=True,
        description="Serve tools/call to Streamable HTTP upstreams on the gateway's direct path (the same policy, "
        "no SDK session in between; see the README's 'The call path'); false sends every call through the SDK.",
    )
    separator: str = Field(default="__", pattern=r"^[A-Za-z0-9_-]{1,3}$")
    max_request_body: int = Field(default=4 * 1024 * 1024, gt=0)
    allowed_hosts: list[str] | None = Field(
        default=None, description="Host headers accepted (DNS-rebinding protection); loopback by default."
    )
    allowed_origins: list[str] | None = None
    on_collision: Literal["error", "warn"] = Field(
        default="error",
        description="Two upstreams offering one exposed name at start: refuse to start, or warn and keep "
        "the first (config order). At run time a new collision is always a warning.",
    )


class GatewayConfig(_Model):
    """The whole config file."""

    include: list[str] = Field(default_factory=list, description="Connectors (by name or path) to merge in.")
    listen: ListenConfig = Field(default_factory=ListenConfig)
    upstreams: dict[Annotated[str, Field(pattern=NAME_PATTERN)], UpstreamConfig] = Field(default_factory=dict)
    openapi: dict[Annotated[str, Field(pattern=NAME_PATTERN)], dict[str, Any]] = Field(default_factory=dict)
    servers: list[ServerRoute] = Field(default_factory=list)
    auth: dict[str, Any] = Field(default_factory=dict)
    admin: dict[str, Any] = Field(default_factory=dict, description="The admin API (see mcp_hub.admin).")
    # Policy keys (default_acl, groups, ...) sit at the top level; the policy model validates them.
    policy: dict[str, Any] = Field(default_factory=dict, exclude=True)
    # The folder relative paths in the config (OpenAPI documents) are resolved against.
    _base_dir: Path | None = PrivateAttr(default=None)

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    @model_validator(mode="after")
    def _check_references(self) -> GatewayConfig:
        known = set(self.upstreams) | set(self.openapi)
        clash = set(self.upstreams) & set(self.openapi)
        if clash:
            raise ValueError(f"names used by both upstreams and openapi: {', '.join(sorted(clash))}")
        paths: set[str] = set()
        for route in self.servers:
            if route.path in paths:
                raise ValueError(f"servers: path {route.path} is defined twice")
            paths.add(route.path)
            for name in route.upstreams or []:
                if name not in known:
                    raise ValueError(f"servers: {route.path} names unknown upstream {name!r}")
        return self

    def upstream_prefix(self, name: str) -> str:
        cfg: Any = self.upstreams.get(name) or self.openapi.get(name) or {}
        prefix = cfg.prefix if hasattr(cfg, "prefix") else cfg.get("prefix")
        return name if prefix is None else prefix


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


def _policy_keys() -> set[str]:
    from mcp_hub.policy.models import PolicyConfig

    return set(PolicyConfig.model_fields)


def parse_config(raw: Any, *, source: str | None = None, base_dir: Path | None = None) -> GatewayConfig:
    """Validate a loaded (already interpolated) config tree."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(["<root>: must be a mapping of keys"], source)
    raw = dict(raw)
    from mcp_hub.connectors import expand_includes

    raw = expand_includes(raw, base_dir=base_dir, source=source)
    policy_raw = {k: raw.pop(k) for k in list(raw) if k in _policy_keys()}
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source) from None
    config.policy = policy_raw
    config._base_dir = base_dir
    problems = validate_sections(config)
    if problems:
        raise ConfigError(problems, source)
    return config


def validate_sections(config: GatewayConfig) -> list[str]:
    """Validate the sections owned by other modules (policy, auth, admin, openapi) with their own models."""
    # Imported here: those modules import this one.
    from mcp_hub.admin import AdminConfig
    from mcp_hub.auth.config import AuthConfig
    from mcp_hub.policy.models import PolicyConfig
    from mcp_hub.upstreams.openapi.config import OpenAPIUpstreamConfig

    sections: list[tuple[type[BaseModel], Any, str]] = [
        (PolicyConfig, config.policy, ""),
        (AuthConfig, config.auth, "auth"),
        (AdminConfig, config.admin, "admin"),
        *((OpenAPIUpstreamConfig, entry, f"openapi.{name}") for name, entry in config.openapi.items()),
    ]
    problems: list[str] = []
    for model, data, prefix in sections:
        try:
            model.model_validate(data)
        except ValidationError as exc:
            problems += format_validation_error(exc, prefix)
    return problems


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read, interpolate and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read config: {exc.strerror}"], str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError([f"<root>: not valid YAML{where}: {getattr(exc, 'problem', exc)}"], str(path)) from None
    try:
        raw = interpolate(raw, env=env)
    except ConfigError as exc:
        raise ConfigError(exc.problems, str(path)) from None
    return parse_config(raw, source=str(path), base_dir=path.parent)
