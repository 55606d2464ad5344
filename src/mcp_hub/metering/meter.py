"""Admission and settlement of calls: budgets and rate limits, tokens, cost, metrics and the audit log.

`admit` is the one check before a call reaches its upstream. `settle` passes the finished call's
record through a list of steps (tokens, budgets, cost, metrics, audit): a new meter is one more
step, not an `if` in every call path.

Admission holds tokens on the call's budgets (budgets.py: its input tokens, counted here from the
arguments, plus an output estimate); the meter keeps the call's `Hold` until `settle`, whose budget
step charges what the call used in its place (a call that answered) or releases it (any other
outcome). Holds are kept by call record, shared with the meter of a reloaded config, so a call
admitted before a reload is settled after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.shared.exceptions import MCPError

from mcp_hub import tracing
from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.metering.budgets import Budgets, Hold, LimitExceeded
from mcp_hub.metering.observability import Metrics
from mcp_hub.metering.observability import audit as write_audit
from mcp_hub.metering.record import LIMIT_EXCEEDED, METRIC_OUTCOME, CallOutcome, CallRecord
from mcp_hub.policy.tokens import get_counter, usage_from_meta

logger = logging.getLogger(__name__)

SettleStep = Callable[["Meter", CallRecord], Awaitable[None] | None]


class Meter:
    """Budgets, token counting, cost, metrics and audit for one policy config."""

    def __init__(
        self, policy: PolicyConfig, *, metrics: Metrics | None = None, budgets: Budgets | None = None,
        holds: dict[int, tuple[CallRecord, Hold]] | None = None,
    ) -> None:
        self.policy = policy
        self.metrics = metrics or Metrics.from_options(policy.metrics, policy.cost_unit)
        self.budgets = budgets or Budgets(policy, on_storage_error=self._storage_error,
                                          on_remaining=self.metrics.set_budget_remaining)
        self.counter = get_counter(policy.token_counter)
        self.has_budgets = bool(
            policy.budgets or policy.rate_limits
            or any(g.budgets or g.rate_limits for g in policy.groups.values())
            or any(c.budgets or c.rate_limits for c in policy.consumers.values())
        )
        self.steps: list[SettleStep] = [_count_tokens, _charge_budgets, _price, _observe, _audit]
        # Admitted calls' holds until they settle, by id(record) (a record is settled once; it is kept
        # here too, so its id is not reused meanwhile).
        self.holds: dict[int, tuple[CallRecord, Hold]] = holds if holds is not None else {}

    def _storage_error(self, op: str) -> None:
        self.metrics.storage_errors.labels(op).inc()

    def reconfigured(self, policy: PolicyConfig) -> Meter:
        """The meter for new rules: the same metrics registry, the same counters when the storage is the same."""
        budgets = None
        if policy.storage == self.policy.storage:
            budgets = Budgets(policy, storage=self.budgets.storage, on_storage_error=self._storage_error,
                              on_remaining=self.metrics.set_budget_remaining, estimate=self.budgets.estimate)
        return Meter(policy, metrics=self.metrics, budgets=budgets, holds=self.holds)

    async def admit(self, record: CallRecord) -> None:
        """Admit a call against every budget and rate limit that applies; a refusal is settled and raised."""
        if not self.has_budgets:
            return
        tokens_in = self.counter.count(record.arguments or {})
        try:
            hold = await self.budgets.admit(record.consumer, record.tool, record.upstream, tokens_in=tokens_in)
        except LimitExceeded as exc:
            self.metrics.limit_rejected(record.consumer, exc.kind, str(exc.data.get("limit", "")))
            await self.settle(record, CallOutcome.LIMITED, error=exc.message)
            raise MCPError(code=LIMIT_EXCEEDED, message=exc.message, data=exc.data) from None
        record.tokens_in = tokens_in
        if hold is not None:
            self.holds[id(record)] = (record, hold)

    async def settle(
        self, record: CallRecord, outcome: CallOutcome, *, result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Run the settle steps over a finished call, once."""
        if record.finished:
            return
        record.finished = True
        record.outcome, record.result, record.error = outcome, result, error
        with tracing.current().settling(record):  # the request span's settle child; then its call attributes
            for step in self.steps:
                done = step(self, record)
                if done is not None:
                    await done

    def denied(self, consumer: Consumer, kind: str) -> None:
        self.metrics.acl_denied(consumer, kind)

    # -- requests other than tools/call ----------------------------------------------------------

    def audit_denied(self, consumer: Consumer, method: str, target: str, *, exists: bool) -> None:
        if exists:
            self.metrics.acl_denied(consumer, method.split("/")[0].rstrip("s"))
        write_audit({
            "method": method, "consumer": consumer.name, "groups": list(consumer.groups), "target": target,
            "decision": "deny", "outcome": "denied" if exists else "not_found",
        })

    def audit_request(
        self, consumer: Consumer, method: str, target: str, upstream: str, outcome: str, latency_ms: float
    ) -> None:
        write_audit({
            "method": method, "consumer": consumer.name, "groups": list(consumer.groups), "target": target,
            "upstream": upstream, "decision": "allow", "outcome": outcome, "latency_ms": round(latency_ms, 3),
        })


# -- settle steps --------------------------------------------------------------------------------


def _count_tokens(meter: Meter, record: CallRecord) -> None:
    """Tokens in and out: the upstream's own usage report when it gives one, else the counter's estimate."""
    result = record.result
    if result is None:
        return
    reported = usage_from_meta(result.get("_meta"))
    if reported is not None:
        record.tokens_in, record.tokens_out = reported
        return
    if not record.tokens_in:
        record.tokens_in = meter.counter.count(record.arguments or {})
    structured = result.get("structuredContent")
    record.tokens_out = meter.counter.count(structured if structured is not None else result.get("content") or [])


async def _charge_budgets(meter: Meter, record: CallRecord) -> None:
    """A call that answered is charged (its hold, if it has one, becomes its tokens); any other releases its hold."""
    held = meter.holds.pop(id(record), None)
    hold = held[1] if held is not None and held[0] is record else None
    if meter.has_budgets and record.result is not None and record.outcome in (CallOutcome.OK, CallOutcome.ERROR_RESULT):
        await meter.budgets.charge(record.consumer, record.tool, record.upstream, record.tokens_in, record.tokens_out,
                                   hold=hold)
    elif hold is not None:
        await meter.budgets.release(hold)


def _price(meter: Meter, record: CallRecord) -> None:
    if record.upstream is not None:
        record.cost = meter.budgets.cost_of(record.tool, record.tokens_in, record.tokens_out)


def _observe(meter: Meter, record: CallRecord) -> None:
    if record.upstream is not None:
        assert record.outcome is not None
        meter.metrics.observe_call(
            record.consumer, record.upstream, record.tool, METRIC_OUTCOME.get(record.outcome, "error"),
            time.perf_counter() - record.started, record.tokens_in, record.tokens_out, record.cost,
        )


def _audit(meter: Meter, record: CallRecord) -> None:
    assert record.outcome is not None
    write_audit({
        "method": "tools/call",
        "consumer": record.consumer.name,
        "groups": list(record.consumer.groups),
        "tool": record.tool,
        "upstream": record.upstream,
        "decision": "allow" if record.allowed else "deny",
        "rule": record.rule,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "cost": round(record.cost, 6),
        "latency_ms": round((time.perf_counter() - record.started) * 1000, 3),
        "outcome": record.outcome.value,
        **({"error": record.error} if record.error else {}),
    })
