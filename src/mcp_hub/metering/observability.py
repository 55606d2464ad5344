"""Logs, audit events and Prometheus metrics.

- `configure_logging()`: structlog over the standard `logging` module, JSON lines when stderr is
  not a terminal and pretty lines in one. Every line, including those of other libraries that
  log through `logging`, goes through `redact_secrets`.
- `audit(event)`: one line per MCP request on the logger `mcp_hub.audit` (route it elsewhere
  with ordinary `logging` configuration).
- `Metrics`: the gateway's Prometheus metrics in their own registry, with bounded labels.

Metric names (all prefixed `mcp_hub_`):

=========================================  =========  ===========================================
name                                       type       labels
=========================================  =========  ===========================================
mcp_hub_tool_calls_total                   counter    consumer, group, upstream, tool, outcome
mcp_hub_tool_call_duration_seconds         histogram  upstream, tool
mcp_hub_tokens_total                       counter    consumer, group, direction (input|output)
mcp_hub_cost_total                         counter    consumer, group, unit
mcp_hub_acl_denials_total                  counter    consumer, group, kind (tool|resource|prompt)
mcp_hub_limit_rejections_total             counter    consumer, group, kind (tokens|requests|storage), limit
mcp_hub_budget_remaining_tokens            gauge      rule, scope, subject
mcp_hub_upstream_up                        gauge      upstream
mcp_hub_active_sessions                    gauge      (none)
mcp_hub_policy_storage_errors_total        counter    operation
=========================================  =========  ===========================================

The `group` label of a consumer in several groups is its sorted group set joined with commas
(`admin,developer`), `-` for a consumer without groups: the same key that selects its catalog.
"""

from __future__ import annotations

import contextlib
import functools
import json as _json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest

from mcp_hub.auth.identity import Consumer
from mcp_hub.upstreams.openapi.scrub import KNOWN_SECRETS

__all__ = [
    "AUDIT_LOGGER",
    "Metrics",
    "audit",
    "configure_logging",
    "group_label",
    "redact_secrets",
]

AUDIT_LOGGER = "mcp_hub.audit"
REDACTED = "[REDACTED]"
_log = structlog.get_logger("mcp_hub.metrics")

# -- redaction ---------------------------------------------------------------------------------

# Keys compared lower-cased with '-' read as '_'.
_SECRET_KEYS = frozenset({
    "authorization", "proxy_authorization", "token", "access_token", "refresh_token", "id_token",
    "api_key", "apikey", "x_api_key", "client_secret", "password", "passwd", "secret", "cookie",
    "set_cookie", "private_key", "subject_token", "actor_token", "assertion", "client_assertion",
    "code_verifier", "request_state",
})
_SECRET_SUFFIXES = ("_token", "_secret", "_password", "_api_key", "_apikey")

_SECRET_VALUE = re.compile(
    # Authorization header values (long enough to be credentials, so `Bearer realm=` stays readable)
    r"(?P<scheme>\b(?:bearer|basic)\s+(?=[A-Za-z0-9\-._~+/]{8})|\btoken\s+(?=[A-Za-z0-9\-._~+/]{16}))"
    r"[A-Za-z0-9\-._~+/]+=*"
    r"|\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"  # JWTs
    r"|\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|sk-[A-Za-z0-9_-]{16,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|glpat-[A-Za-z0-9_-]{20})"  # well-known key formats
    r"|(?P<key>\b(?:access_token|refresh_token|id_token|token|api[-_]?key|client_secret|password"
    r"|secret)[\"']?\s*[=:]\s*[\"']?)[^\"'&\s,;}]+"  # key=value in URLs, headers, JSON text
    r"|(?P<userinfo>\b[a-z][a-z0-9+.-]*://)[^/\s@:]*:[^/\s@]*(?=@)"  # user:password@ in URLs
    r"|\bmcphub_[A-Za-z0-9_-]{16,}",  # the gateway's own API keys
    re.IGNORECASE,
)


def _redact_match(match: re.Match[str]) -> str:
    prefix = match.group("scheme") or match.group("key") or match.group("userinfo") or ""
    return prefix + REDACTED


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    normalized = key.lower().replace("-", "_")
    return normalized in _SECRET_KEYS or normalized.endswith(_SECRET_SUFFIXES)


# Audit lines repeat the same short strings (names, rules); remember their redacted form (valid while
# the registry of known secret values stays the same version).
_redacted_strings: dict[str, str] = {}
_known_version = [KNOWN_SECRETS.version]


def _redact_str(value: str) -> str:
    if _known_version[0] != KNOWN_SECRETS.version:
        _redacted_strings.clear()
        _known_version[0] = KNOWN_SECRETS.version
    done = _redacted_strings.get(value)
    if done is None:
        # The values the upstreams hold (KNOWN_SECRETS), in any spelling, then whatever looks like one.
        done = _SECRET_VALUE.sub(_redact_match, KNOWN_SECRETS.scrub(value, REDACTED))
        if len(value) <= 256:
            if len(_redacted_strings) >= 4096:
                _redacted_strings.clear()
            _redacted_strings[value] = done
    return done


def redact(value: Any) -> Any:
    """`value` with secrets replaced by `[REDACTED]`: secret-named keys at any depth, the secret
    values upstreams registered (`KNOWN_SECRETS`, in any encoding), bearer tokens, JWTs, well-known
    API key formats and `token=...`-style pairs inside strings."""
    if isinstance(value, str):
        return _redact_str(value) if value else value
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_key(k) and v is not None else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return redact(value.decode("utf-8", "replace"))
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the one place secrets are removed from every log line."""
    for key, value in event_dict.items():
        if value is None:
            continue
        if _is_secret_key(key):
            event_dict[key] = REDACTED
        elif type(value) is str:
            event_dict[key] = _redact_str(value)
        elif type(value) not in _NUMBERS:
            event_dict[key] = redact(value)
    return event_dict


_NUMBERS = frozenset({int, float, bool})


# -- logging -----------------------------------------------------------------------------------

_lock = threading.Lock()
_handler: logging.Handler | None = None


class _NamedWriteLogger(structlog.WriteLogger):
    """A structlog WriteLogger that knows its name, so `add_logger_name` can record it."""

    def __init__(self, file: IO[str], name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else "mcp_hub")


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        # Tracebacks become text before redaction so secrets in them are removed too.
        structlog.processors.format_exc_info,
        redact_secrets,
        # Added after redaction: known-safe values, and new every line (nothing to cache).
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        _UtcStamp(),
    ]


class _UtcStamp:
    """structlog processor: `timestamp`, what `TimeStamper(fmt="iso", utc=True)` writes, with the date and time
    formatted once a second (TimeStamper builds a datetime and formats all of it on every line; the audit line
    of every call pays for it)."""

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one tuple, replaced whole: lines come from several threads

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second, prefix = self._second
        if int(now) != second:
            second = int(now)
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        micro = int((now - second) * 1_000_000)
        event_dict["timestamp"] = f"{prefix}.{micro:06d}Z" if micro else f"{prefix}Z"
        return event_dict


# One encoder for every line: json.dumps(default=...) builds a new one per call.
_ENCODER = _json.JSONEncoder(default=repr, ensure_ascii=False, separators=(", ", ": "))


def _json_line(obj: Any, **_kwargs: Any) -> str:
    return _ENCODER.encode(obj)


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelNamesMapping().get(level.upper())
    if value is None:
        raise ValueError(f"unknown log level {level!r}")
    return value


def configure_logging(
    json: bool | None = None,
    *,
    level: int | str = "INFO",
    stream: IO[str] | None = None,
    audit_stream: IO[str] | None = None,
) -> None:
    """Send structlog and `logging` lines through one processor chain with redaction.

    `json=None` picks JSON lines unless `stream` (default stderr) is a terminal. structlog
    lines are rendered and written directly (no `logging` round trip: it costs ~50 us a line);
    lines of libraries that use `logging` go through a root handler with the same processors.
    Audit lines go to `audit_stream` (default: `stream`) at any `level`. Calling it again
    replaces the previous configuration.
    """
    global _handler, _audit_line
    out = stream if stream is not None else sys.stderr
    if json is None:
        json = not (hasattr(out, "isatty") and out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if json else structlog.dev.ConsoleRenderer(colors=bool(getattr(out, "isatty", lambda: False)()))
    )
    shared = _shared_processors()
    threshold = _level(level)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    with _lock:
        root = logging.getLogger()
        if _handler is not None:
            root.removeHandler(_handler)
        root.addHandler(handler)
        root.setLevel(threshold)
        # One line per upstream HTTP request is noise (and CPU) on the hot path; keep it for debugging.
        for chatty in ("httpx2", "httpcore"):
            logging.getLogger(chatty).setLevel(threshold if threshold <= logging.DEBUG else logging.WARNING)
        _handler = handler
        structlog.configure(
            processors=[*shared, renderer],
            wrapper_class=structlog.make_filtering_bound_logger(threshold),
            logger_factory=_NamedWriteLoggerFactory(out),
            context_class=dict,
            # Loggers made before a reconfiguration must follow it (tests, `serve --log-json`).
            cache_logger_on_first_use=False,
        )
        _audit_line = _AuditLine(_NamedWriteLogger(audit_stream if audit_stream is not None else out, AUDIT_LOGGER),
                                 [*shared, renderer])


# -- audit -------------------------------------------------------------------------------------

# Always present in an audit line (None when unknown); tool / uri / prompt appear when given.
AUDIT_FIELDS = (
    "consumer", "groups", "method", "upstream", "decision", "rule",
    "tokens_in", "tokens_out", "cost", "latency_ms", "outcome", "error",
)
_audit_line: _AuditLine | None = None


def audit(event: Mapping[str, Any]) -> None:
    """Emit one audit line for one MCP request on the dedicated `mcp_hub.audit` logger.

    Fields: consumer, groups, method, tool | uri | prompt, upstream, decision (allow | deny),
    rule, tokens_in, tokens_out, cost, latency_ms, outcome, error, plus any extra keys.
    `consumer` may be a `Consumer`; its name and groups are used. Secrets are redacted.
    Configures logging with defaults if nobody did.
    """
    if _audit_line is None:
        configure_logging()
        assert _audit_line is not None
    fields: dict[str, Any] = dict.fromkeys(AUDIT_FIELDS)
    fields.update(event)
    consumer = fields.get("consumer")
    if isinstance(consumer, Consumer):
        fields["consumer"] = consumer.name
        if fields.get("groups") is None:
            fields["groups"] = list(consumer.group_key)
    fields.pop("event", None)  # structlog's message key
    _audit_line.write(fields)


class _AuditLine:
    """The audit logger: the processors of `configure_logging`'s chain run over the line, and the rendered
    line written, as structlog's bound logger does (the line is always at INFO, the level audit lines have
    whatever the log level), without the dispatch around it, which cost as much as the processors: one line
    per call is on the call path."""

    def __init__(self, logger: _NamedWriteLogger, processors: list[Any]) -> None:
        self.logger = logger
        self.processors = processors

    def write(self, fields: dict[str, Any]) -> None:
        fields["event"] = "audit"
        line: Any = fields
        for processor in self.processors:
            line = processor(self.logger, "info", line)
        self.logger.msg(line)


# -- metrics -----------------------------------------------------------------------------------

OTHER = "other"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def group_label(group_key: Iterable[str]) -> str:
    """The `group` label for a group set: sorted, comma-joined; `-` for none."""
    return ",".join(sorted(set(group_key))) or "-"


class _LabelGuard:
    """Keeps at most `limit` distinct values per label name; later ones become `other`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, set[str]] = {}

    def __call__(self, label: str, value: str) -> str:
        seen = self._seen.setdefault(label, set())
        if value in seen:
            return value
        if len(seen) >= self.limit:
            return OTHER
        seen.add(value)
        return value


class Metrics:
    """The gateway's Prometheus metrics in their own `CollectorRegistry`.

    Several gateways (or tests) in one process each own a `Metrics` without clashing.
    `per_consumer_labels=False` writes `-` for every consumer; `max_label_values` bounds the
    distinct values of each label (consumer, group, tool, upstream, ...), folding the rest into
    `other`.

    State gauges (`mcp_hub_upstream_up`, `mcp_hub_active_sessions`) can be read at scrape time
    instead of being pushed: `watch_upstreams(fn)` and `watch_sessions(fn)` register readers
    that `render()` calls before it generates the body.
    """

    def __init__(
        self,
        *,
        per_consumer_labels: bool = True,
        max_label_values: int = 500,
        cost_unit: str = "USD",
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.per_consumer_labels = per_consumer_labels
        self.cost_unit = cost_unit
        self._guard = _LabelGuard(max_label_values)
        # Children per raw label tuple: skips labels() lookups and guards on the hot path.
        self._children: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._budget_children: dict[tuple[str, str, str], Any] = {}
        r = self.registry
        self.calls = Counter("mcp_hub_tool_calls", "tools/call requests by outcome",
                             ["consumer", "group", "upstream", "tool", "outcome"], registry=r)
        self.latency = Histogram("mcp_hub_tool_call_duration_seconds", "tools/call latency through the gateway",
                                 ["upstream", "tool"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("mcp_hub_tokens", "tokens charged, by direction",
                              ["consumer", "group", "direction"], registry=r)
        self.cost = Counter("mcp_hub_cost", "cost of calls in the configured unit",
                            ["consumer", "group", "unit"], registry=r)
        self.acl_denials = Counter("mcp_hub_acl_denials", "requests refused by an ACL",
                                   ["consumer", "group", "kind"], registry=r)
        self.limit_rejections = Counter("mcp_hub_limit_rejections", "calls refused by a budget, rate limit or storage",
                                        ["consumer", "group", "kind", "limit"], registry=r)
        self.budget_remaining = Gauge("mcp_hub_budget_remaining_tokens", "tokens left in a budget window",
                                      ["rule", "scope", "subject"], registry=r)
        self.upstream_up = Gauge("mcp_hub_upstream_up", "1 when the upstream is connected and healthy",
                                 ["upstream"], registry=r)
        self.active_sessions = Gauge("mcp_hub_active_sessions", "open downstream MCP sessions", registry=r)
        self.storage_errors = Counter("mcp_hub_policy_storage_errors", "budget storage failures",
                                      ["operation"], registry=r)
        self.catalog_tokens = Gauge("mcp_hub_catalog_tokens",
                                    "tokens of a route's tools/list as a group's callers receive it",
                                    ["route", "group"], registry=r)
        self._catalog_reader: Callable[[], Iterable[tuple[str, tuple[str, ...], int]]] | None = None
        self._upstream_reader: Callable[[], Mapping[str, bool]] | None = None
        self._session_reader: Callable[[], int] | None = None
        # Label values of upstream_up currently exported, so vanished upstreams can be removed.
        self._upstream_labels: set[str] = set()

    @classmethod
    def from_options(cls, options: Any, cost_unit: str = "USD") -> Metrics:
        """Build from `PolicyConfig.metrics` (a `MetricsOptions`)."""
        return cls(per_consumer_labels=options.per_consumer_labels,
                   max_label_values=options.max_label_values, cost_unit=cost_unit)

    def _who(self, consumer: Any) -> tuple[str, str]:
        """(consumer label, group label), bounded."""
        name = consumer.name if self.per_consumer_labels else "-"
        return self._guard("consumer", name), self._guard("group", group_label(consumer.group_key))

    def observe_call(
        self,
        consumer: Any,
        upstream: str,
        tool: str,
        outcome: str,
        latency_s: float,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cost: float = 0.0,
    ) -> None:
        """Record one tools/call: count, latency, tokens and cost.

        `outcome` is a small fixed set: ok | error | denied | limited | not_found | timeout.
        """
        key = (consumer.name, consumer.group_key, upstream, tool, outcome)
        children = self._children.get(key)
        if children is None:
            who, group = self._who(consumer)
            up, name = self._guard("upstream", upstream), self._guard("tool", tool)
            children = (
                self.calls.labels(who, group, up, name, self._guard("outcome", outcome)),
                self.latency.labels(up, name),
                self.tokens.labels(who, group, "input"),
                self.tokens.labels(who, group, "output"),
                self.cost.labels(who, group, self.cost_unit),
            )
            if len(self._children) > 20_000:
                self._children.clear()
            self._children[key] = children
        calls, latency, tok_in, tok_out, spent = children
        calls.inc()
        latency.observe(latency_s)
        if tokens_in:
            tok_in.inc(tokens_in)
        if tokens_out:
            tok_out.inc(tokens_out)
        if cost:
            spent.inc(cost)

    def acl_denied(self, consumer: Any, kind: str) -> None:
        """Count a request refused by an ACL (kind: tool | resource | prompt)."""
        who, group = self._who(consumer)
        self.acl_denials.labels(who, group, kind).inc()

    def limit_rejected(self, consumer: Any, kind: str, limit: str) -> None:
        """Count a call refused by a budget (`tokens`), rate limit (`requests`) or `storage`.

        `limit` is the rule id, e.g. `groups.developer.budgets[0]` (bounded by the config).
        """
        who, group = self._who(consumer)
        self.limit_rejections.labels(who, group, kind, self._guard("limit", limit.split(":", 1)[0])).inc()

    def set_budget_remaining(self, snapshots: Iterable[Any]) -> None:
        """Update the remaining-budget gauge from `Budgets.remaining()` snapshots.

        Per-consumer budgets are skipped when per-consumer labels are off.
        """
        for snap in snapshots:
            if snap.scope == "consumer" and not self.per_consumer_labels:
                continue
            key = (snap.rule, snap.scope, snap.subject)
            child = self._budget_children.get(key)
            if child is None:  # a budget and subject's gauge, looked up once (this runs twice per call)
                child = self.budget_remaining.labels(snap.rule, snap.scope, self._guard("subject", snap.subject))
                if len(self._budget_children) > 20_000:
                    self._budget_children.clear()
                self._budget_children[key] = child
            child.set(snap.remaining)

    def set_upstream_up(self, upstream: str, up: bool) -> None:
        """Mark an upstream healthy (1) or not (0)."""
        label = self._guard("upstream", upstream)
        self._upstream_labels.add(label)
        self.upstream_up.labels(label).set(1 if up else 0)

    def watch_upstreams(self, read: Callable[[], Mapping[str, bool]]) -> None:
        """Set `mcp_hub_upstream_up` from `read()` ({upstream name: up}) at every scrape.

        Upstreams missing from a reading lose their sample. Replaces an earlier reader.
        """
        self._upstream_reader = read

    def watch_sessions(self, read: Callable[[], int]) -> None:
        """Set `mcp_hub_active_sessions` from `read()` (open sessions) at every scrape; replaces an earlier reader."""
        self._session_reader = read

    def set_catalog_tokens(self, route: str, group_key: Iterable[str], tokens: int) -> None:
        """The tokens of `route`'s tool listing for a group set (`mcp_hub_catalog_tokens`)."""
        self.catalog_tokens.labels(self._guard("route", route), self._guard("group", group_label(group_key))).set(tokens)

    def watch_catalogs(self, read: Callable[[], Iterable[tuple[str, tuple[str, ...], int]]]) -> None:
        """Set `mcp_hub_catalog_tokens` from `read()` ((route, group set, tokens) rows) at every scrape."""
        self._catalog_reader = read

    def _set_upstreams(self, states: Mapping[str, bool]) -> None:
        up: dict[str, bool] = {}
        for name, state in states.items():
            label = self._guard("upstream", name)
            # Names folded into `other` count as up only when all of them are.
            up[label] = up.get(label, True) and bool(state)
        for gone in self._upstream_labels - up.keys():
            with contextlib.suppress(KeyError):
                self.upstream_up.remove(gone)
        for label, state in up.items():
            self.upstream_up.labels(label).set(1 if state else 0)
        self._upstream_labels = set(up)

    def _read_state(self) -> None:
        """Refresh the scrape-time gauges; a failing reader keeps its gauge's last value."""
        if self._upstream_reader is not None:
            try:
                self._set_upstreams(self._upstream_reader())
            except Exception as exc:  # noqa: BLE001 - one broken reader must not fail the whole scrape
                _log.warning("metrics reader failed", gauge="mcp_hub_upstream_up", error=repr(exc))
        if self._session_reader is not None:
            try:
                self.active_sessions.set(int(self._session_reader()))
            except Exception as exc:  # noqa: BLE001 - one broken reader must not fail the whole scrape
                _log.warning("metrics reader failed", gauge="mcp_hub_active_sessions", error=repr(exc))
        if self._catalog_reader is not None:
            try:
                for route, group_key, tokens in self._catalog_reader():
                    self.set_catalog_tokens(route, group_key, tokens)
            except Exception as exc:  # noqa: BLE001 - one broken reader must not fail the whole scrape
                _log.warning("metrics reader failed", gauge="mcp_hub_catalog_tokens", error=repr(exc))

    def session_opened(self) -> None:
        """A downstream session started."""
        self.active_sessions.inc()

    def session_closed(self) -> None:
        """A downstream session ended."""
        self.active_sessions.dec()

    def storage_error(self, operation: str) -> None:
        """Count a budget storage failure; pass as `Budgets(on_storage_error=...)`."""
        self.storage_errors.labels(operation).inc()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type) for a `/metrics` response; honours an OpenMetrics `Accept` header."""
        self._read_state()
        if accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
