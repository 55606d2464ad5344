"""Which budgets and rate limits count a call: pure, for `explain` and the admin API."""

from __future__ import annotations

from typing import Any

from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import PolicyConfig


def limits_for(policy: PolicyConfig, consumer: Consumer, tool: str, upstream: str | None) -> list[str]:
    """Budgets and rate limits that would count a call of `tool` by `consumer`, as `key: description`."""
    out: list[str] = []

    def add(where: str, rules: list[Any]) -> None:
        for i, rule in enumerate(rules):
            if rule.applies_to(tool, upstream):
                out.append(f"{where}[{i}]: {rule.describe()}")

    for group in consumer.group_key:
        rules = policy.groups.get(group)
        if rules is not None:
            add(f"groups.{group}.budgets", rules.budgets)
            add(f"groups.{group}.rate_limits", rules.rate_limits)
    own = policy.consumers.get(consumer.name)
    if own is not None:
        add(f"consumers.{consumer.name}.budgets", own.budgets)
        add(f"consumers.{consumer.name}.rate_limits", own.rate_limits)
    add("budgets", policy.budgets)
    add("rate_limits", policy.rate_limits)
    return out
