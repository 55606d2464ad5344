"""Server-to-client requests for callers that cannot take them mid-call (2026-07-28 clients).

A 2026-07-28 client has no back-channel: when an upstream asks for sampling, elicitation or roots
while serving its call, the gateway answers the client's `tools/call` with an `InputRequiredResult`
and keeps the upstream call waiting. The client fulfils the requests and calls again with the
responses and the `request_state` the gateway handed out; the gateway feeds the responses to the
waiting upstream and answers with the result, or with the next round of requests.

`request_state` is opaque to the client and tamper-proof: an HMAC over the pending call's id, the
tool, the consumer and an expiry. It carries no secret and no upstream data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError

from mcp_hub.metering.record import LIMIT_EXCEEDED
from mcp_hub.upstreams.base import DownstreamPeer

STATE_PREFIX = "hub1."
# Server-to-client requests a deferred caller can answer, with the capability each needs.
_REQUESTS: dict[str, tuple[type[Any], types.ClientCapabilities]] = {
    "sampling/createMessage": (types.CreateMessageRequest, types.ClientCapabilities(sampling=types.SamplingCapability())),
    "elicitation/create": (types.ElicitRequest, types.ClientCapabilities(elicitation=types.ElicitationCapability())),
    "roots/list": (types.ListRootsRequest, types.ClientCapabilities(roots=types.RootsCapability())),
}


class RequestStateRefused(MCPError):
    """A `request_state` this gateway did not issue to this caller for this tool, or one that expired."""


class StateSigner:
    """Signs and checks `request_state` tokens."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)

    def sign(self, payload: dict[str, Any]) -> str:
        body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).rstrip(b"=")
        mac = base64.urlsafe_b64encode(hmac.new(self._key, body, hashlib.sha256).digest()[:18])
        return STATE_PREFIX + body.decode() + "." + mac.decode()

    def verify(self, token: str) -> dict[str, Any] | None:
        if not token.startswith(STATE_PREFIX):
            return None
        try:
            body, mac = token[len(STATE_PREFIX) :].rsplit(".", 1)
            expected = base64.urlsafe_b64encode(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:18])
            if not hmac.compare_digest(expected.decode(), mac):
                return None
            payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, TypeError):
            return None
        if not isinstance(payload, dict) or payload.get("exp", 0) < time.time():
            return None
        return payload


@dataclass
class _Ask:
    key: str
    method: str
    params: dict[str, Any] | None
    answer: anyio.Event = field(default_factory=anyio.Event)
    response: dict[str, Any] | None = None
    error: str | None = None


class PendingCall:
    """An upstream call running in the background while its caller answers input requests."""

    def __init__(self, call_id: str, tool: str, consumer: str, capabilities: Callable[[str], bool]) -> None:
        self.id = call_id
        self.tool = tool
        self.consumer = consumer
        self._capable = capabilities
        self.asks: dict[str, _Ask] = {}
        self._unsent: list[_Ask] = []
        self._wake = anyio.Event()
        self.result: Any = None
        self.failure: BaseException | None = None
        self.done = False
        self.deadline = time.monotonic()
        self.context: Any = None  # what the gateway needs to finish the call (its policy record)
        self.scope = anyio.CancelScope()  # the background upstream call

    # The upstream side: asks a question and waits for the caller's answer.
    def peer(self) -> DownstreamPeer:
        pending = self

        class _Deferred(DownstreamPeer):
            def supports(self, method: str) -> bool:
                return method in _REQUESTS and pending._capable(method)

            async def request(self, method: str, params: dict[str, Any] | None) -> dict[str, Any]:
                ask = _Ask(key=f"{method.split('/')[0]}-{len(pending.asks) + 1}", method=method, params=params)
                pending.asks[ask.key] = ask
                pending._unsent.append(ask)
                pending._wake.set()
                await ask.answer.wait()
                if ask.error is not None or ask.response is None:
                    raise MCPError(code=types.INVALID_REQUEST, message=ask.error or f"{method}: no answer")
                return ask.response

        return _Deferred()

    def finish(self, result: Any = None, failure: BaseException | None = None) -> None:
        self.result, self.failure, self.done = result, failure, True
        self._wake.set()

    def answer(self, responses: dict[str, Any]) -> None:
        for key, response in responses.items():
            ask = self.asks.get(key)
            if ask is None or ask.answer.is_set():
                continue
            if isinstance(response, dict) and "code" in response and "message" in response and len(response) <= 3:
                ask.error = str(response.get("message"))
            else:
                ask.response = response
            ask.answer.set()

    def abandon(self, reason: str) -> None:
        for ask in self.asks.values():
            if not ask.answer.is_set():
                ask.error = reason
                ask.answer.set()

    async def next_event(self, within: float) -> list[_Ask] | None:
        """Wait for the result (None) or for new questions to send to the caller."""
        with anyio.move_on_after(within):
            while not self.done and not self._unsent:
                self._wake = anyio.Event()
                await self._wake.wait()
        if self._unsent:
            unsent, self._unsent = self._unsent, []
            return unsent
        if self.done:
            return None
        raise TimeoutError


def input_required(asks: list[_Ask], state: str) -> types.InputRequiredResult:
    """The `InputRequiredResult` carrying the upstream's questions to the caller."""
    requests = {
        ask.key: _REQUESTS[ask.method][0].model_validate({"method": ask.method, "params": ask.params}, by_name=False)
        for ask in asks
    }
    return types.InputRequiredResult(input_requests=requests, request_state=state)


class Relay:
    """The gateway's pending calls for 2026-07-28 callers."""

    def __init__(self, *, ttl: float = 300.0, key: bytes | None = None, max_pending: int = 10_000) -> None:
        self.signer = StateSigner(key)
        self.ttl = ttl
        self.max_pending = max_pending
        self.pending: dict[str, PendingCall] = {}

    def _sweep(self) -> None:
        now = time.monotonic()
        for call_id, pending in list(self.pending.items()):
            if pending.deadline < now:
                pending.abandon("the caller did not answer in time")
                self.pending.pop(call_id, None)

    async def start(
        self,
        tool: str,
        consumer: str,
        capable: Callable[[str], bool],
        run: Callable[[DownstreamPeer], Awaitable[Any]],
        spawn: Callable[[Callable[[], Awaitable[None]]], None],
        wait: float,
        context: Any = None,
        per_consumer: int | None = None,
    ) -> tuple[Any, types.InputRequiredResult | None, Any]:
        """Run `run(peer)` in the background; return its result, or the first input requests.

        `per_consumer`: how many of one consumer's calls may wait for its input at once (one consumer must
        not hold the whole table)."""
        self._sweep()
        if len(self.pending) >= self.max_pending:
            raise MCPError(code=types.INTERNAL_ERROR, message="too many calls are waiting for their callers' input")
        if per_consumer is not None and sum(p.consumer == consumer for p in self.pending.values()) >= per_consumer:
            raise MCPError(
                code=LIMIT_EXCEEDED,
                message=f"too many of this consumer's calls are waiting for its input ({per_consumer}, "
                "listen.max_pending_per_consumer): answer or cancel them first",
                data={"limit": "listen.max_pending_per_consumer", "max": per_consumer},
            )
        pending = PendingCall(secrets.token_urlsafe(12), tool, consumer, capable)
        pending.deadline = time.monotonic() + self.ttl
        pending.context = context

        async def background() -> None:
            with pending.scope:
                try:
                    pending.finish(result=await run(pending.peer()))
                except Exception as exc:  # noqa: BLE001 - handed to whichever request collects the result
                    pending.finish(failure=exc)

        self.pending[pending.id] = pending
        spawn(background)
        return await self._collect(pending, wait)

    async def resume(
        self, state: str, tool: str, consumer: str, responses: dict[str, Any], wait: float
    ) -> tuple[Any, types.InputRequiredResult | None, Any]:
        """Feed a caller's answers to its pending call and return what comes next."""
        payload = self.signer.verify(state)
        pending = self.pending.get(payload["id"]) if payload else None
        if payload is None or pending is None or payload.get("tool") != tool or payload.get("sub") != consumer:
            raise RequestStateRefused(code=types.INVALID_PARAMS, message="request_state is invalid or has expired")
        pending.deadline = time.monotonic() + self.ttl
        pending.answer(responses)
        return await self._collect(pending, wait)

    async def _collect(self, pending: PendingCall, wait: float) -> tuple[Any, types.InputRequiredResult | None, Any]:
        """(result or failure, None, context) when the call is over, (None, input requests, context) when it
        asks; a failure (the upstream's, or a timeout) is a value, so the call's context can record it."""
        try:
            asks = await pending.next_event(wait)
        except TimeoutError:
            self.pending.pop(pending.id, None)
            pending.abandon("the call timed out")
            pending.scope.cancel()
            return MCPError(code=types.INTERNAL_ERROR, message=f"tool {pending.tool} timed out"), None, pending.context
        except BaseException:
            # The caller cancelled (or went away) while waiting: the upstream call goes too.
            self.pending.pop(pending.id, None)
            pending.scope.cancel()
            raise
        if asks is None:
            self.pending.pop(pending.id, None)
            outcome = pending.failure if pending.failure is not None else pending.result
            return outcome, None, pending.context
        state = self.signer.sign(
            {"id": pending.id, "tool": pending.tool, "sub": pending.consumer, "exp": int(time.time() + self.ttl)}
        )
        return None, input_required(asks, state), pending.context
