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

from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog import CatalogView, Source

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
    finished: bool = False


class Pipeline:
    """Allow-everything pipeline: the base the policy-aware one extends."""

    def __init__(self) -> None:
        self._filter_cache: dict[tuple[int, int, str, tuple[str, ...], str], list[Any]] = {}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> Pipeline:
        return cls()

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

    async def charge(self, call: Call, result: types.CallToolResult, outcome: CallOutcome) -> None:
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
