"""Who is calling: the consumer and the groups it belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    @property
    def group_key(self) -> tuple[str, ...]:
        """The sorted group set: consumers with the same key see the same catalog."""
        return tuple(sorted(set(self.groups)))


def anonymous(groups: tuple[str, ...] = ()) -> Consumer:
    """The consumer used when auth is off."""
    return Consumer(name=ANONYMOUS, groups=groups)
