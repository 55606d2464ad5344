"""Replicas without affinity: downstream sessions shared on Redis (`sessions: redis://HOST:PORT`).

Any replica serves any session. What is stored, the channels and the failure behaviour are written
down in docs/deploy.md ("Shared sessions"); in short:

- A session record per handshake-era session (`<prefix>:s:<id>`, a hash with the session's TTL): the
  route, the client's `initialize` params, a fingerprint of the principal that opened it (never the
  credential), the consumer, the log level and the resource subscriptions. A replica that gets a
  request for a session it does not hold, and finds its record, adopts it: it opens a local copy of
  the session with that id and replays the stored `initialize` (and log level and subscriptions) into
  it, without the client; then it serves the request.
- Pub/sub: `<prefix>:all` (every replica) and `<prefix>:r:<replica>` (one replica). A client's answer to
  a question the gateway put to it mid-call goes to the replica holding the call (its request id names
  that replica); `notifications/cancelled` and answers to questions of the SDK's own entry are
  broadcast and taken by whichever replica holds the call. Registrations and reloads are announced
  on `<prefix>:all`; each replica applies them itself.
- Catalog notifications need no channel: every replica applies every change and tells the session
  copies it holds; only the copy holding the client's GET stream can deliver them.
- Open sessions per consumer (`listen.max_sessions_per_consumer`) are counted in a sorted set per
  consumer (`<prefix>:c:<consumer>`), so the cap holds across replicas.

Without `sessions:` none of this exists; the one thing kept is the per-consumer cap, counted in the
process (`SessionGate` only looks at requests without a session id, so the hot path is unchanged).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import anyio
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_hub import sdk_internals
from mcp_hub.admin.registry import AnnouncingStore
from mcp_hub.auth.identity import Consumer
from mcp_hub.config.sessions import SessionsConfig
from mcp_hub.core.hub import CONSUMER_SCOPE_KEY
from mcp_hub.core.reload import reload_checked, reload_registrations
from mcp_hub.metering.record import LIMIT_EXCEEDED
from mcp_hub.metering.resp import RespClient, RespError
from mcp_hub.transport.asgi import header as _header
from mcp_hub.transport.asgi import replaying as _replaying

if TYPE_CHECKING:
    from mcp_hub.core.hub import Gateway
    from mcp_hub.transport.direct import DirectCalls

logger = logging.getLogger(__name__)

SESSION_LIMIT_CODE = LIMIT_EXCEEDED  # the gateway's "a per-consumer limit was hit" (metering/record.py)
_REDIS_ERRORS = (OSError, ConnectionError, TimeoutError, RespError, asyncio.TimeoutError)

# Reserve a slot for one more session of a consumer, unless it holds `cap` already (one round trip).
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[2]) then return n end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return -1
"""
# Write a new session's record and count it for its consumer (one round trip).
_REGISTER = """
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[2], ARGV[4]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1
"""
# Renew a session's record and its consumer's count of it.
_TOUCH = """
if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def principal_fingerprint(scope: Scope, consumer: Consumer | None) -> str:
    """Who may use a session: a hash of the principal the auth layer names (and the consumer), never the
    credential itself."""
    user = scope.get("user")
    context = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
    text = json.dumps([context, consumer.name if consumer is not None else None], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _requestor(scope: Scope) -> Any:
    user = scope.get("user")
    return authorization_context(user) if isinstance(user, AuthenticatedUser) else None


def _limit_response(request_id: Any, message: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = json.dumps({"jsonrpc": "2.0", "id": request_id,
                       "error": {"code": SESSION_LIMIT_CODE, "message": message}}).encode()
    return 429, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())], body


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_all(receive: Receive) -> tuple[list[Message], bytes]:
    events: list[Message] = []
    while True:
        event = await receive()
        events.append(event)
        if event["type"] != "http.request" or not event.get("more_body", False):
            return events, b"".join(e.get("body", b"") for e in events if e["type"] == "http.request")


def shared_sessions(gateway: Gateway) -> Replicas | None:
    """This replica's part in shared sessions when `sessions:` is set (also the gateway's `replica_bus`,
    through which reloads and registrations are announced); None otherwise."""
    config = gateway.config.sessions
    if config is None:
        return None
    replicas = Replicas(gateway, config)
    gateway.replica_bus = replicas  # type: ignore[attr-defined]
    registry: Any = getattr(gateway, "openapi_registry", None)
    if registry is not None and not isinstance(registry.store, AnnouncingStore):
        registry.store = AnnouncingStore(registry.store, replicas.announce)
    return replicas


# -- pub/sub ----------------------------------------------------------------------------------------


class _Subscriber:
    """A Redis SUBSCRIBE connection: pushes each message to `on_message`; reconnects after a failure."""

    def __init__(self, uri: str, channels: list[str], timeout: float) -> None:
        parsed = urlparse(uri)
        query = parse_qs(parsed.query)
        self.uri = parsed
        self.unix = parsed.scheme == "unix"
        self.tls = parsed.scheme == "rediss"
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.verify = query.get("ssl_cert_reqs", ["required"])[0].lower() not in ("none", "cert_none")
        self.channels = channels
        self.timeout = timeout
        self.connected = False

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix:
            return await asyncio.open_unix_connection(self.uri.path)
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context()
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        return await asyncio.open_connection(self.uri.hostname or "localhost", self.uri.port or 6379, ssl=context)

    async def run(self, on_message: Callable[[str, bytes], None], on_connect: Callable[[], Awaitable[None]]) -> None:
        delay = 0.1
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                reader, writer = await asyncio.wait_for(self._open(), self.timeout)
                if self.password is not None:
                    auth = ["AUTH", self.username, self.password] if self.username else ["AUTH", self.password]
                    writer.write(_encode(auth))
                    reply = await asyncio.wait_for(_read_reply(reader), self.timeout)
                    if isinstance(reply, RespError):
                        raise reply
                writer.write(_encode(["SUBSCRIBE", *self.channels]))
                for _ in self.channels:
                    await asyncio.wait_for(_read_reply(reader), self.timeout)
                self.connected = True
                delay = 0.1
                await on_connect()
                while True:
                    reply = await _read_reply(reader)
                    if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                        on_message(reply[1].decode(), reply[2])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect after a pause
                if self.connected:
                    logger.warning("shared sessions: the Redis subscription broke (%s); reconnecting",
                                   type(exc).__name__)
                self.connected = False
            finally:
                self.connected = False
                if writer is not None:
                    writer.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _encode(args: list[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def _read_reply(reader: asyncio.StreamReader) -> Any:
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"*":
        return [await _read_reply(reader) for _ in range(max(int(rest), 0))]
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        return (await reader.readexactly(n + 2))[:-2]
    if kind == b":":
        return int(rest)
    if kind == b"+":
        return bytes(rest)
    if kind == b"-":
        return RespError(rest.decode("utf-8", "replace"))
    raise ConnectionError("unexpected reply from Redis")


# -- the shared store -------------------------------------------------------------------------------


@dataclass
class ReplicaStats:
    """What this replica did for shared sessions (shown in its log, counted for /healthz readers)."""

    opened: int = 0
    adopted: int = 0
    forwarded: int = 0
    received: int = 0
    refused_over_cap: int = 0
    redis_errors: int = 0


class _Acks:
    """Confirmations that other replicas ended their copy of a session: done once `expected` have come."""

    def __init__(self) -> None:
        self.count = 0
        self.expected: int | None = None
        self.done = anyio.Event()

    def expect(self, n: int) -> None:
        self.expected = max(n, 0)
        self._check()

    def add(self) -> None:
        self.count += 1
        self._check()

    def _check(self) -> None:
        if self.expected is not None and self.count >= self.expected:
            self.done.set()


class Replicas:
    """This replica's part in shared sessions: the Redis client, the subscription, the route entries."""

    def __init__(self, gateway: Gateway, config: SessionsConfig) -> None:
        self.gateway = gateway
        self.config = config
        self.prefix = config.key_prefix
        self.id = secrets.token_hex(5)
        self.redis = RespClient(config.url, connect_timeout=config.timeout, timeout=config.timeout)
        self.ttl_ms = int(config.idle_timeout * 1000)
        self.entries: dict[str, SessionGate] = {}
        self.stats = ReplicaStats()
        self.channel_all = f"{self.prefix}:all"
        self.channel_mine = f"{self.prefix}:r:{self.id}"
        self._subscriber = _Subscriber(config.url, [self.channel_all, self.channel_mine], config.timeout)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keyed = False
        self._acks: dict[str, _Acks] = {}  # sessions this replica is ending: the other replicas' confirmations

    @property
    def connected(self) -> bool:
        return self._subscriber.connected

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the subscription for the life of the process (started with the app)."""
        task_status.started()
        logger.info("shared sessions on %s as replica %s", self._subscriber.uri.hostname or "redis", self.id)
        try:
            await self._subscriber.run(self._on_message, self._on_connect)
        finally:
            self.redis.close()

    async def _on_connect(self) -> None:
        if not self._keyed:
            self._keyed = await self._share_state_key()
        # Changes announced while this replica could not hear them: catch up once.
        self._spawn(self._apply("registry"))

    async def _share_state_key(self) -> bool:
        """The key sealing requestStates: derived from `sessions.secret`, else one random key kept in Redis."""
        states = self.gateway.service.calls.states
        secret = self.config.secret
        try:
            if secret is not None:
                key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                           info=b"mcp-hub request state").derive(secret.get_secret_value().encode())
            else:
                name = self.key("k", "states")
                await self.redis.call("SET", name, base64.b64encode(secrets.token_bytes(32)), "NX")
                key = base64.b64decode(await self.redis.call("GET", name))
        except _REDIS_ERRORS as exc:
            logger.warning("shared sessions: no shared requestState key yet (%s)", type(exc).__name__)
            return False
        states.share(key, self._take_state_once)
        return True

    async def _take_state_once(self, state_id: str, expiry: float) -> bool:
        """True the first time any replica takes this state. Redis unreachable: this process decides alone."""
        ms = max(int((expiry - time.time()) * 1000), 1)
        try:
            return await self.redis.call("SET", self.key("t", state_id), 1, "NX", "PX", ms) is not None
        except _REDIS_ERRORS:
            self.stats.redis_errors += 1
            return self.gateway.service.calls.states.take_locally(state_id, expiry)

    # -- messages ---------------------------------------------------------------------------------

    async def publish(self, channel: str, message: dict[str, Any]) -> bool:
        try:
            await self.redis.call("PUBLISH", channel, json.dumps({**message, "from": self.id}))
            return True
        except _REDIS_ERRORS as exc:
            self.stats.redis_errors += 1
            logger.warning("shared sessions: could not publish %s (%s)", message.get("t"), type(exc).__name__)
            return False

    async def close_everywhere(self, path: str, sid: str) -> None:
        """Tell every replica to end its copy of session `sid` and wait until each says it has (at most
        `sessions.timeout`): a request with the id that lands anywhere afterwards is refused."""
        acks = _Acks()
        self._acks[sid] = acks
        try:
            message = json.dumps({"t": "close", "path": path, "sid": sid, "from": self.id})
            receivers = await self.redis.call("PUBLISH", self.channel_all, message)
            acks.expect(int(receivers) - 1 if isinstance(receivers, int) else 0)  # every subscriber but this one
            with anyio.move_on_after(self.config.timeout):
                await acks.done.wait()
        except _REDIS_ERRORS as exc:
            self.stats.redis_errors += 1
            logger.warning("shared sessions: could not announce the end of a session (%s)", type(exc).__name__)
        finally:
            self._acks.pop(sid, None)

    async def _close_and_ack(self, entry: SessionGate | None, sid: str, to: Any) -> None:
        if entry is not None:
            await entry.close_local(sid)
        if isinstance(to, str):
            await self.publish(self.key("r", to), {"t": "closed", "sid": sid})

    async def announce(self, what: str) -> None:
        """A registration or reload here: every other replica applies it too (`reload`, `registry`)."""
        await self.publish(self.channel_all, {"t": what})

    def _on_message(self, channel: str, data: bytes) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("from") == self.id:
            return
        kind = message.get("t")
        if kind in ("registry", "reload"):
            self._spawn(self._apply(kind))
            return
        entry = self.entries.get(str(message.get("path")))
        sid = message.get("sid")
        if not isinstance(sid, str):
            return
        if kind == "closed":
            acks = self._acks.get(sid)
            if acks is not None:
                acks.add()
            return
        if kind == "close":  # acknowledged whether this replica held a copy or not
            self._spawn(self._close_and_ack(entry, sid, message.get("from")))
            return
        if entry is None:
            return
        self.stats.received += 1
        if kind == "deliver" and isinstance(message.get("msg"), dict):
            self._spawn(entry.deliver(sid, message["msg"], message.get("host")))
        elif kind == "state" and isinstance(message.get("msg"), dict):
            self._spawn(entry.apply_state(sid, message["msg"], message.get("host")))

    async def _apply(self, kind: str) -> None:
        try:
            path = self.gateway.config_path
            if kind == "reload" and path:
                await reload_checked(self.gateway, path, announce=False)
            else:
                await reload_registrations(self.gateway)
        except Exception as exc:  # noqa: BLE001 - the old catalog keeps serving, as after a refused reload
            logger.error("shared sessions: applying another replica's %s failed: %s", kind, exc)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- records ----------------------------------------------------------------------------------

    async def reserve(self, consumer: str, cap: int) -> tuple[bool, str]:
        """Room for one more session of `consumer` across replicas: (allowed, placeholder to release)."""
        now = int(time.time() * 1000)
        placeholder = f"opening:{secrets.token_hex(6)}"
        held = await self.redis.call("EVAL", _RESERVE, 1, self.key("c", consumer), now, cap, now + 30_000,
                                     placeholder, self.ttl_ms)
        return held == -1, placeholder

    async def register(self, sid: str, consumer: str, placeholder: str, fields: dict[str, str]) -> None:
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        expiry = int(time.time() * 1000) + self.ttl_ms
        await self.redis.call("EVAL", _REGISTER, 2, self.key("s", sid), self.key("c", consumer), self.ttl_ms,
                              expiry, sid, placeholder, *flat)

    async def release(self, consumer: str, placeholder: str) -> None:
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.redis.call("ZREM", self.key("c", consumer), placeholder)

    async def load(self, sid: str) -> dict[str, str] | None:
        reply = await self.redis.call("HGETALL", self.key("s", sid))
        if not reply:
            return None
        return {reply[i].decode(): reply[i + 1].decode() for i in range(0, len(reply) - 1, 2)}

    async def touch(self, sid: str, consumer: str) -> None:
        expiry = int(time.time() * 1000) + self.ttl_ms
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.redis.call("EVAL", _TOUCH, 2, self.key("s", sid), self.key("c", consumer), self.ttl_ms,
                                  expiry, sid)

    async def update(self, sid: str, *args: Any) -> None:
        """HSET/HDEL on a session's record (log level, subscriptions): best effort."""
        try:
            await self.redis.call(*args[:1], self.key("s", sid), *args[1:])
        except _REDIS_ERRORS:
            self.stats.redis_errors += 1

    async def forget(self, sid: str, consumer: str) -> None:
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.redis.call("DEL", self.key("s", sid))
            await self.redis.call("ZREM", self.key("c", consumer), sid)


# -- the route entry --------------------------------------------------------------------------------


@dataclass
class _Known:
    """A session this replica holds: who opened it and when its record was last renewed."""

    consumer: str
    fingerprint: str
    touched: float = field(default_factory=time.monotonic)
    host: str | None = None  # the Host header the session was opened or adopted with (for requests fed to it)


class SessionGate:
    """ASGI wrapper of one route's endpoint (inside auth): caps sessions per consumer; with shared sessions
    also records new sessions, adopts sessions other replicas opened, and passes mid-call traffic on."""

    def __init__(
        self, app: ASGIApp, gateway: Gateway, path: str, manager: StreamableHTTPSessionManager, *,
        replicas: Replicas | None, direct: DirectCalls | None,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.path = path
        self.manager = manager
        self.replicas = replicas
        self.direct = direct
        self.known: dict[str, _Known] = {}
        self._adopting: dict[str, anyio.Event] = {}
        table = sdk_internals.session_table(manager)
        self._table: dict[str, Any] = table if table is not None else {}
        if replicas is not None:
            replicas.entries[path] = self
            if direct is not None:
                direct.id_tag = f"{replicas.id}."

    @property
    def cap(self) -> int | None:
        return self.gateway.config.listen.max_sessions_per_consumer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.manager.stateless:
            await self.app(scope, receive, send)
            return
        sid = _header(scope, b"mcp-session-id")
        method = scope.get("method")
        if sid is None:
            version = _header(scope, b"mcp-protocol-version")
            if method == "POST" and (version is None or version in HANDSHAKE_PROTOCOL_VERSIONS):
                await self._opening(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        replicas = self.replicas
        if replicas is None:
            if method == "DELETE":
                self.known.pop(sid, None)
            await self.app(scope, receive, send)
            return
        waiting = self._adopting.get(sid)
        if waiting is not None:
            await waiting.wait()
        if sid not in self._table:
            await self._adopt(sid, scope)
        else:
            known = self.known.get(sid)
            if known is not None and time.monotonic() - known.touched > replicas.config.idle_timeout / 20:
                known.touched = time.monotonic()
                await replicas.touch(sid, known.consumer)
        if method == "POST":
            events, body = await _read_all(receive)
            if await self._pass_on(sid, body, scope, send):
                return
            await self.app(scope, _replaying(events, receive), send)
            return
        if method != "DELETE":
            await self.app(scope, receive, send)
            return
        # The answer to a DELETE leaves only once every replica has ended its copy of the session, so the
        # client's next request with that id is refused (404) wherever the balancer sends it.
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        await self.app(scope, receive, hold)
        transport = self._table.get(sid)
        if transport is None or getattr(transport, "is_terminated", False):
            known = self.known.pop(sid, None)
            if known is not None:
                await replicas.forget(sid, known.consumer)
                await replicas.close_everywhere(self.path, sid)
        for message in held:
            await send(message)

    # -- opening a session ------------------------------------------------------------------------

    async def _opening(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A POST without a session id: an initialize opens one, if the consumer may hold one more."""
        events, body = await _read_all(receive)
        replay = _replaying(events, receive)
        try:
            message = json.loads(body) if b'"initialize"' in body else None
        except ValueError:
            message = None
        consumer = scope.get(CONSUMER_SCOPE_KEY)
        if (not isinstance(message, dict) or message.get("method") != "initialize"
                or not isinstance(consumer, Consumer)):
            await self.app(scope, replay, send)
            return
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        cap, replicas = self.cap, self.replicas
        placeholder = ""
        if cap is not None:
            allowed = True
            counted_shared = False
            if replicas is not None:
                try:
                    allowed, placeholder = await replicas.reserve(consumer.name, cap)
                    counted_shared = True
                except _REDIS_ERRORS:
                    replicas.stats.redis_errors += 1  # Redis unreachable: this replica's own count decides
            if not counted_shared:
                allowed = self._local_count(consumer.name) < cap
            if not allowed:
                if replicas is not None:
                    replicas.stats.refused_over_cap += 1
                logger.warning("refused a new session for consumer %r: it holds %d already "
                               "(listen.max_sessions_per_consumer)", consumer.name, cap)
                await _respond(send, *_limit_response(
                    message.get("id"),
                    f"Too many open sessions: consumer {consumer.name!r} holds {cap}, the limit "
                    f"(listen.max_sessions_per_consumer); close one (DELETE) or wait for one to expire"))
                return
        fingerprint = principal_fingerprint(scope, consumer)
        opened: list[str] = []

        async def watch(event: Message) -> None:
            if event["type"] == "http.response.start" and event.get("status") == 200:
                for key, value in event.get("headers", ()):
                    if key == b"mcp-session-id":
                        sid = value.decode("latin-1")
                        opened.append(sid)
                        self.known[sid] = _Known(consumer.name, fingerprint, host=_header(scope, b"host"))
                        if replicas is not None:
                            # written before the client reads the id: it may use the session anywhere at once
                            await self._record(sid, consumer.name, placeholder, fingerprint, params)
            await send(event)

        try:
            await self.app(scope, replay, watch)
        finally:
            if replicas is not None and placeholder and not opened:
                await replicas.release(consumer.name, placeholder)

    async def _record(self, sid: str, consumer: str, placeholder: str, fingerprint: str,
                      params: dict[str, Any]) -> None:
        replicas = self.replicas
        assert replicas is not None
        try:
            await replicas.register(sid, consumer, placeholder, {
                "route": self.path, "init": json.dumps(params), "owner": fingerprint, "consumer": consumer,
                "replica": replicas.id,
            })
            replicas.stats.opened += 1
            logger.info("session %s opened on replica %s (shared)", sid, replicas.id)
        except _REDIS_ERRORS as exc:
            replicas.stats.redis_errors += 1
            logger.warning("session %s serves on this replica only: Redis unreachable (%s)", sid, type(exc).__name__)

    def _local_count(self, consumer: str) -> int:
        live = {sid for sid, t in self._table.items() if not getattr(t, "is_terminated", False)}
        self.known = {sid: k for sid, k in self.known.items() if sid in live}
        return sum(1 for k in self.known.values() if k.consumer == consumer)

    # -- adopting a session -----------------------------------------------------------------------

    async def _adopt(self, sid: str, scope: Scope) -> None:
        """Open here a session another replica opened (its record in Redis), if this caller opened it.
        Anything else leaves the id unknown here, and the SDK answers 404 as for any unknown session."""
        replicas = self.replicas
        assert replicas is not None
        if len(sid) > 128:
            return
        done = anyio.Event()
        self._adopting[sid] = done
        try:
            try:
                record = await replicas.load(sid)
            except _REDIS_ERRORS as exc:
                replicas.stats.redis_errors += 1
                logger.warning("session %s unknown here and Redis unreachable (%s)", sid[:64], type(exc).__name__)
                return
            consumer = scope.get(CONSUMER_SCOPE_KEY)
            if (
                record is None or record.get("route") != self.path or not isinstance(consumer, Consumer)
                or record.get("owner") != principal_fingerprint(scope, consumer)
            ):
                return
            try:
                init = json.loads(record.get("init") or "{}")
            except ValueError:
                return
            transport = await sdk_internals.adopt_session(self.manager, sid, _requestor(scope))
            if transport is None:
                return
            try:
                await self._replay_opening(transport, sid, scope, init, record)
            except Exception as exc:  # noqa: BLE001 - a copy that cannot be rebuilt is not kept
                logger.warning("session %s could not be adopted: %s", sid[:64], exc)
                await transport.terminate()
                return
            self.known[sid] = _Known(consumer.name, record["owner"], host=_header(scope, b"host"))
            if self.direct is not None:
                self.direct.note_session(sid, init.get("capabilities"), init.get("clientInfo"),
                                         record.get("level"))
            replicas.stats.adopted += 1
            logger.info("session %s adopted on replica %s (opened on replica %s)", sid, replicas.id,
                        record.get("replica"))
            await replicas.touch(sid, consumer.name)
        finally:
            self._adopting.pop(sid, None)
            done.set()

    async def _replay_opening(self, transport: Any, sid: str, scope: Scope, init: dict[str, Any],
                              record: dict[str, str]) -> None:
        """The session's initialize, its log level and subscriptions, fed to the local copy; and a tools/list
        that enrols the copy for list_changed (the catalog notifications reach the client's GET stream
        from whichever replica holds it)."""
        requests: list[dict[str, Any]] = [
            {"jsonrpc": "2.0", "id": "mcphub-adopt-0", "method": "initialize", "params": init},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
        ]
        version = init.get("protocolVersion")
        if record.get("level"):
            requests.append({"jsonrpc": "2.0", "id": "mcphub-adopt-1", "method": "logging/setLevel",
                             "params": {"level": record["level"]}})
        requests.append({"jsonrpc": "2.0", "id": "mcphub-adopt-2", "method": "tools/list"})
        for n, name in enumerate(k for k in record if k.startswith("sub:")):
            requests.append({"jsonrpc": "2.0", "id": f"mcphub-adopt-s{n}", "method": "resources/subscribe",
                             "params": {"uri": name[4:]}})
        json_mode = transport.is_json_response_enabled
        transport.is_json_response_enabled = True  # the answers are read here, not streamed to anyone
        try:
            for message in requests:
                status, body = await _feed(transport, scope, sid, message, version)
                if message.get("method") == "initialize" and status != 200:
                    raise RuntimeError(f"the stored initialize was refused ({status}): {body[:200]!r}")
        finally:
            transport.is_json_response_enabled = json_mode

    # -- mid-call traffic -------------------------------------------------------------------------

    async def _pass_on(self, sid: str, body: bytes, scope: Scope, send: Send) -> bool:
        """A client's answer to a question, or its cancellation, that another replica may be waiting for.

        True when it was answered here (sent to the replica holding the call)."""
        replicas = self.replicas
        assert replicas is not None
        answer = b'"method"' not in body
        if not answer and b"notifications/cancelled" not in body:
            return False
        try:
            message = json.loads(body)
        except ValueError:
            return False
        if not isinstance(message, dict) or sid not in self._table:
            return False
        if self.manager_owner(sid) != _requestor(scope):
            return False  # the SDK answers it as an unknown session
        host = _header(scope, b"host")
        if answer and "id" in message and "method" not in message:
            request_id = message["id"]
            direct = self.direct
            if direct is not None and direct.has_waiter(sid, request_id):
                return False  # this replica asked: served below as without replicas
            owner = direct.replica_of(request_id) if direct is not None else None
            if owner is not None and owner != replicas.id:
                await replicas.publish(f"{replicas.prefix}:r:{owner}",
                                       {"t": "deliver", "path": self.path, "sid": sid, "msg": message, "host": host})
                replicas.stats.forwarded += 1
                logger.info("answer for replica %s sent on (session %s, request %s)", owner, sid, request_id)
                await _respond(send, 202, [(b"mcp-session-id", sid.encode("latin-1"))], b"")
                return True
            # a question of the SDK's entry: whichever replica asked takes it (the others drop it)
            await replicas.publish(replicas.channel_all,
                                   {"t": "deliver", "path": self.path, "sid": sid, "msg": message, "host": host})
            return False
        if message.get("method") == "notifications/cancelled":
            params = message.get("params") if isinstance(message.get("params"), dict) else {}
            if self.direct is not None and self.direct.has_call(sid, params.get("requestId")):
                return False
            await replicas.publish(replicas.channel_all,
                                   {"t": "deliver", "path": self.path, "sid": sid, "msg": message, "host": host})
        return False

    def manager_owner(self, sid: str) -> Any:
        return sdk_internals.session_owners(self.manager).get(sid)

    async def deliver(self, sid: str, message: dict[str, Any], host: Any) -> None:
        """A message another replica received for a session held here: to the call waiting for it."""
        if self.direct is not None and self.direct.take(sid, message):
            logger.info("took an answer or cancellation for session %s from another replica", sid)
            return
        transport = self._table.get(sid)
        if transport is None or getattr(transport, "is_terminated", True):
            return
        with contextlib.suppress(Exception):
            scope = {"type": "http", "method": "POST", "path": self.path, "headers":
                     [(b"host", str(host).encode("latin-1"))] if isinstance(host, str) else []}
            await _feed(transport, scope, sid, message, None)

    async def close_local(self, sid: str) -> None:
        """The client ended the session (DELETE) through another replica: end this copy too."""
        self.known.pop(sid, None)
        transport = self._table.get(sid)
        if transport is not None and not getattr(transport, "is_terminated", True):
            await transport.terminate()

    async def on_level(self, sid: str, level: str, request_id: Any = None) -> None:
        """The client set the session's log level here: in its record, and in every other replica's copy."""
        if self.replicas is not None and not _fed_here(request_id):
            await self.replicas.update(sid, "HSET", "level", level)
            await self._share(sid, {"method": "logging/setLevel", "params": {"level": level}})

    async def on_subscription(self, sid: str, uri: str, on: bool, request_id: Any = None) -> None:
        """The client (un)subscribed here: in the session's record, and in every other replica's copy, so
        the copy holding the client's GET stream delivers the updates."""
        if self.replicas is not None and not _fed_here(request_id):
            await self.replicas.update(sid, *(("HSET", f"sub:{uri}", "1") if on else ("HDEL", f"sub:{uri}")))
            method = "resources/subscribe" if on else "resources/unsubscribe"
            await self._share(sid, {"method": method, "params": {"uri": uri}})

    async def _share(self, sid: str, request: dict[str, Any]) -> None:
        replicas = self.replicas
        assert replicas is not None
        known = self.known.get(sid)
        await replicas.publish(replicas.channel_all, {"t": "state", "path": self.path, "sid": sid, "msg": request,
                                                      "host": known.host if known is not None else None})

    async def apply_state(self, sid: str, request: dict[str, Any], host: Any) -> None:
        """A subscription or log level another replica's copy of a session was given: applied to this copy
        (if this replica holds one), as a request with a gateway id that is not shared again."""
        transport = self._table.get(sid)
        if transport is None or getattr(transport, "is_terminated", True):
            return
        message = {"jsonrpc": "2.0", "id": f"{FED_ID_PREFIX}state-{secrets.token_hex(4)}", **request}
        scope = {"type": "http", "method": "POST", "path": self.path,
                 "headers": [(b"host", host.encode("latin-1"))] if isinstance(host, str) else []}
        with contextlib.suppress(Exception):
            status, body = await _feed(transport, scope, sid, message, None)
            if status != 200:
                logger.warning("session %s: a %s from another replica was refused here (%d)", sid[:64],
                               request.get("method"), status)


FED_ID_PREFIX = "mcphub-"  # ids of requests the gateway feeds to a session's local copy itself


def _fed_here(request_id: Any) -> bool:
    """A request the gateway fed to a session copy (adoption replay, state from another replica): its effect
    is recorded and shared already."""
    return isinstance(request_id, str) and request_id.startswith(FED_ID_PREFIX)


async def _feed(transport: Any, scope: Scope, sid: str, message: dict[str, Any], version: Any) -> tuple[int, bytes]:
    """One JSON-RPC message POSTed to a local session's transport, as if its client had sent it."""
    body = json.dumps(message).encode()
    headers = [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream"),
               (b"mcp-session-id", sid.encode("latin-1")), (b"content-length", str(len(body)).encode())]
    if isinstance(version, str):
        headers.append((b"mcp-protocol-version", version.encode()))
    headers += [(k, v) for k, v in scope.get("headers", ()) if k in (b"host", b"origin")]
    fake = {**scope, "type": "http", "method": "POST", "headers": headers, "query_string": b""}
    given = False

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    status = 0
    chunks: list[bytes] = []

    async def send(event: Message) -> None:
        nonlocal status
        if event["type"] == "http.response.start":
            status = event["status"]
        elif event["type"] == "http.response.body":
            chunks.append(event.get("body", b""))

    await transport.handle_request(fake, receive, send)
    return status, b"".join(chunks)

