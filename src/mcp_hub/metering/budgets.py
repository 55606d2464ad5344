"""Token budgets, request rate limits and cost, with holds that keep budgets under concurrency.

The meter calls, per tools/call::

    hold = await budgets.admit(consumer, tool, upstream, tokens_in=n)   # before: raises LimitExceeded
    ...call the upstream...
    await budgets.charge(consumer, tool, upstream, tokens_in, tokens_out, hold=hold)   # it answered
    await budgets.release(hold)                                   # or: it failed, was cancelled, ...
    cost = budgets.cost_of(tool, tokens_in, tokens_out)

Which rules apply to a call: every budget and rate limit of every group the consumer is in
(a call counts against each of its groups), the consumer's own (`consumers.<name>`), and the
top-level ones (each consumer its own), filtered by each rule's `tools` and `upstreams` globs.

**Holds.** Admission puts a hold on every token budget the call counts against, in the same
atomic storage operation that checks all of the call's budgets and rate limits and hits the
rate limits (ledger.py): all or nothing, a refused call holds and counts nothing. Settlement
replaces the hold with what the call used, in one more operation; a call that does not complete
(failed, cancelled, refused later, answered `input_required`) releases its hold.

What a call holds on a budget is what it will count there (the rule's `count`): its input tokens,
known at admission (the token counter over the arguments), plus its output estimate, the output
tokens of the tool's recent calls in this process (`OutputEstimate`: the largest recent output,
decaying towards smaller ones; 1,024 before the tool has answered once). A hold is at most half
of the budget's limit, so one call (even one larger than the whole budget) never locks a budget's
other users out while it runs.

A call is admitted on a budget when `spent + held + its hold <= limit`, where `spent` is what the
window has charged and `held` what calls in flight hold (across every replica sharing the
storage). A call alone on a budget (nothing held) is admitted while `spent < limit`, holding what
is left: one caller at a time sees the budget as before, and can cross it by its last call.
After every admission `spent + held <= limit`.

**Guarantee.** For every token budget and every window (as its strategy counts windows): the
tokens charged in the window never exceed the limit by more than the sum, over the calls charged
in that window, of what each used beyond its hold (`max(0, charged - held)`). A call charged
without a hold counts in full: a call let through with the storage unreachable (`fail_open`), the
round of a 2026-07-28 call that completes after the upstream asked for input (its first round
released its hold), a call whose hold lapsed (`hold_ttl`, default 10 minutes or the window if
longer: holds of a replica that died mid-call free themselves), and a call admitted before a
reload that changed its rules. So calls that use no more than they hold never take a budget
past its limit, however many run at once on however many replicas.

Rate limits are counted when the call is admitted (never released): exactly the limit per window.

The storage is the config's `storage` (memory or Redis), opened with `limits`; every admission
and every settlement is one operation over all of the call's rules (one `EVALSHA` in Redis).

`on_remaining(snapshots)` (optional) hears what is left of each token budget a call counts
against (limit minus spent; holds are not subtracted), after its admission and its settlement
(e.g. `Metrics.set_budget_remaining`), from the numbers the operation returned.

Counters are keyed by the rule's path (`groups.developer.budgets[0]`), its strategy and window,
and the subject (group or consumer name), so replicas with the same config share them; changing
a rule's limit keeps its usage, changing its window or strategy or reordering rules starts
counters afresh.

Strategies: `fixed-window` (default for budgets; one counter, exact reset time),
`sliding-window-counter` (two counters, smoother), `moving-window` (default for rate limits;
exact, one entry per call in the window).
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import os
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import structlog
from limits.aio.storage import MemoryStorage, Storage
from limits.errors import StorageError
from limits.storage import storage_from_string

from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import BudgetRule, CostRule, PolicyConfig, RateLimitRule, Scope
from mcp_hub.metering.ledger import Admission, Ledger, Line, State, ledger_for, make_line

__all__ = ["Budgets", "BudgetSnapshot", "Hold", "LimitExceeded", "OutputEstimate", "StorageUnavailable"]

# A single charge is cut to this (a bogus usage report must not poison a counter).
_CAPACITY = 10**12
# Output tokens held for a tool that has not answered yet in this process (about a page of text).
DEFAULT_OUTPUT_TOKENS = 1024
# Seconds a hold lives at least (twice the default upstream call_timeout); a rule's window if longer.
HOLD_TTL = 600.0
_log = structlog.get_logger("mcp_hub.policy")
_STORAGE_ERRORS = (StorageError, OSError, TimeoutError)


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
class Hold:
    """What an admitted call holds: its id in the storage, the token budgets it holds tokens on and how many."""

    owner: Budgets
    call_id: str
    lines: tuple[Line, ...]
    amounts: tuple[int, ...]  # per line


class OutputEstimate:
    """Per tool, the output tokens to hold for a call still running.

    The largest recent output, decaying: a larger output raises the estimate at once, a smaller one
    lowers it by an eighth of the gap. Holding what a tool's large answers take keeps the budget
    (a hold too small lets calls in flight cross the limit; one too large only refuses calls a
    little early near the limit, and they are refused with the time the budget frees up). Each
    process learns on its own: no storage round trip.
    """

    def __init__(self, default: int = DEFAULT_OUTPUT_TOKENS) -> None:
        self.default = default
        self._by_tool: dict[str, int] = {}

    def get(self, tool: str) -> int:
        return self._by_tool.get(tool, self.default)

    def observe(self, tool: str, tokens_out: int) -> None:
        old = self._by_tool.get(tool)
        if old is None or tokens_out >= old:
            new = tokens_out
        else:
            new = old - (old - tokens_out) // 8
        if old is None and len(self._by_tool) >= 10_000:  # one entry per tool; bound it all the same
            self._by_tool.clear()
        self._by_tool[tool] = new


@dataclass(frozen=True, slots=True)
class _Counter:
    """One configured rule (what the call path reads of it, worked out once)."""

    rule_id: str  # e.g. groups.developer.budgets[0]
    rule: BudgetRule | RateLimitRule
    scope: Scope
    group: str | None
    unit: Literal["tokens", "requests"]
    limit: int = field(init=False, compare=False)
    # The largest hold one call may have: half the limit.
    cap: int = field(init=False, compare=False)
    description: str = field(init=False, compare=False)
    count: Literal["input", "output", "total"] = field(init=False, compare=False)

    def __post_init__(self) -> None:
        rule = self.rule
        limit = rule.tokens if isinstance(rule, BudgetRule) else rule.requests
        object.__setattr__(self, "limit", limit)
        object.__setattr__(self, "cap", (limit + 1) // 2)
        object.__setattr__(self, "description", f"{self.rule_id}: {rule.describe()}")
        object.__setattr__(self, "count", rule.count if isinstance(rule, BudgetRule) else "total")

    def subject(self, consumer: Consumer) -> str:
        return self.group if self.scope == "group" and self.group is not None else consumer.name

    def amount(self, tokens_in: int, tokens_out: int) -> int:
        count = self.count
        return tokens_in if count == "input" else tokens_out if count == "output" else tokens_in + tokens_out


_Bound = tuple[_Counter, str, Line]


@dataclass(frozen=True, slots=True)
class _Plan:
    """The rules one (consumer, tool, upstream) counts against, token budgets first."""

    tokens: tuple[_Bound, ...]
    requests: tuple[_Bound, ...]
    lines: tuple[Line, ...]  # token lines, then request lines
    token_lines: tuple[Line, ...]


_LEDGERS: weakref.WeakKeyDictionary[Storage, Any] = weakref.WeakKeyDictionary()


class Budgets:
    """Token budgets and rate limits from a `PolicyConfig`, counted in memory or in Redis."""

    def __init__(
        self,
        policy: PolicyConfig,
        *,
        storage: Storage | None = None,
        on_storage_error: Callable[[str], None] | None = None,
        on_remaining: Callable[[list[BudgetSnapshot]], None] | None = None,
        estimate: OutputEstimate | None = None,
        hold_ttl: float = HOLD_TTL,
    ) -> None:
        """Build counters for every rule. `storage` overrides the config's (tests, a shared one).

        `on_storage_error(operation)` is called whenever the storage fails (e.g. a metric).
        `on_remaining(snapshots)` gets the token budgets of a call after its admit and its charge.
        `estimate` is the output estimate to share (a reloaded config keeps what was learnt).
        """
        self.policy = policy
        if storage is None:
            options: dict[str, Any] = {}
            if not policy.limits_storage_uri.startswith("async+memory"):
                # Bound connect and reads so an unreachable Redis fails fast instead of hanging.
                options = {"connect_timeout": policy.storage_timeout, "stream_timeout": policy.storage_timeout}
            storage = storage_from_string(policy.limits_storage_uri, wrap_exceptions=True, **options)
        self.storage: Storage = storage
        self.estimate = estimate if estimate is not None else OutputEstimate()
        self.hold_ttl = hold_ttl
        self._on_storage_error = on_storage_error
        self._on_remaining = on_remaining
        self._in_memory = isinstance(storage, MemoryStorage)
        self._ledger: Ledger | None = None
        self._groups: dict[str, list[_Counter]] = {}
        self._consumers: dict[str, list[_Counter]] = {}
        self._everyone: list[_Counter] = []
        self._plans: dict[tuple[str, tuple[str, ...], str, str | None], _Plan] = {}
        self._lines: dict[tuple[str, str], Line] = {}
        self._cost_rules: dict[str, CostRule | None] = {}
        self._ids = itertools.count(1)
        self._id_prefix = f"c{os.urandom(5).hex()}."  # unique across replicas sharing a Redis
        self._last_error_log = 0.0
        self._errors_since_log = 0
        for name, group in policy.groups.items():
            self._groups[name] = self._counters(f"groups.{name}", group.budgets, group.rate_limits, "group", name)
        for name, own in policy.consumers.items():
            self._consumers[name] = self._counters(f"consumers.{name}", own.budgets, own.rate_limits, "consumer", None)
        self._everyone = self._counters("", policy.budgets, policy.rate_limits, "consumer", None)

    @property
    def ledger(self) -> Ledger:
        """Where the counters are: one per storage, shared by every `Budgets` over it (a reload)."""
        if self._ledger is None:
            found = _LEDGERS.get(self.storage)
            if found is None:
                found = _LEDGERS[self.storage] = ledger_for(self.storage)
            self._ledger = found
        return self._ledger

    # -- building ---------------------------------------------------------------------------

    @staticmethod
    def _counters(
        prefix: str,
        budgets: list[BudgetRule],
        rate_limits: list[RateLimitRule],
        default_scope: Scope,
        group: str | None,
    ) -> list[_Counter]:
        dot = f"{prefix}." if prefix else ""
        counters: list[_Counter] = []
        for i, budget in enumerate(budgets):
            counters.append(_Counter(f"{dot}budgets[{i}]", budget, budget.per or default_scope, group, "tokens"))
        for i, rate in enumerate(rate_limits):
            counters.append(_Counter(f"{dot}rate_limits[{i}]", rate, rate.per or "consumer", group, "requests"))
        return counters

    def _all_counters(self, consumer: Consumer) -> list[_Counter]:
        counters: list[_Counter] = []
        for group in consumer.group_key:
            counters.extend(self._groups.get(group, ()))
        counters.extend(self._consumers.get(consumer.name, ()))
        counters.extend(self._everyone)
        return counters

    def _line(self, counter: _Counter, subject: str) -> Line:
        found = self._lines.get((counter.rule_id, subject))
        if found is None:
            rule = counter.rule
            name = f"{counter.unit}/{counter.rule_id}/{rule.strategy}/{rule.window}/{subject}"
            found = make_line(self.ledger.prefix, name, rule.strategy, counter.unit == "tokens", rule.window,
                              counter.limit, self.hold_ttl)
            if len(self._lines) > 10_000:  # one entry per rule and subject; bound it all the same
                self._lines.clear()
            self._lines[(counter.rule_id, subject)] = found
        return found

    def _plan(self, consumer: Consumer, tool: str, upstream: str | None) -> _Plan:
        """The token budgets and rate limits a call of `tool` by `consumer` counts against; cached."""
        key = (consumer.name, consumer.group_key, tool, upstream)
        found = self._plans.get(key)
        if found is None:
            tokens: list[_Bound] = []
            requests: list[_Bound] = []
            for counter in self._all_counters(consumer):
                if counter.rule.applies_to(tool, upstream):
                    subject = counter.subject(consumer)
                    target = tokens if counter.unit == "tokens" else requests
                    target.append((counter, subject, self._line(counter, subject)))
            token_lines = tuple(line for _, _, line in tokens)
            found = _Plan(tuple(tokens), tuple(requests), token_lines + tuple(line for _, _, line in requests),
                          token_lines)
            if len(self._plans) > 10_000:  # bound memory with many consumers x tools
                self._plans.clear()
            self._plans[key] = found
        return found

    # -- the call path ------------------------------------------------------------------------

    def _call_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids):x}"

    async def admit(
        self, consumer: Consumer, tool: str, upstream: str | None = None, *, tokens_in: int | None = None
    ) -> Hold | None:
        """Admit a call against every budget and rate limit that applies, or raise `LimitExceeded`.

        With `tokens_in` (what the meter passes), the call holds its input tokens plus its output
        estimate on every token budget (see the module docstring) and the returned `Hold` must be
        passed to `charge` or `release`; without, it holds nothing (budgets are only checked for
        room). Rate limits are counted here. When the storage is unreachable this raises
        `StorageUnavailable` (a `LimitExceeded`), or returns None when `fail_open`.
        """
        plan = self._plan(consumer, tool, upstream)
        if not plan.lines:
            return None
        if tokens_in is None:
            wanted = [0] * len(plan.lines)
        else:
            out = self.estimate.get(tool)
            wanted = [min(c.amount(max(tokens_in, 0), out), c.cap) for c, _, _ in plan.tokens]
            wanted += [0] * len(plan.requests)
        call_id = self._call_id()
        try:
            # No deadline here: memory cannot hang, and the Redis ledger times out every command itself
            # (`storage_timeout`), cheaper than a cancel scope per call.
            answer = await self.ledger.admit(call_id, plan.lines, wanted)
        except anyio.get_cancelled_exc_class():
            # The script may have run: free what it may hold rather than wait for the hold to lapse
            # (a hold cut to what was left is not found: it lapses).
            await self._release_shielded(call_id, plan.token_lines, wanted[:len(plan.token_lines)])
            raise
        except _STORAGE_ERRORS as exc:
            self._storage_failed("admit", exc)
            if not self.policy.fail_open:
                raise self._unavailable(consumer) from exc
            return None
        if self._on_remaining is not None and plan.tokens:
            self._report(_snapshots(plan.tokens, answer.states))
        if answer.refused >= 0:
            raise self._refusal(plan, answer)
        held = [(line, granted) for line, granted in zip(plan.token_lines, answer.granted, strict=False) if granted > 0]
        if not held:
            return None
        return Hold(self, call_id, tuple(line for line, _ in held), tuple(granted for _, granted in held))

    async def charge(
        self, consumer: Consumer, tool: str, upstream: str | None, input_tokens: int, output_tokens: int,
        *, hold: Hold | None = None,
    ) -> None:
        """Settle a finished call: release its hold and charge its tokens to every applicable budget,
        in one operation; never raises.

        Each budget counts input, output or total tokens as configured; a charge larger than
        what is left is recorded in full. Storage failures are logged (the call already ran).
        """
        input_tokens, output_tokens = max(input_tokens, 0), max(output_tokens, 0)
        if hold is not None and hold.owner is not self:  # admitted under the rules before a reload
            await hold.owner.release(hold)
            hold = None
        plan = self._plan(consumer, tool, upstream)
        if not plan.tokens:
            if hold is not None:
                await self.release(hold)
            return
        self.estimate.observe(tool, output_tokens)
        charges = [min(c.amount(input_tokens, output_tokens), _CAPACITY) for c, _, _ in plan.tokens]
        if hold is None and not any(charges):
            return
        lines = plan.token_lines
        held = [0] * len(lines)
        if hold is not None:
            if any(line not in lines for line in hold.lines):  # cannot happen with one owner
                lines = lines + tuple(line for line in hold.lines if line not in lines)
                charges += [0] * (len(lines) - len(charges))
            amounts = dict(zip(hold.lines, hold.amounts, strict=True))
            held = [amounts.get(line, 0) for line in lines]
        try:
            states = await self.ledger.settle(hold.call_id if hold else self._call_id(), lines, charges, held)
        except _STORAGE_ERRORS as exc:
            self._storage_failed("charge", exc)
            return
        if self._on_remaining is not None:
            self._report(_snapshots(plan.tokens, states))

    async def release(self, hold: Hold | None) -> None:
        """Release a call's hold without charging it (the call failed or did not finish); never raises."""
        if hold is None:
            return
        if hold.owner is not self:
            await hold.owner.release(hold)
            return
        try:
            await self.ledger.release(hold.call_id, hold.lines, hold.amounts)
        except _STORAGE_ERRORS as exc:
            self._storage_failed("release", exc)

    async def _release_shielded(self, call_id: str, lines: Sequence[Line], held: Sequence[int]) -> None:
        if not lines:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.policy.storage_timeout):
            with contextlib.suppress(*_STORAGE_ERRORS):
                await self.ledger.release(call_id, lines, held)

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
        bound = [(c, c.subject(consumer)) for c in self._all_counters(consumer) if c.unit == "tokens"]
        if not bound:
            return []
        try:
            states = await self.ledger.peek([self._line(c, s) for c, s in bound])
        except _STORAGE_ERRORS as exc:
            self._storage_failed("remaining", exc)
            return []
        return [_snapshot(c, s, state) for (c, s), state in zip(bound, states, strict=False)]

    async def check(self) -> bool:
        """Whether the storage answers (for /healthz)."""
        try:
            with anyio.fail_after(self.policy.storage_timeout):
                return bool(await self.storage.check())
        except _STORAGE_ERRORS:
            return False

    async def reset(self) -> None:
        """Forget all counters and holds (tests, admin)."""
        await self.ledger.reset()
        if self._in_memory:
            await self.storage.reset()

    # -- helpers ------------------------------------------------------------------------------

    def _report(self, snapshots: list[BudgetSnapshot]) -> None:
        """Hand snapshots to `on_remaining`; a failing callback must not refuse or break a call."""
        if not snapshots or self._on_remaining is None:
            return
        try:
            self._on_remaining(snapshots)
        except Exception as exc:  # noqa: BLE001 - metrics are best effort, the call is not
            _log.warning("budget remaining callback failed", error=repr(exc))

    def _refusal(self, plan: _Plan, answer: Admission) -> LimitExceeded:
        index = answer.refused
        counter, subject, _ = (plan.tokens + plan.requests)[index]
        used, held, reset_ms = answer.states[index]
        return self._exceeded(counter, subject, used, reset_ms / 1000, held=held)

    def _exceeded(self, counter: _Counter, subject: str, used: int, reset_at: float, *, held: int = 0) -> LimitExceeded:
        after = _seconds_until(reset_at)
        remaining = max(counter.limit - used - held, 0)
        if counter.unit == "tokens":
            in_flight = f" and {held} held by calls in flight" if held else ""
            message = (
                f"Token budget {counter.rule_id} ({counter.rule.describe()}) is used up for {counter.scope} "
                f"{subject!r}: {used} of {counter.limit} tokens used{in_flight}; it resets in {_words(after)}."
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


def _snapshot(counter: _Counter, subject: str, state: State, now: float | None = None) -> BudgetSnapshot:
    used, _, reset_ms = state
    after = _seconds_until(reset_ms / 1000) if now is None else round(max(reset_ms / 1000 - now, 0.0), 3)
    return BudgetSnapshot(
        counter.rule_id, counter.description, counter.scope, subject, counter.limit, used,
        max(counter.limit - used, 0), after,
    )


def _snapshots(bound: Sequence[_Bound], states: Sequence[State]) -> list[BudgetSnapshot]:
    """A snapshot per token line of a call, from the states its operation returned (one clock read)."""
    now = time.time()
    return [_snapshot(c, s, state, now) for (c, s, _), state in zip(bound, states, strict=False)]


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
