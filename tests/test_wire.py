"""The lean HTTP/1.1 client (upstreams/wire.py) against small real servers on 127.0.0.1.

Each server is written with asyncio streams so a test controls every byte it sends and when: heads
and bodies split anywhere, answers held back, connections dropped at the worst moment.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mcp_hub.upstreams.wire import Pool, WireError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A real HTTP server on 127.0.0.1: counts the connections it accepted and keeps the requests it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.port = 0
        self.open: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.open[task] = writer
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            del self.open[task]

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's body, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return body


@asynccontextmanager
async def serving(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(handler)
    listener = await asyncio.start_server(server._accept, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        try:
            yield server
        finally:
            # connections the test left open end here, so no handler outlives its test's event loop
            for writer in list(server.open.values()):
                writer.close()
            if server.open:
                await asyncio.wait(list(server.open), timeout=5)


@asynccontextmanager
async def serving_answers(*answers: bytes, then_close: bool = False) -> AsyncIterator[Server]:
    """A server that answers each request on a connection with the next of `answers` (the last one repeats)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while (await server.request(reader)) is not None:
            writer.write(answers[min(served, len(answers) - 1)])
            await writer.drain()
            served += 1
            if then_close:
                break

    async with serving(handler) as server:
        yield server


def url(server: Server, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.port}/mcp?x=1"


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


# -- bodies -------------------------------------------------------------------------------------------


async def test_content_length_body_and_the_request_written() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"result":{}}'
    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Seen: a\r\nx-seen: b\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    async with serving_answers(answer) as server:
        pool = Pool(url(server))
        response = await pool.post(b'{"ask":1}', {"x-token": "t1", "content-type": "application/json"})
        assert response.status == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-seen"] == "a, b"  # repeated headers are joined, names lowercased
        assert await response.read() == body
        head, sent = server.requests[0]
        assert sent == b'{"ask":1}'
        assert head.startswith(b"POST /mcp?x=1 HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{server.port}\r\n".encode() in head
        assert b"x-token: t1\r\n" in head and b"content-length: 9\r\n" in head
        pool.close()


async def test_chunked_body_with_extensions_and_trailers() -> None:
    body = (b"5;name=value\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: done\r\n\r\n")
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    async with serving_answers(answer) as server:
        pool = Pool(url(server))
        response = await pool.post(b"{}", {})
        assert await response.read() == b"hello world"
        assert "x-trailer" not in response.headers
        # the trailer was consumed: the same connection serves the next answer cleanly
        assert await (await pool.post(b"{}", {})).read() == b"hello world"
        assert server.connections == 1
        pool.close()


async def test_body_running_to_the_close_of_the_connection() -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it until the end"
    async with serving_answers(answer, then_close=True) as server:
        pool = Pool(url(server))
        assert await (await pool.post(b"{}", {})).read() == b"all of it until the end"
        assert await (await pool.post(b"{}", {})).read() == b"all of it until the end"
        assert server.connections == 2  # such a connection is spent
        assert pool._idle == []
        pool.close()


async def test_sse_body_is_handed_on_as_it_arrives() -> None:
    go_on = asyncio.Event()
    sent_rest = False

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent_rest
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(first) + first + b"\r\n")
        await writer.drain()
        await go_on.wait()
        sent_rest = True
        writer.write(b"%x\r\n" % len(second) + second + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await server.request(reader)  # hold the connection open: the client may keep it

    first = b'event: message\ndata: {"id":0,"method":"notifications/progress"}\n\n'
    second = b'event: message\ndata: {"id":1,"result":{}}\n\n'
    async with serving(handler) as server:
        pool = Pool(url(server))
        response = await pool.post(b"{}", {})
        assert response.headers["content-type"] == "text/event-stream"
        chunks = response.chunks()
        assert await asyncio.wait_for(anext(chunks), 5) == first
        assert not sent_rest  # the first event came through while the server still held the rest back
        go_on.set()
        rest = [chunk async for chunk in chunks]
        assert b"".join(rest) == second
        assert len(pool._idle) == 1  # read to its end: the connection went back to the pool
        pool.close()


async def test_answer_split_across_many_tiny_writes() -> None:
    sse = b'data: {"id":1,"result":{"ok":true}}\n\n'
    answers = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        + chunked(sse[:7], sse[7:20], sse[20:]),
        b"HTTP/1.1 201 Created\r\ncontent-length: 12\r\nx-a: 1\r\n\r\nhello, world",
    ]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in answers:
            await server.request(reader)
            for i in range(len(answer)):  # one byte per write: every boundary falls somewhere odd
                writer.write(answer[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.001)
        await server.request(reader)

    async with serving(handler) as server:
        pool = Pool(url(server))
        response = await pool.post(b"{}", {})
        pieces = [chunk async for chunk in response.chunks()]
        assert b"".join(pieces) == sse
        assert len(pieces) > 3  # handed on in the pieces it came in, not held back for the whole body
        response = await pool.post(b"{}", {})
        assert (response.status, response.headers["x-a"]) == (201, "1")
        assert await response.read() == b"hello, world"
        assert server.connections == 1
        pool.close()


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",  # the length describes a body not sent
])
async def test_statuses_without_a_body(head: bytes) -> None:
    async with serving_answers(head, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok") as server:
        pool = Pool(url(server))
        response = await pool.post(b"{}", {})
        assert await asyncio.wait_for(response.read(), 5) == b""
        assert await (await pool.post(b"{}", {})).read() == b"ok"
        assert server.connections == 1  # nothing was left unread on the connection
        pool.close()


async def test_interim_answers_are_skipped() -> None:
    answer = (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n"
              b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nreal")
    async with serving_answers(answer) as server:
        pool = Pool(url(server))
        response = await pool.post(b"{}", {})
        assert response.status == 200 and "link" not in response.headers
        assert await response.read() == b"real"
        pool.close()


# -- keep-alive ---------------------------------------------------------------------------------------


async def test_keepalive_reuses_one_connection() -> None:
    async with serving_answers(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx") as server:
        pool = Pool(url(server), keepalive_expiry=30)
        for _ in range(3):
            assert await (await pool.post(b"{}", {})).read() == b"x"
        assert server.connections == 1
        assert len(server.requests) == 3
        pool.close()


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx",
    b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nx",
], ids=["connection-close", "http-1.0"])
async def test_connections_the_server_does_not_keep_are_not_reused(answer: bytes) -> None:
    async with serving_answers(answer) as server:
        pool = Pool(url(server), keepalive_expiry=30)
        assert await (await pool.post(b"{}", {})).read() == b"x"
        assert await (await pool.post(b"{}", {})).read() == b"x"
        assert server.connections == 2
        pool.close()


async def test_reused_connection_closed_unanswered_is_retried_on_a_fresh_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
        await writer.drain()
        if server.connections == 1:
            await server.request(reader)  # the keep-alive race: the request arrives as the server lets go
            return
        await server.request(reader)

    async with serving(handler) as server:
        pool = Pool(url(server), keepalive_expiry=30)
        assert await (await pool.post(b"one", {})).read() == b"first"
        assert await (await pool.post(b"two", {})).read() == b"first"
        assert server.connections == 2
        assert [body for _, body in server.requests] == [b"one", b"two", b"two"]
        pool.close()


async def test_fresh_connection_closed_unanswered_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)

    async with serving(handler) as server:
        pool = Pool(url(server))
        with pytest.raises(WireError, match="without answering") as caught:
            await pool.post(b"{}", {})
        assert caught.value.closed
        assert server.connections == 1
        pool.close()


async def test_abandoned_answer_closes_its_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await server.request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(b"data: 1\n\n"))
            await writer.drain()

    async with serving(handler) as server:
        pool = Pool(url(server), max_connections=1)
        response = await pool.post(b"{}", {})
        response.close()  # abandoned before its body was read
        assert await asyncio.wait_for((await pool.post(b"{}", {})).read(), 5) == b"data: 1\n\n"
        assert server.connections == 2
        pool.close()


async def test_garbage_after_an_answer_keeps_the_answer_but_not_the_connection() -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra"
    async with serving_answers(answer) as server:
        pool = Pool(url(server))
        assert await (await pool.post(b"{}", {})).read() == b"ok"
        assert pool._idle == []
        pool.close()


# -- failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [
    b"HTTX/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\ncontent-length: 0\n\n",
], ids=["protocol", "status-code", "garbage", "bare-newlines"])
async def test_malformed_status_line_is_a_wire_error(head: bytes) -> None:
    async with serving_answers(head) as server:
        pool = Pool(url(server), max_connections=1)
        with pytest.raises(WireError, match="malformed") as caught:
            await pool.post(b"{}", {})
        assert not caught.value.closed
        with pytest.raises(WireError, match="malformed"):  # the one connection slot was given back
            await asyncio.wait_for(pool.post(b"{}", {}), 5)
        pool.close()


async def test_head_too_long_is_a_wire_error() -> None:
    answer = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * (70 * 1024) + b"\r\ncontent-length: 0\r\n\r\n"
    async with serving_answers(answer) as server:
        with pytest.raises(WireError, match="head over"):
            await Pool(url(server)).post(b"{}", {})


async def test_answers_that_break_off() -> None:
    async with serving_answers(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort", then_close=True) as server:
        response = await Pool(url(server)).post(b"{}", {})
        with pytest.raises(WireError, match="broke off") as caught:
            await response.read()
        assert caught.value.closed
        response.close()
    async with serving_answers(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n") as server:
        response = await Pool(url(server)).post(b"{}", {})
        with pytest.raises(WireError, match="broke off") as caught:
            await response.read()
        assert not caught.value.closed  # a malformed chunk: the upstream did not go away
        response.close()
    async with serving_answers(b"HTTP/1.1 200 OK\r\ncontent-le", then_close=True) as server:
        with pytest.raises(WireError, match="middle of its answer's head") as caught:
            await Pool(url(server)).post(b"{}", {})
        assert caught.value.closed


# -- https --------------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for 127.0.0.1, and a client context that trusts only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_https_answers_and_keepalive(tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (body := await server.request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(body[:1], body[1:]))
            await writer.drain()

    async with serving(handler, server_ctx) as server:
        refused = Pool(url(server, "https"))  # httpx2's default trust store does not know this certificate
        with pytest.raises(WireError, match="cannot connect"):
            await refused.post(b"{}", {})
        pool = Pool(url(server, "https"))
        pool._ssl = client_ctx
        assert await (await pool.post(b"secret", {})).read() == b"secret"
        assert await (await pool.post(b"again", {})).read() == b"again"
        assert server.connections == 1  # one kept connection (the refused handshake never reached the handler)
        pool.close()
