"""`AuthGate`: the ASGI wrapper that stands in front of a protected route.

    app = AuthGate(app, config, verifier, resource_metadata_url=resource_metadata_url(config.resource))

It authenticates the request (`Authorization: Bearer`, and `X-Api-Key` when API keys are on),
answers 401/403 with an RFC 6750 / RFC 9728 `WWW-Authenticate` challenge, and on success puts the
caller in the ASGI scope for the stages behind it:

- `scope["mcp_hub.consumer"]`: the `Consumer` (anonymous when auth is off)
- `scope["mcp_hub.access_token"]`: the verified `AccessToken` (absent when auth is off)
- `scope["user"]` / `scope["auth"]`: the SDK's `AuthenticatedUser` / `AuthCredentials`, so the SDK's
  session ownership checks and `get_access_token()` work as with its own middleware.
"""

from __future__ import annotations

import json
import time

import structlog
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.authentication import AuthCredentials
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_hub.auth.authserver import same_url
from mcp_hub.auth.errors import AuthError, InvalidToken
from mcp_hub.auth.identity import Consumer, anonymous_consumer, consumer_from_access_token
from mcp_hub.auth.verifier import ApiKeyAccessToken, ApiKeyVerifier
from mcp_hub.config.auth import AuthConfig

log = structlog.get_logger(__name__)

CONSUMER_KEY = "mcp_hub.consumer"
ACCESS_TOKEN_KEY = "mcp_hub.access_token"
API_KEY_HEADER = "x-api-key"
# How a caller sends an API key: every refusal of a key-only gateway says it.
API_KEY_HOWTO = "send the key as `Authorization: Bearer <key>` (or `X-Api-Key: <key>`)"


def consumer_of(scope: Scope) -> Consumer | None:
    """The consumer `AuthGate` stored in an ASGI scope (None if the request did not pass a gate)."""
    return scope.get(CONSUMER_KEY)


def access_token_of(scope: Scope) -> AccessToken | None:
    """The verified access token `AuthGate` stored in an ASGI scope, if any."""
    return scope.get(ACCESS_TOKEN_KEY)


def token_audiences(token: AccessToken) -> list[str]:
    """Every audience of a verified token: its `aud` claim (string or list), else its resource."""
    claims = getattr(token, "claims", None) or {}
    aud = claims.get("aud") if isinstance(claims, dict) else None
    found = [aud] if isinstance(aud, str) else [a for a in aud if isinstance(a, str)] if isinstance(aud, list) else []
    if not found and token.resource:
        found = [str(token.resource)]
    return found


class _Refusal(Exception):
    def __init__(
        self, status: int, error: str | None, description: str, scope_needed: str | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.scope_needed = scope_needed


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AuthGate:
    """Authenticates every HTTP/WebSocket request before it reaches `app`; lifespan passes through.

    `verifier` checks bearer tokens (OAuth); it may be None when `config.mode` has no `oauth`.
    `resource` is the resource URL of the protected path (its own RFC 9728 resource, such as
    `/mcp/time` or `/time`); a token is accepted when its audience is that URL or `config.resource`
    (the gateway as a whole), and refused, naming both, when it is for anything else (another route).
    `required_scopes` are the route's scopes (default: `config.required_scopes`): checked (403) and
    named in every challenge's `scope=`, so a client asks for exactly them.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: AuthConfig,
        verifier: TokenVerifier | None,
        *,
        resource_metadata_url: str | None,
        resource: str | None = None,
        required_scopes: list[str] | None = None,
    ) -> None:
        if "oauth" in config.methods and verifier is None:
            raise ValueError(
                "auth mode oauth needs a token verifier (see mcp_hub.auth.verifier.build_verifier)"
            )
        self.app = app
        self.config = config
        self.verifier = verifier
        self.resource_metadata_url = resource_metadata_url
        self.resource = resource or config.resource
        self.required_scopes = list(config.required_scopes if required_scopes is None else required_scopes)
        self.api_keys = ApiKeyVerifier(config.api_keys) if "api_key" in config.methods else None
        self._enabled = config.enabled
        # Without OAuth, nothing but a key gets in.
        self._keys_only = self.api_keys is not None and "oauth" not in config.methods
        # What the scope gets for an API key's token (the same token object for every request with the key):
        # built once per key, not per request.
        self._callers: dict[int, tuple[AccessToken, Consumer, AuthenticatedUser, AuthCredentials]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self._enabled:
            scope[CONSUMER_KEY] = anonymous_consumer(self.config)
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if (
            scope["type"] == "http"
            and scope["method"] == "OPTIONS"
            and "access-control-request-method" in headers
        ):
            # CORS preflights carry no credentials by design; the app answers them.
            await self.app(scope, receive, send)
            return
        try:
            token = await self._authenticate(headers)
        except _Refusal as refusal:
            log.info(
                "auth.refused", path=scope.get("path"), status=refusal.status, reason=refusal.description
            )
            await self._refuse(scope, send, refusal)
            return

        consumer, user, credentials = self._caller(token)
        scope[CONSUMER_KEY] = consumer
        scope[ACCESS_TOKEN_KEY] = token
        scope["user"] = user
        scope["auth"] = credentials
        reset = auth_context_var.set(user)  # what the SDK's get_access_token() reads
        try:
            await self.app(scope, receive, send)
        finally:
            auth_context_var.reset(reset)

    def _caller(self, token: AccessToken) -> tuple[Consumer, AuthenticatedUser, AuthCredentials]:
        """The consumer, SDK user and credentials of a verified token; kept for API keys' tokens."""
        cached = self._callers.get(id(token))
        if cached is not None and cached[0] is token:
            return cached[1], cached[2], cached[3]
        consumer = consumer_from_access_token(token, self.config)
        user = AuthenticatedUser(token)
        credentials = AuthCredentials(token.scopes)
        if isinstance(token, ApiKeyAccessToken):  # kept by the key verifier: one per configured key
            if len(self._callers) >= 4 * len(self.config.api_keys) + 16:  # cannot happen; bounded all the same
                self._callers.clear()
            self._callers[id(token)] = (token, consumer, user, credentials)
        return consumer, user, credentials

    async def _authenticate(self, headers: Headers) -> AccessToken:
        # Without OAuth, nothing but a key gets in: every refusal says so and how to send one (a
        # client must not be left guessing, or sent looking for an authorization server).
        keys_only = self._keys_only
        api_key = headers.get(API_KEY_HEADER)
        if api_key is not None and self.api_keys is not None:
            return await self._verify(self.api_keys, api_key.strip())

        authorization = headers.get("authorization", "")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            if not keys_only:
                raise _Refusal(401, None, "authentication required", scope_needed=self._scope_param())
            if authorization:
                raise _Refusal(401, None, f"API key missing: the Authorization header is not `Bearer <key>`; "
                                          f"{API_KEY_HOWTO}")
            raise _Refusal(401, None, f"API key missing: this gateway needs an API key; {API_KEY_HOWTO}")

        if self.api_keys is not None:
            known = self.api_keys.lookup(credential)
            if known is not None:
                return known
        if self.verifier is None:
            raise _Refusal(401, "invalid_token", "unknown API key: the key is wrong or no longer valid "
                                                 f"(ask for a new one); {API_KEY_HOWTO}")
        token = await self._verify(self.verifier, credential)
        self._check_oauth_token(token)
        return token

    async def _verify(self, verifier: TokenVerifier, credential: str) -> AccessToken:
        try:
            # (a `CheckingVerifier`, told by its method: a runtime Protocol check costs more than the lookup)
            check = getattr(verifier, "check", None)
            if callable(check):
                token = await check(credential)
            else:
                found = await verifier.verify_token(credential)
                if found is None:
                    raise InvalidToken("token refused")
                token = found
        except AuthError as exc:
            description = exc.description
            if verifier is self.api_keys:
                description += f": the key is wrong or no longer valid (ask for a new one); {API_KEY_HOWTO}"
            raise _Refusal(401, "invalid_token", description) from None
        except Exception as exc:  # noqa: BLE001 - a verifier bug must be a 401, never a 500
            log.warning("auth.verifier_failed", error=type(exc).__name__)
            raise _Refusal(401, "invalid_token", "token verification failed") from None
        return token

    def _check_oauth_token(self, token: AccessToken) -> None:
        if isinstance(token, ApiKeyAccessToken):
            return
        # Verifiers other than ours may skip these; the gate does not rely on them.
        if token.expires_at is not None and token.expires_at < time.time() - self.config.leeway_s:
            raise _Refusal(401, "invalid_token", "token expired")
        if not self.config.insecure_relaxed_audience and self.config.resource:
            self._check_audience(token)
        missing = [s for s in self.required_scopes if s not in token.scopes]
        if missing:
            raise _Refusal(
                403,
                "insufficient_scope",
                f"required scope: {' '.join(missing)}",
                scope_needed=self._scope_param(),
            )

    def _check_audience(self, token: AccessToken) -> None:
        """The route's own resource URL, or `auth.resource` (the whole gateway); nothing else."""
        accepted = [r for r in (self.resource, self.config.resource) if r]
        audiences = token_audiences(token)
        if any(same_url(a, r) for a in audiences for r in accepted):
            return
        named = ", ".join(audiences) if audiences else "no audience"
        raise _Refusal(
            401,
            "invalid_token",
            f"token audience is not this resource: the token is for {named}, this route is {self.resource}; "
            f"get a token for {self.resource}",
            scope_needed=self._scope_param(),
        )

    def _scope_param(self) -> str | None:
        # Only where OAuth is on: a key-only gateway must not send clients looking for scopes.
        if "oauth" not in self.config.methods or not self.required_scopes:
            return None
        return " ".join(self.required_scopes)

    async def _refuse(self, scope: Scope, send: Send, refusal: _Refusal) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.description[:120]})
            return
        params: list[str] = []
        if refusal.error:
            params.append(f"error={_quoted(refusal.error)}")
            params.append(f"error_description={_quoted(refusal.description)}")
        if refusal.scope_needed:
            params.append(f"scope={_quoted(refusal.scope_needed)}")
        if self.resource_metadata_url:
            params.append(f"resource_metadata={_quoted(self.resource_metadata_url)}")
        challenge = "Bearer " + ", ".join(params) if params else 'Bearer realm="mcp-hub"'
        body = json.dumps(
            {"error": refusal.error or "invalid_request", "error_description": refusal.description}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", challenge.encode()),
                    (b"cache-control", b"no-store"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
