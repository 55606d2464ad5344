"""The two ledgers count alike: the Redis script (metering/ledger.py `_SCRIPT`) and `MemoryLedger` are given
the same operations and must give the same answers.

- Random sequences of admissions, settlements, releases and peeks over lines of every strategy (fixed
  window, sliding window counter, moving window), token budgets and rate limits, with small limits so
  that refusals, cut holds and charges past the limit all happen: refused line, granted holds, spent and
  held must be equal after every operation, and the reset times within the two clocks' difference.
- Windows and holds that end while the test runs: moving-window entries leave the window (one at a time,
  and more than one LRANGE chunk at once), holds of calls that never settle lapse, and every Redis key the
  ledger writes has an expiry, a moving window's entries included when they are written again after emptying.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import anyio
import pytest
import redis.asyncio as aioredis

from mcp_hub.config.policy import PolicyConfig
from mcp_hub.metering.budgets import Budgets
from mcp_hub.metering.ledger import Line, MemoryLedger, RedisLedger, State, make_line
from tests.support.processes import redis_server

STRATEGIES = ("fixed-window", "sliding-window-counter", "moving-window")
CLOCKS_MS = 250  # the Redis server's clock and this process's are read at different moments


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


def _redis_ledger(url: str) -> RedisLedger:
    ledger = Budgets(PolicyConfig.model_validate({"storage": url})).ledger
    assert isinstance(ledger, RedisLedger)
    return ledger


def _lines(prefix: str, tag: str, window_s: int, hold_ttl_s: float, token_limit: int, request_limit: int) -> list[Line]:
    lines = []
    for strategy in STRATEGIES:
        lines.append(make_line(prefix, f"{tag}/t/{strategy}", strategy, True, window_s, token_limit, hold_ttl_s))
        lines.append(make_line(prefix, f"{tag}/r/{strategy}", strategy, False, window_s, request_limit, hold_ttl_s))
    return lines


def _same_states(ours: list[State], theirs: list[State], where: str, lines: list[Line] | None = None,
                 refused: int = -1) -> None:
    assert [s[:2] for s in ours] == [s[:2] for s in theirs], where
    for i, ((_, _, reset_a), (_, _, reset_b)) in enumerate(zip(ours, theirs, strict=True)):
        if lines is not None and lines[i].strategy == "m" and not lines[i].tokens and i != refused:
            continue  # the script reads a rate limit's moving-window reset only for the line that refuses
        assert abs(reset_a - reset_b) <= CLOCKS_MS, where


@pytest.mark.parametrize("seed", range(6))
async def test_random_operations_give_the_same_answers(redis_url: str, seed: int) -> None:
    rnd = random.Random(seed)
    redis_ledger = _redis_ledger(redis_url)
    memory = MemoryLedger()
    # A window of a day: nothing leaves it while the test runs (a sliding window's boundary is midnight UTC).
    every = _lines(redis_ledger.prefix, f"model-{seed}-{rnd.random()}", 86_400, 600, 60, 7)
    open_calls: dict[str, tuple[list[Line], list[int]]] = {}
    for step in range(250):
        where = f"seed {seed}, step {step}"
        op = rnd.choice(["admit", "admit", "admit", "settle", "settle", "release", "peek"])
        if op == "admit" or not open_calls:
            lines = rnd.sample(every, rnd.randint(1, 4))
            lines.sort(key=lambda line: not line.tokens)  # token lines first, as Budgets orders them
            holds = [rnd.choice([0, 1, 5, 12, 30, 80]) if line.tokens else 0 for line in lines]
            if rnd.random() < 0.4:  # a hold that fills the room left exactly, or passes it by one
                states = await memory.peek(lines)
                holds = [max(line.limit - spent - held + rnd.choice([0, 0, 1]), 0) if line.tokens else 0
                         for line, (spent, held, _) in zip(lines, states, strict=True)]
            call = f"call-{step}"
            got = await redis_ledger.admit(call, lines, holds)
            want = await memory.admit(call, lines, holds)
            assert (got.refused, got.granted) == (want.refused, want.granted), where
            _same_states(got.states, want.states, where, lines, got.refused)
            if got.refused < 0:
                granted = [(line, g) for line, g in zip(lines, got.granted, strict=True) if line.tokens]
                open_calls[call] = ([line for line, _ in granted], [g for _, g in granted])
        elif op == "peek":
            lines = rnd.sample(every, 3)
            _same_states(await redis_ledger.peek(lines), await memory.peek(lines), where, lines)
        else:
            call = rnd.choice(sorted(open_calls))
            lines, held = open_calls.pop(call)
            if not lines:
                continue
            if op == "release":
                await redis_ledger.release(call, lines, held)
                await memory.release(call, lines, held)
            else:
                charges = [rnd.choice([0, 3, 10, 25, 70]) for _ in lines]
                if rnd.random() < 0.3:  # a charge that takes the window to its limit exactly
                    states = await memory.peek(lines)
                    charges = [max(line.limit - spent, 0) for line, (spent, _, _) in zip(lines, states, strict=True)]
                _same_states(await redis_ledger.settle(call, lines, charges, held),
                             await memory.settle(call, lines, charges, held), where)
    # In the end both ledgers hold the same for every line.
    _same_states(await redis_ledger.peek(every), await memory.peek(every), f"seed {seed}, the end", every)


async def _both(redis_ledger: RedisLedger, memory: MemoryLedger, line: Line, op: str, call: str,
                amount: int = 0, held: int = 0) -> list[State]:
    """One operation on both ledgers; their states after it, checked equal."""
    if op == "admit":
        got = await redis_ledger.admit(call, [line], [amount])
        want = await memory.admit(call, [line], [amount])
        assert (got.refused, got.granted) == (want.refused, want.granted)
        states = (got.states, want.states)
    elif op == "settle":
        states = (await redis_ledger.settle(call, [line], [amount], [held]),
                  await memory.settle(call, [line], [amount], [held]))
    else:
        states = (await redis_ledger.peek([line]), await memory.peek([line]))
    _same_states(*states, f"{op} {call}")
    return states[0]


async def test_moving_window_entries_leave_the_window(redis_url: str) -> None:
    redis_ledger, memory = _redis_ledger(redis_url), MemoryLedger()
    line = make_line(redis_ledger.prefix, f"expiry-{random.random()}", "moving-window", True, 1, 10_000, 0)
    # 40 charges (more than one LRANGE chunk of 32), then one more 0.6 s later.
    for i in range(40):
        await _both(redis_ledger, memory, line, "settle", f"a{i}", amount=10)
    await anyio.sleep(0.6)
    [(spent, _, _)] = await _both(redis_ledger, memory, line, "settle", "b", amount=7)
    assert spent == 407
    await anyio.sleep(0.55)  # the 40 have left the window, the last one has not
    [(spent, _, reset)] = await _both(redis_ledger, memory, line, "peek", "-")
    assert spent == 7
    await anyio.sleep(0.5)  # now it has too: the log is empty and gone
    [(spent, _, _)] = await _both(redis_ledger, memory, line, "peek", "-")
    assert spent == 0
    await _both(redis_ledger, memory, line, "settle", "c", amount=5)  # counting again after the window emptied
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{line.key.split('{')[1].split('}')[0]}*")]
        assert keys
        for key in keys:
            assert 0 < await client.pttl(key) <= 2 * 1000, key
    finally:
        await client.aclose()


async def test_holds_of_calls_that_never_settle_lapse(redis_url: str) -> None:
    redis_ledger, memory = _redis_ledger(redis_url), MemoryLedger()
    for strategy in STRATEGIES:
        line = make_line(redis_ledger.prefix, f"lapse-{strategy}-{random.random()}", strategy, True, 1, 100, 0)
        [(_, held, _)] = (await redis_ledger.admit("x1", [line], [40])).states
        await memory.admit("x1", [line], [40])
        assert held == 40
        await _both(redis_ledger, memory, line, "admit", "x2", amount=50)  # both in flight: 90 held
        refused = await redis_ledger.admit("x3", [line], [20])
        assert refused.refused == 0 and refused.states[0][1] == 90
        await memory.admit("x3", [line], [20])
        await anyio.sleep(1.1)  # the holds' deadline (the window: 1 s) passes
        [(_, held, _)] = await _both(redis_ledger, memory, line, "admit", "x4", amount=20)
        assert held == 20
        # A hold that lapsed is not taken off a second time when its call settles late.
        [(spent, _, _)] = await _both(redis_ledger, memory, line, "settle", "x1", amount=30, held=40)
        [(_, held, _)] = await _both(redis_ledger, memory, line, "peek", "-")
        assert (spent, held) == (30, 20)


async def test_every_key_the_ledger_writes_expires(redis_url: str) -> None:
    redis_ledger = _redis_ledger(redis_url)
    tag = f"ttl-{random.random()}"
    lines = _lines(redis_ledger.prefix, tag, 60, 5, 1000, 100)
    token_lines = [line for line in lines if line.tokens]
    answer = await redis_ledger.admit("t1", lines, [10 if line.tokens else 0 for line in lines])
    assert answer.refused == -1
    await redis_ledger.settle("t1", token_lines, [5] * len(token_lines), [10] * len(token_lines))
    await redis_ledger.admit("t2", token_lines, [10] * len(token_lines))  # a hold left in place
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"*{tag}*")]
        assert len(keys) >= len(lines)
        for key in keys:
            ttl = await client.pttl(key)
            # Twice the line's life at most: its window (two for a sliding window counter), or its holds'.
            life = 2 * 60 * 1000 if b"sliding" in key else 60 * 1000
            assert 0 < ttl <= 2 * life, key
    finally:
        await client.aclose()
