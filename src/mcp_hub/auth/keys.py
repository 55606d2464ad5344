"""API keys: generated here, stored in the config only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets

# A recognisable prefix lets secret scanners (and people) tell a leaked key for what it is.
API_KEY_PREFIX = "mcphub_"


def api_key_digest(key: str) -> str:
    """The SHA-256 hex digest the config stores for a key (`api_keys[].sha256`)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh random API key (256 bits) and its SHA-256 hex digest, for `mcp-hub keys new`.

    Show the key once to whoever will use it; put only the digest in the config.
    """
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, api_key_digest(key)
