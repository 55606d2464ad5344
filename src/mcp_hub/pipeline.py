"""The per-request policy path: ACL decision, admission, charging, audit and metrics, in one place.

The gateway's handlers call these stages in order; each stage delegates to `policy/` (pure
decisions, budgets) and `observability` (audit events, metrics).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog import CatalogView, Source
from mcp_hub.observability import Metrics
from mcp_hub.observability import audit as audit_event
from mcp_hub.policy.acl import decide
from mcp_hub.policy.budget import Budgets, LimitExceeded
from mcp_hub.policy.models import PolicyConfig
from mcp_hub.policy.tokens import get_counter, usage_from_meta

if TYPE_CHECKING:
    from mcp_hub.config import GatewayConfig

logger = logging.getLogger(__name__)
T = TypeVar("T")


class CallOutcome(enum.StrEnum):
    OK = "ok"
    ERROR_RESULT = "tool_error"
    ERROR = "error"
    UNAVAILABLE = "unavailable"
    DENIED = "denied"
    UNKNOWN = "unknown_tool"
    INVALID = "invalid_arguments"
    LIMITED = "limited"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Call:
    """One tools/call on its way through the pipeline."""

    consumer: Consumer
    tool: str
    upstream: str | None
    allowed: bool
    rule: str
    started: float = field(default_factory=time.perf_counter)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    arguments: dict[str, Any] | None = None
    finished: bool = False


class Pipeline:
    """Allow-everything pipeline: the base the policy-aware one extends."""

    def __init__(self) -> None:
        self._filter_cache: dict[tuple[int, int, str, tuple[str, ...], str], list[Any]] = {}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Pipeline:
        return cls()

    def reconfigured(self, config: GatewayConfig) -> Pipeline:
        """The pipeline for a reloaded config."""
        return type(self).from_config(config)

    # -- visibility ------------------------------------------------------------------------------

    def decide(self, consumer: Consumer, kind: str, name: str, upstream: str | None) -> tuple[bool, str]:
        return True, "no policy"

    def allowed(self, view: CatalogView, kind: str, consumer: Consumer, name: str, upstream: str | None) -> bool:
        return self.decide(consumer, kind, name, upstream)[0]

    def filter(
        self, view: CatalogView, kind: str, consumer: Consumer, items: Sequence[T], key: Callable[[T], str]
    ) -> list[T]:
        """Items of a view this consumer may see; computed once per view version and group set."""
        # id(view): every route has its own view of the same version; all of one version are alive together
        cache_key = (view.version, id(view), kind, consumer.group_key, consumer.name if self.per_consumer_rules else "")
        cached = self._filter_cache.get(cache_key)
        if cached is not None:
            return cached
        sources = {"tool": view.tools, "prompt": view.prompts, "resource": view.resources}[kind]
        out = []
        for item in items:
            name = key(item)
            entry = sources.get(name)
            upstream = entry[1].upstream if entry else None
            if self.decide(consumer, kind, name, upstream)[0]:
                out.append(item)
        if len(self._filter_cache) > 4096:  # old view versions are dead weight
            self._filter_cache = {k: v for k, v in self._filter_cache.items() if k[0] == view.version}
        self._filter_cache[cache_key] = out
        return out

    per_consumer_rules = False

    # -- a call ----------------------------------------------------------------------------------

    def start_call(
        self, view: CatalogView, consumer: Consumer, name: str, entry: tuple[types.Tool, Source] | None
    ) -> Call:
        upstream = entry[1].upstream if entry else None
        allowed, rule = self.decide(consumer, "tool", name, upstream) if entry else (False, "no such tool")
        return Call(consumer=consumer, tool=name, upstream=upstream, allowed=allowed, rule=rule)

    async def admit(self, call: Call, arguments: dict[str, Any] | None) -> None:
        return None

    async def charge(self, call: Call, result: types.CallToolResult | dict[str, Any], outcome: CallOutcome) -> None:
        self.finish_call(call, outcome)

    def finish_call(self, call: Call, outcome: CallOutcome, error: str | None = None) -> None:
        if call.finished:
            return
        call.finished = True
        latency_ms = (time.perf_counter() - call.started) * 1000
        self.audit(
            {
                "method": "tools/call",
                "consumer": call.consumer.name,
                "groups": list(call.consumer.groups),
                "tool": call.tool,
                "upstream": call.upstream,
                "decision": "allow" if call.allowed else "deny",
                "rule": call.rule,
                "tokens_in": call.tokens_in,
                "tokens_out": call.tokens_out,
                "cost": round(call.cost, 6),
                "latency_ms": round(latency_ms, 3),
                "outcome": outcome.value,
                **({"error": error} if error else {}),
            }
        )

    # -- other requests --------------------------------------------------------------------------

    def audit_denied(self, consumer: Consumer, method: str, target: str, *, exists: bool) -> None:
        self.audit(
            {
                "method": method,
                "consumer": consumer.name,
                "groups": list(consumer.groups),
                "target": target,
                "decision": "deny",
                "outcome": "denied" if exists else "not_found",
            }
        )

    def audit_request(
        self, consumer: Consumer, method: str, target: str, upstream: str, outcome: str, latency_ms: float
    ) -> None:
        self.audit(
            {
                "method": method,
                "consumer": consumer.name,
                "groups": list(consumer.groups),
                "target": target,
                "upstream": upstream,
                "decision": "allow",
                "outcome": outcome,
                "latency_ms": round(latency_ms, 3),
            }
        )

    def audit(self, event: dict[str, Any]) -> None:
        logger.debug("audit %s", event)


class PolicyPipeline(Pipeline):
    """The pipeline with the config's ACLs, budgets, rate limits, costs, audit log and metrics."""

    def __init__(self, policy: PolicyConfig, *, metrics: Metrics | None = None, budgets: Budgets | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.metrics = metrics or Metrics.from_options(policy.metrics, policy.cost_unit)
        self.budgets = budgets or Budgets(policy, on_storage_error=lambda op: self.metrics.storage_errors.labels(op).inc())
        self.counter = get_counter(policy.token_counter)
        self.has_budgets = bool(
            policy.budgets or policy.rate_limits
            or any(g.budgets or g.rate_limits for g in policy.groups.values())
            or any(c.budgets or c.rate_limits for c in policy.consumers.values())
        )

    @classmethod
    def from_config(cls, config: GatewayConfig) -> PolicyPipeline:
        return cls(PolicyConfig.model_validate(config.policy))

    def reconfigured(self, config: GatewayConfig) -> PolicyPipeline:
        """New rules, same metrics registry; the same counters when the storage did not change."""
        policy = PolicyConfig.model_validate(config.policy)
        budgets = None
        if policy.storage == self.policy.storage:
            budgets = Budgets(policy, storage=self.budgets.storage,
                              on_storage_error=lambda op: self.metrics.storage_errors.labels(op).inc())
        return PolicyPipeline(policy, metrics=self.metrics, budgets=budgets)

    def decide(self, consumer: Consumer, kind: str, name: str, upstream: str | None) -> tuple[bool, str]:
        decision = decide(consumer, kind, name, upstream, self.policy)  # type: ignore[arg-type]
        return decision.allowed, decision.rule

    def explain(self, consumer: Consumer, kind: str, name: str, upstream: str | None) -> dict[str, Any]:
        decision = decide(consumer, kind, name, upstream, self.policy)  # type: ignore[arg-type]
        return {"allowed": decision.allowed, "reason": decision.reason, "rule": decision.rule}

    def start_call(
        self, view: CatalogView, consumer: Consumer, name: str, entry: tuple[types.Tool, Source] | None
    ) -> Call:
        call = super().start_call(view, consumer, name, entry)
        if entry is not None and not call.allowed:
            self.metrics.acl_denied(consumer, "tool")
        return call

    async def admit(self, call: Call, arguments: dict[str, Any] | None) -> None:
        if not self.has_budgets:
            return
        try:
            await self.budgets.admit(call.consumer, call.tool, call.upstream)
        except LimitExceeded as exc:
            self.metrics.limit_rejected(call.consumer, exc.kind, str(exc.data.get("limit", "")))
            self.finish_call(call, CallOutcome.LIMITED, error=exc.message)
            raise MCPError(code=LIMIT_EXCEEDED, message=exc.message, data=exc.data) from None
        call.tokens_in = self.counter.count(arguments or {})

    async def charge(self, call: Call, result: types.CallToolResult | dict[str, Any], outcome: CallOutcome) -> None:
        meta, output = _usage_parts(result)
        reported = usage_from_meta(meta)
        if reported is not None:
            call.tokens_in, call.tokens_out = reported
        else:
            if not call.tokens_in:
                call.tokens_in = self.counter.count(call.arguments or {})
            call.tokens_out = self.counter.count(output)
        if self.has_budgets and outcome in (CallOutcome.OK, CallOutcome.ERROR_RESULT):
            await self.budgets.charge(call.consumer, call.tool, call.upstream, call.tokens_in, call.tokens_out)
        self.finish_call(call, outcome)

    def finish_call(self, call: Call, outcome: CallOutcome, error: str | None = None) -> None:
        if call.finished:
            return
        cost = self.budgets.cost_of(call.tool, call.tokens_in, call.tokens_out) if call.upstream else 0.0
        call.cost = cost
        super().finish_call(call, outcome, error)
        if call.upstream is not None:
            self.metrics.observe_call(
                call.consumer, call.upstream, call.tool, _METRIC_OUTCOME.get(outcome, "error"),
                time.perf_counter() - call.started, call.tokens_in, call.tokens_out, cost,
            )

    def audit_denied(self, consumer: Consumer, method: str, target: str, *, exists: bool) -> None:
        if exists:
            self.metrics.acl_denied(consumer, method.split("/")[0].rstrip("s"))
        super().audit_denied(consumer, method, target, exists=exists)

    def audit(self, event: dict[str, Any]) -> None:
        audit_event(event)


def _usage_parts(result: types.CallToolResult | dict[str, Any]) -> tuple[Any, Any]:
    """A tool result's `_meta` and the output its tokens are counted on, from the model or its wire JSON."""
    if isinstance(result, dict):
        structured = result.get("structuredContent")
        return result.get("_meta"), structured if structured is not None else result.get("content") or []
    return result.meta, (
        result.structured_content if result.structured_content is not None else
        [c.model_dump(mode="json", exclude_none=True) for c in result.content]
    )


# Prometheus outcomes are a small fixed set.
_METRIC_OUTCOME = {
    CallOutcome.OK: "ok",
    CallOutcome.ERROR_RESULT: "error",
    CallOutcome.ERROR: "error",
    CallOutcome.UNAVAILABLE: "error",
    CallOutcome.DENIED: "denied",
    CallOutcome.UNKNOWN: "not_found",
    CallOutcome.INVALID: "error",
    CallOutcome.LIMITED: "limited",
    CallOutcome.CANCELLED: "error",
}
# JSON-RPC error code of a budget or rate-limit rejection (implementation-defined server error range).
LIMIT_EXCEEDED = -32029
