"""Logging with redaction, audit lines, and Prometheus metrics."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from mcp_hub.auth.identity import Consumer
from mcp_hub.metering.budgets import BudgetSnapshot
from mcp_hub.metering.observability import Metrics, audit, configure_logging, group_label, redact

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MX0.c2lnbmF0dXJlLWJ5dGVz"
GITHUB_PAT = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
SECRETS = ["s3cr3t-bearer-value", JWT, GITHUB_PAT, "hunter2", "sk-live-0123456789abcdefXYZ", "cookie-jar-123",
           "api-key-value-42", "client-secret-value"]


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream, level="DEBUG")
    yield stream
    configure_logging(json=True, stream=io.StringIO())


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_secrets_never_reach_a_log_line(log: io.StringIO) -> None:
    logger = structlog.get_logger("mcp_hub.test")
    logger.info(
        "upstream request",
        headers={"Authorization": "Bearer s3cr3t-bearer-value", "X-Api-Key": "api-key-value-42",
                 "Cookie": "cookie-jar-123", "Accept": "application/json"},
        url=f"https://api.example/v1?access_token={JWT}&page=2",
        note=f"used {GITHUB_PAT} for the call",
        client_secret="client-secret-value",
        nested=[{"password": "hunter2"}, {"detail": "key sk-live-0123456789abcdefXYZ rejected"}],
        body='{"token": "hunter2", "user": "alice"}',
    )
    logging.getLogger("httpx2").warning("POST /token with Authorization: Bearer %s failed", "s3cr3t-bearer-value")
    try:
        raise RuntimeError(f"upstream said: invalid token {JWT}")
    except RuntimeError:
        logger.exception("call failed")
    text = log.getvalue()
    for secret in SECRETS:
        assert secret not in text, secret
    first, foreign, failure = lines(log)
    assert first["headers"]["Authorization"] == "[REDACTED]"
    assert first["headers"]["Accept"] == "application/json"
    assert first["url"] == "https://api.example/v1?access_token=[REDACTED]&page=2"
    assert first["logger"] == "mcp_hub.test" and first["level"] == "info"
    assert "Bearer [REDACTED]" in foreign["event"] and foreign["logger"] == "httpx2"
    assert "RuntimeError" in failure["exception"]


def test_redact_keeps_ordinary_values() -> None:
    value = {"tokens_in": 12, "tool": "time__get_current_time", "max_tokens": 5, "count": "total",
             "refresh_token": "r", "groups": ("a", "b"), "ok": None}
    assert redact(value) == {"tokens_in": 12, "tool": "time__get_current_time", "max_tokens": 5,
                             "count": "total", "refresh_token": "[REDACTED]", "groups": ["a", "b"], "ok": None}


@pytest.mark.parametrize("text", [
    "missing token for upstream github",
    'Bearer realm="mcp", resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource"',
    "tokens_in=12 tokens_out=40",
    "basic auth is not configured",
])
def test_ordinary_words_are_not_redacted(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Basic YWxpY2U6aHVudGVyMg==", "Authorization: Basic [REDACTED]"),
    ("x-api-key: abcdef0123", "x-api-key: [REDACTED]"),
    ("token 0123456789abcdef0123", "token [REDACTED]"),
    ("password=hunter2&user=alice", "password=[REDACTED]&user=alice"),
    (f"jwt {JWT} end", "jwt [REDACTED] end"),
])
def test_token_looking_strings_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_audit_line_has_the_fields_and_its_own_logger(log: io.StringIO) -> None:
    audit({
        "consumer": Consumer("alice", ("developer", "admin")), "method": "tools/call",
        "tool": "github__create_issue", "upstream": "github", "decision": "allow",
        "rule": "groups.admin.tools.allow[0]: *", "tokens_in": 120, "tokens_out": 480, "cost": 0.0125,
        "latency_ms": 12.5, "outcome": "error", "error": f"upstream refused token {GITHUB_PAT}",
    })
    audit({"consumer": "bob", "method": "resources/read", "uri": "file:///x", "decision": "deny"})
    first, second = lines(log)
    assert first["logger"] == "mcp_hub.audit" and first["event"] == "audit"
    assert first["consumer"] == "alice" and first["groups"] == ["admin", "developer"]
    assert (first["tool"], first["tokens_in"], first["tokens_out"], first["cost"]) == (
        "github__create_issue", 120, 480, 0.0125)
    assert GITHUB_PAT not in first["error"]
    for field in ("consumer", "groups", "method", "upstream", "decision", "rule", "tokens_in", "tokens_out",
                  "cost", "latency_ms", "outcome", "error"):
        assert field in second
    assert second["uri"] == "file:///x" and second["tokens_in"] is None


def test_audit_json_line_is_what_the_structlog_chain_renders() -> None:
    """Audit lines skip structlog's bound logger (observability._AuditLine), and every line's timestamp is the
    gateway's own stamper: against structlog's bound logger with its own TimeStamper, the same keys in the same
    order, the same values and redaction, the contextvars merged, the same timestamp format; only the time
    differs."""
    from mcp_hub.metering import observability

    fast, chain = io.StringIO(), io.StringIO()
    configure_logging(json=True, stream=io.StringIO(), audit_stream=fast)
    structlog.contextvars.bind_contextvars(request_id="r-7")
    try:
        event = {"consumer": Consumer("alice", ("dev", "ops")), "method": "tools/call", "tool": "gh__issue",
                 "upstream": "gh", "decision": "allow", "rule": "groups.dev.tools.allow[0]", "tokens_in": 3,
                 "tokens_out": 9, "cost": 0.25, "latency_ms": 1.5, "outcome": "error_result",
                 "error": f"upstream said: Bearer {JWT} is not valid", "headers": {"Authorization": "Bearer xyz"}}
        audit(event)
        fields = dict.fromkeys(observability.AUDIT_FIELDS)
        fields.update(event, consumer="alice", groups=["dev", "ops"])
        structlog.wrap_logger(
            observability._NamedWriteLogger(chain, observability.AUDIT_LOGGER),
            processors=[*(structlog.processors.TimeStamper(fmt="iso", utc=True)
                          if isinstance(p, observability._UtcStamp) else p
                          for p in observability._shared_processors()),
                        structlog.processors.JSONRenderer(serializer=observability._json_line)],
            context_class=dict,
        ).info("audit", **fields)
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging(json=True, stream=io.StringIO())
    ours, theirs = json.loads(fast.getvalue()), json.loads(chain.getvalue())
    assert list(ours) == list(theirs)
    assert {k: v for k, v in ours.items() if k != "timestamp"} == {k: v for k, v in theirs.items() if k != "timestamp"}
    assert ours["request_id"] == "r-7" and ours["headers"]["Authorization"] == "[REDACTED]" and JWT not in ours["error"]
    assert ours["timestamp"].endswith("Z") and ours["timestamp"][:16] == theirs["timestamp"][:16]
    assert len(ours["timestamp"]) in (len("2026-12-02T14:27:01Z"), len("2026-12-02T14:27:01.012965Z"))


def test_audit_goes_to_its_own_stream_at_any_level() -> None:
    main, trail = io.StringIO(), io.StringIO()
    configure_logging(json=True, stream=main, audit_stream=trail, level="ERROR")
    try:
        structlog.get_logger("x").info("dropped at ERROR level")
        audit({"consumer": "alice", "method": "tools/list"})
        assert main.getvalue() == ""
        assert json.loads(trail.getvalue())["method"] == "tools/list"
    finally:
        configure_logging(json=True, stream=io.StringIO())


def test_pretty_output_is_redacted_too() -> None:
    stream = io.StringIO()
    configure_logging(json=False, stream=stream)
    try:
        structlog.get_logger("x").info("hello", authorization="Bearer s3cr3t-bearer-value")
        text = stream.getvalue()
        assert "hello" in text and "s3cr3t-bearer-value" not in text and not text.lstrip().startswith("{")
    finally:
        configure_logging(json=True, stream=io.StringIO())


# -- metrics -------------------------------------------------------------------------------------

def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_metrics_render_expected_counts() -> None:
    metrics = Metrics(cost_unit="EUR")
    alice, carol = Consumer("alice", ("developer",)), Consumer("carol", ("developer", "admin"))
    for _ in range(3):
        metrics.observe_call(alice, "time", "time__now", "ok", 0.02, tokens_in=10, tokens_out=30, cost=0.5)
    metrics.observe_call(alice, "time", "time__now", "error", 2.0)
    metrics.observe_call(carol, "github", "github__search", "ok", 0.2, 5, 5, 0.25)
    metrics.acl_denied(alice, "tool")
    metrics.limit_rejected(alice, "tokens", "groups.developer.budgets[0]: 2000 tokens per 1 minute")
    metrics.limit_rejected(alice, "requests", "groups.developer.rate_limits[0]")
    metrics.set_budget_remaining([BudgetSnapshot("groups.developer.budgets[0]", "", "group", "developer",
                                                 2000, 1500, 500, 30.0)])
    metrics.set_upstream_up("time", True)
    metrics.set_upstream_up("github", False)
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_closed()
    metrics.storage_error("admit")

    found = samples(metrics)
    dev = {"consumer": "alice", "group": "developer"}
    assert value(found, "mcp_hub_tool_calls_total", **dev, upstream="time", tool="time__now", outcome="ok") == 3
    assert value(found, "mcp_hub_tool_calls_total", **dev, upstream="time", tool="time__now", outcome="error") == 1
    assert value(found, "mcp_hub_tool_call_duration_seconds_count", upstream="time", tool="time__now") == 4
    assert value(found, "mcp_hub_tool_call_duration_seconds_bucket", upstream="time", tool="time__now",
                 le="0.025") == 3
    assert value(found, "mcp_hub_tokens_total", **dev, direction="input") == 30
    assert value(found, "mcp_hub_tokens_total", **dev, direction="output") == 90
    assert value(found, "mcp_hub_cost_total", **dev, unit="EUR") == pytest.approx(1.5)
    assert value(found, "mcp_hub_cost_total", consumer="carol", group="admin,developer", unit="EUR") == 0.25
    assert value(found, "mcp_hub_acl_denials_total", **dev, kind="tool") == 1
    assert value(found, "mcp_hub_limit_rejections_total", **dev, kind="tokens",
                 limit="groups.developer.budgets[0]") == 1
    assert value(found, "mcp_hub_limit_rejections_total", **dev, kind="requests",
                 limit="groups.developer.rate_limits[0]") == 1
    assert value(found, "mcp_hub_budget_remaining_tokens", rule="groups.developer.budgets[0]", scope="group",
                 subject="developer") == 500
    assert value(found, "mcp_hub_upstream_up", upstream="time") == 1
    assert value(found, "mcp_hub_upstream_up", upstream="github") == 0
    assert value(found, "mcp_hub_active_sessions") == 1
    assert value(found, "mcp_hub_policy_storage_errors_total", operation="admit") == 1


def test_label_cardinality_is_bounded() -> None:
    metrics = Metrics(max_label_values=3)
    for i in range(10):
        metrics.observe_call(Consumer(f"user-{i}", ("g",)), "up", f"tool_{i}", "ok", 0.01, 1, 1)
    found = samples(metrics)
    consumers = {dict(labels)["consumer"] for name, labels in found if name == "mcp_hub_tokens_total"}
    assert consumers == {"user-0", "user-1", "user-2", "other"}
    tools = {dict(labels)["tool"] for name, labels in found if name == "mcp_hub_tool_calls_total"}
    assert tools == {"tool_0", "tool_1", "tool_2", "other"}
    assert value(found, "mcp_hub_tokens_total", consumer="other", group="g", direction="input") == 7


def test_consumer_labels_can_be_dropped() -> None:
    metrics = Metrics(per_consumer_labels=False)
    metrics.observe_call(Consumer("alice", ("dev",)), "up", "t", "ok", 0.01, 3, 4, 0.1)
    metrics.observe_call(Consumer("bob", ("dev",)), "up", "t", "ok", 0.01, 3, 4, 0.1)
    metrics.set_budget_remaining([BudgetSnapshot("consumers.alice.budgets[0]", "", "consumer", "alice", 1, 0, 1, 0)])
    found = samples(metrics)
    assert value(found, "mcp_hub_tokens_total", consumer="-", group="dev", direction="input") == 6
    body = metrics.render()[0].decode()
    assert "alice" not in body and "bob" not in body


def test_registries_are_separate_and_openmetrics_is_offered() -> None:
    one, two = Metrics(), Metrics()
    one.observe_call(Consumer("a"), "up", "t", "ok", 0.01)
    assert value(samples(one), "mcp_hub_tool_calls_total", consumer="a", group="-", upstream="up", tool="t",
                 outcome="ok") == 1
    assert not any(name == "mcp_hub_tool_calls_total" for name, _ in samples(two))
    body, content_type = one.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and body.rstrip().endswith(b"# EOF")


def test_group_label() -> None:
    assert group_label(("developer", "admin", "developer")) == "admin,developer"
    assert group_label(()) == "-"


def test_grafana_dashboard_uses_only_metrics_we_export() -> None:
    import re

    from tests.support.tools import ROOT

    dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"mcp_hub_[a-z_]+", expr)}
    metrics = Metrics()
    consumer = Consumer("a", ("g",))
    metrics.observe_call(consumer, "up", "t", "ok", 0.1, 1, 1, 0.1)
    metrics.acl_denied(consumer, "tool")
    metrics.limit_rejected(consumer, "tokens", "budgets[0]")
    metrics.set_budget_remaining([BudgetSnapshot("r", "", "group", "g", 1, 0, 1, 0)])
    metrics.set_upstream_up("up", True)
    metrics.storage_error("admit")
    exported = {name for name, _ in samples(metrics)}
    assert used and used <= exported, used - exported
