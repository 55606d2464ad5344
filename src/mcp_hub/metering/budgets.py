"""Token budgets, request rate limits and cost, counted in a `limits` storage (memory or Redis).

The gateway calls, per tools/call::

    await budgets.admit(consumer, tool, upstream)      # before: raises LimitExceeded
    ...call the upstream...
    await budgets.charge(consumer, tool, upstream, tokens_in, tokens_out)
    cost = budgets.cost_of(tool, tokens_in, tokens_out)

Which rules apply to a call: every budget and rate limit of every group the consumer is in
(a call counts against each of its groups), the consumer's own (`consumers.<name>`), and the
top-level ones (each consumer its own), filtered by each rule's `tools` and `upstreams` globs.

Token budgets are checked at admit (is any applicable budget already spent?) and charged after
the call with the real count, so one call may overshoot a budget; the overshoot is recorded in
full and the next call is refused. Several processes sharing one Redis therefore admit at most
the limit plus one in-flight call each. Request rate limits are hit (counted) at admit.

`limits` refuses a hit whose cost is above the item's amount (and moving/sliding windows refuse
any hit that would cross it), which would drop the overshoot. Token counters therefore use an
item whose amount is a large capacity (`_CAPACITY`), so every charge is recorded in full, and
the budget's own limit is compared with the usage read back from the storage.

`on_remaining(snapshots)` (optional) hears what is left of each token budget a call counts
against, after its admission and after its charge (e.g. `Metrics.set_budget_remaining`).

Counters are keyed by the rule's path (`groups.developer.budgets[0]`), its strategy and window,
and the subject (group or consumer name), so replicas with the same config share them; changing
a rule's limit keeps its usage, reordering rules starts counters afresh.

Strategies: `fixed-window` (default for budgets; one counter, exact reset time),
`sliding-window-counter` (two counters, smoother), `moving-window` (default for rate limits;
exact, but stores one entry per unit, so keep it for request counts and small budgets).
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import BudgetRule, CostRule, PolicyConfig, RateLimitRule, Scope

__all__ = ["Budgets", "BudgetSnapshot", "LimitExceeded", "StorageUnavailable"]

# Token counters count against this capacity so limits never refuses (and drops) a charge.
_CAPACITY = 10**12
_NAMESPACE = "mcp-hub"
_log = structlog.get_logger("mcp_hub.policy")


class LimitExceeded(Exception):
    """A call refused by a token budget or a rate limit.

    `data` is machine-readable (the gateway puts it in the JSON-RPC error's `data`):
    `{limit, scope, subject, remaining, reset_after_s, kind}` with kind tokens | requests | storage.
    `str(exc)` says the same in words: which limit, for whom, and when it resets.
    """

    def __init__(self, message: str, data: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    @property
    def kind(self) -> str:
        """`tokens` (budget), `requests` (rate limit) or `storage` (storage unreachable)."""
        return str(self.data.get("kind", ""))


class StorageUnavailable(LimitExceeded):
    """The budget storage could not be reached and `fail_open` is false: the call is refused."""


@dataclass(frozen=True, slots=True)
class BudgetSnapshot:
    """How much of one token budget is left for one subject, for metrics and the admin API."""

    rule: str
    description: str
    scope: Scope
    subject: str
    limit: int
    used: int
    remaining: int
    reset_after_s: float


@dataclass(frozen=True, slots=True)
class _Counter:
    """One configured rule bound to its limits strategy and storage item."""

    rule_id: str  # e.g. groups.developer.budgets[0]
    rule: BudgetRule | RateLimitRule
    scope: Scope
    group: str | None
    limiter: RateLimiter
    item: RateLimitItem
    unit: Literal["tokens", "requests"]

    @property
    def limit(self) -> int:
        return self.rule.tokens if isinstance(self.rule, BudgetRule) else self.rule.requests

    @property
    def description(self) -> str:
        return f"{self.rule_id}: {self.rule.describe()}"

    def subject(self, consumer: Consumer) -> str:
        return self.group if self.scope == "group" and self.group is not None else consumer.name

    def key(self, subject: str) -> tuple[str, ...]:
        # The strategy is part of the key: strategies keep different data types under one key.
        return (self.unit, self.rule_id, self.rule.strategy, subject)

    def amount(self, tokens_in: int, tokens_out: int) -> int:
        count = self.rule.count if isinstance(self.rule, BudgetRule) else "total"
        return tokens_in if count == "input" else tokens_out if count == "output" else tokens_in + tokens_out


_Bound = tuple[tuple[_Counter, str], ...]


class _Item(RateLimitItemPerSecond):
    """A per-second item that remembers its storage keys (limits rebuilds them on every hit)."""

    __slots__ = ("_keys",)

    def __init__(self, amount: int, seconds: int) -> None:
        super().__init__(amount, seconds, namespace=_NAMESPACE)
        self._keys: dict[tuple[Any, ...], str] = {}

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        key = self._keys.get(identifiers)
        if key is None:
            key = super().key_for(*identifiers)
            if len(self._keys) > 10_000:  # one entry per subject; bound it all the same
                self._keys.clear()
            self._keys[identifiers] = key
        return key


class Budgets:
    """Token budgets and rate limits from a `PolicyConfig`, counted in memory or in Redis."""

    def __init__(
        self,
        policy: PolicyConfig,
        *,
        storage: Storage | None = None,
        on_storage_error: Callable[[str], None] | None = None,
        on_remaining: Callable[[list[BudgetSnapshot]], None] | None = None,
    ) -> None:
        """Build counters for every rule. `storage` overrides the config's (tests, a shared one).

        `on_storage_error(operation)` is called whenever the storage fails (e.g. a metric).
        `on_remaining(snapshots)` gets the token budgets of a call after its admit and its charge.
        """
        self.policy = policy
        if storage is None:
            options: dict[str, Any] = {}
            if not policy.limits_storage_uri.startswith("async+memory"):
                # Bound connect and reads so an unreachable Redis fails fast instead of hanging.
                options = {"connect_timeout": policy.storage_timeout, "stream_timeout": policy.storage_timeout}
            storage = storage_from_string(policy.limits_storage_uri, wrap_exceptions=True, **options)
        self.storage: Storage = storage
        self._on_storage_error = on_storage_error
        self._on_remaining = on_remaining
        self._in_memory = isinstance(storage, MemoryStorage)
        self._limiters: dict[str, RateLimiter] = {}
        self._groups: dict[str, list[_Counter]] = {}
        self._consumers: dict[str, list[_Counter]] = {}
        self._everyone: list[_Counter] = []
        self._bound: dict[tuple[str, tuple[str, ...], str, str | None], tuple[_Bound, _Bound]] = {}
        self._cost_rules: dict[str, CostRule | None] = {}
        self._last_error_log = 0.0
        self._errors_since_log = 0
        for name, group in policy.groups.items():
            self._groups[name] = self._counters(f"groups.{name}", group.budgets, group.rate_limits, "group", name)
        for name, own in policy.consumers.items():
            self._consumers[name] = self._counters(f"consumers.{name}", own.budgets, own.rate_limits, "consumer", None)
        self._everyone = self._counters("", policy.budgets, policy.rate_limits, "consumer", None)

    # -- building ---------------------------------------------------------------------------

    def _limiter(self, strategy: str) -> RateLimiter:
        if strategy not in self._limiters:
            self._limiters[strategy] = STRATEGIES[strategy](self.storage)
        return self._limiters[strategy]

    def _counters(
        self,
        prefix: str,
        budgets: list[BudgetRule],
        rate_limits: list[RateLimitRule],
        default_scope: Scope,
        group: str | None,
    ) -> list[_Counter]:
        dot = f"{prefix}." if prefix else ""
        counters: list[_Counter] = []
        for i, budget in enumerate(budgets):
            counters.append(_Counter(
                f"{dot}budgets[{i}]", budget, budget.per or default_scope, group,
                self._limiter(budget.strategy),
                _Item(_CAPACITY, budget.window), "tokens",
            ))
        for i, rate in enumerate(rate_limits):
            counters.append(_Counter(
                f"{dot}rate_limits[{i}]", rate, rate.per or "consumer", group, self._limiter(rate.strategy),
                _Item(rate.requests, rate.window), "requests",
            ))
        return counters

    def _all_counters(self, consumer: Consumer) -> list[_Counter]:
        counters: list[_Counter] = []
        for group in consumer.group_key:
            counters.extend(self._groups.get(group, ()))
        counters.extend(self._consumers.get(consumer.name, ()))
        counters.extend(self._everyone)
        return counters

    def _applicable(self, consumer: Consumer, tool: str, upstream: str | None) -> tuple[_Bound, _Bound]:
        """(token budgets, rate limits) that a call of `tool` by `consumer` counts against; cached."""
        key = (consumer.name, consumer.group_key, tool, upstream)
        found = self._bound.get(key)
        if found is None:
            tokens: list[tuple[_Counter, str]] = []
            requests: list[tuple[_Counter, str]] = []
            for counter in self._all_counters(consumer):
                if counter.rule.applies_to(tool, upstream):
                    target = tokens if counter.unit == "tokens" else requests
                    target.append((counter, counter.subject(consumer)))
            found = (tuple(tokens), tuple(requests))
            if len(self._bound) > 10_000:  # bound memory with many consumers x tools
                self._bound.clear()
            self._bound[key] = found
        return found

    # -- the call path ------------------------------------------------------------------------

    def _deadline(self) -> contextlib.AbstractContextManager[Any]:
        # Memory storage cannot hang; skip the cancel scope on the hot path.
        return contextlib.nullcontext() if self._in_memory else anyio.fail_after(self.policy.storage_timeout)

    async def admit(self, consumer: Consumer, tool: str, upstream: str | None = None) -> None:
        """Refuse the call (raise `LimitExceeded`) if a budget is spent or a rate limit is hit.

        Rate limits are counted here. When the storage is unreachable this raises
        `StorageUnavailable` (a `LimitExceeded`), or lets the call through when `fail_open`.
        """
        tokens, requests = self._applicable(consumer, tool, upstream)
        if not tokens and not requests:
            return
        try:
            with self._deadline():
                left: list[BudgetSnapshot] = []
                for counter, subject in tokens:
                    used, reset_at = await self._usage(counter, subject)
                    if self._on_remaining is not None:
                        left.append(_snapshot(counter, subject, used, reset_at))
                    if used >= counter.limit:
                        self._report(left)
                        raise self._exceeded(counter, subject, used, reset_at)
                self._report(left)
                for counter, subject in requests:
                    if not await counter.limiter.hit(counter.item, *counter.key(subject)):
                        stats = await counter.limiter.get_window_stats(counter.item, *counter.key(subject))
                        raise self._exceeded(counter, subject, counter.limit - stats.remaining, stats.reset_time)
        except LimitExceeded:
            raise
        except (StorageError, OSError, TimeoutError) as exc:
            self._storage_failed("admit", exc)
            if not self.policy.fail_open:
                raise self._unavailable(consumer) from exc

    async def charge(
        self, consumer: Consumer, tool: str, upstream: str | None, input_tokens: int, output_tokens: int
    ) -> None:
        """Record a finished call's tokens against every applicable budget; never raises.

        Each budget counts input, output or total tokens as configured; a charge larger than
        what is left is recorded in full. Storage failures are logged (the call already ran).
        """
        tokens, _ = self._applicable(consumer, tool, upstream)
        if not tokens:
            return
        try:
            with self._deadline():
                left: list[BudgetSnapshot] = []
                for counter, subject in tokens:
                    amount = min(counter.amount(max(input_tokens, 0), max(output_tokens, 0)), _CAPACITY)
                    if amount > 0:
                        await counter.limiter.hit(counter.item, *counter.key(subject), cost=amount)
                        if self._on_remaining is not None:
                            # Read back: other calls (and replicas sharing Redis) charge the same counter.
                            used, reset_at = await self._usage(counter, subject)
                            left.append(_snapshot(counter, subject, used, reset_at))
                self._report(left)
        except (StorageError, OSError, TimeoutError) as exc:
            self._storage_failed("charge", exc)

    def cost_of(self, tool: str, input_tokens: int, output_tokens: int) -> float:
        """The price of one call of `tool` in `cost_unit` (0.0 when no cost rule matches).

        An exact name in `costs` wins; otherwise the first matching glob in file order.
        """
        if tool not in self._cost_rules:
            self._cost_rules[tool] = self._find_cost_rule(tool)
        rule = self._cost_rules[tool]
        if rule is None:
            return 0.0
        return (
            rule.per_call
            + (input_tokens + output_tokens) * rule.per_1k_tokens / 1000
            + input_tokens * rule.per_1k_input_tokens / 1000
            + output_tokens * rule.per_1k_output_tokens / 1000
        )

    def _find_cost_rule(self, tool: str) -> CostRule | None:
        costs = self.policy.costs
        if tool in costs:
            return costs[tool]
        return next((rule for pattern, rule in costs.items() if fnmatch.fnmatchcase(tool, pattern)), None)

    async def remaining(self, consumer: Consumer) -> list[BudgetSnapshot]:
        """What is left of every token budget that applies to `consumer` (any tool); [] if storage fails."""
        snapshots: list[BudgetSnapshot] = []
        try:
            with self._deadline():
                for counter in self._all_counters(consumer):
                    if counter.unit != "tokens":
                        continue
                    subject = counter.subject(consumer)
                    used, reset_at = await self._usage(counter, subject)
                    snapshots.append(_snapshot(counter, subject, used, reset_at))
        except (StorageError, OSError, TimeoutError) as exc:
            self._storage_failed("remaining", exc)
            return []
        return snapshots

    async def check(self) -> bool:
        """Whether the storage answers (for /healthz)."""
        try:
            with anyio.fail_after(self.policy.storage_timeout):
                return bool(await self.storage.check())
        except (StorageError, OSError, TimeoutError):
            return False

    async def reset(self) -> None:
        """Forget all counters (tests, admin)."""
        await self.storage.reset()

    # -- helpers ------------------------------------------------------------------------------

    async def _usage(self, counter: _Counter, subject: str) -> tuple[int, float]:
        """(tokens used in the current window, when the window frees up as a timestamp)."""
        stats = await counter.limiter.get_window_stats(counter.item, *counter.key(subject))
        return _CAPACITY - stats.remaining, stats.reset_time

    def _report(self, snapshots: list[BudgetSnapshot]) -> None:
        """Hand snapshots to `on_remaining`; a failing callback must not refuse or break a call."""
        if not snapshots or self._on_remaining is None:
            return
        try:
            self._on_remaining(snapshots)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort, the call is not
            _log.warning("budget remaining callback failed", error=repr(exc))

    def _exceeded(self, counter: _Counter, subject: str, used: int, reset_at: float) -> LimitExceeded:
        after = _seconds_until(reset_at)
        remaining = max(counter.limit - used, 0)
        if counter.unit == "tokens":
            message = (
                f"Token budget {counter.rule_id} ({counter.rule.describe()}) is used up for {counter.scope} "
                f"{subject!r}: {used} of {counter.limit} tokens used; it resets in {_words(after)}."
            )
        else:
            message = (
                f"Rate limit {counter.rule_id} ({counter.rule.describe()}) reached for {counter.scope} "
                f"{subject!r}; retry in {_words(after)}."
            )
        return LimitExceeded(message, {
            "limit": counter.description, "scope": counter.scope, "subject": subject,
            "remaining": remaining, "reset_after_s": after, "kind": counter.unit,
        })

    def _unavailable(self, consumer: Consumer) -> StorageUnavailable:
        where = self.policy.storage_display
        retry = float(self.policy.storage_timeout)
        return StorageUnavailable(
            f"The budget storage ({where}) is unreachable, so budgets and rate limits for consumer "
            f"{consumer.name!r} cannot be checked; the call is refused (fail_open is false). "
            f"Retry in {_words(retry)}.",
            {"limit": f"storage: {where}", "scope": "consumer", "subject": consumer.name,
             "remaining": 0, "reset_after_s": retry, "kind": "storage"},
        )

    def _storage_failed(self, operation: str, exc: BaseException) -> None:
        if self._on_storage_error is not None:
            self._on_storage_error(operation)
        self._errors_since_log += 1
        now = time.monotonic()
        if now - self._last_error_log >= 10.0:  # one line per 10 s: a down Redis must not flood the log
            _log.warning(
                "policy storage unreachable", storage=self.policy.storage_display, operation=operation,
                error=str(getattr(exc, "storage_error", exc)) or type(exc).__name__,
                failures=self._errors_since_log, fail_open=self.policy.fail_open,
            )
            self._last_error_log = now
            self._errors_since_log = 0


def _snapshot(counter: _Counter, subject: str, used: int, reset_at: float) -> BudgetSnapshot:
    return BudgetSnapshot(
        counter.rule_id, counter.description, counter.scope, subject, counter.limit, used,
        max(counter.limit - used, 0), _seconds_until(reset_at),
    )


def _seconds_until(timestamp: float) -> float:
    return round(max(timestamp - time.time(), 0.0), 3)


def _words(seconds: float) -> str:
    """'0.4 seconds', '42 seconds', '3 minutes', '2 hours' — for error messages."""
    if seconds < 10:
        return f"{seconds:.1f} seconds"
    if seconds < 120:
        return f"{round(seconds)} seconds"
    if seconds < 7200:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"
