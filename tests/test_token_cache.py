"""`TokenCache` (auth/token_cache.py) and the three credentials built on it: one fetch per key at a
time, expiry with a safety margin, failures never cached, a bounded size, no secret in any error."""

from __future__ import annotations

import base64
import json
import math
from typing import Any
from urllib.parse import parse_qs

import anyio
import httpx2
import pytest
from mcp.server.auth.provider import AccessToken
from pydantic import SecretStr

from mcp_hub.auth.credentials import build_upstream_credentials
from mcp_hub.auth.errors import UpstreamCredentialError
from mcp_hub.auth.identity import Consumer
from mcp_hub.auth.token_cache import TokenCache, safety_margin
from mcp_hub.upstreams.openapi.credentials import CredentialError, OAuth2ClientCredentials
from mcp_hub.upstreams.openapi.request import RequestSpec

CLIENT_SECRET = "s3cret-Zq8uV1c9"


class Clock:
    """A hand-moved monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fetcher:
    """A token source that counts its calls, can be slow, and fails while told to."""

    def __init__(self, lifetime_s: float = 300.0, delay_s: float = 0.0) -> None:
        self.lifetime_s = lifetime_s
        self.delay_s = delay_s
        self.calls = 0
        self.fail = False

    async def __call__(self) -> tuple[str, float]:
        self.calls += 1
        await anyio.sleep(self.delay_s)
        if self.fail:
            raise UpstreamCredentialError("token endpoint down")
        return f"tok-{self.calls}", self.lifetime_s


# -- the cache ---------------------------------------------------------------------------------


async def test_concurrent_callers_make_one_fetch() -> None:
    cache: TokenCache[str] = TokenCache()
    fetch = Fetcher(delay_s=0.05)
    got: list[str] = []

    async def one() -> None:
        got.append(await cache.get("k", fetch))

    async with anyio.create_task_group() as tg:
        for _ in range(25):
            tg.start_soon(one)
    assert fetch.calls == 1 and got == ["tok-1"] * 25
    assert cache._locks == {}  # no lock outlives its callers


async def test_keys_are_fetched_independently() -> None:
    cache: TokenCache[str] = TokenCache()
    fetches = {"a": Fetcher(), "b": Fetcher()}
    assert await cache.get("a", fetches["a"]) == "tok-1"
    assert await cache.get("b", fetches["b"]) == "tok-1"
    assert await cache.get("a", fetches["a"]) == "tok-1"
    assert (fetches["a"].calls, fetches["b"].calls) == (1, 1)


def test_safety_margin() -> None:
    assert safety_margin(3600) == 60  # at most a minute
    assert safety_margin(300) == 30  # 10% of the lifetime
    assert safety_margin(20) == 5  # at least five seconds...
    assert safety_margin(2) == 1  # ...but never more than half the lifetime
    assert safety_margin(math.inf) == 60


async def test_token_renewed_a_margin_before_expiry() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(clock=clock)
    fetch = Fetcher(lifetime_s=300)
    assert await cache.get("k", fetch) == "tok-1"
    clock.now += 269.9  # 300 s lifetime, 30 s margin
    assert await cache.get("k", fetch) == "tok-1"
    clock.now += 0.1
    assert await cache.get("k", fetch) == "tok-2"
    assert fetch.calls == 2


async def test_token_without_lifetime_kept_until_invalidated() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(clock=clock)
    fetch = Fetcher(lifetime_s=math.inf)
    await cache.get("k", fetch)
    clock.now += 1e9
    assert await cache.get("k", fetch) == "tok-1"
    cache.invalidate("k")
    assert cache.peek("k") is None
    assert await cache.get("k", fetch) == "tok-2"


async def test_already_expired_token_served_but_not_kept() -> None:
    cache: TokenCache[str] = TokenCache()
    fetch = Fetcher(lifetime_s=0)
    assert await cache.get("k", fetch) == "tok-1"
    assert await cache.get("k", fetch) == "tok-2"
    assert len(cache) == 0


async def test_failure_not_cached() -> None:
    cache: TokenCache[str] = TokenCache()
    fetch = Fetcher()
    fetch.fail = True
    with pytest.raises(UpstreamCredentialError):
        await cache.get("k", fetch)
    assert len(cache) == 0 and cache._locks == {}
    fetch.fail = False
    assert await cache.get("k", fetch) == "tok-2"
    assert fetch.calls == 2


async def test_waiters_retry_after_a_failed_fetch() -> None:
    cache: TokenCache[str] = TokenCache()
    fetch = Fetcher(delay_s=0.05)
    fetch.fail = True
    outcomes: list[str] = []

    async def one() -> None:
        try:
            outcomes.append(await cache.get("k", fetch))
        except UpstreamCredentialError:
            outcomes.append("failed")
            fetch.fail = False  # the endpoint is back for whoever asks next

    async with anyio.create_task_group() as tg:
        for _ in range(5):
            tg.start_soon(one)
    # The first fetch failed; the next waiter fetched again and the rest took its token.
    assert outcomes == ["failed"] + ["tok-2"] * 4 and fetch.calls == 2


async def test_cancelled_fetch_leaves_nothing_behind() -> None:
    cache: TokenCache[str] = TokenCache()
    with anyio.move_on_after(0.01):
        await cache.get("k", Fetcher(delay_s=1))
    assert len(cache) == 0 and cache._locks == {}
    assert await cache.get("k", Fetcher()) == "tok-1"


async def test_size_bound_drops_least_recently_used() -> None:
    cache: TokenCache[str] = TokenCache(max_entries=2)
    fetch = Fetcher()
    await cache.get("a", fetch)
    await cache.get("b", fetch)
    await cache.get("a", fetch)  # a is now the most recently used
    await cache.get("c", fetch)
    assert len(cache) == 2
    assert cache.peek("b") is None and cache.peek("a") == "tok-1" and cache.peek("c") == "tok-3"
    with pytest.raises(ValueError):
        TokenCache(max_entries=0)


# -- the credentials that use it -----------------------------------------------------------------


class TokenEndpoint:
    """A token endpoint on a mock transport: counts requests, records forms, can refuse."""

    def __init__(self, expires_in: Any = 3600, delay_s: float = 0.0) -> None:
        self.expires_in = expires_in
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self.refuse = False

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        await anyio.sleep(self.delay_s)
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        self.requests.append({"form": form, "authorization": request.headers.get("authorization")})
        if self.refuse:
            return httpx2.Response(401, json={"error": "invalid_client", "error_description": "bad client"})
        body: dict[str, Any] = {"access_token": f"at-{len(self.requests)}", "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx2.Response(200, content=json.dumps(body), headers={"content-type": "application/json"})


def client_for(endpoint: TokenEndpoint) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(transport=httpx2.MockTransport(endpoint))


async def test_client_credentials_concurrent_calls_one_grant() -> None:
    endpoint = TokenEndpoint(delay_s=0.05)
    async with client_for(endpoint) as http:
        creds = build_upstream_credentials(
            {"mode": "client_credentials", "client_id": "gw", "client_secret": CLIENT_SECRET,
             "token_endpoint": "http://idp.test/token", "scopes": ["a", "b"], "audience": "http://up"},
            http=http,
        )
        seen: list[dict[str, str]] = []

        async def one() -> None:
            seen.append(await creds.headers(Consumer("c"), None, {}))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert seen == [{"Authorization": "Bearer at-1"}] * 10 and len(endpoint.requests) == 1
    assert endpoint.requests[0]["form"] == {"grant_type": "client_credentials", "scope": "a b", "audience": "http://up"}
    assert creds.grants == 1  # type: ignore[attr-defined]


async def test_exchange_cached_per_consumer_and_token() -> None:
    endpoint = TokenEndpoint()
    async with client_for(endpoint) as http:
        creds = build_upstream_credentials(
            {"mode": "exchange", "client_id": "gw", "client_secret": CLIENT_SECRET, "audience": "http://up",
             "token_endpoint": "http://idp.test/token"},
            http=http,
        )
        alice = AccessToken(token="alice-token", client_id="x", scopes=[])
        bob = AccessToken(token="bob-token", client_id="x", scopes=[])
        first = await creds.headers(Consumer("alice"), alice, {})
        assert await creds.headers(Consumer("alice"), alice, {}) == first
        assert await creds.headers(Consumer("bob"), bob, {}) != first
    assert creds.exchanges == 2  # type: ignore[attr-defined]
    assert endpoint.requests[0]["form"]["subject_token"] == "alice-token"


async def test_refused_grant_not_cached_and_error_holds_no_secret() -> None:
    endpoint = TokenEndpoint()
    endpoint.refuse = True
    async with client_for(endpoint) as http:
        creds = build_upstream_credentials(
            {"mode": "client_credentials", "client_id": "gw", "client_secret": CLIENT_SECRET,
             "token_endpoint": "http://idp.test/token", "auth_method": "client_secret_post"},
            http=http,
        )
        with pytest.raises(UpstreamCredentialError) as refused:
            await creds.headers(Consumer("c"), None, {})
        message = refused.value.description
        assert "HTTP 401" in message and "invalid_client" in message and "token endpoint" in message
        assert CLIENT_SECRET not in message
        endpoint.refuse = False
        assert await creds.headers(Consumer("c"), None, {}) == {"Authorization": "Bearer at-2"}


async def test_openapi_oauth2_goes_through_the_auth_grant() -> None:
    endpoint = TokenEndpoint(expires_in=None)  # no lifetime: kept until the upstream answers 401
    async with client_for(endpoint) as http:
        credential = OAuth2ClientCredentials(
            "http://idp.test/token", "c i", SecretStr(CLIENT_SECRET), http=http, scopes=["read"], audience="aud",
        )
        for _ in range(3):
            spec = RequestSpec("GET", "http://api.test/x")
            await credential.apply(spec, http)
        assert spec.headers["Authorization"] == "Bearer at-1" and credential.fetches == 1
        assert set(credential.secrets()) == {CLIENT_SECRET, "at-1"}
        credential.invalidate()
        await credential.apply(spec, http)
        assert spec.headers["Authorization"] == "Bearer at-2" and credential.fetches == 2
    sent = endpoint.requests[0]
    assert sent["form"] == {"grant_type": "client_credentials", "scope": "read", "audience": "aud"}
    user, _, password = base64.b64decode(sent["authorization"].removeprefix("Basic ")).decode().partition(":")
    assert (user, password) == ("c%20i", CLIENT_SECRET)  # RFC 6749 2.3.1: form-encoded, then Basic
    assert CLIENT_SECRET not in repr(credential)


async def test_openapi_oauth2_timeout_is_a_credential_error() -> None:
    endpoint = TokenEndpoint(delay_s=5)
    async with client_for(endpoint) as http:
        credential = OAuth2ClientCredentials(
            "http://idp.test/token", "c", SecretStr(CLIENT_SECRET), http=http, timeout=0.05,
        )
        with pytest.raises(CredentialError, match="within 0.05s") as failed:
            await credential.apply(RequestSpec("GET", "http://api.test/x"), http)
    assert CLIENT_SECRET not in str(failed.value)
