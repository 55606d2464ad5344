"""Small ASGI pieces the route wrappers share: a request header, reading a body once and handing the
events on unchanged."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lowercase bytes), as text."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Receive, limit: int) -> tuple[list[Message], bytes | None]:
    """The request's ASGI events as read, and the whole body (None past `limit` or on a disconnect)."""
    events: list[Message] = []
    size = 0
    while True:
        event = await receive()
        events.append(event)
        if event["type"] != "http.request":
            return events, None
        size += len(event.get("body", b""))
        if size > limit:
            return events, None  # the SDK answers 413 from the replayed events
        if not event.get("more_body", False):
            return events, b"".join(e.get("body", b"") for e in events)


def replaying(events: list[Message], receive: Receive) -> Receive:
    """A receive that gives the events read already, then the real ones (the rest, the disconnect)."""
    pending = list(events)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
