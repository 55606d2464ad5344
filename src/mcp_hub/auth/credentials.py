"""Credentials the gateway sends to an upstream, one object per upstream.

    credentials = build_upstream_credentials(upstream_config.credentials, auth=auth_config, http=http)
    headers = await credentials.headers(consumer, access_token, request_headers)

- `inject`: a secret the gateway owns (env var or file, read once at start).
- `passthrough`: the caller's own upstream credential, from a separate request header.
- `exchange`: RFC 8693 token exchange of the caller's token for one whose audience is the upstream.
- `client_credentials`: the gateway's own OAuth token for the upstream.

The token the caller presented to the gateway is never among the headers returned: upstream
headers are built from these objects, and `strip_gateway_credentials` removes the gateway's
credential headers from anything copied from the incoming request.
"""

from __future__ import annotations

import hashlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import httpx2
import structlog
from mcp.server.auth.provider import AccessToken
from pydantic import TypeAdapter

from mcp_hub.auth.authserver import AuthorizationServerMetadata, oauth_error, post_form
from mcp_hub.auth.errors import AuthServerUnavailable, CredentialConfigError, UpstreamCredentialError
from mcp_hub.auth.identity import Consumer
from mcp_hub.auth.token_cache import TokenCache
from mcp_hub.auth.verifier import ApiKeyAccessToken
from mcp_hub.config.auth import (
    AuthConfig,
    ClientCredentialsConfig,
    ExchangeCredentialConfig,
    InjectCredentialConfig,
    PassthroughCredentialConfig,
    UpstreamCredentialConfig,
)

log = structlog.get_logger(__name__)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# Headers that carry the caller's credential for the gateway itself: never copied upstream.
GATEWAY_CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})
_CONFIG_ADAPTER: TypeAdapter[Any] = TypeAdapter(UpstreamCredentialConfig)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _render(fmt: str, value: str) -> str:
    # replace, not str.format: a format may legitimately contain other braces.
    return fmt.replace("{}", value, 1)


def strip_gateway_credentials(headers: Mapping[str, str], also: Iterable[str] = ()) -> dict[str, str]:
    """A copy of request headers without the gateway's own credential headers (and `also`)."""
    drop = GATEWAY_CREDENTIAL_HEADERS | {h.lower() for h in also}
    return {k: v for k, v in headers.items() if k.lower() not in drop}


def claim_headers(consumer: Consumer) -> dict[str, str]:
    """The `claim_to_header` headers for a consumer (already rendered by the identity mapping)."""
    return dict(consumer.forwarded_claims)


class UpstreamCredentials(ABC):
    """What to send an upstream so it accepts the gateway's calls for a consumer."""

    #: Where the credential goes (e.g. `Authorization`).
    header: str = "Authorization"

    @property
    @abstractmethod
    def belongs_to_caller(self) -> bool:
        """True when the credential is the caller's: the gateway then keeps upstream sessions per consumer."""

    @property
    def source_headers(self) -> frozenset[str]:
        """Incoming headers this credential reads; strip them from anything forwarded as is."""
        return frozenset()

    @abstractmethod
    async def headers(
        self, consumer: Consumer, token: AccessToken | None, request_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """The headers to send upstream; raises `UpstreamCredentialError` when none can be made."""


class NoCredentials(UpstreamCredentials):
    """An upstream that needs no credential."""

    @property
    def belongs_to_caller(self) -> bool:
        return False

    async def headers(
        self, consumer: Consumer, token: AccessToken | None, request_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """No headers."""
        return {}


class InjectedCredentials(UpstreamCredentials):
    """A secret the gateway owns, read once (env var or file) and sent on every call."""

    def __init__(self, config: InjectCredentialConfig, environ: Mapping[str, str] | None = None) -> None:
        self.header = config.header
        secret = self._read(config, os.environ if environ is None else environ)
        self._value = _render(config.format or "{}", secret)

    @staticmethod
    def _read(config: InjectCredentialConfig, environ: Mapping[str, str]) -> str:
        if config.value_env is not None:
            value = environ.get(config.value_env)
            if not value:
                raise CredentialConfigError(f"environment variable {config.value_env} is not set")
            return value.strip()
        assert config.value_file is not None
        try:
            value = config.value_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialConfigError(
                f"cannot read secret file {config.value_file}: {exc.strerror}"
            ) from None
        if not value:
            raise CredentialConfigError(f"secret file {config.value_file} is empty")
        return value

    @property
    def belongs_to_caller(self) -> bool:
        return False

    async def headers(
        self, consumer: Consumer, token: AccessToken | None, request_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """The configured header with the injected secret."""
        return {self.header: self._value}


class PassthroughCredentials(UpstreamCredentials):
    """The caller's own upstream credential, taken from `source_header` (never from Authorization)."""

    def __init__(self, config: PassthroughCredentialConfig) -> None:
        self.header = config.header
        self.source_header = config.source_header
        self.format = config.format or "{}"

    @property
    def belongs_to_caller(self) -> bool:
        return True

    @property
    def source_headers(self) -> frozenset[str]:
        return frozenset({self.source_header.lower()})

    async def headers(
        self, consumer: Consumer, token: AccessToken | None, request_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """The caller's credential from the source header, rendered into the upstream header."""
        if self.source_header.lower() == "authorization" and _header(request_headers, "x-api-key") is None:
            # The caller identified with Authorization itself: that is the gateway's credential, not theirs.
            raise UpstreamCredentialError(
                "this upstream takes your own token in Authorization: identify to the gateway with X-Api-Key"
            )
        value = (_header(request_headers, self.source_header) or "").strip()
        if not value:
            raise UpstreamCredentialError(
                f"this upstream needs your own credential in the {self.source_header} request header"
            )
        scheme = self.format.split("{}", 1)[0]
        if scheme and value.lower().startswith(scheme.lower()):
            value = value[len(scheme) :]  # the caller already wrote "Bearer ..."
        return {self.header: _render(self.format, value)}


class _TokenEndpointClient:
    """Posts grants to a token endpoint (configured or discovered) as the gateway's client."""

    def __init__(
        self,
        config: ExchangeCredentialConfig | ClientCredentialsConfig,
        auth: AuthConfig | None,
        http: httpx2.AsyncClient,
        *,
        timeout_s: float | None = None,
        default_lifetime_s: float = 300.0,
    ) -> None:
        self.config = config
        self._http = http
        self._timeout_s = timeout_s
        self._default_lifetime_s = default_lifetime_s
        server = config.authorization_server or (
            auth.authorization_servers[0] if auth and auth.authorization_servers else None
        )
        if config.token_endpoint is None and server is None:
            raise CredentialConfigError(
                "give `token_endpoint` or `authorization_server` (or auth.authorization_servers)"
            )
        self._metadata = (
            AuthorizationServerMetadata(server, http) if server and not config.token_endpoint else None
        )

    async def request(self, form: dict[str, str], what: str) -> tuple[str, float]:
        """The access token and its lifetime in seconds; raises `UpstreamCredentialError`.

        Messages name the endpoint and the server's OAuth error, never the client secret.
        """
        endpoint = self.config.token_endpoint or "the token endpoint"
        try:
            with anyio.fail_after(self._timeout_s):
                if self._metadata is not None:
                    endpoint = await self._metadata.endpoint("token_endpoint")
                status, body = await post_form(
                    self._http,
                    endpoint,
                    form,
                    client_id=self.config.client_id,
                    client_secret=self.config.client_secret.get_secret_value(),
                    auth_method=self.config.auth_method,
                    what=what,
                )
        except AuthServerUnavailable as exc:
            raise UpstreamCredentialError(exc.description) from None
        except TimeoutError:
            if self._timeout_s is None:
                raise  # not our deadline
            raise UpstreamCredentialError(
                f"{what} failed: no answer from token endpoint {endpoint} within {self._timeout_s:g}s"
            ) from None
        token = body.get("access_token")
        if status != 200 or not isinstance(token, str) or not token:
            raise UpstreamCredentialError(
                f"{what} refused by token endpoint {endpoint}: HTTP {status} ({oauth_error(body)[:300]})"
            )
        return token, self._lifetime(body.get("expires_in"))

    def _lifetime(self, expires_in: Any) -> float:
        # RFC 6749 says a number; some servers send a numeric string. Anything else: the default.
        if isinstance(expires_in, str):
            try:
                expires_in = float(expires_in)
            except ValueError:
                return self._default_lifetime_s
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) and math.isfinite(expires_in):
            return float(expires_in)
        return self._default_lifetime_s


class ExchangedCredentials(UpstreamCredentials):
    """RFC 8693: the caller's access token exchanged at the IdP for one whose audience is the upstream.

    Results are cached per consumer (and per presented token) until shortly before they expire.
    """

    def __init__(
        self,
        config: ExchangeCredentialConfig,
        *,
        auth: AuthConfig | None,
        http: httpx2.AsyncClient,
        cache_size: int = 10_000,
    ) -> None:
        self.header = config.header
        self.config = config
        self._client = _TokenEndpointClient(config, auth, http)
        self._tokens: TokenCache[tuple[str, str]] = TokenCache(cache_size)
        self.exchanges = 0  # how many exchanges were made (tests and metrics read it)

    @property
    def belongs_to_caller(self) -> bool:
        return True

    async def headers(
        self, consumer: Consumer, token: AccessToken | None, request_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """`Authorization: Bearer <exchanged token>` for this consumer."""
        if token is None or isinstance(token, ApiKeyAccessToken):
            raise UpstreamCredentialError(
                "token exchange needs a caller authenticated with an OAuth access token"
            )
        subject = token.token
        # The caller's token is keyed by its hash: the cache never holds it.
        key = (consumer.name, hashlib.sha256(subject.encode()).hexdigest())
        value = await self._tokens.get(key, lambda: self._exchange(consumer.name, subject))
        return {self.header: f"Bearer {value}"}

    async def _exchange(self, consumer: str, subject_token: str) -> tuple[str, float]:
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
            **_target_params(self.config),
        }
        value, lifetime = await self._client.request(form, "token exchange")
        self.exchanges += 1
        log.debug("auth.token_exchanged", consumer=consumer, audience=self.config.audience or self.config.resource)
        return value, lifetime


def _target_params(config: ExchangeCredentialConfig | ClientCredentialsConfig) -> dict[str, str]:
    """The token request's audience, resource (RFC 8707) and scope, as configured."""
    params = {"audience": config.audience or "", "resource": config.resource or "", "scope": " ".join(config.scopes)}
    return {key: value for key, value in params.items() if value}


class ClientCredentialsGrant(UpstreamCredentials):
    """The gateway's own token for the upstream (client credentials grant), cached until near expiry.

    `timeout_s` bounds one token request; `default_lifetime_s` is how long a token whose answer
    gives no `expires_in` is kept (`math.inf`: until `invalidate`, e.g. when the upstream answers 401).
    """

    _KEY = "gateway"  # one token: the gateway's own, whoever calls

    def __init__(
        self,
        config: ClientCredentialsConfig,
        *,
        auth: AuthConfig | None,
        http: httpx2.AsyncClient,
        timeout_s: float | None = None,
        default_lifetime_s: float = 300.0,
    ) -> None:
        self.header = config.header
        self.config = config
        self._client = _TokenEndpointClient(
            config, auth, http, timeout_s=timeout_s, default_lifetime_s=default_lifetime_s
        )
        self._tokens: TokenCache[str] = TokenCache(1)
        self.grants = 0  # how many tokens were requested (tests and metrics read it)

    @property
    def belongs_to_caller(self) -> bool:
        return False

    async def token(self) -> str:
        """The gateway's access token for the upstream: the cached one, or a new one from the grant."""
        return await self._tokens.get(self._KEY, self._grant)

    def invalidate(self) -> None:
        """Forget the cached token (the upstream refused it): the next call requests a new one."""
        self._tokens.invalidate(self._KEY)

    def held_token(self) -> str | None:
        """The token last obtained, fresh or not, if any (to scrub it from messages)."""
        return self._tokens.peek(self._KEY)

    async def headers(
        self, consumer: Consumer, token: AccessToken | None, request_headers: Mapping[str, str]
    ) -> dict[str, str]:
        """`Authorization: Bearer <the gateway's token>`."""
        return {self.header: f"Bearer {await self.token()}"}

    async def _grant(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", **_target_params(self.config)}
        value, lifetime = await self._client.request(form, "client credentials grant")
        self.grants += 1
        return value, lifetime


def parse_credential_config(data: UpstreamCredentialConfig | Mapping[str, Any]) -> UpstreamCredentialConfig:
    """A validated credential config from a model or the raw `credentials:` mapping of an upstream."""
    if isinstance(data, Mapping):
        return _CONFIG_ADAPTER.validate_python(dict(data))
    return data


def build_upstream_credentials(
    config: UpstreamCredentialConfig | Mapping[str, Any] | None,
    *,
    auth: AuthConfig | None = None,
    http: httpx2.AsyncClient | None = None,
    environ: Mapping[str, str] | None = None,
) -> UpstreamCredentials:
    """The credentials object for an upstream's `credentials:` block (None → `NoCredentials`).

    `auth` supplies the authorization server for discovery; `http` is the shared HTTP client
    (required for exchange and client_credentials). Raises `CredentialConfigError` when an
    injected secret cannot be read, so a bad config fails at start.
    """
    if config is None:
        return NoCredentials()
    parsed = parse_credential_config(config)
    if isinstance(parsed, InjectCredentialConfig):
        return InjectedCredentials(parsed, environ)
    if isinstance(parsed, PassthroughCredentialConfig):
        return PassthroughCredentials(parsed)
    if http is None:
        raise ValueError(f"{parsed.mode} credentials need the shared HTTP client")
    if isinstance(parsed, ExchangeCredentialConfig):
        return ExchangedCredentials(parsed, auth=auth, http=http)
    return ClientCredentialsGrant(parsed, auth=auth, http=http)


async def upstream_headers(
    credentials: UpstreamCredentials,
    consumer: Consumer,
    token: AccessToken | None,
    request_headers: Mapping[str, str],
) -> dict[str, str]:
    """Everything the gateway adds to an upstream request: forwarded claims, then the credential."""
    headers = claim_headers(consumer)
    headers.update(await credentials.headers(consumer, token, request_headers))
    return headers
