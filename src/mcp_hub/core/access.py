"""The one ACL decision, as every method asks it: for one target, for a listing, for `explain`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog.view import CatalogView, Target
from mcp_hub.config.policy import Kind, PolicyConfig
from mcp_hub.policy.acl import Decision, Decisions

T = TypeVar("T")


class Access:
    """`policy.acl.decide` over a route's catalog view, with listings cached per view and group set."""

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self._decisions = Decisions(policy)
        self._filter_cache: dict[tuple[int, int, str, tuple[str, ...]], list[Any]] = {}

    def decide(self, consumer: Consumer, kind: Kind, name: str, upstream: str | None) -> Decision:
        """Whether `consumer` may see and use the `kind` named `name` (its canonical name) from `upstream`."""
        return self._decisions.decide(consumer, kind, name, upstream)

    def allows(self, consumer: Consumer, target: Target) -> bool:
        return self.decide(consumer, target.acl_kind, target.name, target.upstream).allowed

    def filter(self, view: CatalogView, kind: str, consumer: Consumer, items: Sequence[T]) -> list[T]:
        """The items (tools, prompts, resources, templates) of a view this consumer may see; computed once per
        view and group set."""
        # id(view): every route has its own view of the same version; all of one version are alive together
        cache_key = (view.version, id(view), kind, consumer.group_key)
        cached = self._filter_cache.get(cache_key)
        if cached is not None:
            return cached
        out = []
        for item in items:
            target = view.target_of(kind, item)
            if target is not None and self.allows(consumer, target):
                out.append(item)
        if len(self._filter_cache) > 4096:  # old view versions are dead weight
            self._filter_cache = {k: v for k, v in self._filter_cache.items() if k[0] == view.version}
        self._filter_cache[cache_key] = out
        return out
