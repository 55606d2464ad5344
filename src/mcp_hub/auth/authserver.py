"""Talking to an authorization server: its metadata (RFC 8414, OpenID discovery as the fallback)
and client-authenticated form posts (introspection, token exchange, client credentials).
"""

from __future__ import annotations

import time
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import anyio
import httpx2
import structlog

from mcp_hub.auth.errors import AuthServerUnavailable

log = structlog.get_logger(__name__)

ClientAuthMethod = Literal["client_secret_basic", "client_secret_post"]


def same_url(a: str, b: str) -> bool:
    """URLs equal but for a trailing slash (config files disagree about it more than IdPs do)."""
    return a.rstrip("/") == b.rstrip("/")


def metadata_urls(issuer: str) -> list[str]:
    """The discovery URLs to try for an issuer, in order (RFC 8414 §3.1, then OIDC Discovery §4)."""
    parts = urlsplit(issuer)
    base = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [f"{base}/.well-known/oauth-authorization-server{path}"]
    if path:
        # RFC 8414 §5 inserts the well-known segment; OIDC appends it; servers do either.
        urls.append(f"{base}/.well-known/openid-configuration{path}")
    urls.append(f"{base}{path}/.well-known/openid-configuration")
    return urls


class AuthorizationServerMetadata:
    """The metadata document of one authorization server, fetched once and kept.

    A failed fetch is retried on a later call, but not more often than `retry_after_s`,
    so an IdP that is down is not hammered by every request.
    """

    def __init__(self, issuer: str, http: httpx2.AsyncClient, *, retry_after_s: float = 2.0) -> None:
        self.issuer = issuer
        self._http = http
        self._retry_after_s = retry_after_s
        self._document: dict[str, Any] | None = None
        self._failed_at = 0.0
        self._failure: AuthServerUnavailable | None = None
        self._lock = anyio.Lock()

    async def get(self) -> dict[str, Any]:
        """The metadata document; raises `AuthServerUnavailable` when it cannot be fetched."""
        if self._document is not None:
            return self._document
        async with self._lock:
            if self._document is not None:
                return self._document
            if self._failure and time.monotonic() - self._failed_at < self._retry_after_s:
                raise self._failure
            try:
                self._document = await self._fetch()
            except AuthServerUnavailable as exc:
                self._failure, self._failed_at = exc, time.monotonic()
                raise
            return self._document

    async def endpoint(self, name: str) -> str:
        """One endpoint from the metadata (e.g. `token_endpoint`), or `AuthServerUnavailable`."""
        document = await self.get()
        value = document.get(name)
        if not isinstance(value, str):
            raise AuthServerUnavailable(f"authorization server {self.issuer} does not advertise {name}")
        return value

    async def _fetch(self) -> dict[str, Any]:
        last = "no metadata document found"
        for url in metadata_urls(self.issuer):
            try:
                response = await self._http.get(url, headers={"Accept": "application/json"})
            except httpx2.HTTPError as exc:
                last = f"cannot reach {url} ({type(exc).__name__})"
                continue
            if response.status_code != 200:
                last = f"{url} answered HTTP {response.status_code}"
                continue
            try:
                document = response.json()
            except ValueError:
                last = f"{url} did not return JSON"
                continue
            if not isinstance(document, dict):
                last = f"{url} did not return a JSON object"
                continue
            # RFC 8414 §3.3: a document naming another issuer must not be used.
            if not same_url(str(document.get("issuer", "")), self.issuer):
                last = f"{url} names issuer {document.get('issuer')!r}, expected {self.issuer!r}"
                continue
            log.debug("auth.discovered", issuer=self.issuer, url=url)
            return document
        raise AuthServerUnavailable(f"authorization server metadata unavailable for {self.issuer}: {last}")


async def post_form(
    http: httpx2.AsyncClient,
    url: str,
    data: dict[str, str],
    *,
    client_id: str,
    client_secret: str,
    auth_method: ClientAuthMethod = "client_secret_basic",
    what: str = "request",
) -> tuple[int, dict[str, Any]]:
    """POST a form to an authorization server endpoint with client authentication.

    Returns the status and the JSON body. Transport failures and non-JSON answers raise
    `AuthServerUnavailable`; OAuth error bodies are returned for the caller to judge.
    """
    form = dict(data)
    auth: httpx2.BasicAuth | None = None
    if auth_method == "client_secret_basic":
        # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
        auth = httpx2.BasicAuth(quote(client_id, safe=""), quote(client_secret, safe=""))
    else:
        form["client_id"] = client_id
        form["client_secret"] = client_secret
    try:
        response = await http.post(url, data=form, auth=auth, headers={"Accept": "application/json"})
    except httpx2.HTTPError as exc:
        raise AuthServerUnavailable(f"{what} failed: cannot reach {url} ({type(exc).__name__})") from None
    try:
        body = response.json()
    except ValueError:
        raise AuthServerUnavailable(
            f"{what} failed: {url} answered HTTP {response.status_code} without JSON"
        ) from None
    if not isinstance(body, dict):
        raise AuthServerUnavailable(f"{what} failed: {url} did not return a JSON object")
    return response.status_code, body


def oauth_error(body: dict[str, Any]) -> str:
    """`error: description` from an OAuth error body, for messages (IdPs never echo secrets there)."""
    error = str(body.get("error", "unknown_error"))
    description = body.get("error_description")
    return f"{error}: {description}" if description else error
