"""One send per HTTP response: the writes an answer makes in one turn of the event loop leave together.

uvicorn writes a response's status line and headers when the app sends `http.response.start`, and its
body when the app sends `http.response.body`: two sends, so a JSON answer reaches the client in two TCP
segments and the client wakes up twice to read it. Here each connection's transport gathers what is
written during one turn of the event loop and sends it once at the end of that turn (no timer: nothing
waits longer than the turn that wrote it). A streamed answer (SSE) still leaves chunk by chunk, each
chunk in the turn that wrote it.

Why a transport wrapper and not a change to the app: ASGI sends headers and body as two messages, and
uvicorn turns each into a write; the protocol class is the place uvicorn lets a server change that
(`uvicorn.Config(http=...)`), and the wrapper leaves the rest of the protocol (parsing, flow control,
keep-alive, upgrades) as uvicorn has it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["CoalescingHTTPProtocol", "CoalescingTransport"]


class CoalescingTransport:
    """An `asyncio.Transport` whose writes in one event-loop turn are sent as one write at its end.

    Closing sends what is pending first; everything else goes to the transport underneath."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._pending)

    def __getattr__(self, name: str) -> Any:  # get_extra_info, is_closing, pause_reading, set_protocol, ...
        return getattr(self._transport, name)


class CoalescingHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc,valid-type]
    """uvicorn's HTTP protocol (httptools, or h11 without it) over a `CoalescingTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]
