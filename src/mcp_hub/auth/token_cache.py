"""One cache for the OAuth access tokens the gateway fetches to call upstreams.

    cache: TokenCache[str] = TokenCache(max_entries=1)
    token = await cache.get(key, fetch)  # fetch() -> (access_token, lifetime in seconds)

A key's token is fetched by one caller at a time: the others wait for it and take it. It is kept
until a safety margin before it expires. A failed fetch stores nothing (the next caller tries
again). At most `max_entries` tokens are kept, the least recently used dropped first.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import anyio

K = TypeVar("K", bound=Hashable)

#: Gets a new token: the access token and its lifetime in seconds (`math.inf`: until invalidated).
Fetch = Callable[[], Awaitable[tuple[str, float]]]


def safety_margin(lifetime_s: float) -> float:
    """How long before its expiry a token is renewed: 10% of the lifetime, 5 to 60 s, at most half of it."""
    return min(60.0, max(5.0, lifetime_s * 0.1), lifetime_s / 2)


class _KeyLock:
    """The lock of one key and how many callers hold or wait for it (the lock goes when none do)."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = anyio.Lock()
        self.users = 0


class TokenCache(Generic[K]):
    """Access tokens by key, fetched once per key at a time and kept until shortly before expiry."""

    def __init__(self, max_entries: int = 10_000, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("a token cache needs room for at least one token")
        self.max_entries = max_entries
        self._clock = clock
        self._tokens: OrderedDict[K, tuple[float, str]] = OrderedDict()  # key -> (renew at, token)
        self._locks: dict[K, _KeyLock] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    async def get(self, key: K, fetch: Fetch) -> str:
        """The token for `key`: the cached one while fresh, else the one `fetch` returns.

        Concurrent callers for one key make one fetch. Whatever `fetch` raises reaches the caller
        and nothing is cached, so each later (or waiting) caller fetches again.
        """
        token = self._fresh(key)
        if token is not None:
            return token
        holder = self._locks.get(key)
        if holder is None:
            holder = self._locks[key] = _KeyLock()
        holder.users += 1
        try:
            async with holder.lock:
                token = self._fresh(key)  # another caller may have fetched it while this one waited
                if token is None:
                    token, lifetime_s = await fetch()
                    self._store(key, token, lifetime_s)
        finally:
            holder.users -= 1
            if holder.users == 0:
                del self._locks[key]
        return token

    def peek(self, key: K) -> str | None:
        """The token held for `key`, fresh or not, without fetching (e.g. to scrub it from a message)."""
        entry = self._tokens.get(key)
        return entry[1] if entry is not None else None

    def invalidate(self, key: K) -> None:
        """Forget the token for `key` (the upstream refused it): the next `get` fetches a new one."""
        self._tokens.pop(key, None)

    def _fresh(self, key: K) -> str | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._tokens[key]
            return None
        self._tokens.move_to_end(key)
        return entry[1]

    def _store(self, key: K, token: str, lifetime_s: float) -> None:
        if math.isnan(lifetime_s) or lifetime_s <= 0:
            return  # already expired: serve it to this caller only
        self._tokens[key] = (self._clock() + lifetime_s - safety_margin(lifetime_s), token)
        self._tokens.move_to_end(key)
        while len(self._tokens) > self.max_entries:
            self._tokens.popitem(last=False)
