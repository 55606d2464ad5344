"""Who is calling: the consumer and the groups it belongs to."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcp_hub.auth.verifier import ApiKeyAccessToken
from mcp_hub.config.auth import AuthConfig

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Consumer:
    """The caller as policy sees it: a name, its groups, and claims worth forwarding.

    `groups` is a tuple so a consumer is hashable and can key caches of filtered catalogs.
    """

    name: str
    groups: tuple[str, ...] = ()
    # Claims chosen by `claim_to_header`, already rendered as header values.
    forwarded_claims: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # How the caller authenticated: "none", "oauth" or "api_key".
    method: str = "none"
    # The sorted group set, computed once: every step of a call keys something by it.
    _group_key: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_group_key", tuple(sorted(set(self.groups))))

    @property
    def group_key(self) -> tuple[str, ...]:
        """The sorted group set: consumers with the same key see the same catalog."""
        return self._group_key


def anonymous(groups: tuple[str, ...] = ()) -> Consumer:
    """The consumer used when auth is off."""
    return Consumer(name=ANONYMOUS, groups=groups)


# --- Mapping verified credentials to consumers (pure functions of the token and the config) ---

_MISSING = object()


def claim_value(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by name or dotted path (`realm_access.roles`); None when absent.

    The exact name wins, since namespaced claims such as `https://example.com/groups` contain dots.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part, _MISSING)
        if value is _MISSING:
            return None
    return value


def groups_from_claim(value: Any) -> list[str]:
    """Group names from a claim value: a list, or a space-separated string such as `scope`."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if isinstance(v, (str, int))]
    return []


def _merge(*parts: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for part in parts:
        for group in part:
            seen.setdefault(group, None)
    return tuple(seen)


def _header_value(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, Mapping):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    else:
        text = str(value)
    # Control characters would let a claim smuggle extra headers upstream.
    return "".join(ch for ch in text if ch >= " " and ch != "\x7f")


def forwarded_claims(
    claims: Mapping[str, Any], claim_to_header: Mapping[str, str]
) -> tuple[tuple[str, str], ...]:
    """(header, value) pairs for the claims `claim_to_header` names and the token carries."""
    pairs = []
    for path, header in claim_to_header.items():
        value = _header_value(claim_value(claims, path))
        if value is not None:
            pairs.append((header, value))
    return tuple(pairs)


def consumer_from_access_token(token: AccessToken, config: AuthConfig) -> Consumer:
    """The consumer a verified token stands for: name from `consumer_claim`, groups from `groups_claim`
    merged with `static_groups`, and the claims `claim_to_header` forwards.

    API-key tokens map to their configured consumer and groups.
    """
    if isinstance(token, ApiKeyAccessToken):
        return consumer_from_api_key(token.consumer, token.groups, config)
    claims = token.claims or {}
    raw_name = claim_value(claims, config.consumer_claim)
    name = str(raw_name) if isinstance(raw_name, (str, int)) and str(raw_name) else None
    name = oauth_consumer_name(name or token.subject or token.client_id, config)
    groups = groups_from_claim(claim_value(claims, config.groups_claim))
    return Consumer(
        name=name,
        groups=_merge(groups, config.static_groups.get(name, ())),
        forwarded_claims=forwarded_claims(claims, config.claim_to_header),
        method="oauth",
    )


OAUTH_NAMESPACE = "oauth:"


def oauth_consumer_name(claim: str, config: AuthConfig) -> str:
    """An OAuth caller's consumer name: the explicit mapping, else the claim value, namespaced as
    `oauth:<claim>` when API keys are enabled too (their consumers and a token's claim never merge by accident)."""
    mapped = config.oauth_consumers.get(claim)
    if mapped is not None:
        return mapped
    if "api_key" in config.methods:
        return OAUTH_NAMESPACE + claim
    return claim


def consumer_from_api_key(consumer: str, groups: Sequence[str], config: AuthConfig) -> Consumer:
    """The consumer an API key stands for, with `static_groups` merged in."""
    claims = {"sub": consumer, "groups": list(groups)}
    return Consumer(
        name=consumer,
        groups=_merge(groups, config.static_groups.get(consumer, ())),
        forwarded_claims=forwarded_claims(claims, config.claim_to_header),
        method="api_key",
    )


def anonymous_consumer(config: AuthConfig | None = None) -> Consumer:
    """The consumer used when auth is off, with any `static_groups` configured for `anonymous`."""
    groups = tuple(config.static_groups.get(ANONYMOUS, ())) if config else ()
    return anonymous(groups)
