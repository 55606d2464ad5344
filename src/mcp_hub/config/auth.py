"""The `auth:` section of the gateway config and the per-upstream `credentials:` blocks.

Pydantic v2 models with `extra="forbid"` so a misspelt key fails at start with its path.
Secrets are `SecretStr`, so a model's repr (and any error that prints it) never shows them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

AuthMethod = Literal["oauth", "api_key"]
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class _Model(BaseModel):
    # hide_input_in_errors: a validation error must not print the secrets it was given.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class ApiKeyConfig(_Model):
    """One API key: who it stands for, its groups, and the SHA-256 of the key (never the key)."""

    consumer: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list)
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if not _SHA256_HEX.match(value):
            raise ValueError("must be the 64 hex digits of a SHA-256 digest (see `mcp-hub keys new`)")
        return value


class IntrospectionConfig(_Model):
    """RFC 7662 token introspection: the endpoint (discovered when absent) and the gateway's client."""

    endpoint: str | None = None
    client_id: str
    client_secret: SecretStr
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    # Active results are cached at most this long, and never past the token's own expiry.
    cache_ttl_s: float = Field(default=60.0, ge=0)
    cache_size: int = Field(default=10_000, ge=0)


class AuthConfig(_Model):
    """How callers authenticate to the gateway and how their tokens become consumers."""

    mode: Literal["none", "oauth", "api_key"] | list[AuthMethod] = "none"
    resource: str | None = Field(
        default=None,
        description="The gateway's resource URL (e.g. https://hub.example/mcp); its origin is every route's. "
        "Each route is a protected resource of its own (RFC 9728 metadata at "
        "/.well-known/oauth-protected-resource<path>, `resource` = the route's URL, wherever its path is): on "
        "a route, a token is accepted when its audience is that route's URL, or this `resource` (one token for "
        "the whole gateway, accepted on every route, under this path or not); a token for another route is "
        "refused with 401 invalid_token naming its audience. Clients need nothing but the route's URL: the "
        "gateway takes tokens whatever way the client registered (dynamic registration, a Client ID "
        "Metadata Document, or a pre-registered client).",
    )
    authorization_servers: list[str] = Field(default_factory=list)
    consumer_claim: str = "sub"
    groups_claim: str = "groups"
    api_keys: list[ApiKeyConfig] = Field(default_factory=list)
    jwks_uri: str | None = None
    introspection: IntrospectionConfig | None = None
    issuer: str | None = None
    required_scopes: list[str] = Field(
        default_factory=list,
        description="OAuth scopes a token needs (403 insufficient_scope without them), unless a route sets its "
        "own (`servers[].required_scopes`). Every route's metadata publishes its scopes as `scopes_supported` "
        "(when none are needed: `offline_access` if the authorization server offers it, else an empty list; "
        "never absent, or clients ask for every scope the server offers, admin ones included), and every 401 "
        "and 403 names them in `scope=`. A `${VAR}` (or `${VAR:-[a, b]}`) here, as at any key that takes a "
        "list, may give a YAML list.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (e.g. https://app.example, or `*`) allowed to call the MCP routes "
        "cross-origin: preflights answered, `WWW-Authenticate` and `Mcp-Session-Id` exposed (401s included). "
        "Default none. The protected resource metadata allows any origin whatever this says. With "
        "DNS-rebinding protection on (loopback binds), these origins are allowed there too.",
    )
    leeway_s: float = Field(default=30.0, ge=0)
    insecure_relaxed_audience: bool = False
    static_groups: dict[str, list[str]] = Field(default_factory=dict)
    oauth_consumers: dict[str, str] = Field(
        default_factory=dict,
        description="OAuth identities (the `consumer_claim` value) mapped to a consumer name explicitly. With both "
        "`oauth` and `api_key` enabled, an OAuth consumer not named here is `oauth:<claim value>`, so a token "
        "can never pose as an API-key consumer of the same name (its groups, limits, budgets, usage); map a "
        "claim value to an API key's consumer here to make them one consumer on purpose. With one method "
        "only, names are the claim values, and entries here still rename.",
    )
    claim_to_header: dict[str, str] = Field(default_factory=dict)
    allow_insecure_bind: bool = False
    # An unknown `kid` refetches the JWKS at most this often; cached keys are refreshed after max age.
    jwks_min_refetch_s: float = Field(default=30.0, ge=0)
    jwks_max_age_s: float = Field(default=3600.0, gt=0)
    http_timeout_s: float = Field(default=5.0, gt=0)

    @property
    def methods(self) -> frozenset[str]:
        """The enabled authentication methods: empty when auth is off."""
        if self.mode == "none":
            return frozenset()
        if isinstance(self.mode, str):
            return frozenset({self.mode})
        return frozenset(self.mode)

    @property
    def enabled(self) -> bool:
        """Whether callers must authenticate."""
        return bool(self.methods)

    @field_validator("mode")
    @classmethod
    def _non_empty_mode(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("an empty list enables no method; use `none` to turn auth off")
        return value

    @field_validator("claim_to_header")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for header in value.values():
            if not re.fullmatch(r"[A-Za-z0-9-]+", header):
                raise ValueError(f"{header!r} is not a valid HTTP header name")
        return value

    @model_validator(mode="after")
    def _complete_for_mode(self) -> AuthConfig:
        if "oauth" in self.methods:
            if not self.resource:
                raise ValueError(
                    "mode oauth needs `resource` (this gateway's URL, e.g. https://hub.example/mcp)"
                )
            if not (
                self.authorization_servers
                or self.jwks_uri
                or (self.introspection and self.introspection.endpoint)
            ):
                raise ValueError(
                    "mode oauth needs `authorization_servers` (or `jwks_uri` / `introspection.endpoint`)"
                )
        if "api_key" in self.methods and not self.api_keys:
            raise ValueError("mode api_key needs at least one entry in `api_keys`")
        return self


def _default_format(header: str, given: str | None) -> str:
    if given is not None:
        if "{}" not in given:
            raise ValueError("`format` must contain `{}` where the credential goes")
        return given
    # A bare token in Authorization needs the scheme; any other header takes the value as is.
    return "Bearer {}" if header.lower() == "authorization" else "{}"


class InjectCredentialConfig(_Model):
    """A credential the gateway owns (env var or secret file), sent to the upstream on every call."""

    mode: Literal["inject"]
    header: str = "Authorization"
    value_env: str | None = None
    value_file: Path | None = None
    format: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InjectCredentialConfig:
        if (self.value_env is None) == (self.value_file is None):
            raise ValueError("give exactly one of `value_env` or `value_file`")
        self.format = _default_format(self.header, self.format)
        return self


class PassthroughCredentialConfig(_Model):
    """The caller's own upstream credential, taken from a separate request header."""

    mode: Literal["passthrough"]
    header: str = "Authorization"
    source_header: str = "X-Upstream-Token"
    format: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PassthroughCredentialConfig:
        # Authorization is allowed: it is then only taken from callers who identify with X-Api-Key
        # (routes with `authorization_servers`), so the gateway's own credential is never forwarded.
        if self.source_header.lower() == "x-api-key":
            raise ValueError(
                "`source_header` must not be the header that carries the gateway's own credential"
            )
        self.format = _default_format(self.header, self.format)
        return self


class ExchangeCredentialConfig(_Model):
    """RFC 8693 token exchange: the caller's token traded at the IdP for one meant for the upstream."""

    mode: Literal["exchange"]
    header: str = "Authorization"
    token_endpoint: str | None = None
    # Where to discover the token endpoint; defaults to the first of `auth.authorization_servers`.
    authorization_server: str | None = None
    client_id: str
    client_secret: SecretStr
    audience: str | None = None
    resource: str | None = None
    scopes: list[str] = Field(default_factory=list)
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"

    @model_validator(mode="after")
    def _target(self) -> ExchangeCredentialConfig:
        if not (self.audience or self.resource):
            raise ValueError("token exchange needs the upstream's `audience` (or `resource`)")
        return self


class ClientCredentialsConfig(_Model):
    """The gateway's own token for the upstream, from the OAuth client credentials grant."""

    mode: Literal["client_credentials"]
    header: str = "Authorization"
    token_endpoint: str | None = None
    authorization_server: str | None = None
    client_id: str
    client_secret: SecretStr
    scopes: list[str] = Field(default_factory=list)
    audience: str | None = None
    resource: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"


UpstreamCredentialConfig = Annotated[
    InjectCredentialConfig | PassthroughCredentialConfig | ExchangeCredentialConfig | ClientCredentialsConfig,
    Field(discriminator="mode"),
]
