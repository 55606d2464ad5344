"""Upstream credentials: the configured auth, matched to the document's security schemes, applied to requests.

One small interface, `Credential.apply(spec, client)`, with an implementation per kind of auth.
Secrets live in `SecretStr` and are revealed only when written into a request; `secrets()` lists
them so results, error messages and log lines can be scrubbed (`scrub.Scrubber`, `KNOWN_SECRETS`).
"""

from __future__ import annotations

import base64
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin

import httpx2
from openapi_pydantic.v3.v3_1 import SecurityScheme
from pydantic import SecretStr

from mcp_hub.auth.authserver import ClientAuthMethod
from mcp_hub.auth.credentials import ClientCredentialsGrant
from mcp_hub.auth.errors import UpstreamCredentialError
from mcp_hub.config.auth import ClientCredentialsConfig
from mcp_hub.config.openapi import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    ConfigError,
    OAuth2ClientCredentialsAuth,
    UpstreamAuth,
)
from mcp_hub.upstreams.openapi.request import RequestSpec
from mcp_hub.upstreams.openapi.scrub import KNOWN_SECRETS, Scrubber

# One error for every upstream credential that cannot be obtained (its message never holds a secret).
CredentialError = UpstreamCredentialError


class Credential(ABC):
    """Adds authentication to an outgoing request."""

    @abstractmethod
    async def apply(self, spec: RequestSpec, client: httpx2.AsyncClient) -> None:
        """Write the credential into `spec` (headers, query or cookies)."""

    def invalidate(self) -> None:
        """Forget any cached token (the upstream answered 401)."""
        return None

    @abstractmethod
    def secrets(self) -> tuple[str, ...]:
        """Secret values to scrub from messages."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<hidden>)"


@dataclass(frozen=True, slots=True, repr=False)
class ApiKeyCredential(Credential):
    """An API key in a header, query parameter or cookie."""

    location: str
    name: str
    value: SecretStr

    async def apply(self, spec: RequestSpec, client: httpx2.AsyncClient) -> None:
        secret = self.value.get_secret_value()
        if self.location == "header":
            spec.headers[self.name] = secret
        elif self.location == "query":
            spec.query.append(f"{quote(self.name, safe='')}={quote(secret, safe='')}")
        else:
            spec.cookies.append((self.name, quote(secret, safe="")))

    def secrets(self) -> tuple[str, ...]:
        secret = self.value.get_secret_value()
        return (secret, quote(secret, safe=""))


@dataclass(frozen=True, slots=True, repr=False)
class StaticHeaderCredential(Credential):
    """A fixed `Authorization` header (bearer token or HTTP Basic)."""

    value: SecretStr
    raw: tuple[SecretStr, ...] = ()

    async def apply(self, spec: RequestSpec, client: httpx2.AsyncClient) -> None:
        spec.headers["Authorization"] = self.value.get_secret_value()

    def secrets(self) -> tuple[str, ...]:
        return (self.value.get_secret_value(), *(s.get_secret_value() for s in self.raw))


class OAuth2ClientCredentials(Credential):
    """OAuth 2.0 client credentials grant: the auth package's `ClientCredentialsGrant`, applied to requests.

    The token is fetched on first use by one caller at a time, and reused until shortly before
    `expires_in` runs out (without `expires_in`: until the upstream answers 401, see `invalidate`).
    Token requests go through `http`, the upstream's client, each bounded by `timeout` seconds.
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        *,
        http: httpx2.AsyncClient,
        scopes: Iterable[str] = (),
        audience: str | None = None,
        auth_method: ClientAuthMethod = "client_secret_basic",
        timeout: float = 30.0,
    ) -> None:
        self.token_url = token_url
        self._secret = client_secret
        config = ClientCredentialsConfig(
            mode="client_credentials", token_endpoint=token_url, client_id=client_id, client_secret=client_secret,
            scopes=list(scopes), audience=audience, auth_method=auth_method,
        )
        self._grant = ClientCredentialsGrant(
            config, auth=None, http=http, timeout_s=timeout, default_lifetime_s=math.inf
        )

    @property
    def fetches(self) -> int:
        """How many tokens were fetched (observability, tests)."""
        return self._grant.grants

    async def apply(self, spec: RequestSpec, client: httpx2.AsyncClient) -> None:
        """`Authorization: Bearer <token>`; raises `CredentialError` when no token can be had."""
        token = await self._grant.token()
        KNOWN_SECRETS.add(token, rotating=True)  # the log redaction knows every token this process holds
        spec.headers["Authorization"] = f"Bearer {token}"

    def invalidate(self) -> None:
        self._grant.invalidate()

    def secrets(self) -> tuple[str, ...]:
        token = self._grant.held_token()
        return (self._secret.get_secret_value(), *((token,) if token else ()))


# -- matching the config to the document -------------------------------------------------------


def _schemes(raw: dict[str, dict[str, Any]]) -> dict[str, SecurityScheme]:
    out = {}
    for name, scheme in raw.items():
        try:
            out[name] = SecurityScheme.model_validate(scheme)
        except Exception:  # noqa: BLE001 - an invalid scheme is simply not matchable
            continue
    return out


def _pick(schemes: dict[str, SecurityScheme], wanted: str | None, kinds: tuple[str, ...]) -> SecurityScheme | None:
    if wanted is not None:
        if wanted not in schemes:
            raise ConfigError(f"auth.scheme: the document has no security scheme {wanted!r} "
                              f"(it has: {', '.join(sorted(schemes)) or 'none'})")
        if schemes[wanted].type not in kinds:
            raise ConfigError(f"auth.scheme: security scheme {wanted!r} is of type {schemes[wanted].type!r}, "
                              f"not {' or '.join(kinds)}")
        return schemes[wanted]
    for scheme in schemes.values():
        if scheme.type in kinds:
            return scheme
    return None


def token_url_from_document(auth: OAuth2ClientCredentialsAuth, raw_schemes: dict[str, dict[str, Any]],
                            base_url: str | None) -> str | None:
    """The token URL of the document's client-credentials flow, when the config gives none."""
    scheme = _pick(_schemes(raw_schemes), auth.scheme, ("oauth2",))
    flow = scheme.flows.clientCredentials if scheme is not None and scheme.flows is not None else None
    if flow is None or not flow.tokenUrl:
        return None
    return urljoin(base_url, flow.tokenUrl) if base_url else flow.tokenUrl


def build_credential(
    auth: UpstreamAuth | None,
    security_schemes: dict[str, dict[str, Any]],
    *,
    base_url: str | None,
    base_dir: Path | None = None,
    timeout: float = 30.0,
    http: httpx2.AsyncClient | None = None,
) -> Credential | None:
    """The credential for `auth`, completed from the document's security schemes; raises `ConfigError`.

    `http` is the upstream's client, which OAuth2 token requests go through (required for them).
    """
    if auth is None:
        return None
    schemes = _schemes(security_schemes)
    if isinstance(auth, ApiKeyAuth):
        location, name = auth.location, auth.name
        if location is None or name is None:
            scheme = _pick(schemes, auth.scheme, ("apiKey",))
            if scheme is None:
                raise ConfigError("auth: api_key needs `in` and `name`: the document has no apiKey security scheme")
            location = location or scheme.security_scheme_in
            name = name or scheme.name
        if location not in ("header", "query", "cookie") or not name:
            raise ConfigError(f"auth: api_key location {location!r} / name {name!r} is not usable")
        return ApiKeyCredential(location, name, auth.secret(base_dir))
    if isinstance(auth, BearerAuth):
        if auth.scheme is not None:
            _pick(schemes, auth.scheme, ("http", "oauth2", "openIdConnect"))
        token = auth.secret(base_dir)
        return StaticHeaderCredential(SecretStr(f"Bearer {token.get_secret_value()}"), (token,))
    if isinstance(auth, BasicAuth):
        if auth.scheme is not None:
            _pick(schemes, auth.scheme, ("http",))
        password = auth.secret(base_dir)
        pair = f"{auth.username}:{password.get_secret_value()}".encode()
        encoded = SecretStr("Basic " + base64.b64encode(pair).decode("ascii"))
        return StaticHeaderCredential(encoded, (password,))
    assert isinstance(auth, OAuth2ClientCredentialsAuth)
    token_url = auth.token_url or token_url_from_document(auth, security_schemes, base_url)
    if not token_url:
        raise ConfigError("auth.token_url: not given, and the document has no oauth2 clientCredentials flow")
    if not token_url.startswith(("http://", "https://")):
        raise ConfigError(f"auth.token_url: {token_url!r} is not an http(s) URL")
    if http is None:
        raise ValueError("oauth2_client_credentials needs the upstream's HTTP client")
    return OAuth2ClientCredentials(
        token_url, auth.client_id, auth.secret(base_dir), http=http, scopes=auth.scopes, audience=auth.audience,
        auth_method=auth.token_auth_method, timeout=timeout,
    )


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value, in any spelling `Scrubber` knows, replaced by `***`."""
    return Scrubber(secrets).text(text)
