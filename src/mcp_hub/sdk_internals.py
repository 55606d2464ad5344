"""Every use of the MCP SDK's private attributes, in one place, checked against the installed SDK at start.

The gateway needs a few things the SDK (mcp 2.x) does not make public: the connection behind a
handler's session, the Streamable HTTP manager's session table and the idle timer of a session's
transport (for the direct HTTP entry), the capabilities the SDK client declares, and its
connect-time era probe. `check()` says which of them the installed SDK lacks; when any is missing,
the direct HTTP entry stays off (logged at start and shown on /healthz) and everything goes through
the SDK's own transport. A test pins them against the SDK version the project installs.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.server.runner import serve_loop
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

logger = logging.getLogger(__name__)

try:  # the client's era negotiation for protocol `auto` (a private module of the SDK)
    from mcp.client._probe import negotiate_auto as _negotiate_auto
except ImportError:  # pragma: no cover - depends on the installed SDK
    _negotiate_auto = None


def check() -> list[str]:
    """What this module relies on that the installed SDK does not have (empty: everything is there)."""
    missing: list[str] = []
    manager_attrs = StreamableHTTPSessionManager.__init__.__code__.co_names
    for name in ("_server_instances", "_session_owners", "_task_group", "_lifespan_state"):
        if name not in manager_attrs:
            missing.append(f"StreamableHTTPSessionManager.{name}")
    transport_names = _code_names(StreamableHTTPServerTransport)
    for name in ("_requests_in_flight", "_idle_timeout", "idle_scope"):
        if name not in transport_names:
            missing.append(f"StreamableHTTPServerTransport.{name}")
    if not hasattr(ClientSession, "_build_capabilities"):
        missing.append("ClientSession._build_capabilities")
    if _negotiate_auto is None:
        missing.append("mcp.client._probe.negotiate_auto")
    return missing


def direct_entry_missing() -> list[str]:
    """The part of `check()` the direct HTTP entry needs."""
    return [m for m in check() if m.startswith("StreamableHTTP")]


def _code_names(cls: type) -> set[str]:
    names: set[str] = set()
    for value in vars(cls).values():
        code = getattr(value, "__code__", None) or getattr(getattr(value, "fget", None), "__code__", None)
        if code is not None:
            names.update(code.co_names)
    return names


# -- server side ---------------------------------------------------------------------------------


def connection_of(session: Any) -> Any:
    """The connection behind a handler's per-request session (it outlives the request)."""
    return getattr(session, "_connection", None)


def session_table(manager: StreamableHTTPSessionManager) -> dict[str, Any] | None:
    """The manager's live sessions (id -> transport); None when the SDK keeps them elsewhere."""
    table = getattr(manager, "_server_instances", None)
    return table if isinstance(table, dict) else None


def session_owners(manager: StreamableHTTPSessionManager) -> dict[str, Any]:
    """Who opened each session (the SDK's authorization context of the opening request)."""
    owners = getattr(manager, "_session_owners", None)
    return owners if isinstance(owners, dict) else {}


@contextlib.contextmanager
def session_busy(transport: Any) -> Iterator[None]:
    """Hold a session's idle timer while a request the SDK does not see runs on it, as the SDK does for its own."""
    idle = getattr(transport, "idle_scope", None)
    timeout = getattr(transport, "_idle_timeout", None)
    if idle is None or timeout is None or not hasattr(transport, "_requests_in_flight"):
        yield
        return
    transport._requests_in_flight += 1
    idle.deadline = math.inf
    try:
        yield
    finally:
        transport._requests_in_flight -= 1
        if not transport._requests_in_flight:
            idle.deadline = anyio.current_time() + timeout


async def adopt_session(manager: StreamableHTTPSessionManager, session_id: str, owner: Any) -> Any:
    """Open, in this process, a stateful session another replica opened: a transport with that id,
    registered as the manager registers its own (with `owner` as the credential that may use it), its
    server task started as the manager starts it. Returns the transport; the caller replays the
    session's `initialize` into it. None when the manager keeps its sessions elsewhere."""
    table = session_table(manager)
    group = getattr(manager, "_task_group", None)
    discard = getattr(manager, "_discard_session", None)
    if table is None or group is None or discard is None:
        return None
    if session_id in table:
        return table[session_id]
    transport = StreamableHTTPServerTransport(
        mcp_session_id=session_id, is_json_response_enabled=manager.json_response, event_store=manager.event_store,
        security_settings=manager.security_settings, retry_interval=manager.retry_interval,
        idle_timeout=manager.session_idle_timeout,
    )
    table[session_id] = transport
    if owner is not None:
        session_owners(manager)[session_id] = owner

    async def run_server(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with transport.connect() as (read_stream, write_stream):
            task_status.started()
            try:
                idle = transport.idle_scope if transport.idle_scope is not None else anyio.CancelScope()
                with idle:
                    await serve_loop(manager.app, read_stream, write_stream,
                                     lifespan_state=getattr(manager, "_lifespan_state", None), session_id=session_id)
            except Exception:
                logger.exception("adopted session %s crashed", session_id[:64])
            finally:
                await discard(session_id, transport)

    try:
        await group.start(run_server)
    except BaseException:
        table.pop(session_id, None)
        session_owners(manager).pop(session_id, None)
        raise
    return transport


# -- client side ---------------------------------------------------------------------------------


def client_capabilities(session: ClientSession, version: str) -> types.ClientCapabilities | None:
    """The capabilities the SDK client declares at `version` (None when the SDK does not say)."""
    build: Callable[[str], types.ClientCapabilities] | None = getattr(session, "_build_capabilities", None)
    return build(version) if build is not None else None


def negotiate_auto(session: ClientSession) -> Awaitable[None]:
    """The SDK client's connect-time era choice (`server/discover`, falling back to `initialize`)."""
    if _negotiate_auto is None:
        return session.initialize()  # type: ignore[return-value]
    return _negotiate_auto(session)
