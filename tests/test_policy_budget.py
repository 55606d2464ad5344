"""Budgets and rate limits on memory storage and on a real Redis (also shared by two processes),
the LimitExceeded error, cost, and what happens when the storage is down."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mcp_hub.auth.identity import Consumer
from mcp_hub.config.policy import PolicyConfig
from mcp_hub.metering.budgets import Budgets, LimitExceeded, StorageUnavailable
from tests.support.processes import redis_server
from tests.support.tools import ROOT, free_port

ALICE = Consumer("alice", ("developer",))
BOB = Consumer("bob", ("developer",))


def budgets(raw: dict[str, Any], **kwargs: Any) -> Budgets:
    return Budgets(PolicyConfig.model_validate(raw), **kwargs)


async def refused(b: Budgets, consumer: Consumer, tool: str = "t", upstream: str | None = "u") -> LimitExceeded:
    with pytest.raises(LimitExceeded) as info:
        await b.admit(consumer, tool, upstream)
    return info.value


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


# -- token budgets -------------------------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window"])
async def test_budget_exhaustion_then_reset_in_memory(strategy: str) -> None:
    await _exhaust_then_reset({"strategy": strategy}, "memory://")


async def test_budget_exhaustion_then_reset_in_redis(redis_url: str) -> None:
    await _exhaust_then_reset({"strategy": "fixed-window"}, redis_url)


async def _exhaust_then_reset(rule: dict[str, Any], storage: str) -> None:
    b = budgets({"storage": storage, "groups": {"developer": {
        "budgets": [{"tokens": 100, "window": "2 seconds", **rule}]}}})
    await b.reset()
    await b.admit(ALICE, "t", "u")
    await b.charge(ALICE, "t", "u", 30, 30)
    await b.admit(ALICE, "t", "u")  # 60 of 100 used: still open
    await b.charge(ALICE, "t", "u", 30, 30)  # 120: more than what was left, recorded in full
    error = await refused(b, ALICE)
    assert error.data["remaining"] == 0
    assert 0 < error.data["reset_after_s"] <= 2.0
    [snapshot] = await b.remaining(ALICE)
    assert (snapshot.used, snapshot.remaining, snapshot.limit) == (120, 0, 100)
    await asyncio.sleep(error.data["reset_after_s"] + 0.2)
    await b.admit(ALICE, "t", "u")
    [snapshot] = await b.remaining(ALICE)
    assert snapshot.used == 0 and snapshot.remaining == 100


async def test_charge_bigger_than_the_whole_budget_is_recorded() -> None:
    for strategy in ("fixed-window", "moving-window", "sliding-window-counter"):
        b = budgets({"groups": {"developer": {"budgets": [{"tokens": 50, "window": 60, "strategy": strategy}]}}})
        await b.admit(ALICE, "t", "u")
        await b.charge(ALICE, "t", "u", 400, 600)
        [snapshot] = await b.remaining(ALICE)
        assert snapshot.used == 1000, strategy
        await refused(b, ALICE)


async def test_count_input_output_total() -> None:
    b = budgets({"groups": {"developer": {"budgets": [
        {"tokens": 1000, "window": 60, "count": "input"},
        {"tokens": 1000, "window": 60, "count": "output"},
        {"tokens": 1000, "window": 60, "count": "total"},
    ]}}})
    await b.charge(ALICE, "t", "u", 10, 200)
    assert [s.used for s in await b.remaining(ALICE)] == [10, 200, 210]


async def test_group_budget_is_shared_and_consumer_budget_is_not() -> None:
    b = budgets({"groups": {"developer": {"budgets": [
        {"tokens": 100, "window": 60, "per": "group", "tools": ["shared__*"]},
        {"tokens": 100, "window": 60, "per": "consumer", "tools": ["own__*"]},
    ]}}})
    await b.charge(ALICE, "shared__x", "u", 100, 0)
    error = await refused(b, BOB, "shared__x")  # Alice spent the group's budget for Bob too
    assert (error.data["scope"], error.data["subject"]) == ("group", "developer")

    await b.charge(ALICE, "own__x", "u", 100, 0)
    error = await refused(b, ALICE, "own__x")
    assert (error.data["scope"], error.data["subject"]) == ("consumer", "alice")
    await b.admit(BOB, "own__x", "u")  # Bob's own budget is untouched


async def test_consumer_and_top_level_budgets_and_several_windows() -> None:
    b = budgets({
        "groups": {"developer": {"budgets": [
            {"tokens": 1000, "window": "1 minute"},
            {"tokens": 150, "window": "1 day"},  # several windows at once: the smaller runs out first
        ]}},
        "consumers": {"ci-bot": {"budgets": [{"tokens": 10, "window": "1 hour"}]}},
        "budgets": [{"tokens": 500, "window": "1 day"}],
    })
    await b.charge(ALICE, "t", "u", 100, 60)
    error = await refused(b, ALICE)
    assert error.data["limit"] == "groups.developer.budgets[1]: 150 tokens per 1 day"

    bot = Consumer("ci-bot")
    await b.charge(bot, "t", "u", 11, 0)
    error = await refused(b, bot)
    assert error.data["limit"] == "consumers.ci-bot.budgets[0]: 10 tokens per 1 hour"
    assert error.data["scope"] == "consumer" and error.data["subject"] == "ci-bot"

    someone = Consumer("someone")
    await b.charge(someone, "t", "u", 500, 0)
    error = await refused(b, someone)
    assert error.data["limit"] == "budgets[0]: 500 tokens per 1 day"
    await b.admit(Consumer("someone-else"), "t", "u")  # top-level rules are per consumer


async def test_rules_apply_only_to_their_tools_and_upstreams() -> None:
    b = budgets({"groups": {"developer": {"budgets": [
        {"tokens": 10, "window": 60, "tools": ["github__*"], "upstreams": ["github"]}]}}})
    await b.charge(ALICE, "time__now", "time", 100, 100)  # not counted
    await b.admit(ALICE, "github__search", "github")
    await b.charge(ALICE, "github__search", "github", 10, 0)
    await refused(b, ALICE, "github__search", "github")
    await b.admit(ALICE, "time__now", "time")


async def test_limit_exceeded_data_and_message() -> None:
    b = budgets({"groups": {"developer": {"budgets": [{"tokens": 2000, "window": "1 minute"}]}}})
    await b.charge(ALICE, "t", "u", 1500, 513)
    error = await refused(b, ALICE)
    assert set(error.data) >= {"limit", "scope", "subject", "remaining", "reset_after_s"}
    assert error.data["limit"] == "groups.developer.budgets[0]: 2000 tokens per 1 minute"
    assert (error.data["scope"], error.data["subject"], error.data["remaining"]) == ("group", "developer", 0)
    assert 55 < error.data["reset_after_s"] <= 60
    assert error.kind == "tokens"
    json.dumps(error.data)  # goes into a JSON-RPC error as is
    message = str(error)
    assert "groups.developer.budgets[0]" in message and "2000 tokens per 1 minute" in message
    assert "group 'developer'" in message and "2013 of 2000" in message
    assert "resets in" in message and ("59 seconds" in message or "60 seconds" in message)


# -- rate limits ---------------------------------------------------------------------------------

async def test_rate_limit_per_consumer_and_per_group() -> None:
    b = budgets({"groups": {"developer": {"rate_limits": [
        {"requests": 3, "window": "10 seconds", "tools": ["mine__*"]},
        {"requests": 2, "window": "10 seconds", "per": "group", "tools": ["ours__*"]},
    ]}}})
    for _ in range(3):
        await b.admit(ALICE, "mine__x", "u")
    error = await refused(b, ALICE, "mine__x")
    assert error.kind == "requests"
    assert error.data["limit"] == "groups.developer.rate_limits[0]: 3 requests per 10 seconds"
    assert (error.data["scope"], error.data["subject"]) == ("consumer", "alice")
    assert 9 < error.data["reset_after_s"] <= 10
    assert "Rate limit groups.developer.rate_limits[0]" in str(error) and "retry in" in str(error)
    await b.admit(BOB, "mine__x", "u")  # Bob has his own rate

    await b.admit(ALICE, "ours__x", "u")
    await b.admit(BOB, "ours__x", "u")
    error = await refused(b, ALICE, "ours__x")
    assert (error.data["scope"], error.data["subject"]) == ("group", "developer")


async def test_rate_limit_window_passes(redis_url: str) -> None:
    for storage in ("memory://", redis_url):
        b = budgets({"storage": storage, "rate_limits": [{"requests": 2, "window": "1 second"}]})
        await b.reset()
        await b.admit(ALICE, "t", "u")
        await b.admit(ALICE, "t", "u")
        error = await refused(b, ALICE)
        await asyncio.sleep(error.data["reset_after_s"] + 0.1)
        await b.admit(ALICE, "t", "u")


async def test_no_rules_means_no_storage_access() -> None:
    class Exploding:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"storage touched: {name}")

    b = Budgets(PolicyConfig(), storage=Exploding())  # type: ignore[arg-type]
    await b.admit(ALICE, "t", "u")
    await b.charge(ALICE, "t", "u", 5, 5)


# -- cost ----------------------------------------------------------------------------------------

def test_cost_of() -> None:
    b = budgets({"costs": {
        "github__create_issue": {"per_call": 0.05},
        "github__*": {"per_call": 0.002, "per_1k_tokens": 0.01},
        "llm__*": {"per_1k_input_tokens": 3.0, "per_1k_output_tokens": 15.0},
    }, "cost_unit": "USD"})
    assert b.cost_of("github__search", 400, 600) == pytest.approx(0.002 + 0.01)
    assert b.cost_of("github__create_issue", 1000, 0) == pytest.approx(0.05)  # exact name wins
    assert b.cost_of("llm__complete", 1000, 2000) == pytest.approx(3.0 + 30.0)
    assert b.cost_of("time__now", 1000, 1000) == 0.0


# -- Redis shared by processes -------------------------------------------------------------------

WORKER = r"""
import asyncio, json, sys
from mcp_hub.auth.identity import Consumer
from mcp_hub.metering.budgets import Budgets, LimitExceeded
from mcp_hub.config.policy import PolicyConfig

async def main(url, name):
    b = Budgets(PolicyConfig.model_validate({"storage": url, "groups": {"team": {
        "budgets": [{"tokens": 100, "window": "1 minute", "tools": ["tok__*"]}],
        "rate_limits": [{"requests": 25, "window": "1 minute", "per": "group", "tools": ["rl__*"]}],
    }}}))
    me = Consumer(name, ("team",))
    assert await b.check()
    print("ready", flush=True)
    sys.stdin.readline()  # both processes start together when the test says go
    counts = {}
    for tool in ("tok__call", "rl__call"):
        admitted = refused = 0
        while refused < 10:
            try:
                hold = await b.admit(me, tool, "up", tokens_in=4)
            except LimitExceeded:
                refused += 1
                await asyncio.sleep(0.002)
                continue
            admitted += 1
            await asyncio.sleep(0.003)  # the call in flight
            await b.charge(me, tool, "up", 4, 6, hold=hold)
        counts[tool] = admitted
    print(json.dumps(counts))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_two_processes_share_one_budget(redis_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, redis_url, f"worker-{i}"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
        for i in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready", proc.stderr
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err.decode()
            results.append(json.loads(out.decode().strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    # Each process alone would get 10 calls (100 tokens at 10 a call). Together they get at most 10:
    # a call in flight holds its tokens (4 in + its output estimate) in Redis, where the other process
    # sees them, and no call uses more than it holds. (Before holds: up to one call more per process.)
    token_calls = sum(r["tok__call"] for r in results)
    assert 8 <= token_calls <= 10, results
    # Rate limits are counted atomically at admit: exactly the limit, across both processes.
    assert sum(r["rl__call"] for r in results) == 25, results


# -- storage down --------------------------------------------------------------------------------

def _dead_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}"


RULES: dict[str, Any] = {"groups": {"developer": {
    "budgets": [{"tokens": 100, "window": "1 minute"}],
    "rate_limits": [{"requests": 100, "window": "1 minute"}],
}}}


async def test_storage_down_fails_closed_by_default() -> None:
    errors: list[str] = []
    b = budgets({**RULES, "storage": _dead_redis()}, on_storage_error=errors.append)
    with pytest.raises(StorageUnavailable) as info:
        await b.admit(ALICE, "t", "u")
    error = info.value
    assert isinstance(error, LimitExceeded) and error.kind == "storage"
    assert error.data["subject"] == "alice" and error.data["remaining"] == 0
    assert "unreachable" in str(error) and "fail_open is false" in str(error)
    await b.charge(ALICE, "t", "u", 10, 10)  # never raises: the call already ran
    assert await b.remaining(ALICE) == []
    assert not await b.check()
    assert errors == ["admit", "charge", "remaining"]


async def test_storage_down_fails_open_when_configured() -> None:
    b = budgets({**RULES, "storage": _dead_redis(), "fail_open": True})
    await b.admit(ALICE, "t", "u")
    await b.charge(ALICE, "t", "u", 10, 10)


async def test_storage_password_is_not_in_errors() -> None:
    b = budgets({**RULES, "storage": f"redis://:hunter2@127.0.0.1:{free_port()}"})
    error = await refused(b, ALICE)
    assert "hunter2" not in str(error) and "hunter2" not in json.dumps(error.data)


async def test_storage_that_never_answers_times_out() -> None:
    with socket.socket() as silent:  # accepts connections, never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        b = budgets({**RULES, "storage": f"redis://127.0.0.1:{port}", "storage_timeout": 0.3})
        started = time.monotonic()
        with pytest.raises(StorageUnavailable):
            await b.admit(ALICE, "t", "u")
        assert time.monotonic() - started < 3.0


async def test_redis_going_away_mid_run(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url:
        closed = budgets({**RULES, "storage": url})
        opened = budgets({**RULES, "storage": url, "fail_open": True})
        await closed.admit(ALICE, "t", "u")
        await opened.admit(ALICE, "t", "u")
    with pytest.raises(StorageUnavailable):
        await closed.admit(ALICE, "t", "u")
    await opened.admit(ALICE, "t", "u")
