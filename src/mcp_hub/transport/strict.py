"""Strict JSON on the SDK's entry: with the direct entry off, every POST body still passes the direct
entry's parser first, so NaN, Infinity and lone surrogates get a JSON-RPC parse error on every path."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from mcp_hub.transport.asgi import read_body, replaying
from mcp_hub.transport.direct import NotStrictJson, _parse, _parse_error


class StrictJson:
    """Reads a POST body (up to `max_body`; the SDK answers a larger one 413), refuses JSON no strict parser
    takes, and hands the request on unchanged otherwise."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        events, body = await read_body(receive, self.max_body)
        if body is not None:
            try:
                _parse(body)
            except NotStrictJson as exc:
                await _parse_error(send, str(exc))
                return
        await self.app(scope, replaying(events, receive), send)
