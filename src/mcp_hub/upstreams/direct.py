"""`tools/call` to a Streamable HTTP upstream as one plain HTTP exchange.

The gateway's hot path writes the request and reads the answer itself instead of going through the
SDK's client session, whose memory streams, tasks and model round-trips cost about as much CPU per
call as the upstream's whole server. A 2026-07-28 request is self-contained (the protocol version,
client info and capabilities ride in `_meta`); a handshake-era one rides on the session the SDK
client opened (its `Mcp-Session-Id` and negotiated version), with string request ids that cannot
collide with the SDK client's integer ones on that session. What the SDK client does that matters
is kept: the envelope, the `Mcp-Method`/`Mcp-Name` and `Mcp-Param-*` headers, the upstream's
credentials, notifications the upstream streams while it works, the requests a handshake-era
upstream sends mid-call (answered through `on_request`, the answer POSTed back on the session),
cancellation (`notifications/cancelled` on a handshake-era session; closing the request on a
2026-07-28 one), and validation of structured output against the tool's schema.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import jsonschema
import jsonschema.exceptions
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import (
    MCP_METHOD_HEADER,
    MCP_NAME_HEADER,
    MCP_PROTOCOL_VERSION_HEADER,
    mcp_param_headers,
    x_mcp_header_map,
)

from mcp_hub import __version__
from mcp_hub.catalog.schemas import fast_validator, python_validator, surely_fits
from mcp_hub.upstreams.base import Notify
from mcp_hub.upstreams.wire import Pool, Response, WireError

MCP_SESSION_HEADER = "mcp-session-id"


class SessionGone(Exception):
    """A handshake-era upstream no longer knows the session the gateway holds (it restarted, or expired it)."""

# Answers a request the upstream sends mid-call: {"result": ...} or {"error": {...}}.
OnRequest = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
HeaderSource = Callable[[], Awaitable[dict[str, str]]]
_ACCEPT = "application/json, text/event-stream"
_AGENT = f"mcp-hub/{__version__}"


class DirectChannel:
    """Raw `tools/call` requests to one connected 2026-07-28 upstream.

    Built once per connection from what the SDK session negotiated; the catalog it was built
    with supplies the tools' header annotations and output schemas.
    """

    def __init__(
        self, pool: Pool, envelope: dict[str, Any] | None, version: str, *,
        headers: dict[str, str], credentials: HeaderSource | None, session_id: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.pool = pool
        # None: a handshake-era session (no per-request envelope; the session id rides in a header)
        self.modern = envelope is not None
        self.session_id = session_id
        self.static_headers = {k.lower(): v for k, v in headers.items()}
        self.credentials = credentials
        self.envelope = envelope or {}
        self.version = version
        self._ids = itertools.count(1)
        self._header_maps: dict[str, dict[tuple[str, ...], str]] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._validators: dict[str, tuple[Any, Any]] = {}  # tool -> (Python validator, Rust validator or None)

    def learn(self, tools: list[types.Tool]) -> None:
        """Take in the upstream's (re)listed tools: header annotations and output schemas."""
        self._header_maps = {}
        self._schemas = {}
        self._validators = {}
        for tool in tools:
            mapping = x_mcp_header_map(tool.input_schema)
            if mapping:
                self._header_maps[tool.name] = mapping
            if tool.output_schema is not None:
                self._schemas[tool.name] = tool.output_schema

    async def call(
        self,
        name: str,
        arguments: dict[str, Any] | None,
        meta: dict[str, Any],
        notify: Notify | None,
        *,
        headers: dict[str, str] | None = None,
        extra_params: dict[str, Any] | None = None,
        on_request: OnRequest | None = None,
    ) -> dict[str, Any]:
        """Send one `tools/call` and return the JSON-RPC response message for it."""
        number = next(self._ids)
        request_id: int | str = number if self.modern else f"mcp-hub-{number}"
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        if extra_params:
            params.update(extra_params)
        if meta:
            params["_meta"] = meta
        body = _encode({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params})
        out = await self._headers(headers)
        if self.modern:
            out[MCP_METHOD_HEADER] = "tools/call"
            out[MCP_NAME_HEADER] = name
            mapping = self._header_maps.get(name)
            if mapping:
                out.update(mcp_param_headers(mapping, arguments or {}))
        answered = False
        try:
            response = await self.pool.post(body, out)
            try:
                message = await self._answer(response, request_id, notify, on_request, headers)
                answered = True
                return message
            finally:
                response.close()
        except BaseException:
            if not self.modern and not answered:
                # A handshake-era server does not take a closed request for a cancelled one: say it.
                with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                    await self._send_quietly(
                        {"jsonrpc": "2.0", "method": "notifications/cancelled",
                         "params": {"requestId": request_id, "reason": "the caller cancelled or timed out"}},
                        headers,
                    )
            raise

    async def _answer(
        self, response: Response, request_id: int | str, notify: Notify | None, on_request: OnRequest | None,
        headers: dict[str, str] | None,
    ) -> dict[str, Any]:
        content_type = response.headers.get("content-type", "").lower()
        if content_type.startswith("text/event-stream"):
            async for message in _sse_messages(response.chunks()):
                if "method" not in message:
                    if message.get("id") == request_id:
                        return message
                elif "id" not in message:
                    if notify is not None:
                        await notify(message)
                else:  # a request to the client, mid-call (handshake-era upstreams)
                    answer = {"result": {}} if message["method"] == "ping" else (
                        await on_request(message) if on_request is not None else
                        {"error": {"code": types.METHOD_NOT_FOUND, "message": f"{message['method']}: not supported"}})
                    await self._send_quietly({"jsonrpc": "2.0", "id": message["id"], **answer}, headers)
            raise MCPError(code=types.INTERNAL_ERROR, message="the upstream's stream ended without an answer")
        raw = await response.read()
        if response.status == 404 and not self.modern:
            raise SessionGone(f"the upstream answered HTTP 404: its session {self.session_id()!r} is gone")
        if content_type.startswith("application/json"):
            try:
                message = json.loads(raw)
            except ValueError:
                message = None
            if isinstance(message, dict) and ("result" in message or "error" in message):
                return message
        raise MCPError(
            code=types.INTERNAL_ERROR,
            message=f"the upstream answered HTTP {response.status} without a JSON-RPC response",
        )

    async def _headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        out = {
            "content-type": "application/json",
            "accept": _ACCEPT,
            "user-agent": _AGENT,
            **self.static_headers,
            MCP_PROTOCOL_VERSION_HEADER: self.version,
        }
        if not self.modern and (session := self.session_id()) is not None:
            out[MCP_SESSION_HEADER] = session
        if self.credentials is not None:
            out.update({k.lower(): v for k, v in (await self.credentials()).items()})
        if headers:
            out.update({k.lower(): v for k, v in headers.items()})
        return out

    async def _send_quietly(self, message: dict[str, Any], headers: dict[str, str] | None) -> None:
        """POST a response or notification on the session; the server's 202 (or refusal) is not waited on
        beyond its status line."""
        try:
            response = await self.pool.post(_encode(message), await self._headers(headers))
            await response.read()
        except (WireError, OSError):
            pass

    def check_output(self, name: str, result: dict[str, Any]) -> None:
        """Structured output against the tool's declared output schema, as the SDK client checks it."""
        if result.get("isError"):
            return
        schema = self._schemas.get(name)
        if schema is None:
            return
        pair = self._validators.get(name)
        if pair is None:
            try:
                pair = self._validators[name] = (python_validator(schema), fast_validator(schema))
            except Exception as exc:  # noqa: BLE001 - a broken schema is the upstream's fault, said so
                raise MCPError(code=types.INTERNAL_ERROR, message=f"Invalid schema for tool {name}: {exc}") from None
        if "structuredContent" not in result:
            raise MCPError(
                code=types.INTERNAL_ERROR, message=f"Tool {name} has an output schema but did not return structured content"
            )
        validator, fast = pair
        if surely_fits(fast, result["structuredContent"]):  # the cheap "fits" (catalog/schemas.py); Python words a misfit
            return
        try:
            error = jsonschema.exceptions.best_match(validator.iter_errors(result["structuredContent"]))
        except Exception as exc:  # noqa: BLE001 - e.g. a `$ref` it may not fetch: the schema is broken, said so
            raise MCPError(code=types.INTERNAL_ERROR, message=f"Invalid schema for tool {name}: {exc}") from None
        if error is not None:
            raise MCPError(
                code=types.INTERNAL_ERROR, message=f"Invalid structured content returned by tool {name}: {error.message}"
            )


async def _sse_messages(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """The JSON-RPC messages of a `text/event-stream` body (comments and keep-alives skipped)."""
    data: list[str] = []
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    message = _decode("\n".join(data))
                    data = []
                    if message is not None:
                        yield message
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if field == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    if data and (message := _decode("\n".join(data))) is not None:
        yield message


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(text: str) -> dict[str, Any] | None:
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
