"""The `admin:` section: where the admin API lives, who may use it, and what runtime registrations may reach."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_PATHS = ("/", "/mcp", "/healthz", "/metrics")


class _Model(BaseModel):
    # hide_input_in_errors: a mistyped digest or Redis URL must not be echoed in the error.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class AdminKey(_Model):
    """One admin key: a name for the audit log and the SHA-256 of the key (never the key)."""

    name: str = Field(min_length=1, description="who holds the key (shown in logs, never the key)")
    sha256: str = Field(description="SHA-256 hex digest of the key; `mcp-hub keys new --admin NAME` prints it")

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256_HEX.match(value):
            raise ValueError("must be the 64 hex digits of a SHA-256 digest (see `mcp-hub keys new --admin NAME`)")
        return value


def _http_prefixes(values: list[str]) -> list[str]:
    for value in values:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL prefix")
        if parts.username or parts.password:
            raise ValueError(f"{parts.scheme}://{parts.hostname}...: a URL prefix must not carry credentials")
    return values


class AdminConfig(_Model):
    """The `admin:` section: where the admin API lives, who may use it, and what it may register."""

    path: str = Field(default="/admin", pattern=r"^/[A-Za-z0-9/_.-]+$",
                      description="URL path the admin API is served under")
    keys: list[AdminKey] = Field(default_factory=list, description="admin keys (name and SHA-256 digest)")
    groups: list[str] = Field(
        default_factory=list,
        description="consumers the gateway's auth puts in one of these groups are admins too",
    )
    scrape_keys: list[AdminKey] = Field(
        default_factory=list,
        description="keys (name and SHA-256 digest) that may read /metrics and the detail of /healthz, e.g. for "
        "Prometheus' `authorization: {credentials: ...}`; admin keys may too. Once any credential is configured "
        "(caller auth, admin keys or scrape keys), an unauthenticated /healthz answers liveness only "
        "(`{\"status\": ...}`) and /metrics answers 401",
    )
    allowed_base_urls: list[str] = Field(
        default_factory=list,
        description="URL prefixes a runtime OpenAPI registration may call; empty: registration is off. "
        "Loopback and link-local hosts are refused unless a prefix names them literally",
    )
    allowed_spec_urls: list[str] | None = Field(
        default=None, description="URL prefixes a registration's document may be fetched from; "
        "default: allowed_base_urls"
    )
    spec_dirs: list[str] = Field(
        default_factory=list,
        description="folders on the gateway host a registration may name a document in (relative to the "
        "config file); default: none, so only URLs and inline documents",
    )
    registry: str | None = Field(
        default=None,
        description="where registrations persist: a file path (relative to the config file), memory:// or "
        "redis://host:port/db; default: <config name>.registrations.json beside the config file",
    )

    @property
    def enabled(self) -> bool:
        """Whether the admin API is served (some way to authenticate an admin is configured)."""
        return bool(self.keys or self.groups)

    @field_validator("path")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        value = value.rstrip("/") or "/"
        if value in _RESERVED_PATHS:
            raise ValueError(f"{value} is used by the gateway itself")
        return value

    @field_validator("allowed_base_urls")
    @classmethod
    def _base_urls(cls, value: list[str]) -> list[str]:
        return _http_prefixes(value)

    @field_validator("allowed_spec_urls")
    @classmethod
    def _spec_urls(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _http_prefixes(value)

    def spec_url_prefixes(self) -> list[str]:
        """Where documents may be fetched from."""
        return self.allowed_base_urls if self.allowed_spec_urls is None else self.allowed_spec_urls
