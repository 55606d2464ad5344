"""Policy configuration: ACL rules, token budgets, rate limits, costs, storage and metrics options.

Every key below sits at the top level of the gateway's YAML config; the config loader hands the
policy keys to `PolicyConfig` (see `PolicyConfig.model_fields`). Example::

    default_acl: deny                 # allow | deny, for names no rule mentions
    upstream_acl: {github: deny}      # the same default, per upstream (wins over default_acl)
    groups:
      developer:
        tools: {allow: ["time__*"], deny: ["time__convert_time"]}
        resources: {allow: ["file:///docs/*"]}
        prompts: {deny: ["*"]}
        budgets:
          - {tokens: 2000, window: 1 minute, count: total, per: group}
        rate_limits:
          - {requests: 10, window: 1 second, per: consumer, tools: ["github__*"]}
    consumers:
      ci-bot:
        budgets: [{tokens: 50000, window: 1 day}]
    budgets: []                       # apply to every consumer, each its own
    rate_limits: []                   # apply to every consumer, each its own
    costs: {"github__*": {per_call: 0.002, per_1k_tokens: 0.01}}
    cost_unit: USD
    storage: memory://                # or redis://host:port
    fail_open: false
"""

from __future__ import annotations

import fnmatch
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from mcp_hub.config.catalog import CatalogConfig

Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]
Scope = Literal["group", "consumer"]
Kind = Literal["tool", "resource", "prompt"]

_UNITS: dict[str, int] = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}
_WINDOW_RE = re.compile(r"^\s*(\d+)?\s*([A-Za-z]+)\s*$")


def parse_window(value: Any) -> int:
    """Turn `1 minute`, `10 seconds`, `2h`, `day` or a number of seconds into whole seconds."""
    if isinstance(value, bool):
        raise ValueError("a window must be a duration such as '1 minute', not a boolean")
    if isinstance(value, int | float):
        seconds = int(value)
        if seconds != value or seconds <= 0:
            raise ValueError(f"a window in seconds must be a positive whole number, got {value!r}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"a window must be a string such as '1 minute', got {type(value).__name__}")
    match = _WINDOW_RE.match(value)
    unit = _UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise ValueError(
            f"window {value!r} is not understood: write '<number> <unit>' with unit second, minute, hour, "
            "day or week, e.g. '10 seconds' or '1 hour'"
        )
    count = int(match.group(1)) if match.group(1) else 1
    if count <= 0:
        raise ValueError(f"window {value!r} must be longer than zero")
    return count * unit


def describe_window(seconds: int) -> str:
    """Words for a window length: 60 -> '1 minute', 7200 -> '2 hours', 90 -> '90 seconds'."""
    for name, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{n} {name}" + ("s" if n != 1 else "")
    return f"{seconds} second" + ("s" if seconds != 1 else "")


def _check_globs(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not pattern or pattern != pattern.strip():
            raise ValueError(f"pattern {pattern!r} must be non-empty and have no surrounding spaces")
    return patterns


# Seconds; accepts '1 minute', '10 seconds', '1 hour', '1 day' or an integer.
Window = Annotated[int, BeforeValidator(parse_window)]
Globs = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]


# The names `token_counter:` accepts; policy.tokens adds to it when a counter is registered.
TOKEN_COUNTERS: set[str] = {"estimate", "bytes"}


class _Model(BaseModel):
    # hide_input_in_errors: an error names the key, never the value it was given.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class AccessRules(_Model):
    """Allow and deny globs (fnmatchcase) over exposed names: tools, resource URIs or prompts."""

    allow: Globs = Field(default_factory=list)
    deny: Globs = Field(default_factory=list)

    # Compiled once: decide() runs on every call.
    _allow_re: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _deny_re: list[re.Pattern[str]] = PrivateAttr(default_factory=list)

    @field_validator("allow", "deny")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        return _check_globs(value)

    def model_post_init(self, _context: Any) -> None:
        self._allow_re = [re.compile(fnmatch.translate(p)) for p in self.allow]
        self._deny_re = [re.compile(fnmatch.translate(p)) for p in self.deny]

    def first_allow(self, name: str) -> int | None:
        """Index of the first allow pattern matching `name`, or None."""
        return _first(self._allow_re, name)

    def first_deny(self, name: str) -> int | None:
        """Index of the first deny pattern matching `name`, or None."""
        return _first(self._deny_re, name)


def _first(patterns: list[re.Pattern[str]], name: str) -> int | None:
    for index, pattern in enumerate(patterns):
        if pattern.match(name):
            return index
    return None


class _Targeted(_Model):
    """A rule that may apply only to some tools (globs over exposed names) and some upstreams."""

    tools: Globs = Field(default_factory=lambda: ["*"], description="globs over exposed tool names")
    upstreams: Globs = Field(default_factory=lambda: ["*"], description="globs over upstream names")

    _tools_re: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _upstreams_re: list[re.Pattern[str]] = PrivateAttr(default_factory=list)

    @field_validator("tools", "upstreams")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("an empty list would match nothing; leave the key out to match everything")
        return _check_globs(value)

    def model_post_init(self, _context: Any) -> None:
        self._tools_re = [re.compile(fnmatch.translate(p)) for p in self.tools]
        self._upstreams_re = [re.compile(fnmatch.translate(p)) for p in self.upstreams]

    def applies_to(self, tool: str, upstream: str | None) -> bool:
        """Whether a call of `tool` on `upstream` counts against this rule."""
        if _first(self._tools_re, tool) is None:
            return False
        return upstream is None or self.upstreams == ["*"] or _first(self._upstreams_re, upstream) is not None


class BudgetRule(_Targeted):
    """A token budget: at most `tokens` tokens (input, output or both) per `window`."""

    tokens: int = Field(gt=0)
    window: Window
    count: Literal["input", "output", "total"] = "total"
    # Fixed windows keep one counter per subject; moving windows store one entry per token.
    strategy: Strategy = "fixed-window"
    # group: one budget shared by all members; consumer: each member its own. Default: group in
    # `groups`, consumer in `consumers` and at the top level.
    per: Scope | None = None

    def describe(self) -> str:
        """'2000 tokens per 1 minute' (or '500 output tokens per 1 hour')."""
        what = "tokens" if self.count == "total" else f"{self.count} tokens"
        return f"{self.tokens} {what} per {describe_window(self.window)}"


class RateLimitRule(_Targeted):
    """A request rate limit: at most `requests` calls per `window`, counted when a call is admitted."""

    requests: int = Field(gt=0)
    window: Window
    strategy: Strategy = "moving-window"
    # consumer (default): each caller its own rate; group: one rate shared by the group's members.
    per: Scope | None = None

    def describe(self) -> str:
        """'10 requests per 1 second'."""
        return f"{self.requests} requests per {describe_window(self.window)}"


class GroupPolicy(_Model):
    """What members of one group may see and call, and how much."""

    tools: AccessRules = Field(default_factory=AccessRules)
    resources: AccessRules = Field(default_factory=AccessRules)
    prompts: AccessRules = Field(default_factory=AccessRules)
    budgets: list[BudgetRule] = Field(default_factory=list)
    rate_limits: list[RateLimitRule] = Field(default_factory=list)
    catalog: CatalogConfig | None = Field(
        default=None, description="This group's catalog budget and meta-tools, over the route's (docs/catalog.md).")

    def rules_for(self, kind: Kind) -> AccessRules:
        """The access rules for tools, resources or prompts."""
        return self.tools if kind == "tool" else self.resources if kind == "resource" else self.prompts


class ConsumerPolicy(_Model):
    """Limits that belong to one consumer (by name), on top of its groups' limits."""

    budgets: list[BudgetRule] = Field(default_factory=list)
    rate_limits: list[RateLimitRule] = Field(default_factory=list)


class CostRule(_Model):
    """The price of calls to matching tools, in `cost_unit`."""

    per_call: float = Field(default=0.0, ge=0)
    per_1k_tokens: float = Field(default=0.0, ge=0, description="per 1000 input + output tokens")
    per_1k_input_tokens: float = Field(default=0.0, ge=0)
    per_1k_output_tokens: float = Field(default=0.0, ge=0)


class MetricsOptions(_Model):
    """Bounds on Prometheus label cardinality."""

    enabled: bool = True
    # False replaces the consumer label with "-" (many consumers, or consumer names are sensitive).
    per_consumer_labels: bool = True
    # Distinct values kept per label (consumer, tool, ...); later values fold into "other".
    max_label_values: int = Field(default=500, ge=1)


_STORAGE_SCHEMES = {
    "memory": "async+memory",
    "redis": "async+redis",
    "rediss": "async+rediss",
    "redis+unix": "async+redis+unix",
    "async+memory": "async+memory",
    "async+redis": "async+redis",
    "async+rediss": "async+rediss",
    "async+redis+unix": "async+redis+unix",
}


class PolicyConfig(_Model):
    """Everything policy reads from the config: ACLs, budgets, rate limits, costs, storage, metrics."""

    # The storage URI may carry a Redis password: errors name the key, never echo the value.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    default_acl: Literal["allow", "deny"] = "allow"
    # Per-upstream default for names no rule mentions, e.g. {github: deny}; wins over default_acl.
    upstream_acl: dict[str, Literal["allow", "deny"]] = Field(default_factory=dict)
    groups: dict[str, GroupPolicy] = Field(default_factory=dict)
    consumers: dict[str, ConsumerPolicy] = Field(default_factory=dict)
    # Budgets and rate limits every consumer gets, each its own (per: consumer).
    budgets: list[BudgetRule] = Field(default_factory=list)
    rate_limits: list[RateLimitRule] = Field(default_factory=list)
    # Tool glob -> price; an exact name wins, otherwise the first matching glob in file order.
    costs: dict[str, CostRule] = Field(default_factory=dict)
    cost_unit: str = Field(default="USD", min_length=1)
    token_counter: str = "estimate"
    storage: str = "memory://"
    # Seconds to wait for the storage before treating it as unreachable.
    storage_timeout: float = Field(default=1.0, gt=0)
    # When the storage is unreachable: false refuses calls (fail closed), true lets them through.
    fail_open: bool = False
    metrics: MetricsOptions = Field(default_factory=MetricsOptions)

    @field_validator("storage")
    @classmethod
    def _storage(cls, value: str) -> str:
        scheme = value.split("://", 1)[0] if "://" in value else ""
        if scheme.lower() not in _STORAGE_SCHEMES:
            raise ValueError(
                f"storage {_hide_password(value)!r} is not supported: use 'memory://' or 'redis://host:port' "
                "(also rediss:// and redis+unix://)"
            )
        return value

    @field_validator("token_counter")
    @classmethod
    def _counter(cls, value: str) -> str:
        if value not in TOKEN_COUNTERS:
            raise ValueError(f"token_counter {value!r} is unknown; known: {', '.join(sorted(TOKEN_COUNTERS))}")
        return value

    @field_validator("costs")
    @classmethod
    def _cost_globs(cls, value: dict[str, CostRule]) -> dict[str, CostRule]:
        _check_globs(list(value))
        return value

    @model_validator(mode="after")
    def _scopes(self) -> PolicyConfig:
        for section, rules in (("budgets", self.budgets), ("rate_limits", self.rate_limits)):
            for i, rule in enumerate(rules):
                if rule.per == "group":
                    raise ValueError(
                        f"{section}[{i}]: a top-level rule applies to every consumer on its own; "
                        f"use per: consumer, or move it under groups.<name>.{section}"
                    )
        for name, consumer in self.consumers.items():
            for section in ("budgets", "rate_limits"):
                for i, rule in enumerate(getattr(consumer, section)):
                    if rule.per == "group":
                        raise ValueError(
                            f"consumers.{name}.{section}[{i}]: a consumer's own rule cannot be per: group; "
                            f"put group budgets under groups.<name>.{section}"
                        )
        return self

    @property
    def limits_storage_uri(self) -> str:
        """The `limits` storage URI: memory:// -> async+memory://, redis://h:p -> async+redis://h:p."""
        scheme, rest = self.storage.split("://", 1)
        return f"{_STORAGE_SCHEMES[scheme.lower()]}://{rest}"

    @property
    def storage_display(self) -> str:
        """The storage URI with any password hidden, for logs and errors."""
        return _hide_password(self.storage)


def _hide_password(uri: str) -> str:
    # Redis URIs may carry a password: redis://:secret@host:6379.
    return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", uri)
