"""Who may see and call what: one pure decision function for listing and calling.

How a decision is made for a consumer, a kind (tool | resource | prompt) and an exposed name:

1. An explicit deny in ANY of the consumer's groups wins (`groups.<g>.<kind>s.deny`).
2. Otherwise an explicit allow in any of its groups allows (`groups.<g>.<kind>s.allow`).
3. Otherwise the default: `upstream_acl.<upstream>` when set for the name's upstream, else
   `default_acl`.

Groups the config does not define contribute nothing. The consumer's groups are read in sorted
order, so the result (and the rule reported) does not depend on the order of its groups.
Patterns are shell globs matched case-sensitively (`fnmatchcase`) against canonical tool and prompt
names (under the upstream's own prefix, `time__get_current_time`, on every route, unprefixed ones too), and resources' own URIs (as their upstream serves
them, whichever form addresses them; `catalog.view.CatalogView.resolve_uri` gives that name).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from mcp_hub.config.policy import Kind, PolicyConfig

__all__ = ["Decision", "Decisions", "decide", "decide_for_groups", "CatalogFilter"]

_SECTION = {"tool": "tools", "resource": "resources", "prompt": "prompts"}


class _HasGroups(Protocol):
    @property
    def group_key(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: allowed or not, why in words, and the config rule that decided."""

    allowed: bool
    reason: str
    rule: str


def decide(consumer: _HasGroups, kind: Kind, name: str, upstream: str | None, policy: PolicyConfig) -> Decision:
    """Whether `consumer` may see and use the `kind` called `name` (exposed name) from `upstream`.

    Deny wins: an explicit deny in any of the consumer's groups beats an allow in another.
    No I/O; the same function serves tools/list, tools/call and `mcp-hub explain`.
    """
    return decide_for_groups(consumer.group_key, kind, name, upstream, policy)


def decide_for_groups(
    group_key: tuple[str, ...], kind: Kind, name: str, upstream: str | None, policy: PolicyConfig
) -> Decision:
    """`decide` for a sorted group set (`Consumer.group_key`): ACLs depend on groups only."""
    section = _SECTION[kind]
    groups = policy.groups
    for group in group_key:
        rules = groups.get(group)
        if rules is None:
            continue
        index = rules.rules_for(kind).first_deny(name)
        if index is not None:
            pattern = rules.rules_for(kind).deny[index]
            return Decision(
                False,
                f"{kind} {name!r} is denied to group {group!r} by pattern {pattern!r}",
                f"groups.{group}.{section}.deny[{index}]: {pattern}",
            )
    for group in group_key:
        rules = groups.get(group)
        if rules is None:
            continue
        index = rules.rules_for(kind).first_allow(name)
        if index is not None:
            pattern = rules.rules_for(kind).allow[index]
            return Decision(
                True,
                f"{kind} {name!r} is allowed to group {group!r} by pattern {pattern!r}",
                f"groups.{group}.{section}.allow[{index}]: {pattern}",
            )
    if upstream is not None and upstream in policy.upstream_acl:
        default = policy.upstream_acl[upstream]
        return Decision(
            default == "allow",
            f"no group rule mentions {kind} {name!r}; upstream {upstream!r} defaults to {default}",
            f"upstream_acl.{upstream}: {default}",
        )
    default = policy.default_acl
    return Decision(
        default == "allow",
        f"no group rule mentions {kind} {name!r}; the default is {default}",
        f"default_acl: {default}",
    )


class Decisions:
    """`decide` for one policy, each answer kept: a call asks the same question for every call of a tool.

    Keyed by (group set, kind, name, upstream); a policy is immutable, so an answer never goes stale (a
    reload makes a new policy and a new `Decisions`). Bounded: past `max_entries` it starts afresh.
    """

    def __init__(self, policy: PolicyConfig, max_entries: int = 50_000) -> None:
        self.policy = policy
        self.max_entries = max_entries
        self._known: dict[tuple[tuple[str, ...], str, str, str | None], Decision] = {}

    def decide(self, consumer: _HasGroups, kind: Kind, name: str, upstream: str | None) -> Decision:
        key = (consumer.group_key, kind, name, upstream)
        found = self._known.get(key)
        if found is None:
            found = decide_for_groups(key[0], kind, name, upstream, self.policy)
            if len(self._known) >= self.max_entries:
                self._known.clear()
            self._known[key] = found
        return found


class CatalogFilter:
    """Which exposed names each group set may see, computed once per catalog version and group key.

    `tools/list` (and resources/prompts listings) ask this instead of calling `decide` per name
    per request. Only the newest catalog version is kept: a new version drops older entries.
    """

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self._version: Hashable = object()
        self._cache: dict[tuple[tuple[str, ...], Kind], frozenset[str]] = {}
        # How many sets were computed (cache misses); tests and metrics read it.
        self.computed = 0

    def visible(
        self,
        group_key: tuple[str, ...],
        kind: Kind,
        version: Hashable,
        entries: Iterable[tuple[str, str | None]],
    ) -> frozenset[str]:
        """The names among `entries` ((exposed name, upstream) pairs) that `group_key` may see.

        `entries` is read only when this (version, group key, kind) was not computed yet.
        """
        if version != self._version:
            self._version = version
            self._cache = {}
        key = (group_key, kind)
        names = self._cache.get(key)
        if names is None:
            names = frozenset(
                name for name, upstream in entries
                if decide_for_groups(group_key, kind, name, upstream, self.policy).allowed
            )
            self._cache[key] = names
            self.computed += 1
        return names
