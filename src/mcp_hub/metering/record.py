"""The record of one call as it goes through admission and settlement."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from mcp_hub.auth.identity import Consumer


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
    # A round of a 2026-07-28 call whose upstream asked for input: not charged; the round that completes is.
    INPUT_REQUIRED = "input_required"


# Prometheus outcomes are a small fixed set.
METRIC_OUTCOME = {
    CallOutcome.OK: "ok",
    CallOutcome.ERROR_RESULT: "error",
    CallOutcome.ERROR: "error",
    CallOutcome.UNAVAILABLE: "error",
    CallOutcome.DENIED: "denied",
    CallOutcome.UNKNOWN: "not_found",
    CallOutcome.INVALID: "error",
    CallOutcome.LIMITED: "limited",
    CallOutcome.CANCELLED: "error",
    CallOutcome.INPUT_REQUIRED: "input_required",
}
# JSON-RPC error code of a budget or rate-limit rejection (implementation-defined server error range).
LIMIT_EXCEEDED = -32029


@dataclass(slots=True)
class CallRecord:
    """One tools/call: who, what, the decision, and what it used. Settled exactly once."""

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
    outcome: CallOutcome | None = None
    error: str | None = None
    # The result the tokens out are counted on (a CallToolResult's JSON), when there is one.
    result: dict[str, Any] | None = None
    finished: bool = False
