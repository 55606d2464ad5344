"""Listings served from their wire form: the bytes of a tools/list, prompts/list or resources/list answer.

An answer is kept per (route view, its version, method, group set, protocol version): the items are the
ones `RequestService.visible` gives the caller, so a listing shows exactly what the ACL shows. Each item's
wire form is kept too, across catalog versions (a rebuild keeps the item objects of upstreams that did
not change, `catalog.view.build_view`), so the first listing after a change serializes the changed items
only. The bytes are what the SDK's server sends for the same result: every item validated and dumped
through the protocol version's result surface (as `mcp_types.methods.serialize_server_result` does for
the whole result; pydantic's JSON serializer, as the SDK's transport), with the 2026-07-28 `serverInfo`
`_meta` stamp. The SDK entry (transport/sdk_server.py) answers from them, and the direct entry
(transport/direct.py) writes them out as they are.
"""

from __future__ import annotations

import json
import logging
import re
import time
import typing
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import mcp_types as types
from mcp_types import SERVER_INFO_META_KEY
from mcp_types import methods as _methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, TypeAdapter
from pydantic_core import to_json

if TYPE_CHECKING:
    from mcp_hub.core.calls import Caller
    from mcp_hub.core.hub import Gateway, Route

# method -> (result model, its list field, the kind `RequestService.visible` takes)
LISTINGS: dict[str, tuple[type[BaseModel], str, str]] = {
    "tools/list": (types.ListToolsResult, "tools", "tool"),
    "prompts/list": (types.ListPromptsResult, "prompts", "prompt"),
    "resources/list": (types.ListResourcesResult, "resources", "resource"),
}
logger = logging.getLogger(__name__)
_MAX_SESSIONS = 100_000
# The protocol versions whose listings are serialized ahead of the first request: the newest of each era.
PREPARED_VERSIONS = ("2025-11-25", "2026-07-28")
# A number pydantic may write otherwise than Python's `repr` (the exponent forms: 1e-05 is "0.00001"
# there, 1e+16 "1e16"), after the `:`, `[` or `,` that precedes a value; any match (text in a string
# too) takes the slow, exact way.
_FRACTION = re.compile(rb"[:\[,]-?(?:[0-9]+(?:\.[0-9]+)?[eE]|0\.0000|[0-9]{16})")
# Seconds of serializing before the background preparation lets requests run.
_SLICE = 0.005


class _Shape:
    """How one listing method is written at one protocol version: the result around the items, and the
    surface model each item goes through."""

    def __init__(self, method: str, version: str, stamp: dict[str, Any] | None) -> None:
        model, field_name, _ = LISTINGS[method]
        surface = _methods.SERVER_RESULTS[(method, version)]
        adapter: TypeAdapter[Any] = TypeAdapter(surface)
        empty = model(**{field_name: []}).model_dump(by_alias=True, mode="json", exclude_none=True)
        # The SDK writes 2026-era answers with `json.dumps` (ASCII, Python's number forms), older ones with
        # pydantic's serializer: so do these bytes.
        self.python_json = version in MODERN_PROTOCOL_VERSIONS
        whole = self._written(
            adapter.dump_json(adapter.validate_python(empty, by_name=False), by_alias=True, exclude_none=True))
        marker = f'"{field_name}":[]'.encode()
        if whole.count(marker) != 1 or not whole.endswith(b"}"):
            raise ValueError(f"unexpected {method} result shape at {version}: {whole!r}")
        head, tail = whole.split(marker)
        if stamp is not None:  # the SDK stamps 2026-era results last (mcp.server.runner `_stamp_server_info`)
            tail = tail[:-1] + b',"_meta":' + self._written(to_json({SERVER_INFO_META_KEY: stamp})) + b"}"
        self.head = head + f'"{field_name}":['.encode()
        self.tail = b"]" + tail
        item_type = typing.get_args(surface.model_fields[_field_of(surface, field_name)].annotation)[0]
        self.item: TypeAdapter[Any] = TypeAdapter(item_type)
        # id(item) -> (item, its bytes): the item is held, so its id is not reused while the entry lives.
        self.items: dict[int, tuple[Any, bytes]] = {}

    def item_bytes(self, item: BaseModel) -> bytes:
        entry = self.items.get(id(item))
        if entry is not None and entry[0] is item:
            return entry[1]
        # (the item as `serialize_server_result` takes it, minus the JSON round trip of its schemas)
        raw = item.model_dump(by_alias=True, exclude_none=True)
        wire = self._written(
            self.item.dump_json(self.item.validate_python(raw, by_name=False), by_alias=True, exclude_none=True))
        self.items[id(item)] = (item, wire)
        return wire

    def _written(self, data: bytes) -> bytes:
        # Both write ASCII text without such numbers the same way.
        if self.python_json and (not data.isascii() or b"\x7f" in data or _FRACTION.search(data) is not None):
            return json.dumps(json.loads(data), separators=(",", ":")).encode()
        return data


def _field_of(surface: Any, alias: str) -> str:
    for name, info in surface.model_fields.items():
        if (info.alias or name) == alias:
            return str(name)
    raise ValueError(f"{surface.__name__} has no field {alias!r}")


class Listings:
    """The serialized listings of a gateway's routes, and the handshake-era sessions the direct entry may
    answer (those whose protocol version the SDK entry has seen)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.answers: dict[tuple[Any, ...], bytes] = {}
        self._decoded: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._shapes: dict[tuple[str, str, str | None], _Shape] = {}
        # (route path, session id) -> the protocol version the session negotiated
        self.sessions: dict[tuple[str, str], str] = {}
        self._preparing = False
        gateway.on_rebuild.append(self._rebuilt)

    def _rebuilt(self) -> None:
        """A new catalog: serialize its items in the background, so the first listing after it is quick."""
        if self.gateway._tg is not None and not self._preparing:  # running (spawn needs its task group)
            self._preparing = True
            self.gateway.spawn(self._prepare_items)

    async def _prepare_items(self) -> None:
        """The wire form of every listed item of every route, at the current protocol versions, in slices
        that leave the event loop to requests in between. Listings made meanwhile serialize what they need."""
        try:
            done: set[tuple[int, int]] = set()
            while True:
                pending = [r for r in self.gateway.routes.values() if (id(r.view), r.view.version) not in done]
                if not pending:
                    return
                route = pending[0]
                view = route.view
                for method, (_, _, kind) in LISTINGS.items():
                    items = {"tool": view.tool_list, "prompt": view.prompt_list, "resource": view.resource_list}[kind]
                    for version in PREPARED_VERSIONS:
                        stamp = route.server.server_info_stamp if (
                            version in MODERN_PROTOCOL_VERSIONS and route.server is not None) else None
                        shape = self._shape(method, version, stamp)
                        started = time.perf_counter()
                        for item in list(items):
                            try:
                                shape.item_bytes(item)
                            except Exception:  # noqa: BLE001 - a listing that needs it reports the error
                                logger.debug("item not serialized ahead", exc_info=True)
                            if time.perf_counter() - started > _SLICE:
                                await anyio.lowlevel.checkpoint()
                                started = time.perf_counter()
                done.add((id(view), view.version))
        except Exception:  # noqa: BLE001 - only a head start: listings serialize what they need themselves
            logger.warning("listings not prepared ahead", exc_info=True)
        finally:
            self._preparing = False

    def note_session(self, path: str, session_id: str, version: str) -> None:
        if len(self.sessions) >= _MAX_SESSIONS:  # sessions forgotten here are answered by the SDK entry
            self.sessions.clear()
        self.sessions[(path, session_id)] = version

    def forget_sessions(self, path: str, keep: Iterable[str]) -> None:
        """Drop the sessions of a route that are not in `keep` (the ones still open)."""
        live = set(keep)
        self.sessions = {k: v for k, v in self.sessions.items() if k[0] != path or k[1] in live}

    async def answer(self, route: Route, caller: Caller, method: str, version: str, server: Any) -> bytes:
        """The result of `method` for `caller` at protocol `version`, as JSON bytes."""
        await self.gateway.service.prepare(route, caller)
        view = route.view
        key = (id(view), view.version, method, caller.consumer.group_key, version)
        wire = self.answers.get(key)
        if wire is None:
            stamp = server.server_info_stamp if version in MODERN_PROTOCOL_VERSIONS else None
            shape = self._shape(method, version, stamp)
            items = self.gateway.service.visible(route, caller, LISTINGS[method][2])
            wire = shape.head + b",".join([shape.item_bytes(item) for item in items]) + shape.tail
            self._store(key, wire)
        return wire

    async def answer_dict(self, route: Route, caller: Caller, method: str, version: str, server: Any) -> dict[str, Any]:
        """`answer` as the dict the SDK's server sends (a copy: the SDK may add to it)."""
        wire = await self.answer(route, caller, method, version, server)
        view = route.view
        key = (id(view), view.version, method, caller.consumer.group_key, version)
        decoded = self._decoded.get(key)
        if decoded is None:
            decoded = json.loads(wire)
            self._decoded[key] = decoded
        return dict(decoded)

    def _shape(self, method: str, version: str, stamp: dict[str, Any] | None) -> _Shape:
        key = (method, version, json.dumps(stamp, sort_keys=True) if stamp is not None else None)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shapes[key] = _Shape(method, version, stamp)
        return shape

    def _store(self, key: tuple[Any, ...], wire: bytes) -> None:
        """Keep an answer; answers and item forms of views no route serves any more are dropped."""
        current = {(id(r.view), r.view.version) for r in self.gateway.routes.values()}
        if any(k[:2] not in current for k in self.answers):
            self.answers = {k: v for k, v in self.answers.items() if k[:2] in current}
            self._decoded = {k: v for k, v in self._decoded.items() if k[:2] in current}
            self._prune_items()
        self.answers[key] = wire

    def _prune_items(self) -> None:
        live: set[int] = set()
        for route in self.gateway.routes.values():
            view = route.view
            for items in (view.tool_list, view.prompt_list, view.resource_list):
                live.update(id(item) for item in items)
        for shape in self._shapes.values():
            if len(shape.items) > 2 * len(live) + 1024:
                shape.items = {k: v for k, v in shape.items.items() if k in live}


def listings_of(gateway: Gateway) -> Listings:
    """The gateway's serialized listings (made on first use)."""
    listings = gateway.wire_cache
    if not isinstance(listings, Listings):
        listings = gateway.wire_cache = Listings(gateway)
    return listings
