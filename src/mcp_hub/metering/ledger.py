"""Where budgets and rate limits are counted: one atomic operation per admission and per settlement.

`Budgets` (budgets.py) decides what a call counts against; a ledger keeps the numbers. Each call
makes at most two ledger operations, each one atomic over every rule the call counts against:

- `admit`: check every line (a rule bound to its subject) and, only if all of them pass, hit the
  rate limits and put the call's hold on every token budget. A refused call changes nothing.
- `settle`: release the call's holds and charge what it used, on every token budget at once.
- `release`: release the call's holds only (a call that failed, was cancelled or answered
  `input_required`).
- `peek`: read token budgets (the admin API, `Budgets.remaining`).

Two ledgers: `MemoryLedger` (one process; each operation runs without an `await`, so nothing else
runs inside it) and `RedisLedger` (one Lua script, `EVALSHA`, per operation: one round trip,
atomic on the server, so replicas sharing one Redis see each other's holds; sent at most once, see
resp.py).

What a token line counts (the same in both ledgers):

- spent: tokens charged in the window, by the rule's strategy: `fixed-window` (a counter that
  starts with the first charge and expires a window later), `sliding-window-counter` (this
  window's count plus the previous window's, weighted by how much of it is still inside the
  sliding window; windows aligned to the epoch) or `moving-window` (every charge of the last
  window, one entry per charge);
- held: the holds of calls in flight, each with a deadline (`hold_ttl`, at least the window) after
  which it lapses, so a replica that dies mid-call frees its holds; a hold is released by the call
  id and the amount it holds (both in its `Hold`);
- admission of a hold `h` passes when `spent + held + max(h, 1) <= limit`; or, when nothing is
  held and `spent < limit` (a call alone on a budget that still has room), with the hold cut to
  what is left (`limit - spent`). So after every admission `spent + held <= limit`.

A request line (a rate limit) passes when `count + 1 <= limit`; the hit is counted at admission.
Times are milliseconds since the epoch: the Redis server's clock in Redis, this host's in memory.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from limits.aio.storage import MemoryStorage, Storage
from limits.aio.storage.redis import RedisStorage
from limits.errors import ConfigurationError, StorageError

from mcp_hub.metering.resp import RespClient, RespError, encode_args, encode_head

__all__ = ["Admission", "Ledger", "Line", "MemoryLedger", "RedisLedger", "State", "ledger_for"]

# (spent or request count, held tokens, when the window frees up: ms since the epoch)
State = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Line:
    """One rule bound to one subject, as the ledger sees it. Built once per (rule, subject)."""

    key: str  # the counter: a string (fixed), a hash (sliding) or a sorted set of `<call id>[:<amount>]` (moving)
    sum_key: str  # moving-window token lines: the sum of the sorted set's amounts
    held_key: str  # token lines: the holds, a sorted set of `<call id>:<amount>` by deadline
    held_sum_key: str  # token lines: the sum of the holds
    strategy: str  # f (fixed-window), s (sliding-window-counter), m (moving-window)
    tokens: bool  # a token budget (holds, charges) or a rate limit (hits)
    window_ms: int
    limit: int
    hold_ttl_ms: int  # at least the window
    spec: str  # the static part of the line for the Lua script: "<strategy><t|r>:<window>:<limit>:<ttl>"


def make_line(prefix: str, name: str, strategy: str, tokens: bool, window_s: int, limit: int,
              hold_ttl_s: float) -> Line:
    """A line's keys (`<prefix>/{<name>}...`) and its spec; `name` says rule, strategy, window and subject."""
    window_ms = window_s * 1000
    ttl_ms = max(window_ms, int(hold_ttl_s * 1000))
    code = {"fixed-window": "f", "sliding-window-counter": "s", "moving-window": "m"}[strategy]
    unit = "t" if tokens else "r"
    base = f"{prefix}/{{{name}}}"  # one hash tag for the line's keys: one node of a cluster would hold them
    return Line(base, f"{base}:sum", f"{base}:held", f"{base}:held-sum", code, tokens, window_ms, limit, ttl_ms,
                f"{code}{unit}:{window_ms}:{limit}:{ttl_ms}")


@dataclass(frozen=True, slots=True)
class Admission:
    """A ledger's answer to `admit`: passed, or the index of the first line that refused."""

    refused: int  # -1 when admitted
    states: list[State]  # per line, after the admission (before it when refused)
    granted: list[int]  # per line: the tokens held (0 for request lines and refusals)


class Ledger(Protocol):
    prefix: str  # the start of every key

    async def admit(self, call_id: str, lines: Sequence[Line], holds: Sequence[int]) -> Admission: ...

    async def settle(self, call_id: str, lines: Sequence[Line], charges: Sequence[int],
                     held: Sequence[int]) -> list[State]:
        """Release what the call holds (`held`, per line; 0: nothing) and charge `charges`; the states
        after it (their `held` is not read: 0)."""
        ...

    async def release(self, call_id: str, lines: Sequence[Line], held: Sequence[int]) -> None: ...

    async def peek(self, lines: Sequence[Line]) -> list[State]: ...

    async def reset(self) -> None: ...


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- memory --------------------------------------------------------------------------------------


class _Fixed:
    __slots__ = ("count", "ends")

    def __init__(self) -> None:
        self.count = 0
        self.ends = 0


class _Sliding:
    __slots__ = ("current", "index", "previous", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.index = 0
        self.current = 0
        self.previous = 0


class _Moving:
    __slots__ = ("entries", "total", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.entries: deque[tuple[int, int]] = deque()  # (ms, amount), oldest first
        self.total = 0


class _Holds:
    __slots__ = ("by_call", "total")

    def __init__(self) -> None:
        self.by_call: dict[str, tuple[int, int]] = {}  # call id -> (amount, deadline ms), oldest first
        self.total = 0


class MemoryLedger:
    """Counters in this process's memory. Every operation runs to its end without an `await`:
    with one event loop nothing else runs inside it, so it is atomic without a lock."""

    prefix = "mcp-hub"

    def __init__(self) -> None:
        self._fixed: dict[str, _Fixed] = {}
        self._sliding: dict[str, _Sliding] = {}
        self._moving: dict[str, _Moving] = {}
        self._holds: dict[str, _Holds] = {}
        self._next_sweep = 0

    async def admit(self, call_id: str, lines: Sequence[Line], holds: Sequence[int]) -> Admission:
        now = _now_ms()
        self._sweep(now)
        states: list[State] = []
        granted: list[int] = []
        refused = -1
        for i, line in enumerate(lines):
            spent, reset_at = self._spent(line, now)
            held = self._held(line, now) if line.tokens else 0
            states.append((spent, held, reset_at))
            if refused >= 0:
                granted.append(0)
                continue
            if line.tokens:
                want = holds[i]
                if spent + held + max(want, 1) <= line.limit:
                    granted.append(want)
                elif held == 0 and spent < line.limit:
                    granted.append(min(want, line.limit - spent))
                else:
                    refused = i
                    granted.append(0)
            elif spent + 1 <= line.limit:
                granted.append(0)
            else:
                refused = i
                granted.append(0)
        if refused >= 0:
            return Admission(refused, states, [0] * len(lines))
        for i, line in enumerate(lines):
            spent, held, reset_at = states[i]
            if line.tokens:
                amount = granted[i]
                if amount > 0:
                    holds_of = self._holds.get(line.held_key)
                    if holds_of is None:
                        holds_of = self._holds[line.held_key] = _Holds()
                    holds_of.by_call[call_id] = (amount, now + line.hold_ttl_ms)
                    holds_of.total += amount
                    states[i] = (spent, held + amount, reset_at)
            else:
                states[i] = (spent + 1, 0, self._add(line, now, call_id, 1))
        return Admission(-1, states, granted)

    async def settle(self, call_id: str, lines: Sequence[Line], charges: Sequence[int],
                     held: Sequence[int]) -> list[State]:
        now = _now_ms()
        self._sweep(now)
        states: list[State] = []
        for line, amount, had in zip(lines, charges, held, strict=True):
            if had:
                self._release(line, call_id)
            if amount > 0:
                self._add(line, now, call_id, amount)
            spent, reset_at = self._spent(line, now)
            states.append((spent, 0, reset_at))
        return states

    async def release(self, call_id: str, lines: Sequence[Line], held: Sequence[int]) -> None:
        for line in lines:
            self._release(line, call_id)

    async def peek(self, lines: Sequence[Line]) -> list[State]:
        now = _now_ms()
        states: list[State] = []
        for line in lines:
            spent, reset_at = self._spent(line, now)
            states.append((spent, self._held(line, now) if line.tokens else 0, reset_at))
        return states

    async def reset(self) -> None:
        for table in (self._fixed, self._sliding, self._moving, self._holds):
            table.clear()

    # -- one line ----------------------------------------------------------------------------

    def _spent(self, line: Line, now: int) -> tuple[int, int]:
        """(spent in the window as the strategy counts it, when it frees up in ms)."""
        w = line.window_ms
        if line.strategy == "f":
            fixed = self._fixed.get(line.key)
            if fixed is None or fixed.ends <= now:
                return 0, now + w
            return fixed.count, fixed.ends
        if line.strategy == "s":
            index, current, previous = self._sliding_counts(line, now)
            return _sliding_state(now, w, index, current, previous)
        moving = self._moving.get(line.key)
        if moving is None:
            return 0, now
        entries = moving.entries
        while entries and entries[0][0] <= now - w:
            moving.total -= entries.popleft()[1]
        if not entries:
            moving.total = 0
            return 0, now
        return moving.total, entries[0][0] + w

    def _sliding_counts(self, line: Line, now: int) -> tuple[int, int, int]:
        index = now // line.window_ms
        sliding = self._sliding.get(line.key)
        if sliding is None:
            return index, 0, 0
        if sliding.index == index:
            return index, sliding.current, sliding.previous
        if sliding.index == index - 1:
            return index, 0, sliding.current
        return index, 0, 0

    def _add(self, line: Line, now: int, call_id: str, amount: int) -> int:
        """Count `amount` (a hit or a charge) in the window; returns when the window frees up."""
        w = line.window_ms
        if line.strategy == "f":
            fixed = self._fixed.get(line.key)
            if fixed is None:
                fixed = self._fixed[line.key] = _Fixed()
            if fixed.ends <= now:
                fixed.count, fixed.ends = 0, now + w
            fixed.count += amount
            return fixed.ends
        if line.strategy == "s":
            index, current, previous = self._sliding_counts(line, now)
            sliding = self._sliding.get(line.key)
            if sliding is None:
                sliding = self._sliding[line.key] = _Sliding(w)
            sliding.index, sliding.current, sliding.previous = index, current + amount, previous
            return _sliding_state(now, w, index, current + amount, previous)[1]
        moving = self._moving.get(line.key)
        if moving is None:
            moving = self._moving[line.key] = _Moving(w)
        moving.entries.append((now, amount))
        moving.total += amount
        return moving.entries[0][0] + w

    def _held(self, line: Line, now: int) -> int:
        holds = self._holds.get(line.held_key)
        if holds is None:
            return 0
        by_call = holds.by_call
        while by_call:  # lapse holds past their deadline, oldest first
            first = next(iter(by_call))
            amount, deadline = by_call[first]
            if deadline > now:
                break
            del by_call[first]
            holds.total -= amount
        if not by_call:
            holds.total = 0
        return holds.total

    def _release(self, line: Line, call_id: str) -> None:
        holds = self._holds.get(line.held_key)
        if holds is not None:
            found = holds.by_call.pop(call_id, None)
            if found is not None:
                holds.total -= found[0]

    def _sweep(self, now: int) -> None:
        """Once a minute, forget counters whose windows are over (many subjects would grow memory)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60_000
        for key in [k for k, v in self._fixed.items() if v.ends <= now]:
            del self._fixed[key]
        for key in [k for k, v in self._sliding.items() if v.index < now // v.window - 1]:
            del self._sliding[key]
        for key in [k for k, v in self._moving.items() if not v.entries or v.entries[-1][0] <= now - v.window]:
            del self._moving[key]
        for key in [k for k, v in self._holds.items() if not v.by_call]:
            del self._holds[key]


def _sliding_state(now: int, w: int, index: int, current: int, previous: int) -> tuple[int, int]:
    """The weighted count of a sliding window counter and when it next frees up (as `limits` says it)."""
    left = w - (now - index * w)  # ms until this window ends and the previous one stops counting
    spent = math.floor(previous * left / w) + current
    soonest: float | None = None
    if previous > 0:
        soonest = left % (w / previous)
    if current > 0 and (soonest is None or left < soonest):
        soonest = left
    return spent, now + int(soonest or 0)


# -- Redis ---------------------------------------------------------------------------------------

# ARGV: n lines, n specs ("<f|s|m><t|r>:<window ms>:<limit>:<hold ttl ms>"), then op (a admit,
# s settle, r release, p peek), call id, n amounts (admit: the hold wanted; settle: the charge), n
# more (settle, release: what the call holds). KEYS: four per line (counter, its sum, holds, their
# sum). What depends on the rules only comes first: the client encodes it once per set of lines. Returns a flat array: the refused line (1-based, 0: admitted), then per line
# spent, held, reset (ms), granted hold. Every write is the minimum: this runs twice per call.
_SCRIPT = r"""
local n = tonumber(ARGV[1])
local op, id = ARGV[n + 2], ARGV[n + 3]
if redis.replicate_commands then pcall(redis.replicate_commands) end  -- TIME below: Redis < 5 needs this
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function amount_of(member) return tonumber(string.match(member, ':(%d+)$')) end

-- Tokens held by calls in flight, after lapsing the holds past their deadline.
local function held_of(x)
  local held = tonumber(redis.call('GET', x.hs)) or 0
  local gone = redis.call('ZRANGEBYSCORE', x.hk, '-inf', now)
  if #gone > 0 then
    for _, m in ipairs(gone) do held = held - amount_of(m) end
    redis.call('ZREMRANGEBYSCORE', x.hk, '-inf', now)
    if held > 0 then redis.call('SET', x.hs, held, 'KEEPTTL') else held = 0; redis.call('DEL', x.hs) end
  end
  return held
end

local function sliding_counts(x)
  local idx = math.floor(now / x.w)
  local v = redis.call('HMGET', x.k, 'i', 'c', 'p')
  local i = tonumber(v[1])
  if i == idx then return idx, tonumber(v[2]) or 0, tonumber(v[3]) or 0 end
  if i == idx - 1 then return idx, 0, tonumber(v[2]) or 0 end
  return idx, 0, 0
end

local function sliding_state(w, idx, c, p)
  local left = w - (now - idx * w)
  local spent = math.floor(p * left / w) + c
  local soon = nil
  if p > 0 then soon = math.fmod(left, w / p) end
  if c > 0 and (soon == nil or left < soon) then soon = left end
  return spent, now + math.floor(soon or 0)
end

local function first_plus_window(x)
  local first = redis.call('ZRANGE', x.k, 0, 0, 'WITHSCORES')
  if #first == 0 then return now end
  return tonumber(first[2]) + x.w
end

-- (spent or count in the window, when it frees up); a request line's moving window leaves the
-- second to `first_plus_window`, asked only when it refuses.
local function spent_of(x)
  if x.s == 'f' then
    local ttl = redis.call('PTTL', x.k)
    if ttl == -2 then return 0, now + x.w end
    if ttl < 0 then ttl = x.w end
    return tonumber(redis.call('GET', x.k)) or 0, now + ttl
  elseif x.s == 's' then
    return sliding_state(x.w, sliding_counts(x))
  end
  local from = now - x.w
  if not x.tok then
    redis.call('ZREMRANGEBYSCORE', x.k, '-inf', from)
    return redis.call('ZCARD', x.k), 0
  end
  local spent = tonumber(redis.call('GET', x.mk)) or 0
  local old = redis.call('ZRANGEBYSCORE', x.k, '-inf', from)
  if #old > 0 then
    for _, m in ipairs(old) do spent = spent - amount_of(m) end
    redis.call('ZREMRANGEBYSCORE', x.k, '-inf', from)
    if spent > 0 then redis.call('SET', x.mk, spent, 'KEEPTTL') else spent = 0; redis.call('DEL', x.mk) end
  end
  if spent == 0 then return 0, now end
  return spent, first_plus_window(x)
end

-- Count a hit or a charge; returns (spent, reset) after it, given them before it.
local function add(x, amount, spent, reset)
  if x.s == 'f' then
    local v = redis.call('INCRBY', x.k, amount)
    local ttl = redis.call('PTTL', x.k)
    if ttl < 0 then ttl = x.w; redis.call('PEXPIRE', x.k, x.w) end
    return v, now + ttl
  elseif x.s == 's' then
    local idx, c, p = sliding_counts(x)
    redis.call('HSET', x.k, 'i', idx, 'c', c + amount, 'p', p)
    redis.call('PEXPIRE', x.k, 2 * x.w)
    return sliding_state(x.w, idx, c + amount, p)
  elseif not x.tok then
    redis.call('ZADD', x.k, now, id)
    redis.call('PEXPIRE', x.k, x.w)
    return spent + amount, reset
  end
  redis.call('ZADD', x.k, now, id .. ':' .. amount)
  redis.call('PEXPIRE', x.k, x.w)
  redis.call('SET', x.mk, spent + amount, 'PX', x.w)
  if spent == 0 then reset = now + x.w end
  return spent + amount, reset
end

local lines = {}
for i = 1, n do
  local s, u, w, l, ttl = string.match(ARGV[1 + i], '^(%a)(%a):(%d+):(%d+):(%d+)$')
  lines[i] = {s = s, tok = (u == 't'), w = tonumber(w), limit = tonumber(l), ttl = tonumber(ttl),
              k = KEYS[4 * i - 3], mk = KEYS[4 * i - 2], hk = KEYS[4 * i - 1], hs = KEYS[4 * i],
              amount = tonumber(ARGV[n + 3 + i]), had = tonumber(ARGV[2 * n + 3 + i])}
end

local out = {0}
if op == 'r' or op == 's' then
  for i = 1, n do
    local x = lines[i]
    if x.had > 0 and redis.call('ZREM', x.hk, id .. ':' .. x.had) == 1 then
      if redis.call('DECRBY', x.hs, x.had) <= 0 then redis.call('DEL', x.hs) end
    end
    if op == 's' then
      local spent, reset
      if x.s == 'm' then
        spent, reset = spent_of(x)
        if x.amount > 0 then spent, reset = add(x, x.amount, spent, reset) end
      elseif x.amount > 0 then
        spent, reset = add(x, x.amount, 0, 0)
      else
        spent, reset = spent_of(x)
      end
      for _, v in ipairs({spent, 0, reset, 0}) do out[#out + 1] = v end
    end
  end
  return out
end

local refused = 0
for i = 1, n do
  local x = lines[i]
  x.spent, x.reset = spent_of(x)
  x.held, x.grant = 0, 0
  if x.tok then x.held = held_of(x) end
  if op == 'a' and refused == 0 then
    if x.tok then
      if x.spent + x.held + math.max(x.amount, 1) <= x.limit then
        x.grant = x.amount
      elseif x.held == 0 and x.spent < x.limit then
        x.grant = math.min(x.amount, x.limit - x.spent)
      else
        refused = i
      end
    elseif x.spent + 1 > x.limit then
      refused = i
      if x.s == 'm' then x.reset = first_plus_window(x) end
    end
  end
end
if op == 'a' and refused == 0 then
  for i = 1, n do
    local x = lines[i]
    if not x.tok then
      x.spent, x.reset = add(x, 1, x.spent, x.reset)
    elseif x.grant > 0 then
      redis.call('ZADD', x.hk, now + x.ttl, id .. ':' .. x.grant)
      redis.call('PEXPIRE', x.hk, x.ttl)
      x.held = x.held + x.grant
      redis.call('SET', x.hs, x.held, 'PX', x.ttl)
    end
  end
end
out[1] = refused
for i = 1, n do
  local x = lines[i]
  local g = x.grant
  if refused > 0 then g = 0 end
  for _, v in ipairs({x.spent, x.held, x.reset, g}) do out[#out + 1] = v end
end
return out
"""


class RedisLedger:
    """Counters in Redis, every operation one `EVALSHA` of one Lua script (one round trip, atomic).

    Why not `limits` here: its strategies hit or read one counter per call, so a call with four rules
    costs four or more round trips, nothing makes them all-or-nothing, and it has no notion of a hold.
    `limits` still opens the storage (its `RedisStorage` parses the URI; `check` and `reset` are its),
    and the keys share its prefix so `Storage.reset` clears them too. The script goes over the ledger's
    own connection (resp.py: why not a library client).
    """

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        options = getattr(storage, "options", {}) or {}
        timeout = float(options.get("stream_timeout", 1.0))
        self._client = RespClient(storage.bridge.uri, connect_timeout=float(options.get("connect_timeout", timeout)),
                                  timeout=timeout)
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()
        self.prefix = storage.bridge.prefixed_key("mcp-hub")
        self._static: dict[tuple[Line, ...], tuple[bytes, tuple[str | int, ...]]] = {}

    def _head(self, lines: Sequence[Line]) -> tuple[bytes, tuple[str | int, ...]]:
        """The EVALSHA command up to the op, encoded (it depends on the lines only), and its arguments."""
        key = tuple(lines)
        found = self._static.get(key)
        if found is None:
            n = len(lines)
            keys: list[str] = []
            for line in lines:
                keys += (line.key, line.sum_key, line.held_key, line.held_sum_key)
            after_script: tuple[str | int, ...] = (4 * n, *keys, n, *(x.spec for x in lines))
            found = (encode_head(6 + 7 * n, ("EVALSHA", self._sha, *after_script)), after_script)
            if len(self._static) > 10_000:
                self._static.clear()
            self._static[key] = found
        return found

    async def _run(self, op: str, call_id: str, lines: Sequence[Line], amounts: Sequence[int],
                   held: Sequence[int] | None = None) -> list[int]:
        head, after_script = self._head(lines)
        tail = (op, call_id, *amounts, *(held if held is not None else [0] * len(lines)))
        try:
            try:
                reply = await self._client.send(head + encode_args(tail))
            except RespError as exc:
                if exc.code != "NOSCRIPT":
                    raise
                # A restarted or flushed Redis: EVAL runs the script (NOSCRIPT ran nothing) and caches it.
                reply = await self._client.call("EVAL", _SCRIPT, *after_script, *tail)
        except RespError as exc:
            raise StorageError(exc) from exc
        return reply  # type: ignore[no-any-return]

    async def admit(self, call_id: str, lines: Sequence[Line], holds: Sequence[int]) -> Admission:
        reply = await self._run("a", call_id, lines, holds)
        states, granted = _unpack(reply)
        return Admission(reply[0] - 1, states, granted)

    async def settle(self, call_id: str, lines: Sequence[Line], charges: Sequence[int],
                     held: Sequence[int]) -> list[State]:
        return _unpack(await self._run("s", call_id, lines, charges, held))[0]

    async def release(self, call_id: str, lines: Sequence[Line], held: Sequence[int]) -> None:
        await self._run("r", call_id, lines, [0] * len(lines), held)

    async def peek(self, lines: Sequence[Line]) -> list[State]:
        return _unpack(await self._run("p", "-", lines, [0] * len(lines)))[0]

    async def reset(self) -> None:
        await self.storage.reset()


def _unpack(reply: list[int]) -> tuple[list[State], list[int]]:
    states: list[State] = []
    granted: list[int] = []
    for i in range(1, len(reply), 4):
        states.append((reply[i], reply[i + 1], reply[i + 2]))
        granted.append(reply[i + 3])
    return states, granted


def ledger_for(storage: Storage) -> MemoryLedger | RedisLedger:
    """The ledger over a `limits` storage: memory or Redis (the schemes the policy config accepts)."""
    if isinstance(storage, MemoryStorage):
        return MemoryLedger()
    if isinstance(storage, RedisStorage) and storage.MODE == "BASIC":
        return RedisLedger(storage)
    raise ConfigurationError(f"budgets cannot be counted in {type(storage).__name__}: use memory:// or redis://")
