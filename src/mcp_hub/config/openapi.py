"""Configuration of one `openapi:` upstream: which document, where calls go, which operations, what auth.

Secrets follow one scheme everywhere: a secret field `X` may be given as a literal (`X: "..."`),
read from an environment variable (`X_env: VAR`) or read from a file (`X_file: path`, trailing
newline stripped, relative paths resolved against the config's folder). Exactly one of the three
must be set. The gateway's loader also interpolates `${VAR}` in literals before this model sees them.
Literal secrets are held as `SecretStr`, so a repr or a validation error never shows them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration value that cannot be used (the message names the key, never a secret)."""


class _Strict(BaseModel):
    # hide_input_in_errors: a mistyped secret must not be echoed back in the validation error.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, hide_input_in_errors=True)


def _resolve_secret(
    owner: str, field: str, literal: SecretStr | None, env: str | None, file: str | None, base_dir: Path | None
) -> SecretStr:
    """Read one secret from its literal, environment variable or file."""
    if literal is not None:
        return literal
    if env is not None:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"{owner}.{field}_env: environment variable {env!r} is not set")
        return SecretStr(value)
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))
        except OSError as exc:
            raise ConfigError(f"{owner}.{field}_file: cannot read {str(path)!r}: {exc.strerror}") from None
    raise ConfigError(f"{owner}: one of {field}, {field}_env or {field}_file is required")


def _exactly_one(owner: str, field: str, *values: object) -> None:
    given = sum(v is not None for v in values)
    if given != 1:
        raise ValueError(f"{owner}: give exactly one of {field}, {field}_env, {field}_file (got {given})")


class ApiKeyAuth(_Strict):
    """An API key sent in a header, query parameter or cookie.

    `in` and `name` default to the document's `apiKey` security scheme (the one named by `scheme`,
    or the only/first one), so `{type: api_key, value_env: MY_KEY}` is often enough.
    """

    type: Literal["api_key"]
    location: Literal["header", "query", "cookie"] | None = Field(default=None, alias="in")
    name: str | None = None
    scheme: str | None = Field(default=None, description="securitySchemes entry of the document to match")
    value: SecretStr | None = None
    value_env: str | None = None
    value_file: str | None = None

    @model_validator(mode="after")
    def _one_value(self) -> ApiKeyAuth:
        _exactly_one("auth", "value", self.value, self.value_env, self.value_file)
        return self

    def secret(self, base_dir: Path | None = None) -> SecretStr:
        """The API key, read from wherever the config says."""
        return _resolve_secret("auth", "value", self.value, self.value_env, self.value_file, base_dir)


class BearerAuth(_Strict):
    """A static bearer token: `Authorization: Bearer <token>`."""

    type: Literal["bearer"]
    scheme: str | None = None
    token: SecretStr | None = None
    token_env: str | None = None
    token_file: str | None = None

    @model_validator(mode="after")
    def _one_token(self) -> BearerAuth:
        _exactly_one("auth", "token", self.token, self.token_env, self.token_file)
        return self

    def secret(self, base_dir: Path | None = None) -> SecretStr:
        """The bearer token, read from wherever the config says."""
        return _resolve_secret("auth", "token", self.token, self.token_env, self.token_file, base_dir)


class BasicAuth(_Strict):
    """HTTP Basic authentication; the username is not a secret, the password is."""

    type: Literal["basic"]
    scheme: str | None = None
    username: str
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: str | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        _exactly_one("auth", "password", self.password, self.password_env, self.password_file)
        return self

    def secret(self, base_dir: Path | None = None) -> SecretStr:
        """The password, read from wherever the config says."""
        return _resolve_secret("auth", "password", self.password, self.password_env, self.password_file, base_dir)


class OAuth2ClientCredentialsAuth(_Strict):
    """OAuth 2.0 client credentials grant; the access token is cached until shortly before it expires.

    `token_url` defaults to the `clientCredentials` flow of the document's oauth2 security scheme
    (relative URLs resolved against the API's base URL).
    """

    type: Literal["oauth2_client_credentials"]
    scheme: str | None = None
    token_url: str | None = None
    client_id: str
    client_secret: SecretStr | None = None
    client_secret_env: str | None = None
    client_secret_file: str | None = None
    scopes: list[str] = Field(default_factory=list)
    # Some authorization servers want the resource or audience named in the token request.
    audience: str | None = None
    # RFC 6749 section 2.3.1: HTTP Basic is the default; some servers accept only form fields.
    token_auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"

    @model_validator(mode="after")
    def _one_secret(self) -> OAuth2ClientCredentialsAuth:
        _exactly_one("auth", "client_secret", self.client_secret, self.client_secret_env, self.client_secret_file)
        return self

    def secret(self, base_dir: Path | None = None) -> SecretStr:
        """The client secret, read from wherever the config says."""
        return _resolve_secret(
            "auth", "client_secret", self.client_secret, self.client_secret_env, self.client_secret_file, base_dir
        )


UpstreamAuth = Annotated[
    ApiKeyAuth | BearerAuth | BasicAuth | OAuth2ClientCredentialsAuth, Field(discriminator="type")
]


class OperationSelector(_Strict):
    """Operations picked by operationId (or generated tool name), tag, or path glob.

    A path glob may start with an HTTP method: `"GET /pets/*"`. `*` matches within one path
    segment, `**` across segments.
    """

    operations: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    paths: list[str] = Field(default_factory=list)

    def is_empty(self) -> bool:
        """Whether the selector names nothing."""
        return not (self.operations or self.tags or self.paths)


class OpenAPIUpstreamConfig(_Strict):
    """One `openapi:` upstream entry of the gateway config."""

    spec: str = Field(description="path (.json, .yaml, .yml, optionally .gz) or http(s) URL of the document")
    base_url: str | None = Field(default=None, description="overrides the document's servers")
    prefix: str | None = Field(default=None, description="tool name prefix; applied by the gateway")
    include: OperationSelector | None = None
    exclude: OperationSelector | None = None
    timeout: float = Field(default=30.0, gt=0, description="seconds per call, unless the call sets its own")
    auth: UpstreamAuth | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="static headers sent on every call")

    @field_validator("base_url")
    @classmethod
    def _http_base(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        return value

    @field_validator("headers")
    @classmethod
    def _header_values(cls, value: dict[str, str]) -> dict[str, str]:
        for key, header in value.items():
            if any(c in key + header for c in "\r\n"):
                raise ValueError(f"header {key!r} contains a line break")
        return value
