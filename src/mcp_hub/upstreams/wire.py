"""A lean HTTP/1.1 client for the direct call path: one write per request, pooled keep-alive connections.

The general-purpose client (httpx2) spends more CPU per request than the rest of a relayed call
together, and writes a request's head and body in two system calls. The direct path only ever
POSTs a small JSON body to a known upstream URL and reads a JSON or SSE answer, so this client does
just that: `http` and `https` (with httpx2's TLS defaults), answers parsed by httptools (llhttp):
Content-Length, chunked and read-to-close bodies, handed on as they arrive; keep-alive connections
dropped after `keepalive_expiry` seconds idle, and one retry on a fresh connection when a reused
one turns out to have been closed by the server before it answered anything (the keep-alive race).
Redirects, proxies and HTTP/2 are not spoken; an upstream that needs them is served through the
SDK client instead (`Pool.usable`).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httptools
import httpx2

_MAX_HEAD = 64 * 1024
_READ = 64 * 1024
# What llhttp raises on bytes it will not take (an upgrade is not spoken here either).
_PARSE_ERRORS = (httptools.HttpParserError, httptools.HttpParserUpgrade)


class WireError(Exception):
    """The exchange failed below HTTP semantics: connect, reset, a malformed answer. `closed`: the
    upstream closed or reset the connection (it went away, or crashed)."""

    def __init__(self, message: str, *, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    reused: bool = False


class _Answer:
    """One answer as httptools parses it: its callbacks fill the head, and the body pieces wait here
    until the reader takes them."""

    __slots__ = ("parser", "status", "headers", "body", "head_done", "head_size", "done", "keep", "to_eof", "extra",
                 "broken")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.head_done = False
        self.head_size = 0
        self.done = False
        self.keep = False
        self.to_eof = False
        self.extra = False
        self.broken: Exception | None = None

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except _PARSE_ERRORS:
            if not self.done:
                raise
            self.extra = True  # garbage past the answer's end: the answer stands, the connection is dropped

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True  # a second answer nobody asked for: the connection's state is unknown

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # a trailer after a chunked body: callers read only the head's headers
        self.head_size += len(name) + len(value) + 4
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1").strip()
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        if self.done:
            return  # the head of that unasked-for second answer
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.headers = {}  # an interim answer (100 Continue, 103 Early Hints): the real one follows
            return
        self.status = status
        self.head_done = True
        # HTTP/1.0 peers are not reused even when they offer keep-alive (as httpx2 does not).
        self.keep = parser.should_keep_alive() and parser.get_http_version() == "1.1"
        self.to_eof = ("content-length" not in self.headers
                       and "chunked" not in self.headers.get("transfer-encoding", "").lower())

    def on_body(self, data: bytes) -> None:
        if not self.done:
            self.body.append(data)

    def on_message_complete(self) -> None:
        if self.head_done:
            self.done = True


class Response:
    """An answer being read: status, headers, then the body (whole, or chunk by chunk as it arrives)."""

    def __init__(self, pool: Pool, conn: _Conn, answer: _Answer) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self._answer = answer
        self.status = answer.status
        self.headers = answer.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None
        answer = self._answer
        try:
            while True:
                if answer.body:
                    pieces, answer.body = answer.body, []
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
                    continue
                if answer.done:
                    break
                if answer.broken is not None:
                    raise answer.broken
                data = await conn.reader.read(_READ)
                if not data:
                    if answer.to_eof:
                        break  # the body ran to the end of the connection, which is spent (`done` stays False)
                    raise WireError("the upstream's answer broke off: the connection closed", closed=True)
                answer.feed(data)
        except (OSError, *_PARSE_ERRORS) as exc:
            closed = isinstance(exc, ConnectionError)
            raise WireError(f"the upstream's answer broke off: {exc or type(exc).__name__}",
                            closed=closed) from None
        self.release()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool when it was read to its end."""
        conn, self._conn = self._conn, None
        if conn is not None:
            answer = self._answer
            self._pool._give_back(conn, answer.keep and answer.done and not answer.extra)

    def close(self) -> None:
        """Abandon the answer (cancelled, or not read to the end): the connection is closed."""
        self._answer.keep = False
        self.release()


class Pool:
    """Keep-alive connections to one origin."""

    def __init__(
        self, url: str, *, keepalive_expiry: float = 2.0, max_idle: int = 64, max_connections: int = 512
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc.rpartition("@")[2]
        self.keepalive_expiry = keepalive_expiry
        self.max_idle = max_idle
        self._idle: list[_Conn] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._ssl: Any = None
        # Connections in use at most; a request past it waits for one to come back (as httpx's pool does).
        self._slots = asyncio.Semaphore(max_connections)

    @staticmethod
    def usable(url: str) -> bool:
        """Whether this client can reach `url` the way httpx2 would: http(s), no proxy in between."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
            return False
        proxies = urllib.request.getproxies()
        if not proxies.get(parts.scheme) and not proxies.get("all"):
            return True
        return bool(urllib.request.proxy_bypass(parts.hostname))

    async def post(self, body: bytes, headers: dict[str, str]) -> Response:
        head = [f"POST {self.target} HTTP/1.1\r\nhost: {self.authority}\r\ncontent-length: {len(body)}\r\n"]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise WireError(f"header {name!r} holds a line break")
            head.append(f"{name}: {value}\r\n")
        head.append("\r\n")
        request = "".join(head).encode("latin-1") + body
        await self._slots.acquire()
        try:
            return await self._exchange(request)
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(self, request: bytes) -> Response:
        for attempt in range(2):
            conn = await self._connection(fresh=attempt > 0)
            try:
                conn.writer.write(request)
                answer = await self._head(conn.reader)
            except _ClosedEarly:
                conn.writer.close()
                if conn.reused and attempt == 0:
                    continue  # the server had closed the idle connection: the request never reached it
                raise WireError("the upstream closed the connection without answering", closed=True) from None
            except _PARSE_ERRORS as exc:
                conn.writer.close()
                raise WireError(f"the upstream's answer is malformed: {exc or type(exc).__name__}") from None
            except OSError as exc:
                conn.writer.close()
                raise WireError(f"the exchange with the upstream failed: {exc or type(exc).__name__}",
                                closed=isinstance(exc, ConnectionError)) from None
            except BaseException:
                conn.writer.close()
                raise
            return Response(self, conn, answer)
        raise WireError("the upstream closed the connection without answering")  # pragma: no cover

    async def _connection(self, *, fresh: bool) -> _Conn:
        now = time.monotonic()
        while self._idle and not fresh:
            conn = self._idle.pop()
            if now - conn.idle_since < self.keepalive_expiry and not conn.reader.at_eof():
                conn.reused = True
                return conn
            conn.writer.close()
        try:
            if self.scheme == "https":
                if self._ssl is None:
                    self._ssl = httpx2.create_ssl_context()
                reader, writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self._ssl, server_hostname=self.host, limit=_MAX_HEAD
                )
            else:
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=_MAX_HEAD)
        except OSError as exc:
            raise WireError(f"cannot connect: {exc}") from None
        return _Conn(reader, writer)

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> _Answer:
        """Read until the answer's head is parsed; body bytes that came with it wait in the answer."""
        answer = _Answer()
        seen = 0
        while not answer.head_done:
            data = await reader.read(_READ)
            if not data:
                if not seen:
                    raise _ClosedEarly
                raise WireError("the upstream closed the connection in the middle of its answer's head",
                                closed=True)
            seen += len(data)
            try:
                answer.feed(data)
            except _PARSE_ERRORS as exc:
                if not answer.head_done:
                    raise
                answer.broken = exc  # the head stands: the body's fault is reported when the body is read
            if answer.head_size > _MAX_HEAD or (seen > _MAX_HEAD and not answer.head_done):
                raise WireError(f"the upstream's answer has a head over {_MAX_HEAD} bytes")
        return answer

    def _give_back(self, conn: _Conn, keep: bool) -> None:
        self._slots.release()
        if keep and len(self._idle) < self.max_idle and not conn.reader.at_eof():
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(self.keepalive_expiry, self._sweep)
        else:
            conn.writer.close()

    def _sweep(self) -> None:
        """Close connections idle past the expiry (oldest first: the list is in the order they came back)."""
        self._sweeper = None
        now = time.monotonic()
        while self._idle and now - self._idle[0].idle_since >= self.keepalive_expiry:
            self._idle.pop(0).writer.close()
        if self._idle:
            wait = self.keepalive_expiry - (now - self._idle[0].idle_since)
            self._sweeper = asyncio.get_running_loop().call_later(max(wait, 0.05), self._sweep)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()


class _ClosedEarly(Exception):
    """EOF before the first byte of an answer."""
