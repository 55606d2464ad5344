"""The direct HTTP entry for `tools/call` and listings: the framing of the hot paths, without the SDK's server session.

The SDK's Streamable HTTP transport and server session cost a relayed call more CPU than the
gateway's own work. This ASGI wrapper of a route's endpoint reads a `tools/call` POST itself,
describes the request and its caller, hands it to the one call path (`core/calls.py`, which the
SDK's entry calls too), and writes the answer as the SDK's transport would. Everything else, and
any request it is not sure about, goes to the SDK's transport unchanged, which also answers all
malformed input.

Callers: handshake-era sessions (the session must be one the SDK opened and still holds, used by
the credential that opened it; the call counts as activity for its idle timer), stateless-route
callers, and 2026-07-28 callers (their envelope and headers checked as the SDK's entry checks
them). Progress and log messages stream back on the call's response; an upstream's questions are
put to a handshake-era caller as requests on that stream, whose answers (POSTed back on the
session) this wrapper takes; `notifications/cancelled` (and a 2026-07-28 caller's closed request)
cancel the call. Listings (tools/list, prompts/list, resources/list) are written from their serialized
form (transport/listings.py). `listen.direct_calls: false` turns this entry off; so does an SDK whose internals
it needs have changed (`sdk_internals.py`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, authorization_context
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp_types import LOG_LEVEL_META_KEY, SERVER_INFO_META_KEY
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic_core import to_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mcp_hub import sdk_internals
from mcp_hub.auth.identity import Consumer
from mcp_hub.core.calls import LOG_LEVELS, CallAnswer, Caller, ToolRequest, traceparent_of
from mcp_hub.core.hub import ACCESS_TOKEN_SCOPE_KEY, CONSUMER_SCOPE_KEY, DirectStats
from mcp_hub.transport.asgi import header as _header
from mcp_hub.transport.asgi import read_body as _read_body
from mcp_hub.transport.asgi import replaying as _replaying
from mcp_hub.transport.listings import LISTINGS, Listings
from mcp_hub.upstreams.base import DownstreamPeer

if TYPE_CHECKING:
    from mcp_hub.core.hub import Gateway

logger = logging.getLogger(__name__)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"connection", b"keep-alive"),
    (b"x-accel-buffering", b"no"),
]
# The capability a caller must have declared for each request an upstream may put to it.
_NEEDS = {"sampling/createMessage": "sampling", "elicitation/create": "elicitation", "roots/list": "roots"}


@dataclass(slots=True)
class _Session:
    """What the wrapper learnt of a stateful session when it opened, and since."""

    capabilities: dict[str, Any]
    client_info: dict[str, Any] | None = None
    log_level: str = "debug"
    calls: dict[Any, anyio.CancelScope] = field(default_factory=dict)
    # The protocol version the initialize answer gave (None: not read; the SDK entry's note is used).
    protocol_version: str | None = None
    # The client sent notifications/initialized (on its way to the SDK, which then makes the session hear
    # of list changes).
    initialized: bool = False

    def declares(self, method: str) -> bool:
        """Whether the caller declared the capability that a request `method` to it needs."""
        need = _NEEDS.get(method)
        return need is not None and need in self.capabilities


class _Reply:
    """The HTTP response of one call: one JSON body, or an SSE stream.

    `sse` None: JSON unless something is streamed before the answer (a notification, a request to the
    caller, a keep-alive ping), then SSE. The transport spec lets a server answer a POSTed request
    either way and has every client take both; a JSON answer is read to its end, so the caller's
    HTTP client keeps its connection (the SDK's client drops it after an SSE answer). `sse` False:
    JSON only (`listen.json_response`). `modern`: a 2026-07-28 caller, whose JSON errors carry the
    status the spec maps their code to (as the SDK's per-request entry answers).
    """

    def __init__(self, send: Send, session_id: str | None, sse: bool | None, *, modern: bool = False) -> None:
        self.send = send
        self.session_id = session_id.encode("latin-1") if session_id is not None else None
        self.sse = sse
        self.modern = modern
        self.started = False

    async def _start(self, sse: bool, status: int = 200, length: int | None = None) -> None:
        self.started = True
        headers = _SSE_HEADERS if sse else [(b"content-type", b"application/json")]
        if length is not None:
            headers = [*headers, (b"content-length", str(length).encode())]
        if self.session_id is not None:
            headers = [*headers, (b"mcp-session-id", self.session_id)]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def event(self, message: dict[str, Any]) -> None:
        """A message before the answer (not on a JSON reply, which carries the answer alone)."""
        if self.sse is False:
            return
        if not self.started:
            self.sse = True
            await self._start(True)
        await self.send({"type": "http.response.body", "body": _frame(message), "more_body": True})

    async def ping(self) -> None:
        """An SSE comment: commits a deferred reply to a stream, and keeps an idle one open."""
        if not self.started:
            self.sse = True
            await self._start(True)
        await self.send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})

    async def finish_raw(self, body: bytes) -> None:
        """A JSON answer already serialized (a listing)."""
        await self._start(False, 200, len(body))
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def finish(self, message: dict[str, Any] | None) -> None:
        if self.sse:
            if not self.started:
                await self._start(True)
            body = b"" if message is None else _frame(message)
        else:
            status = 200
            if self.modern and message is not None and "error" in message:
                status = ERROR_CODE_HTTP_STATUS.get(message["error"].get("code"), 200)
            body = b"" if message is None else _json(message)
            await self._start(False, status, len(body))
        await self.send({"type": "http.response.body", "body": body, "more_body": False})


class _StreamPeer(DownstreamPeer):
    """The caller of a direct call, for an upstream's questions: asked on the call's own stream."""

    def __init__(self, owner: DirectCalls, session_id: str | None, session: _Session, reply: _Reply) -> None:
        self.owner = owner
        self.session_id = session_id
        self.session = session
        self.reply = reply

    def supports(self, method: str) -> bool:
        return self.reply.sse is not False and self.session_id is not None and self.session.declares(method)

    async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
        key = (self.session_id, f"mcphub-{self.owner.id_tag}{next(self.owner.ids)}")
        answered = anyio.Event()
        box: dict[str, Any] = {}
        self.owner.waiting[key] = (answered, box)
        try:
            message: dict[str, Any] = {"jsonrpc": "2.0", "id": key[1], "method": method}
            if params is not None:
                message["params"] = params
            await self.reply.event(message)
            await answered.wait()
        finally:
            self.owner.waiting.pop(key, None)
        if "error" in box:
            error = box["error"] if isinstance(box["error"], dict) else {}
            raise MCPError(code=error.get("code", types.INTERNAL_ERROR), message=str(error.get("message", "")),
                           data=error.get("data"))
        result = box.get("result")
        return result if isinstance(result, dict) else {}


class DirectCalls:
    """ASGI wrapper of one route's Streamable HTTP endpoint (inside auth, which names the consumer)."""

    def __init__(
        self, app: ASGIApp, gateway: Gateway, path: str, manager: StreamableHTTPSessionManager, *,
        json_response: bool, max_body: int, stats: DirectStats,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.path = path
        self.manager = manager
        self.json_response = json_response
        self.max_body = max_body
        self.stats = stats
        self.sessions: dict[str, _Session] = {}
        self.waiting: dict[tuple[str, Any], tuple[anyio.Event, dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        # With shared sessions, the ids of questions put to callers name this replica ("mcphub-<replica>.<n>"),
        # so an answer POSTed to another replica is sent on to this one (transport/replicas.py).
        self.id_tag = ""
        # The SDK transport's session table; without it (another SDK layout) every call goes to the SDK.
        self._instances = sdk_internals.session_table(manager) if not sdk_internals.direct_entry_missing() else None
        self._owners: dict[str, Any] = sdk_internals.session_owners(manager)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method") if scope["type"] == "http" else None
        if method == "DELETE":
            session_id = _header(scope, b"mcp-session-id")
            if session_id is not None:
                self.sessions.pop(session_id, None)
                if isinstance(self.gateway.wire_cache, Listings):
                    self.gateway.wire_cache.sessions.pop((self.path, session_id), None)
        if method != "POST" or self._instances is None:
            await self.app(scope, receive, send)
            return
        events, body = await _read_body(receive, self.max_body)
        replay = _replaying(events, receive)
        try:
            message = _parse(body) if body is not None else None
        except NotStrictJson as exc:
            await _parse_error(send, str(exc))
            return
        if message is None:
            await self.app(scope, replay, send)
            return
        session_id = _header(scope, b"mcp-session-id")
        kind = message.get("method")
        if not isinstance(kind, str | None):
            kind = ""  # not a method name: the SDK answers it (Invalid Request)
        if session_id is None:
            if kind == "initialize" and not self.manager.stateless:
                await self._opening(message, scope, replay, send)
                return
            if kind == "tools/call" and "id" in message:  # a stateless route, or a 2026-07-28 caller
                if await self._call(message, None, scope, receive, send):
                    return
                self.stats.handed_over += 1
            if kind in LISTINGS and "id" in message and await self._listing(message, None, scope, send):
                return
        elif kind is None and "id" in message:
            waiter = self.waiting.get((session_id, _hashable(message.get("id"))))
            if waiter is not None and self._live_session(session_id, scope) is not None:
                waiter[1].update(message)
                waiter[0].set()
                await send({"type": "http.response.start", "status": 202,
                            "headers": [(b"mcp-session-id", session_id.encode("latin-1"))]})
                await send({"type": "http.response.body", "body": b""})
                return
        elif kind == "tools/call" and "id" in message:
            if await self._call(message, session_id, scope, receive, send):
                return
            self.stats.handed_over += 1
        elif kind in LISTINGS and "id" in message:
            if await self._listing(message, session_id, scope, send):
                return
        else:
            self._observe(session_id, kind, message, scope)
        await self.app(scope, replay, send)

    # -- sessions --------------------------------------------------------------------------------

    async def _opening(self, message: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        """An initialize: pass it to the SDK and note the session it opens, with the caller's capabilities."""
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        capabilities, client_info = params.get("capabilities"), params.get("clientInfo")

        opened: list[str] = []
        body: list[bytes] = []

        async def watch(event: Message) -> None:
            # noted before the answer leaves: the client may use the session the moment it reads it
            if event["type"] == "http.response.start" and event.get("status") == 200:
                for key, value in event.get("headers", ()):
                    if key == b"mcp-session-id":
                        opened.append(value.decode("latin-1"))
                        self._note_session(opened[0], capabilities, client_info)
            elif event["type"] == "http.response.body" and opened:
                body.append(event.get("body", b""))
                if not event.get("more_body", False):
                    session = self.sessions.get(opened[0])
                    if session is not None:
                        session.protocol_version = _negotiated(b"".join(body), message.get("id"))
            await send(event)

        await self.app(scope, receive, watch)

    # -- for shared sessions (transport/replicas.py) --------------------------------------------------

    def note_session(self, session_id: str, capabilities: Any, client_info: Any, log_level: Any = None) -> None:
        """A session this replica adopted: what its client declared when it opened it elsewhere."""
        self._note_session(session_id, capabilities, client_info)
        if isinstance(log_level, str) and log_level in LOG_LEVELS:
            self.sessions[session_id].log_level = log_level

    def has_waiter(self, session_id: str, request_id: Any) -> bool:
        return (session_id, _hashable(request_id)) in self.waiting

    def has_call(self, session_id: str, request_id: Any) -> bool:
        session = self.sessions.get(session_id)
        return session is not None and _hashable(request_id) in session.calls

    @staticmethod
    def replica_of(request_id: Any) -> str | None:
        """The replica that put the question answered by `request_id` (None: not one of the direct entry's)."""
        if isinstance(request_id, str) and request_id.startswith("mcphub-") and "." in request_id:
            return request_id[len("mcphub-"):].split(".", 1)[0]
        return None

    def take(self, session_id: str, message: dict[str, Any]) -> bool:
        """A message another replica received for a session held here: an answer to a question this entry
        put, or a cancellation of a call it serves. False when it is neither."""
        if "method" not in message and "id" in message:
            waiter = self.waiting.get((session_id, _hashable(message.get("id"))))
            if waiter is None:
                return False
            waiter[1].update(message)
            waiter[0].set()
            return True
        if message.get("method") == "notifications/cancelled":
            params = message.get("params") if isinstance(message.get("params"), dict) else {}
            session = self.sessions.get(session_id)
            scope = session.calls.get(_hashable(params.get("requestId"))) if session is not None else None
            if scope is not None:
                scope.cancel()
                return True
        return False

    def _note_session(self, session_id: str, capabilities: Any, client_info: Any) -> None:
        self.sessions[session_id] = _Session(capabilities if isinstance(capabilities, dict) else {},
                                             client_info if isinstance(client_info, dict) else None)
        if len(self.sessions) > 2 * len(self._instances or ()) + 64:
            live = self._instances or {}
            self.sessions = {k: v for k, v in self.sessions.items() if k in live or k == session_id}
            if isinstance(self.gateway.wire_cache, Listings):
                self.gateway.wire_cache.forget_sessions(self.path, self.sessions)

    def _observe(self, session_id: str, kind: Any, message: dict[str, Any], scope: Scope) -> None:
        """Requests the SDK serves that the direct path must know of: log level, cancellation (from the
        credential that opened the session only, as the SDK takes them)."""
        if kind not in ("logging/setLevel", "notifications/cancelled", "notifications/initialized"):
            return
        live = self._live_session(session_id, scope)
        if live is None:
            return
        session = live[0]
        if kind == "notifications/initialized":
            session.initialized = True
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        level = params.get("level")
        if kind == "logging/setLevel" and isinstance(level, str) and level in LOG_LEVELS:
            session.log_level = level  # (the SDK refuses any other level; so does this entry)
        elif kind == "notifications/cancelled":
            scope = session.calls.get(_hashable(params.get("requestId")))
            if scope is not None:
                scope.cancel()

    def _live_session(self, session_id: str, scope: Scope) -> tuple[_Session, Any] | None:
        session = self.sessions.get(session_id)
        transport = (self._instances or {}).get(session_id)
        if session is None or transport is None or getattr(transport, "is_terminated", True):
            return None
        user = scope.get("user")
        requestor = authorization_context(user) if isinstance(user, AuthenticatedUser) else None
        if requestor != self._owners.get(session_id):
            return None  # the SDK answers it as an unknown session
        return session, transport

    # -- a listing -------------------------------------------------------------------------------

    async def _listing(self, message: dict[str, Any], session_id: str | None, scope: Scope, send: Send) -> bool:
        """Answer tools/list, prompts/list or resources/list with its serialized form (transport/listings.py);
        False (having done nothing) when the SDK's entry should answer.

        A handshake-era session is answered once its client sent notifications/initialized (on its way to
        the SDK's entry, which makes the session hear of list changes), at the version its initialize
        answer gave, or once the SDK's entry has noted it (an adopted session); a 2026-07-28 request once its
        envelope passes the checks of the SDK's entry. Anything else (a stateless route's handshake-era
        request, a session not initialized, a failure while listing) goes to the SDK's entry."""
        params = message.get("params")
        request_id = message.get("id")
        listings = self.gateway.wire_cache
        route = self.gateway.routes.get(self.path)
        consumer = scope.get(CONSUMER_SCOPE_KEY)
        if (
            message.get("jsonrpc") != "2.0" or type(request_id) not in (str, int)
            or (params is not None and not isinstance(params, dict))
            or not isinstance(listings, Listings) or route is None or route.server is None
            or not isinstance(consumer, Consumer) or not _acceptable(scope, self.json_response)
        ):
            return False
        header = _header(scope, b"mcp-protocol-version")
        transport: Any = None
        session = _Session({})
        if header is not None and header not in HANDSHAKE_PROTOCOL_VERSIONS:
            pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
            if find_duplicated_routing_header(pairs) is not None:
                return False
            verdict = classify_inbound_request(message, headers=dict(pairs))
            if not isinstance(verdict, InboundModernRoute):
                return False
            version, modern, session_id = verdict.protocol_version, True, None
            session = _Session(verdict.client_capabilities if isinstance(verdict.client_capabilities, dict) else {},
                               verdict.client_info if isinstance(verdict.client_info, dict) else None)
        elif session_id is not None:
            live = self._live_session(session_id, scope)
            if live is None:
                return False
            session, transport = live
            noted = listings.sessions.get((self.path, session_id))
            if noted is None and session.initialized:
                noted = session.protocol_version
            if noted is None:
                return False
            version, modern = noted, False
        else:
            return False
        caller = Caller(
            consumer=consumer, modern=modern, peer=None, declares=session.declares,
            access_token=scope.get(ACCESS_TOKEN_SCOPE_KEY),
            request_headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())},
            capabilities=session.capabilities, client_info=session.client_info,
        )
        meta = params.get("_meta") if isinstance(params, dict) and isinstance(params.get("_meta"), dict) else {}
        with self.gateway.tracing.request(
            message["method"], traceparent_of(meta.get("traceparent"), _header(scope, b"traceparent")),
            consumer=consumer, route=self.path, request_id=request_id, protocol_version=version,
        ), sdk_internals.session_busy(transport):
            try:
                wire = await listings.answer(route, caller, message["method"], version, route.server)
            except Exception:  # noqa: BLE001 - the SDK's entry answers it, with the error it gives
                logger.debug("listing left to the SDK entry", exc_info=True)
                return False
            body = b'{"jsonrpc":"2.0","id":' + to_json(request_id) + b',"result":' + wire + b"}"
            await _Reply(send, session_id, False, modern=modern).finish_raw(body)
        return True

    # -- a call ----------------------------------------------------------------------------------

    async def _call(
        self, message: dict[str, Any], session_id: str | None, scope: Scope, receive: Receive, send: Send
    ) -> bool:
        """Serve a tools/call; False (having done nothing) when the SDK's entry should frame it.

        `session_id` None: a stateless route, where every request stands alone (no back channel for
        an upstream's questions, as on the SDK's stateless path). A 2026-07-28 request stands alone
        by design: its envelope is checked as the SDK's entry checks it, and anything the SDK would
        refuse is left to the SDK to refuse."""
        params = message.get("params")
        request_id = message.get("id")
        if (
            message.get("jsonrpc") != "2.0" or type(request_id) not in (str, int)
            or not isinstance(params, dict) or not isinstance(params.get("name"), str)
        ):
            return False
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, dict):
            return False
        if not _acceptable(scope, self.json_response):
            return False
        route = self.gateway.routes.get(self.path)
        consumer = scope.get(CONSUMER_SCOPE_KEY)
        if route is None or not isinstance(consumer, Consumer):
            return False
        version = _header(scope, b"mcp-protocol-version")
        verdict: InboundModernRoute | None = None
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            verdict = _modern_verdict(message, params, arguments, scope, route)
            if verdict is None:
                return False
            capabilities = verdict.client_capabilities if isinstance(verdict.client_capabilities, dict) else {}
            info = verdict.client_info if isinstance(verdict.client_info, dict) else None
            live: tuple[_Session, Any] | None = (_Session(capabilities, info), None)
            session_id = None
        elif session_id is not None:
            live = self._live_session(session_id, scope)
        elif self.manager.stateless:
            live = (_Session({}), None)
        else:
            return False  # no session on a stateful route: the SDK's refusal
        if live is None:
            return False
        session, transport = live
        modern = verdict is not None
        self.stats.calls += 1
        reply = _Reply(send, session_id, False if self.json_response else None, modern=modern)
        peer = _StreamPeer(self, session_id, session, reply)
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        caller = Caller(
            consumer=consumer, modern=modern, peer=None if modern else peer, declares=session.declares,
            notify=functools.partial(_notification, reply), access_token=scope.get(ACCESS_TOKEN_SCOPE_KEY),
            request_headers={k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())},
            capabilities=session.capabilities, client_info=session.client_info,
        )
        request = ToolRequest(
            name=params["name"], arguments=arguments, progress_token=meta.get("progressToken"),
            log_level=meta.get(LOG_LEVEL_META_KEY) if modern else session.log_level,
            traceparent=traceparent_of(meta.get("traceparent"), _header(scope, b"traceparent")),
        )
        with self.gateway.tracing.request(  # the request's span (tracing off: a no-op)
            "tools/call", request.traceparent, target=request.name, consumer=consumer, route=self.path,
            request_id=request_id, protocol_version=version,
        ):
            key = _hashable(request_id)
            answer: CallAnswer | None = None
            with sdk_internals.session_busy(transport), anyio.CancelScope() as cancel:
                session.calls[key] = cancel
                watch = _DisconnectWatch(receive, cancel, reply) if modern else None
                try:
                    answer = await self.gateway.service.call_tool(route, caller, request)
                except MCPError as exc:  # refused before the upstream was asked (recorded already)
                    answer = CallAnswer(error=exc)
                finally:
                    if watch is not None:
                        watch.close()
                    session.calls.pop(key, None)
            if answer is None:  # cancelled: the call is recorded so; the caller gets no answer
                await reply.finish(None)
                return True
            try:
                await reply.finish(_message(request_id, answer, modern, route.server))
            finally:
                await answer.settle()  # the caller has its answer first; the charge and audit follow
            return True


async def _notification(reply: _Reply, message: dict[str, Any]) -> None:
    """A notification of the call (progress, log message) on its stream, as a JSON-RPC message."""
    await reply.event({"jsonrpc": "2.0", **message})


async def _parse_error(send: Send, why: str) -> None:
    """A JSON-RPC parse error for a body the gateway refuses, answered as the SDK answers unparsable ones."""
    body = _json({"jsonrpc": "2.0", "id": None, "error": {"code": types.PARSE_ERROR, "message": f"Parse error: {why}"}})
    await send({"type": "http.response.start", "status": 400,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _message(request_id: Any, answer: CallAnswer, modern: bool, server: Any) -> dict[str, Any]:
    """The JSON-RPC response for a call's answer, in the caller's era, as the SDK's entry frames it."""
    if answer.error is not None:
        return _error(request_id, answer.error)
    result = answer.result or {}
    if modern:
        result = {**result, "resultType": result.get("resultType", "complete")}
        meta = result.get("_meta")
        if meta is None or (isinstance(meta, dict) and meta.get(SERVER_INFO_META_KEY) is None):
            result["_meta"] = {**(meta or {}), SERVER_INFO_META_KEY: server.server_info_stamp}
    else:
        result = {k: v for k, v in result.items() if k != "resultType"}
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def _modern_verdict(
    message: dict[str, Any], params: dict[str, Any], arguments: dict[str, Any] | None, scope: Scope, route: Any
) -> InboundModernRoute | None:
    """A 2026-07-28 tools/call's envelope, checked as the SDK's per-request entry checks it (routing
    headers, envelope, `Mcp-Param-*` headers); None when the SDK should serve (or refuse) it, or when
    it resumes a relayed call (`requestState`)."""
    if "requestState" in params or "inputResponses" in params:
        return None
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
    if find_duplicated_routing_header(pairs) is not None:
        return None
    headers = dict(pairs)
    verdict = classify_inbound_request(message, headers=headers)
    if not isinstance(verdict, InboundModernRoute):
        return None
    schema = route.view.input_schema(params["name"])
    prefix = MCP_PARAM_HEADER_PREFIX.lower()
    if schema is not None and (arguments or any(name.startswith(prefix) for name in headers)):
        if validate_mcp_param_headers(schema, arguments or {}, headers) is not None:
            return None
    return verdict


class _DisconnectWatch:
    """For a 2026-07-28 caller, whose closed request is its cancellation: cancels the call when the
    caller goes away, and keeps its silent stream alive with a ping every PING_INTERVAL seconds (as
    the SDK's entry does, so proxies do not cut it). A handshake-era caller cancels with
    notifications/cancelled; its disconnect is not a cancellation (the transport spec says so), and
    its call runs to the end as on the SDK path. The tasks start only once the call has run for
    `after` seconds: most calls end sooner, and a task per call would cost more than their relay work."""

    def __init__(self, receive: Receive, scope: anyio.CancelScope, reply: _Reply, after: float = 0.05) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._timer = asyncio.get_running_loop().call_later(after, self._start, receive, scope, reply)

    def _start(self, receive: Receive, scope: anyio.CancelScope, reply: _Reply) -> None:
        self._tasks.append(asyncio.ensure_future(_cancel_on_disconnect(receive, scope)))
        if reply.sse is not False:
            self._tasks.append(asyncio.ensure_future(_keep_alive(reply)))

    def close(self) -> None:
        self._timer.cancel()
        for task in self._tasks:
            task.cancel()


PING_INTERVAL = 15.0


async def _keep_alive(reply: _Reply) -> None:
    while True:
        await asyncio.sleep(PING_INTERVAL)
        await reply.ping()


async def _cancel_on_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


def _error(request_id: Any, exc: MCPError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": exc.error.model_dump(by_alias=True, mode="json",
                                                                            exclude_none=True)}


def _negotiated(body: bytes, request_id: Any) -> str | None:
    """The protocol version an initialize answer (JSON, or one SSE event) gives; None when it gives none."""
    for chunk in [body, *(line[5:] for line in re.split(rb"\r\n|\r|\n", body) if line.startswith(b"data:"))]:
        try:
            message = json.loads(chunk)
        except ValueError:
            continue
        result = message.get("result") if isinstance(message, dict) and message.get("id") == request_id else None
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str) and version in HANDSHAKE_PROTOCOL_VERSIONS:
            return version
    return None


def _frame(message: dict[str, Any]) -> bytes:
    return b"event: message\r\ndata: " + _json(message) + b"\r\n\r\n"


def _json(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


_SCALARS = (str, int, float, bool, type(None))


def _hashable(value: Any) -> Any:
    """A JSON-RPC id as a dict key (ids are scalars; anything else is keyed by its JSON)."""
    return value if isinstance(value, _SCALARS) else json.dumps(value)


def _acceptable(scope: Scope, json_response: bool) -> bool:
    """Content-Type JSON, and an Accept the SDK transport would take for this response mode."""
    content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if content_type != "application/json":
        return False
    types_ = {t.split(";")[0].strip().lower() for t in (_header(scope, b"accept") or "").split(",")}
    wild = "*/*" in types_
    has_json = wild or bool(types_ & {"application/json", "application/*"})
    has_sse = wild or bool(types_ & {"text/event-stream", "text/*"})
    return has_json if json_response else has_json and has_sse


class NotStrictJson(ValueError):
    """JSON the gateway refuses though Python's parser takes it: NaN or Infinity, or a lone surrogate."""


def _no_constants(name: str) -> Any:
    raise NotStrictJson(f"{name} is not a JSON number")


# A \uD800-\uDFFF escape: only then can a decoded string hold a surrogate (a pair decodes into one character).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _parse(body: bytes) -> dict[str, Any] | None:
    """The JSON-RPC message of a POST body; None when it is not one (the SDK answers that), NotStrictJson
    for input no other JSON parser would take, which would otherwise break the request later."""
    try:
        message = json.loads(body, parse_constant=_no_constants)
    except NotStrictJson:
        raise
    except (ValueError, RecursionError):
        return None
    if _SURROGATE_ESCAPE.search(body) is not None:
        try:
            json.dumps(message, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise NotStrictJson("a string holds a lone UTF-16 surrogate") from None
    return message if isinstance(message, dict) else None

