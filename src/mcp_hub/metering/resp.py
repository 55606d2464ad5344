"""A minimal Redis client for the budget ledger: one pipelined connection, RESP2, no retries.

Why not a library client. The ledger's script is not idempotent (it puts holds, counts hits), so a
command must reach Redis at most once. `coredis`, the client `limits[async-redis]` installs (and the
one `limits` uses), re-sends the commands in flight on a connection when an error reply arrives
among them: with concurrent EVALSHAs and one NOSCRIPT error (a restarted Redis), some scripts ran
twice. The `redis` package is not a dependency of mcp-hub (only of its tests). This client sends
each command once, in order, on one connection, matches replies in order, and never re-sends: a
broken connection fails the commands in flight (the ledger treats that as the storage being
unreachable) and the next command opens a new one. It is also about five times cheaper in CPU per
command than either library, which matters on the call path.

Supported: `redis://[user:password@]host[:port][/db]`, `rediss://` (TLS, verified with the system
CA store; `?ssl_cert_reqs=none` skips verification), `unix:///path?db=N`.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["RespClient", "RespError", "encode_args", "encode_head"]


class RespError(Exception):
    """An error reply from Redis (`-ERR ...`, `-NOSCRIPT ...`)."""

    @property
    def code(self) -> str:
        return str(self.args[0]).split(" ", 1)[0] if self.args else ""


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from `buf` at `pos`: (value, next position); `_Incomplete` when more bytes are needed."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    if kind == 58:  # ':' integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 42:  # '*' array
        n = int(buf[pos + 1:end])
        pos = end + 2
        if n < 0:
            return None, pos
        items: list[Any] = []
        for _ in range(n):
            if buf.startswith(b":", pos):  # integers inline: the ledger's replies are arrays of them
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    raise _Incomplete
                items.append(int(buf[pos + 1:end]))
                pos = end + 2
            else:
                item, pos = _parse(buf, pos)
                items.append(item)
        return items, pos
    if kind == 36:  # '$' bulk string
        n = int(buf[pos + 1:end])
        pos = end + 2
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return bytes(buf[pos:pos + n]), pos + n + 2
    if kind == 43:  # '+' simple string
        return bytes(buf[pos + 1:end]), end + 2
    if kind == 45:  # '-' error
        return RespError(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
    raise ConnectionError(f"unexpected reply from Redis: {bytes(buf[pos:end])[:40]!r}")


def encode_args(args: tuple[Any, ...] | list[Any]) -> bytes:
    """Arguments of a command, encoded (without the count that starts the command)."""
    out = []
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def encode_head(count: int, args: tuple[Any, ...] | list[Any]) -> bytes:
    """The start of a command of `count` arguments: the count and the first `args`, encoded."""
    return b"*%d\r\n" % count + encode_args(args)


def _encode(args: tuple[Any, ...]) -> bytes:
    return encode_head(len(args), args)


class _Protocol(asyncio.Protocol):
    """Replies are matched to commands in the order the commands were written."""

    def __init__(self) -> None:
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.pending: list[bytes] = []  # written together once this turn of the event loop ends
        # One timer for every command in flight (not one per command): it fires when the oldest unanswered
        # command is due, fails those past their time, and is set again for the next one.
        self.watchdog: asyncio.TimerHandle | None = None

    def watch(self, loop: asyncio.AbstractEventLoop, deadline: float, timeout: float) -> None:
        """Fail every command unanswered `timeout` seconds after it was sent (TimeoutError); `deadline` is the
        newest command's, the earliest unless a timer is set already."""
        if self.watchdog is None:
            self.watchdog = loop.call_later(max(deadline - time.monotonic(), 0.0), self._expire, loop, timeout)

    def _expire(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.watchdog = None
        now = time.monotonic()
        for future, sent in self.waiting:  # oldest first; an answered command has left the queue
            if now - sent < timeout:
                self.watch(loop, sent + timeout, timeout)
                return
            if not future.done():
                future.set_exception(TimeoutError("Redis did not answer in time"))

    def flush(self) -> None:
        """Write the commands of this turn of the event loop at once: one send for many calls in flight."""
        pending, self.pending = self.pending, []
        if self.transport is not None and self.lost is None:
            self.transport.write(b"".join(pending))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        pos = 0
        try:
            while self.waiting:
                value, pos = _parse(buf, pos)
                future = self.waiting.popleft()[0]
                if not future.done():  # a caller that gave up (cancelled) leaves its reply unread
                    if isinstance(value, RespError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except _Incomplete:
            pass
        except ConnectionError as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.close()
            return
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("Redis closed the connection"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.waiting:
            future = self.waiting.popleft()[0]
            if not future.done():
                future.set_exception(ConnectionError(f"Redis connection lost: {exc}"))


class RespClient:
    """Commands over one connection, opened on first use and again after it broke."""

    def __init__(self, uri: str, *, connect_timeout: float = 1.0, timeout: float = 1.0) -> None:
        self.uri = uri
        self.connect_timeout = connect_timeout
        # A command not answered within `timeout` fails with TimeoutError; a connection whose oldest
        # unanswered command is older than that is closed (Redis hung) and the next command opens another.
        self.timeout = max(timeout, 0.01)
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        parsed = urlparse(uri)
        query = parse_qs(parsed.query)
        self._unix = parsed.scheme == "unix"
        self._path = parsed.path
        self._host = parsed.hostname or "localhost"
        self._port = parsed.port or 6379
        self._tls = parsed.scheme == "rediss"
        self._verify = query.get("ssl_cert_reqs", ["required"])[0].lower() not in ("none", "cert_none")
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        db = query.get("db", [""])[0] or ("" if self._unix else parsed.path.lstrip("/"))
        self._db = int(db) if db else 0

    async def call(self, *args: Any) -> Any:
        """Send one command, wait for its reply; RespError for an error reply, TimeoutError when it does not
        come in time, ConnectionError/OSError when the connection fails. Never re-sent."""
        return await self.send(_encode(args))

    async def send(self, command: bytes) -> Any:
        """`call` with the command already encoded."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None or self._loop is not asyncio.get_running_loop():
            protocol = await self._connect()
        elif protocol.waiting and time.monotonic() - protocol.waiting[0][1] > self.timeout:
            self.close()  # the oldest command has waited too long: do not queue behind it
            protocol = await self._connect()
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        sent = time.monotonic()
        protocol.waiting.append((future, sent))
        if not protocol.pending:
            loop.call_soon(protocol.flush)
        protocol.pending.append(command)
        protocol.watch(loop, sent + self.timeout, self.timeout)
        return await future

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._connecting is not None and self._loop is loop:
            return await asyncio.shield(self._connecting)
        self.close()
        self._loop = loop
        self._connecting = loop.create_future()
        try:
            protocol = await asyncio.wait_for(self._open(loop), self.connect_timeout)
        except BaseException as exc:
            self._connecting.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            self._connecting.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            self._connecting = None
            raise
        self._protocol = protocol
        self._connecting.set_result(protocol)
        self._connecting = None
        return protocol

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        if self._unix:
            _, protocol = await loop.create_unix_connection(_Protocol, self._path)
        else:
            context = None
            if self._tls:
                context = ssl.create_default_context()
                if not self._verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            _, protocol = await loop.create_connection(_Protocol, self._host, self._port, ssl=context)
        handshake: list[tuple[Any, ...]] = []
        if self._password is not None:
            handshake.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            handshake.append(("SELECT", self._db))
        for command in handshake:
            future: asyncio.Future[Any] = loop.create_future()
            protocol.waiting.append((future, time.monotonic()))
            assert protocol.transport is not None
            protocol.transport.write(_encode(command))
            try:
                await future
            except BaseException:
                if protocol.transport is not None:
                    protocol.transport.close()
                raise
        return protocol

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            try:
                protocol.transport.close()
            except RuntimeError:  # opened on an event loop that is closed by now (tests run one per test)
                protocol._fail(ConnectionError("the event loop closed"))
