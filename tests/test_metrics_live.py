"""The state gauges of a running gateway, read over HTTP from /metrics: upstream health, open
downstream sessions and the tokens left in budgets; plus the scrape-time readers in-process."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.metering.budgets import Budgets, BudgetSnapshot, LimitExceeded
from mcp_hub.metering.observability import Metrics
from tests.servers.launch import ServerProcess, http_server
from tests.support.clients import sdk_session
from tests.support.gateway import SCRAPE_HEADERS, RunningGateway, python_server, run_gateway, wait_until
from tests.support.processes import redis_server, stop

DEMO = "tests.servers.demo_server"
LIMIT = 1_000_000
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(gw: RunningGateway) -> Samples:
    response = httpx2.get(f"{gw.url}/metrics", headers=SCRAPE_HEADERS, timeout=5)
    assert response.status_code == 200, response.text
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def labelled(found: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (metric, labels), value in found.items() if metric == name}


def upstreams_up(gw: RunningGateway) -> dict[str, float]:
    return {dict(labels)["upstream"]: value for labels, value in labelled(scrape(gw), "mcp_hub_upstream_up").items()}


def sessions(gw: RunningGateway) -> float:
    return scrape(gw)[("mcp_hub_active_sessions", ())]


def remaining(found: Samples, rule: str) -> float | None:
    values = [v for labels, v in labelled(found, "mcp_hub_budget_remaining_tokens").items()
              if dict(labels)["rule"] == rule]
    assert len(values) <= 1, values  # one subject (the anonymous consumer) per rule
    return values[0] if values else None


def tokens_charged(found: Samples) -> float:
    return sum(labelled(found, "mcp_hub_tokens_total").values())


def settle(read: Callable[[], Any], expected: Any, what: str, timeout: float = 30.0) -> None:
    """Poll `read()` until it equals `expected`; the message says what it was last."""
    seen: list[Any] = []

    def check() -> bool:
        seen.append(read())
        return bool(seen[-1] == expected)

    try:
        wait_until(check, timeout=timeout, interval=0.2, what=what)
    except TimeoutError:
        pytest.fail(f"{what}: expected {expected!r}, last read {seen[-1] if seen else None!r}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("metrics-live")
    with contextlib.ExitStack() as stack:
        victim = stack.enter_context(http_server("demo_server", tmp, "--name", "victim"))
        config = {
            "upstreams": {
                # why: short health pings and backoff so the kill is noticed within seconds
                "victim": {"transport": "streamable-http", "url": victim.url, "health_interval": 0.5,
                           "reconnect_max_backoff": 1},
                "steady": python_server(DEMO, "--transport", "stdio", "--name", "steady"),
            },
            # one budget per test that charges it, so each test sees only its own calls
            "budgets": [
                {"tokens": LIMIT, "window": "1 hour", "tools": ["steady__echo"]},
                {"tokens": LIMIT, "window": "1 hour", "tools": ["steady__add"]},
            ],
        }
        gw = stack.enter_context(run_gateway(config, tmp, wait_healthy=True))
        yield {"gw": gw, "victim": victim, "config": config}


async def test_budget_remaining_tokens_fall_as_calls_are_charged(hub: dict[str, Any]) -> None:
    gw: RunningGateway = hub["gw"]
    before = scrape(gw)
    assert remaining(before, "budgets[0]") is None  # nothing has charged this budget yet
    readings = [(LIMIT, tokens_charged(before))]
    async with sdk_session(gw.mcp, mode="legacy") as client:
        for i in range(3):
            result = await client.call_tool("steady__echo", {"text": f"call {i} " + "x" * 200 * (i + 1)})
            assert not result.is_error
            found = scrape(gw)
            left = remaining(found, "budgets[0]")
            assert left is not None, "no mcp_hub_budget_remaining_tokens sample after a charged call"
            readings.append((left, tokens_charged(found)))
    for (left_before, charged_before), (left_after, charged_after) in zip(readings, readings[1:], strict=False):
        assert left_after < left_before, readings
        # the budget counts total tokens: it falls by exactly what the call was charged
        assert left_before - left_after == charged_after - charged_before, readings
    labels = next(dict(k) for k in labelled(scrape(gw), "mcp_hub_budget_remaining_tokens")
                  if dict(k)["rule"] == "budgets[0]")
    assert labels == {"rule": "budgets[0]", "scope": "consumer", "subject": "anonymous"}


async def test_active_sessions_count_open_sdk_sessions(hub: dict[str, Any]) -> None:
    gw: RunningGateway = hub["gw"]
    settle(lambda: sessions(gw), 0, "no open sessions before the test")
    n = 3
    async with contextlib.AsyncExitStack() as all_sessions:
        for i in range(n):
            await all_sessions.enter_async_context(sdk_session(gw.mcp, mode="legacy"))
            assert sessions(gw) == i + 1
        async with sdk_session(f"{gw.mcp}/sse", mode="legacy") as legacy:
            await legacy.list_tools()
            assert sessions(gw) == n + 1  # the legacy SSE session counts too
        settle(lambda: sessions(gw), n, "the SSE session gone after its client left")
    # the SDK client sends DELETE on exit, and the gateway forgets the session then
    settle(lambda: sessions(gw), 0, "sessions closed after their clients left")


def test_upstream_up_follows_the_upstream_process(hub: dict[str, Any]) -> None:
    gw: RunningGateway = hub["gw"]
    victim: ServerProcess = hub["victim"]
    assert upstreams_up(gw) == {"victim": 1, "steady": 1}
    stop(victim.proc)
    settle(lambda: upstreams_up(gw), {"victim": 0, "steady": 1}, "victim reported down after its process died")


async def test_removed_upstream_leaves_the_gauge_and_budgets_survive_a_reload(hub: dict[str, Any]) -> None:
    gw: RunningGateway = hub["gw"]
    async with sdk_session(gw.mcp, mode="legacy") as client:
        await client.call_tool("steady__add", {"a": 1, "b": 2})
        first = remaining(scrape(gw), "budgets[1]")
        config = {**hub["config"], "upstreams": {"steady": hub["config"]["upstreams"]["steady"]}}
        gw.config_path.write_text(yaml.safe_dump(config))
        settle(lambda: upstreams_up(gw), {"steady": 1}, "victim's sample removed after the reload")
    # calls after the reload go through the reloaded policy's Budgets, which must report too
    async with sdk_session(gw.mcp, mode="legacy") as client:
        await client.call_tool("steady__add", {"a": 3, "b": 4})
        second = remaining(scrape(gw), "budgets[1]")
    assert first is not None and first < LIMIT, first
    assert second is not None and second < first, (first, second)


# -- the readers in-process --------------------------------------------------------------------

def _samples(metrics: Metrics) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(metrics.render()[0].decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_readers_run_at_every_scrape_and_drop_vanished_upstreams() -> None:
    metrics = Metrics(max_label_values=2)
    states = {"a": True, "b": False}
    open_sessions = [2]
    metrics.watch_upstreams(lambda: states)
    metrics.watch_sessions(lambda: open_sessions[0])
    found = _samples(metrics)
    assert labelled(found, "mcp_hub_upstream_up") == {(("upstream", "a"),): 1, (("upstream", "b"),): 0}
    assert found[("mcp_hub_active_sessions", ())] == 2
    states.pop("b")
    states["a"] = False
    open_sessions[0] = 0
    found = _samples(metrics)
    assert labelled(found, "mcp_hub_upstream_up") == {(("upstream", "a"),): 0}
    assert found[("mcp_hub_active_sessions", ())] == 0
    # the label guard still bounds the values: c and d fold into `other`, which is up only if both are
    states.update({"c": True, "d": False})
    assert labelled(_samples(metrics), "mcp_hub_upstream_up") == {(("upstream", "a"),): 0,
                                                                   (("upstream", "other"),): 0}
    states["d"] = True
    assert labelled(_samples(metrics), "mcp_hub_upstream_up")[(("upstream", "other"),)] == 1


def test_a_failing_reader_keeps_the_last_value_and_the_scrape() -> None:
    metrics = Metrics()
    answers: list[Any] = [3, RuntimeError("boom")]

    def read() -> int:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return int(answer)

    metrics.watch_sessions(read)
    metrics.observe_call(Consumer("a"), "up", "t", "ok", 0.01)
    assert _samples(metrics)[("mcp_hub_active_sessions", ())] == 3
    found = _samples(metrics)
    assert found[("mcp_hub_active_sessions", ())] == 3
    assert ("mcp_hub_tool_calls_total", (("consumer", "a"), ("group", "-"), ("outcome", "ok"), ("tool", "t"),
                                         ("upstream", "up"))) in found


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter", "moving-window"])
@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_budgets_report_what_is_left_after_admit_and_charge(
    storage: str, strategy: str, request: pytest.FixtureRequest
) -> None:
    uri = request.getfixturevalue("redis_url") if storage == "redis" else "memory://"
    heard: list[list[BudgetSnapshot]] = []
    b = Budgets(PolicyConfig.model_validate({"storage": uri, "groups": {"dev": {"budgets": [
        {"tokens": 100, "window": "1 minute", "strategy": strategy, "per": "group"},
        {"tokens": 50, "window": "1 minute", "strategy": strategy, "per": "consumer", "count": "output"},
    ]}}}), on_remaining=heard.append)
    await b.reset()
    alice = Consumer(f"alice-{time.monotonic_ns()}", ("dev",))

    def left() -> dict[str, float]:
        return {s.rule: s.remaining for s in heard[-1]}

    await b.admit(alice, "t", "u")
    assert left() == {"groups.dev.budgets[0]": 100, "groups.dev.budgets[1]": 50}
    await b.charge(alice, "t", "u", 10, 30)
    assert left() == {"groups.dev.budgets[0]": 60, "groups.dev.budgets[1]": 20}
    assert {(s.scope, s.subject) for s in heard[-1]} == {("group", "dev"), ("consumer", alice.name)}
    await b.admit(alice, "t", "u")
    await b.charge(alice, "t", "u", 0, 25)  # overshoots budgets[1]: recorded in full, reported as 0 left
    assert left() == {"groups.dev.budgets[0]": 35, "groups.dev.budgets[1]": 0}
    heard.clear()
    with pytest.raises(LimitExceeded):
        await b.admit(alice, "t", "u")
    assert heard and left()["groups.dev.budgets[1]"] == 0  # a refusal still reports the spent budget


async def test_a_failing_remaining_callback_does_not_break_calls() -> None:
    def explode(_snapshots: list[BudgetSnapshot]) -> None:
        raise RuntimeError("metrics are down")

    b = Budgets(PolicyConfig.model_validate({"budgets": [{"tokens": 10, "window": "1 minute"}]}), on_remaining=explode)
    alice = Consumer("alice")
    await b.admit(alice, "t", "u")
    await b.charge(alice, "t", "u", 4, 8)
    with pytest.raises(LimitExceeded):  # the budget still works: 12 of 10 used
        await b.admit(alice, "t", "u")
