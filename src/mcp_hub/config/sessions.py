"""`sessions:`, the shared session store: replicas behind a plain load balancer serve each other's sessions.

    sessions: redis://redis:6379            # the short form
    sessions:                               # or the long one
      url: redis://redis:6379
      key_prefix: mcphub
      secret: ${MCP_HUB_SESSION_SECRET}     # optional: the requestState key is derived from it

Absent (the default), each process keeps its sessions to itself, as a single gateway does.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

_SCHEMES = ("redis", "rediss", "unix")


def _hide_password(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


class SessionsConfig(BaseModel):
    """Where replicas share downstream sessions, mid-call traffic and catalog changes."""

    # The URI may carry a Redis password: errors name the key, never echo the value.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: str = Field(description="The Redis that holds session records and carries messages between replicas: "
                     "`redis://[user:password@]host[:port][/db]`, `rediss://`, `unix:///path`.")
    key_prefix: str = Field(default="mcphub", pattern=r"^[A-Za-z0-9:_.-]{1,40}$",
                            description="Prefix of every key and channel (several gateways on one Redis).")
    timeout: float = Field(default=1.0, gt=0, description="Seconds to wait for Redis before treating it as unreachable.")
    idle_timeout: float = Field(
        default=1800.0, gt=0,
        description="Seconds a session record lives without use (each replica's own session ends after the "
        "same idle time); a request on the session renews it.",
    )
    secret: SecretStr | None = Field(
        default=None,
        description="Derives the key that seals 2026-07-28 `requestState`s, so any replica opens another's. "
        "Without it the replicas agree on a random key kept in Redis.",
    )

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in _SCHEMES:
            raise ValueError(f"sessions {_hide_password(value)!r} is not supported: use redis://host:port "
                             "(also rediss:// and unix:///path)")
        return value
