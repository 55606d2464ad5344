"""Bearer token verification: JWT against a JWKS, RFC 7662 introspection, API keys.

Every verifier implements the SDK's `TokenVerifier` protocol (`verify_token(token) -> AccessToken | None`)
and also `check(token) -> AccessToken`, which raises `InvalidToken` / `AuthServerUnavailable` with a
description a client may see. `AuthGate` uses `check` so a 401 can say why; the SDK's own middleware
can use `verify_token`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import anyio
import httpx2
import structlog
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, InvalidClaimError, JoseError, MissingClaimError
from joserfc.jwk import GuestProtocol, Key, KeySet
from mcp.server.auth.provider import AccessToken
from pydantic import Field

from mcp_hub.auth.authserver import AuthorizationServerMetadata, oauth_error, post_form, same_url
from mcp_hub.auth.errors import AuthError, AuthServerUnavailable, InvalidToken
from mcp_hub.config.auth import ApiKeyConfig, AuthConfig, IntrospectionConfig

log = structlog.get_logger(__name__)

# Asymmetric algorithms only: an HS* token checked against a public JWKS is the classic confusion attack.
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class VerifiedAccessToken(AccessToken):
    """An SDK `AccessToken` whose repr hides the token, marked with how it was verified."""

    token: str = Field(repr=False)
    method: Literal["oauth", "api_key"] = "oauth"


class ApiKeyAccessToken(VerifiedAccessToken):
    """The access token an API key stands for: the configured consumer and its groups."""

    method: Literal["oauth", "api_key"] = "api_key"
    consumer: str
    groups: list[str] = Field(default_factory=list)


@runtime_checkable
class CheckingVerifier(Protocol):
    """A `TokenVerifier` that can also say why it refused a token."""

    async def check(self, token: str) -> AccessToken:
        """The verified token, or `InvalidToken` / `AuthServerUnavailable` with a safe description."""
        ...

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK protocol: the verified token or None."""
        ...


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments: worth verifying locally before asking the IdP."""
    return bool(_JWT_SHAPE.match(token))


def token_fingerprint(token: str) -> str:
    """A short, non-reversible tag for a token, safe to log and to key caches with."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _scopes(claims: dict[str, Any]) -> list[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return scope.split()
    scp = claims.get("scp")  # Azure AD and Okta put a list (or a string) here
    if isinstance(scp, list):
        return [str(s) for s in scp]
    if isinstance(scp, str):
        return scp.split()
    return []


def within_resource(audience: str, resource: str) -> bool:
    """Whether a token audience names `resource` or a path under it (`/mcp/time` under `/mcp`)."""
    return same_url(audience, resource) or audience.rstrip("/").startswith(resource.rstrip("/") + "/")


def _matching_audience(aud: Any, resource: str, routes: Collection[str] = ()) -> str | None:
    audiences = [
        a
        for a in ([aud] if isinstance(aud, str) else aud if isinstance(aud, list) else [])
        if isinstance(a, str)
    ]
    # The exact resource first; a per-path resource of this gateway (RFC 9728 per path) second,
    # under the resource or one of the gateway's own routes (`routes`: a route outside the resource's
    # path, `/time` beside `/mcp`, is its own resource too). Which route may use it is the gate's call.
    exact = next((a for a in audiences if same_url(a, resource)), None)
    return (
        exact
        or next((a for a in audiences if within_resource(a, resource)), None)
        or next((a for a in audiences for r in list(routes) if same_url(a, r)), None)
    )


def _resource_of(aud: Any) -> str | None:
    if isinstance(aud, str):
        return aud
    if isinstance(aud, list) and aud and isinstance(aud[0], str):
        return aud[0]
    return None


class _VerifierBase:
    async def check(self, token: str) -> AccessToken:
        raise NotImplementedError

    async def verify_token(self, token: str) -> AccessToken | None:
        """The SDK `TokenVerifier` protocol: the verified token, or None when refused or unverifiable."""
        try:
            return await self.check(token)
        except AuthError as exc:
            log.info("auth.token_refused", reason=exc.description, fingerprint=token_fingerprint(token))
            return None


class JWKSCache:
    """The keys of one JWKS URL, fetched with a shared HTTP client and kept.

    Keys older than `max_age_s` are refreshed on use, and an unknown `kid` triggers a refetch
    at most every `min_refetch_s`. When the IdP is down the cached keys keep working.
    """

    def __init__(
        self,
        jwks_uri: str | None,
        http: httpx2.AsyncClient,
        *,
        metadata: AuthorizationServerMetadata | None = None,
        min_refetch_s: float = 30.0,
        max_age_s: float = 3600.0,
    ) -> None:
        if jwks_uri is None and metadata is None:
            raise ValueError("a JWKS cache needs a jwks_uri or authorization server metadata to find one")
        self._jwks_uri = jwks_uri
        self._metadata = metadata
        self._http = http
        self._min_refetch_s = min_refetch_s
        self._max_age_s = max_age_s
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._attempted_at = float("-inf")
        self._lock = anyio.Lock()
        self.fetches = 0  # how many times the JWKS was fetched (tests and metrics read it)

    @property
    def keys(self) -> KeySet | None:
        """The cached key set, if any was fetched yet."""
        return self._keys

    async def current(self) -> KeySet:
        """The key set to verify with: cached, refreshed when stale, fetched when missing."""
        stale = time.monotonic() - self._fetched_at > self._max_age_s
        if self._keys is None or stale:
            await self._refetch(force=self._keys is None)
        if self._keys is None:
            raise AuthServerUnavailable("signing keys unavailable: the JWKS could not be fetched")
        return self._keys

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch because a token names a key we do not have; False when rate-limited or failed."""
        return await self._refetch(force=False)

    async def _refetch(self, *, force: bool) -> bool:
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._attempted_at < self._min_refetch_s:
                return False
            if force and self._keys is None and now - self._attempted_at < 1.0:
                return False  # an IdP that is down gets at most one attempt a second
            self._attempted_at = now
            try:
                self._keys = await self._fetch()
            except AuthServerUnavailable as exc:
                log.warning("auth.jwks_unavailable", reason=exc.description, cached=self._keys is not None)
                return False
            self._fetched_at = time.monotonic()
            return True

    async def _fetch(self) -> KeySet:
        uri = self._jwks_uri or await self._metadata.endpoint("jwks_uri")  # type: ignore[union-attr]
        try:
            response = await self._http.get(uri, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise AuthServerUnavailable(f"cannot reach JWKS {uri} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise AuthServerUnavailable(f"JWKS {uri} answered HTTP {response.status_code}")
        try:
            document = response.json()
            # Keys for encryption, and kinds joserfc cannot load, are skipped rather than fatal.
            usable = [
                k for k in document.get("keys", []) if isinstance(k, dict) and k.get("use", "sig") == "sig"
            ]
            keys = KeySet([k for k in (self._import(k) for k in usable) if k is not None])
        except (ValueError, AttributeError) as exc:
            raise AuthServerUnavailable(f"JWKS {uri} is not a valid key set ({type(exc).__name__})") from None
        self.fetches += 1
        log.debug("auth.jwks_fetched", uri=uri, keys=len(keys.keys))
        return keys

    @staticmethod
    def _import(data: dict[str, Any]) -> Key | None:
        try:
            return KeySet.import_key_set({"keys": [data]}).keys[0]  # type: ignore[typeddict-item]
        except (JoseError, ValueError, TypeError, KeyError):
            return None


class _UnknownKey(Exception):
    def __init__(self, kid: str | None) -> None:
        super().__init__(kid)
        self.kid = kid


class JWTVerifier(_VerifierBase):
    """Verifies JWT access tokens: signature (JWKS), issuer, exp/nbf with leeway, audience = resource."""

    def __init__(
        self,
        jwks: JWKSCache,
        *,
        issuer: str | None,
        resource: str | None,
        leeway_s: float = 30.0,
        relaxed_audience: bool = False,
        algorithms: Sequence[str] = JWT_ALGORITHMS,
        routes: Collection[str] = (),
    ) -> None:
        if resource is None and not relaxed_audience:
            raise ValueError(
                "a JWT verifier needs the resource (audience) unless the audience check is relaxed"
            )
        self.jwks = jwks
        self.issuer = issuer
        self.resource = resource
        self.leeway_s = leeway_s
        self.relaxed_audience = relaxed_audience
        self.algorithms = list(algorithms)
        self.routes = routes  # the gateway's route resource URLs (a live set: routes are added later)

    async def check(self, token: str) -> AccessToken:
        """Verify a JWT access token; raises `InvalidToken` or `AuthServerUnavailable`."""
        keys = await self.jwks.current()
        try:
            decoded = self._decode(token, keys)
        except _UnknownKey as exc:
            # A rotated key: refetch once (rate-limited), then try again with whatever we have.
            await self.jwks.refresh_for_unknown_kid()
            keys = self.jwks.keys or keys
            try:
                decoded = self._decode(token, keys)
            except _UnknownKey:
                raise InvalidToken(f"token signed with unknown key {exc.kid!r}") from None
        return self._validated(token, decoded.claims)

    def _decode(self, token: str, keys: KeySet) -> jwt.Token:
        def pick(obj: GuestProtocol) -> Key:
            kid = obj.headers().get("kid")
            matches = [k for k in keys.keys if k.kid == kid] if kid else list(keys.keys)
            if len(matches) != 1:
                raise _UnknownKey(kid)
            return matches[0]

        try:
            return jwt.decode(token, pick, algorithms=self.algorithms)
        except _UnknownKey:
            raise
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise InvalidToken(f"token signature or format invalid ({type(exc).__name__})") from None

    def _validated(self, token: str, claims: dict[str, Any]) -> AccessToken:
        options: dict[str, Any] = {"exp": {"essential": True}}
        if self.issuer:
            options["iss"] = {
                "essential": True,
                "values": [self.issuer, self.issuer.rstrip("/"), self.issuer + "/"],
            }
        registry = jwt.JWTClaimsRegistry(leeway=int(self.leeway_s), **options)
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise InvalidToken("token expired") from None
        except MissingClaimError as exc:
            raise InvalidToken(f"token lacks required claim {exc.claim}") from None
        except InvalidClaimError as exc:
            raise InvalidToken(f"token claim {exc.claim!r} is invalid") from None
        except JoseError as exc:
            raise InvalidToken(f"token claims invalid ({type(exc).__name__})") from None

        resource = _resource_of(claims.get("aud"))
        if self.resource is not None:
            matched = _matching_audience(claims.get("aud"), self.resource, self.routes)
            if matched is None and not self.relaxed_audience:
                raise InvalidToken("token audience is not this resource")
            resource = matched or resource
        return _access_token(token, claims, resource)


def _access_token(token: str, claims: dict[str, Any], resource: str | None) -> VerifiedAccessToken:
    client_id = (
        claims.get("client_id") or claims.get("azp") or claims.get("cid") or claims.get("sub") or "unknown"
    )
    exp = claims.get("exp")
    sub = claims.get("sub")
    return VerifiedAccessToken(
        token=token,
        client_id=str(client_id),
        scopes=_scopes(claims),
        expires_at=int(exp) if isinstance(exp, (int, float)) else None,
        resource=resource,
        subject=str(sub) if sub is not None else None,
        claims=claims,
    )


class IntrospectionVerifier(_VerifierBase):
    """Asks the authorization server about a token (RFC 7662), authenticating as the gateway's client.

    Active results are cached (keyed by a hash of the token) for at most `cache_ttl_s` and never past
    the token's expiry; the cache holds at most `cache_size` entries.
    """

    def __init__(
        self,
        config: IntrospectionConfig,
        http: httpx2.AsyncClient,
        *,
        metadata: AuthorizationServerMetadata | None = None,
        issuer: str | None = None,
        resource: str | None,
        leeway_s: float = 30.0,
        relaxed_audience: bool = False,
        routes: Collection[str] = (),
    ) -> None:
        if config.endpoint is None and metadata is None:
            raise ValueError("introspection needs an endpoint or authorization server metadata to find one")
        if resource is None and not relaxed_audience:
            raise ValueError(
                "introspection needs the resource (audience) unless the audience check is relaxed"
            )
        self.config = config
        self._http = http
        self._metadata = metadata
        self.issuer = issuer
        self.resource = resource
        self.leeway_s = leeway_s
        self.relaxed_audience = relaxed_audience
        self.routes = routes
        self._cache: OrderedDict[str, tuple[float, AccessToken]] = OrderedDict()
        self.requests = 0  # how many introspection calls were made (tests and metrics read it)

    async def check(self, token: str) -> AccessToken:
        """Introspect a token; raises `InvalidToken`, or `AuthServerUnavailable` when the IdP cannot answer."""
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > time.time():
                self._cache.move_to_end(key)
                return cached[1]
            del self._cache[key]

        endpoint = self.config.endpoint or await self._metadata.endpoint("introspection_endpoint")  # type: ignore[union-attr]
        self.requests += 1
        status, body = await post_form(
            self._http,
            endpoint,
            {"token": token, "token_type_hint": "access_token"},
            client_id=self.config.client_id,
            client_secret=self.config.client_secret.get_secret_value(),
            auth_method=self.config.auth_method,
            what="token introspection",
        )
        if status != 200:
            raise AuthServerUnavailable(f"token introspection failed: HTTP {status} ({oauth_error(body)})")
        access = self._validated(token, body)
        self._remember(key, access)
        return access

    def _validated(self, token: str, body: dict[str, Any]) -> AccessToken:
        if body.get("active") is not True:
            raise InvalidToken("token is not active (expired, revoked or unknown)")
        now = time.time()
        exp = body.get("exp")
        if isinstance(exp, (int, float)) and exp <= now - self.leeway_s:
            raise InvalidToken("token expired")
        nbf = body.get("nbf")
        if isinstance(nbf, (int, float)) and nbf > now + self.leeway_s:
            raise InvalidToken("token not yet valid")
        iss = body.get("iss")
        if self.issuer and isinstance(iss, str) and not same_url(iss, self.issuer):
            raise InvalidToken("token issuer is not the configured authorization server")
        resource = _resource_of(body.get("aud"))
        if self.resource is not None:
            matched = _matching_audience(body.get("aud"), self.resource, self.routes)
            if matched is None and not self.relaxed_audience:
                raise InvalidToken("token audience is not this resource")
            resource = matched or resource
        return _access_token(token, body, resource)

    def _remember(self, key: str, access: AccessToken) -> None:
        if self.config.cache_ttl_s <= 0 or self.config.cache_size <= 0:
            return
        until = time.time() + self.config.cache_ttl_s
        if access.expires_at is not None:
            until = min(until, float(access.expires_at))
        self._cache[key] = (until, access)
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)


class CombinedVerifier(_VerifierBase):
    """JWT-shaped tokens go to the JWT verifier, everything else to introspection.

    With only one of the two configured, every token goes to that one.
    """

    def __init__(self, jwt_verifier: JWTVerifier | None, introspection: IntrospectionVerifier | None) -> None:
        if jwt_verifier is None and introspection is None:
            raise ValueError("a combined verifier needs at least one of JWT or introspection")
        self.jwt = jwt_verifier
        self.introspection = introspection

    async def check(self, token: str) -> AccessToken:
        """Verify by JWT when the token is JWT-shaped and JWKS is configured, else by introspection."""
        if self.jwt is not None and (self.introspection is None or looks_like_jwt(token)):
            try:
                return await self.jwt.check(token)
            except AuthServerUnavailable:
                # No keys were ever fetched (an opaque-only IdP has no JWKS): let introspection judge.
                if self.introspection is None or self.jwt.jwks.keys is not None:
                    raise
        assert self.introspection is not None
        return await self.introspection.check(token)


class ApiKeyVerifier(_VerifierBase):
    """Checks an API key by its SHA-256 against every configured digest, in constant time.

    A key found once is then known by its digest: its token is kept (at most one per configured key,
    so nothing a caller sends can grow it) and every later request with it is one hash and one lookup.
    """

    def __init__(self, keys: Sequence[ApiKeyConfig]) -> None:
        self.keys = list(keys)
        self._known: dict[str, ApiKeyAccessToken] = {}

    def match(self, key: str) -> ApiKeyConfig | None:
        """The configured entry for a presented key, or None. Every entry is compared (no early exit)."""
        return self._match_digest(hashlib.sha256(key.encode()).hexdigest())

    def _match_digest(self, digest: str) -> ApiKeyConfig | None:
        found: ApiKeyConfig | None = None
        for entry in self.keys:
            if hmac.compare_digest(digest, entry.sha256):
                found = entry
        return found

    def lookup(self, key: str) -> ApiKeyAccessToken | None:
        """The access token a presented key stands for, or None for an unknown key."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        token = self._known.get(digest)
        if token is not None:
            return token
        entry = self._match_digest(digest)
        if entry is None:
            return None
        token = ApiKeyAccessToken(
            token=key,
            client_id=entry.consumer,
            scopes=[],
            subject=entry.consumer,
            claims={"sub": entry.consumer, "groups": list(entry.groups)},
            consumer=entry.consumer,
            groups=list(entry.groups),
        )
        self._known[digest] = token
        return token

    async def check(self, token: str) -> AccessToken:
        """The access token the key stands for; raises `InvalidToken` for an unknown key."""
        found = self.lookup(token)
        if found is None:
            raise InvalidToken("unknown API key")
        return found


class OAuthVerifier(CombinedVerifier):
    """The verifier `build_verifier` makes from an `AuthConfig`; owns its HTTP client unless given one."""

    def __init__(
        self,
        jwt_verifier: JWTVerifier | None,
        introspection: IntrospectionVerifier | None,
        http: httpx2.AsyncClient,
        *,
        owns_http: bool,
    ) -> None:
        super().__init__(jwt_verifier, introspection)
        self.http = http
        self._owns_http = owns_http

    async def aclose(self) -> None:
        """Close the HTTP client if this verifier created it."""
        if self._owns_http:
            await self.http.aclose()


def build_verifier(
    config: AuthConfig, *, http: httpx2.AsyncClient | None = None, routes: Collection[str] = ()
) -> OAuthVerifier | None:
    """The OAuth token verifier for a config (None when OAuth is not enabled).

    JWTs are verified against `jwks_uri` (or the one the first authorization server advertises);
    `introspection` enables RFC 7662 for opaque tokens. The issuer is `issuer`, else the first
    authorization server. Give `http` to share one HTTP client; otherwise one is created and
    `aclose()` closes it. `routes`: the resource URLs of the gateway's routes (a set the caller keeps
    filling), accepted as audiences beside `config.resource` and the paths under it.
    """
    if "oauth" not in config.methods:
        return None
    owns_http = http is None
    client = http or httpx2.AsyncClient(timeout=config.http_timeout_s, follow_redirects=False)
    server = config.authorization_servers[0] if config.authorization_servers else None
    issuer = config.issuer or server
    metadata = AuthorizationServerMetadata(server, client) if server else None

    jwt_verifier: JWTVerifier | None = None
    if config.jwks_uri or metadata is not None:
        jwks = JWKSCache(
            config.jwks_uri,
            client,
            metadata=metadata,
            min_refetch_s=config.jwks_min_refetch_s,
            max_age_s=config.jwks_max_age_s,
        )
        jwt_verifier = JWTVerifier(
            jwks,
            issuer=issuer,
            resource=config.resource,
            leeway_s=config.leeway_s,
            relaxed_audience=config.insecure_relaxed_audience,
            routes=routes,
        )
    introspection: IntrospectionVerifier | None = None
    if config.introspection is not None:
        introspection = IntrospectionVerifier(
            config.introspection,
            client,
            metadata=metadata,
            issuer=issuer,
            resource=config.resource,
            leeway_s=config.leeway_s,
            relaxed_audience=config.insecure_relaxed_audience,
            routes=routes,
        )
    return OAuthVerifier(jwt_verifier, introspection, client, owns_http=owns_http)
