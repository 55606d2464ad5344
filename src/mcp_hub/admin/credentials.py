"""The admin-side credential check: a Bearer key against configured key digests (admin API, monitoring)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from mcp_hub.config import AdminKey


def bearer_credential(headers: Mapping[str, str]) -> str | None:
    """The credential of an `Authorization: Bearer ...` header; None without one."""
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    return credential if scheme.lower() == "bearer" and credential else None


def matching_key(credential: str, keys: Iterable[AdminKey]) -> AdminKey | None:
    """The key whose digest the credential has. Every key is compared, so the time taken does not tell
    which key (or list) holds it."""
    digest = hashlib.sha256(credential.encode()).hexdigest()
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.sha256) and found is None:
            found = key
    return found
