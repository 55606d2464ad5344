"""A lean HTTP/1.1 client for the direct call path: one write per request, pooled keep-alive connections.

The general-purpose client (httpx2) spends more CPU per request than the rest of a relayed call
together, and writes a request's head and body in two system calls. The direct path only ever
POSTs a small JSON body to a known upstream URL and reads a JSON or SSE answer, so this client does
just that: `http` and `https` (with httpx2's TLS defaults), Content-Length and chunked bodies,
keep-alive connections dropped after `keepalive_expiry` seconds idle, and one retry on a fresh
connection when a reused one turns out to have been closed by the server before it answered
anything (the keep-alive race). Redirects, proxies and HTTP/2 are not spoken; an upstream that needs
them is served through the SDK client instead (`Pool.usable`).
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2

_MAX_HEAD = 64 * 1024


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


class Response:
    """An answer being read: status, headers, then the body (whole, or chunk by chunk)."""

    def __init__(self, pool: Pool, conn: _Conn, status: int, headers: dict[str, str], keep: bool) -> None:
        self._pool = pool
        self._conn: _Conn | None = conn
        self.status = status
        self.headers = headers
        self._keep = keep
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._length = int(length) if length is not None and length.isdigit() else None
        if not self._chunked and self._length is None:
            self._keep = False  # the body runs to the end of the connection

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        assert conn is not None
        reader = conn.reader
        try:
            if self._chunked:
                while True:
                    line = await reader.readuntil(b"\r\n")
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                            pass
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._length is not None:
                if self._length:
                    yield await reader.readexactly(self._length)
            else:
                while data := await reader.read(65536):
                    yield data
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, ConnectionError) as exc:
            self._keep = False
            closed = isinstance(exc, asyncio.IncompleteReadError | ConnectionError)
            raise WireError(f"the upstream's answer broke off: {exc}", closed=closed) from None
        self.release()

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def release(self) -> None:
        """Done with the answer: the connection goes back to the pool when it was read to its end."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._give_back(conn, self._keep)

    def close(self) -> None:
        """Abandon the answer (cancelled, or not read to the end): the connection is closed."""
        self._keep = False
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
                status, response_headers, keep = await self._head(conn.reader)
            except _ClosedEarly:
                conn.writer.close()
                if conn.reused and attempt == 0:
                    continue  # the server had closed the idle connection: the request never reached it
                raise WireError("the upstream closed the connection without answering", closed=True) from None
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.writer.close()
                closed = isinstance(exc, asyncio.IncompleteReadError | ConnectionError)
                raise WireError(f"the exchange with the upstream failed: {exc or type(exc).__name__}",
                                closed=closed) from None
            except BaseException:
                conn.writer.close()
                raise
            return Response(self, conn, status, response_headers, keep)
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
    async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _ClosedEarly from None
            raise
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest[:3])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        keep = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
        return status, headers, keep

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
