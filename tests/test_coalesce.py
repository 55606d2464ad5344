"""One send per HTTP answer (transport/coalesce.py).

- Against a running gateway in front of the demo server, on raw keep-alive sockets: every JSON answer (a
  tools/call, /healthz) arrives whole in the first read that sees any of it, status line, headers and
  body together (uvicorn alone sends the headers and the body apart); the answers on one
  connection stay in order; an answer to a request that closes the connection arrives whole before the
  connection ends.
- The transport on a real TCP connection: writes of one event-loop turn leave as one write, writes of
  different turns apart, and closing sends what is pending first.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from mcp_hub.transport.coalesce import CoalescingTransport
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.processes import running, wait_for_port
from tests.support.rpc import initialize_request
from tests.support.tools import ROOT, free_port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("coalesce")
    port = free_port()
    args = [sys.executable, "-m", "tests.servers.demo_server", "--transport", "streamable-http", "--port", str(port)]
    with running(args, cwd=ROOT, log=tmp / "up.log") as proc:
        wait_for_port(port, proc=proc)
        config = {"upstreams": {"up": {"transport": "streamable-http", "url": f"http://127.0.0.1:{port}/mcp"}}}
        with run_gateway(config, tmp, wait_healthy=True) as gw:
            yield gw


def _request(method: str, path: str, port: int, body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(data)}",
             "Content-Type: application/json", "Accept: application/json, text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def _first_read_is_whole(sock: socket.socket) -> tuple[dict[str, str], bytes]:
    """The first recv of an answer must hold all of it: headers and a body of its Content-Length."""
    data = sock.recv(1 << 20)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"the first read ended inside the headers: {data[:200]!r}"
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    assert "content-length" in headers, headers
    assert len(body) == int(headers["content-length"]), f"the first read held {len(body)} body bytes of {headers}"
    return headers, body


def _streamed_to_its_end(sock: socket.socket) -> dict[str, str]:
    """An answer in chunked encoding (an event stream), read to its last chunk; its headers."""
    data = b""
    while not data.endswith(b"0\r\n\r\n"):
        more = sock.recv(65536)
        assert more, data
        data += more
    head = data.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return {k.strip().lower(): v.strip() for k, _, v in
            (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:])}


def test_each_answer_arrives_in_one_piece_and_in_order(gateway: RunningGateway) -> None:
    port = gateway.port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(_request("POST", "/mcp", port, initialize_request("2025-11-25", "raw")))
        headers = _streamed_to_its_end(sock)  # the SDK's entry answers the handshake as an event stream
        session = {"mcp-session-id": headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        sock.sendall(_request("POST", "/mcp", port, {"jsonrpc": "2.0", "method": "notifications/initialized"},
                              session))
        accepted = sock.recv(65536)
        assert accepted.startswith(b"HTTP/1.1 202"), accepted[:100]
        for i in range(2, 62):  # a tools/call each, on the same connection
            sock.sendall(_request("POST", "/mcp", port, {
                "jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": "up__echo", "arguments": {"text": f"call {i}"}}}, session))
            _, body = _first_read_is_whole(sock)
            answer = json.loads(body)
            assert answer["id"] == i
            assert answer["result"]["content"][0]["text"].endswith(f"call {i}")
        for _ in range(30):
            sock.sendall(_request("GET", "/healthz", port))
            _, body = _first_read_is_whole(sock)
            assert json.loads(body)["status"]
        # Connection: close: the answer is sent whole, then the connection ends.
        sock.sendall(_request("GET", "/healthz", port, headers={"Connection": "close"}))
        _, body = _first_read_is_whole(sock)
        assert json.loads(body)["status"]
        assert sock.recv(65536) == b""


class _Counting:
    """The real transport, with its writes counted (what the wrapper hands it)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def test_writes_of_one_turn_leave_together_and_close_sends_them_first() -> None:
    loop = asyncio.get_running_loop()
    made: asyncio.Future[CoalescingTransport] = loop.create_future()
    counted: list[_Counting] = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            spy = _Counting(transport)  # type: ignore[arg-type]
            counted.append(spy)
            made.set_result(CoalescingTransport(spy, loop))  # type: ignore[arg-type]

    server = await loop.create_server(Server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        out = await made
        out.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        out.write(b"hello")
        assert counted[0].writes == []  # nothing leaves before the turn ends
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert counted[0].writes == [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"]
        out.write(b"one")
        await asyncio.sleep(0.01)
        out.write(b"two")  # another turn: another write
        await asyncio.sleep(0.01)
        assert counted[0].writes[1:] == [b"one", b"two"]
        out.write(b"last")
        out.close()  # what is pending leaves before the connection closes
        received = await asyncio.wait_for(reader.read(), 5)
        assert received == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloonetwolast"
        assert out.get_write_buffer_size() == 0
    finally:
        writer.close()
        server.close()
        await server.wait_closed()
