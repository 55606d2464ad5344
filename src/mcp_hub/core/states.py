"""Sealed `requestState`: an upstream's input_required state, as this gateway hands it to a 2026-07-28 caller.

An upstream that answers `input_required` gives the gateway its own `requestState`. The caller gets
the upstream's input requests unchanged and a state of the gateway's: the upstream's state sealed
(AES-GCM: opaque to the caller, and any change to it is detected) together with what it is bound to
(the consumer, the route, the method and its target) and an expiry. Each round gets a new state; a
state is taken once (a replayed one is refused), within the TTL.

Replicas sharing sessions (`sessions:`) share this too: the transport layer gives every replica the
same key (`share`) and a single-use check that all of them consult (`taken_guard`, on Redis), so a state
one replica issued is honoured once by any of them.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import mcp_types as types
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mcp_hub.core.relay import RequestStateRefused

SEALED_PREFIX = "hub2."


class SealedStates:
    """Seals and opens request states; remembers the ones taken until they expire."""

    def __init__(self, key: bytes | None = None, *, ttl: float = 300.0, max_taken: int = 100_000) -> None:
        self._aead = AESGCM(key or AESGCM.generate_key(bit_length=256))
        self.ttl = ttl
        self._taken: dict[str, float] = {}
        self._max_taken = max_taken
        # (state id, expiry) -> True the first time a state is taken anywhere (None: this process alone decides).
        self.taken_guard: Callable[[str, float], Awaitable[bool]] | None = None

    def share(self, key: bytes, taken_guard: Callable[[str, float], Awaitable[bool]] | None) -> None:
        """Seal with `key` (shared by every replica) and take states once across replicas with `taken_guard`."""
        self._aead = AESGCM(key)
        self.taken_guard = taken_guard

    @staticmethod
    def is_sealed(state: str | None) -> bool:
        return bool(state) and str(state).startswith(SEALED_PREFIX)

    def seal(self, upstream_state: str | None, *, method: str, target: str, consumer: str, route: str) -> str:
        payload = {"u": upstream_state, "m": method, "t": target, "c": consumer, "r": route,
                   "e": time.time() + self.ttl, "id": secrets.token_urlsafe(9)}
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, json.dumps(payload, separators=(",", ":")).encode(), SEALED_PREFIX.encode())
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    async def take(self, state: str, *, method: str, target: str, consumer: str, route: str) -> str | None:
        """`open`, with the single-use check shared by every replica when `taken_guard` is set."""
        guard = self.taken_guard
        if guard is None:
            return self.open(state, method=method, target=target, consumer=consumer, route=route)
        payload = self._payload(state, method=method, target=target, consumer=consumer, route=route)
        if not await guard(payload["id"], payload["e"]):
            raise _refused()  # a replay, here or on another replica
        upstream_state = payload.get("u")
        return upstream_state if isinstance(upstream_state, str) else None

    def open(self, state: str, *, method: str, target: str, consumer: str, route: str) -> str | None:
        """The upstream's state sealed in `state`, if it was issued for exactly this request; else refused."""
        payload = self._payload(state, method=method, target=target, consumer=consumer, route=route)
        if not self.take_locally(payload["id"], payload["e"]):
            raise _refused()  # a replay: each state answers one round
        upstream_state = payload.get("u")
        return upstream_state if isinstance(upstream_state, str) else None

    def take_locally(self, state_id: str, expiry: float) -> bool:
        """True the first time this process takes the state `state_id` (the check without replicas)."""
        self._forget_expired(time.time())
        if state_id in self._taken:
            return False
        self._taken[state_id] = expiry
        return True

    def _payload(self, state: str, *, method: str, target: str, consumer: str, route: str) -> dict[str, Any]:
        """What `state` seals, if it is intact, unexpired and issued for exactly this request; else refused."""
        refused = _refused()
        try:
            body = state[len(SEALED_PREFIX):]
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            payload = json.loads(self._aead.decrypt(raw[:12], raw[12:], SEALED_PREFIX.encode()))
        except (ValueError, InvalidTag, TypeError):
            raise refused from None
        now = time.time()
        if (
            not isinstance(payload, dict) or payload.get("e", 0) < now
            or (payload.get("m"), payload.get("t"), payload.get("c"), payload.get("r")) != (method, target, consumer, route)
        ):
            raise refused
        if not isinstance(payload.get("id"), str):
            raise refused
        return payload

    def wrap(self, result: dict[str, Any], *, method: str, target: str, consumer: str, route: str) -> dict[str, Any]:
        """An upstream's InputRequiredResult as the caller gets it: the same input requests, a sealed state."""
        state = self.seal(result.get("requestState"), method=method, target=target, consumer=consumer, route=route)
        return {**result, "requestState": state}

    def _forget_expired(self, now: float) -> None:
        if len(self._taken) >= self._max_taken:
            self._taken = {k: exp for k, exp in self._taken.items() if exp >= now}
            while len(self._taken) >= self._max_taken:  # still full of live states: the oldest go first
                self._taken.pop(next(iter(self._taken)))


def _refused() -> RequestStateRefused:
    return RequestStateRefused(code=types.INVALID_PARAMS, message="request_state is invalid or has expired")
