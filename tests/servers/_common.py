"""What the test servers share: command-line options, transports, resumable-stream storage, media bytes."""

from __future__ import annotations

import argparse
import io
import itertools
import struct
import wave
import zlib
from collections.abc import Sequence
from typing import Any

from mcp.server.lowlevel import NotificationOptions
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http import EventCallback, EventId, EventMessage, EventStore, StreamId
from mcp_types import JSONRPCMessage

TRANSPORTS = ("stdio", "sse", "streamable-http")


def build_parser(description: str, default_port: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--transport", choices=TRANSPORTS, default="streamable-http")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--stateless", action="store_true", help="Streamable HTTP without sessions")
    parser.add_argument("--json-response", action="store_true", help="Streamable HTTP answers in JSON, not SSE")
    return parser


def serve(server: MCPServer[Any], args: argparse.Namespace, *, resumable: bool = False) -> None:
    """Run `server` on the transport the command line asked for (blocks until the process is stopped)."""
    if args.transport == "stdio":
        server.run("stdio")
    elif args.transport == "sse":
        server.run("sse", host=args.host, port=args.port)
    else:
        server.run(
            "streamable-http",
            host=args.host,
            port=args.port,
            stateless_http=args.stateless,
            json_response=args.json_response,
            # why: an event store lets a tool close its SSE stream mid-call and the client resume (SEP-1699)
            event_store=MemoryEventStore() if resumable else None,
            retry_interval=200 if resumable else None,
        )


def advertise_list_changed(server: MCPServer[Any]) -> None:
    """Make the handshake advertise `listChanged` for tools, resources and prompts.

    why: MCPServer always builds its initialize result with default NotificationOptions (all False), and
    there is no constructor option for it; a server that sends list_changed should say so.
    """
    lowlevel = server._lowlevel_server  # noqa: SLF001 - the only place the capability is decided
    original = lowlevel.create_initialization_options

    def with_list_changed(
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> Any:
        options = notification_options or NotificationOptions(
            prompts_changed=True, resources_changed=True, tools_changed=True
        )
        return original(options, experimental_capabilities, extensions)

    lowlevel.create_initialization_options = with_list_changed  # type: ignore[method-assign]


class MemoryEventStore(EventStore):
    """Keeps every SSE event in memory so a client can resume a stream with Last-Event-ID."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._events: list[tuple[EventId, StreamId, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: StreamId, message: JSONRPCMessage | None) -> EventId:
        event_id = str(next(self._counter))
        self._events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: EventId, send_callback: EventCallback) -> StreamId | None:
        position = next((i for i, (eid, _, _) in enumerate(self._events) if eid == last_event_id), None)
        if position is None:
            return None
        stream_id = self._events[position][1]
        for event_id, sid, message in self._events[position + 1 :]:
            # why: priming events (message None) only mark a position; they carry nothing to replay
            if sid == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def tiny_png(rgb: Sequence[int] = (255, 0, 0)) -> bytes:
    """A valid 1x1 PNG of one colour (built here so the tests carry no binary files)."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(bytes([0, *rgb]))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b"")


def tiny_wav(samples: int = 800) -> bytes:
    """A valid 0.1 s mono 8 kHz WAV of silence."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(bytes([128]) * samples)
    return buffer.getvalue()
