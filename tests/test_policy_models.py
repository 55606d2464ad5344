"""Policy config: the documented keys parse verbatim; bad values fail with the key and the reason."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from mcp_hub.config.policy import PolicyConfig, describe_window, parse_window

VERBATIM = """
default_acl: deny          # allow | deny; global
groups:
  developer:
    tools:
      allow: ["time__*", "tiny__add"]
      deny: ["time__convert_time"]
    budgets:
      - tokens: 2000
        window: 1 minute
        count: total        # input | output | total
  admin:
    tools:
      allow: ["*"]
"""

FULL = """
default_acl: allow
upstream_acl: {github: deny}
groups:
  developer:
    tools: {allow: ["time__*"], deny: ["time__convert_time"]}
    resources: {allow: ["file:///docs/*"], deny: ["file:///docs/secret*"]}
    prompts: {deny: ["*"]}
    budgets:
      - {tokens: 2000, window: 1 minute, count: total, strategy: moving-window}
      - {tokens: 50000, window: 1 day, count: output, per: consumer, strategy: sliding-window-counter}
    rate_limits:
      - {requests: 10, window: 1 second, per: consumer, tools: ["github__*"]}
      - {requests: 100, window: 10 seconds, per: group}
consumers:
  ci-bot:
    budgets: [{tokens: 100000, window: 1 hour, count: input}]
    rate_limits: [{requests: 5, window: 1 minute}]
budgets: [{tokens: 1000000, window: 1 day}]
rate_limits: [{requests: 50, window: 1 second, upstreams: ["github"]}]
costs:
  "github__*": {per_call: 0.002, per_1k_tokens: 0.01}
  "time__get_current_time": {per_call: 0}
cost_unit: EUR
token_counter: estimate
storage: redis://127.0.0.1:6379/0
storage_timeout: 0.5
fail_open: true
metrics: {per_consumer_labels: false, max_label_values: 50}
"""


def _errors(raw: dict) -> str:
    with pytest.raises(ValidationError) as info:
        PolicyConfig.model_validate(raw)
    return str(info.value)


def test_verbatim_example_parses() -> None:
    policy = PolicyConfig.model_validate(yaml.safe_load(VERBATIM))
    assert policy.default_acl == "deny"
    dev = policy.groups["developer"]
    assert dev.tools.allow == ["time__*", "tiny__add"]
    assert dev.tools.deny == ["time__convert_time"]
    budget = dev.budgets[0]
    assert (budget.tokens, budget.window, budget.count, budget.strategy) == (2000, 60, "total", "fixed-window")
    assert budget.describe() == "2000 tokens per 1 minute"
    assert policy.groups["admin"].tools.allow == ["*"]
    assert policy.storage == "memory://" and policy.limits_storage_uri == "async+memory://"
    assert policy.fail_open is False and policy.cost_unit == "USD"


def test_every_key_parses() -> None:
    policy = PolicyConfig.model_validate(yaml.safe_load(FULL))
    assert policy.upstream_acl == {"github": "deny"}
    dev = policy.groups["developer"]
    assert dev.resources.deny == ["file:///docs/secret*"]
    assert [b.strategy for b in dev.budgets] == ["moving-window", "sliding-window-counter"]
    assert dev.budgets[1].describe() == "50000 output tokens per 1 day"
    assert dev.rate_limits[0].describe() == "10 requests per 1 second"
    assert dev.rate_limits[1].per == "group"
    assert policy.consumers["ci-bot"].budgets[0].window == 3600
    assert policy.costs["github__*"].per_1k_tokens == 0.01
    assert policy.limits_storage_uri == "async+redis://127.0.0.1:6379/0"
    assert policy.metrics.per_consumer_labels is False and policy.metrics.max_label_values == 50
    # The gateway's config loader takes these keys from the top level of its YAML.
    assert {"default_acl", "groups", "consumers", "costs", "cost_unit", "storage", "fail_open",
            "metrics"} <= set(PolicyConfig.model_fields)


@pytest.mark.parametrize(("text", "seconds"), [
    ("1 minute", 60), ("10 seconds", 10), ("1 hour", 3600), ("1 day", 86400), ("2 days", 172800),
    ("second", 1), ("30s", 30), ("5 min", 300), ("2h", 7200), ("1 week", 604800), (45, 45), ("  3   Hours ", 10800),
])
def test_windows(text: object, seconds: int) -> None:
    assert parse_window(text) == seconds


@pytest.mark.parametrize("text", ["1 fortnight", "minute 1", "", "0 seconds", "-1 minute", "1.5 hours", True, 0, 2.5])
def test_bad_windows(text: object) -> None:
    with pytest.raises(ValueError):
        parse_window(text)


def test_describe_window() -> None:
    assert [describe_window(s) for s in (1, 10, 60, 90, 120, 3600, 86400)] == [
        "1 second", "10 seconds", "1 minute", "90 seconds", "2 minutes", "1 hour", "1 day"]


def test_error_messages_name_the_key_and_the_reason() -> None:
    message = _errors({"groups": {"dev": {"budgets": [{"tokens": 10, "window": "1 fortnight"}]}}})
    assert "groups.dev.budgets.0.window" in message and "'1 fortnight' is not understood" in message

    message = _errors({"groups": {"dev": {"tools": {"allow": ["x"], "alow": ["y"]}}}})
    assert "groups.dev.tools.alow" in message and "Extra inputs are not permitted" in message

    message = _errors({"default_acl": "maybe"})
    assert "default_acl" in message and "'allow' or 'deny'" in message

    message = _errors({"storage": "mongodb://:hunter2@db:27017"})
    assert "not supported" in message and "redis://host:port" in message
    assert "hunter2" not in message

    message = _errors({"budgets": [{"tokens": 10, "window": "1 minute", "per": "group"}]})
    assert "budgets[0]" in message and "per: consumer" in message

    message = _errors({"consumers": {"bot": {"rate_limits": [{"requests": 1, "window": 1, "per": "group"}]}}})
    assert "consumers.bot.rate_limits[0]" in message

    message = _errors({"groups": {"dev": {"budgets": [{"tokens": 0, "window": "1 minute"}]}}})
    assert "groups.dev.budgets.0.tokens" in message

    message = _errors({"groups": {"dev": {"budgets": [{"tokens": 5, "window": 60, "strategy": "leaky"}]}}})
    assert "'moving-window', 'fixed-window' or 'sliding-window-counter'" in message

    message = _errors({"token_counter": "tiktoken-xl"})
    assert "token_counter 'tiktoken-xl' is unknown" in message and "estimate" in message

    message = _errors({"costs": {"github__*": {"per_call": -1}}})
    assert "costs.github__*.per_call" in message

    message = _errors({"rate_limits": [{"requests": 1, "window": 1, "tools": []}]})
    assert "match nothing" in message


def test_single_glob_string_is_a_list() -> None:
    policy = PolicyConfig.model_validate({"groups": {"dev": {"tools": {"allow": "time__*"}}}})
    assert policy.groups["dev"].tools.allow == ["time__*"]


def test_storage_uris() -> None:
    cases = {
        "memory://": "async+memory://",
        "redis://localhost:6379": "async+redis://localhost:6379",
        "rediss://:pw@cache:6380/1": "async+rediss://:pw@cache:6380/1",
        "async+redis://h:1": "async+redis://h:1",
    }
    for given, expected in cases.items():
        assert PolicyConfig(storage=given).limits_storage_uri == expected
    assert PolicyConfig(storage="redis://:s3cret@h:1/0").storage_display == "redis://:***@h:1/0"
