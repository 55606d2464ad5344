"""Resource subscriptions through the gateway, for every pairing of caller era and upstream era.

A handshake-era caller subscribes with `resources/subscribe` and hears `notifications/resources/updated` on
its session; a 2026-07-28 caller opens `subscriptions/listen` with the URI. The upstream is the conformance
server over Streamable HTTP (its `test_update_watched_resource` tool changes `test://watched-resource`), spoken
to in a handshake session (`protocol: legacy`: the update comes as a notification on that session) or in
2026-07-28 (`protocol: auto`: the gateway asks for the URI in its own subscriptions/listen stream).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.servers.launch import http_server
from tests.support.gateway import RunningGateway, run_gateway

WATCHED = "test://watched-resource"
CHANGE = "conf__test_update_watched_resource"


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with http_server("conformance_server", tmp_path_factory.mktemp("watched")) as server:
        yield server.url


@pytest.fixture(scope="module", params=["legacy", "auto"], ids=["upstream-handshake", "upstream-2026"])
def gateway(request: pytest.FixtureRequest, upstream_url: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp(f"updates-{request.param}")
    config = {"upstreams": {"conf": {"transport": "streamable-http", "url": upstream_url,
                                     "protocol": request.param, "match_caller_era": False}}}
    with run_gateway(config, tmp, wait_healthy=True) as gw:
        yield gw


def exposed_uri(resources: list[types.Resource]) -> str:
    [uri] = [str(r.uri) for r in resources if "watched" in str(r.uri)]
    return uri


async def test_a_handshake_caller_hears_updates_of_what_it_subscribed(gateway: RunningGateway) -> None:
    updates: list[str] = []
    heard = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            heard.set()

    async with Client(streamable_http_client(gateway.mcp), mode="legacy", message_handler=on_message) as client:
        uri = exposed_uri((await client.list_resources()).resources)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resources/subscribe is the handshake era's way
            await client.subscribe_resource(uri)
        await anyio.sleep(0.5)  # the gateway's own subscription upstream is in place
        await client.call_tool(CHANGE, {})
        with anyio.fail_after(15):
            await heard.wait()
        assert updates[0] == uri


async def test_a_2026_caller_hears_updates_on_its_listen_stream(gateway: RunningGateway) -> None:
    async with Client(streamable_http_client(gateway.mcp), mode="auto") as client:
        uri = exposed_uri((await client.list_resources()).resources)
        async with client.listen(resource_subscriptions=[uri]) as subscription:
            await anyio.sleep(0.5)
            await client.call_tool(CHANGE, {})
            with anyio.fail_after(15):
                async for event in subscription:
                    if getattr(event, "uri", None) is not None:
                        assert str(event.uri) == uri
                        break


def test_nothing_is_heard_without_a_subscription(gateway: RunningGateway, tmp_path: Path) -> None:
    """The control: a session that did not subscribe hears no update of the resource."""

    async def scenario() -> list[str]:
        updates: list[str] = []

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ResourceUpdatedNotification):
                updates.append(str(message.params.uri))

        async with Client(streamable_http_client(gateway.mcp), mode="legacy", message_handler=on_message) as c:
            await c.list_resources()
            await c.call_tool(CHANGE, {})
            await anyio.sleep(2.0)
        return updates

    assert anyio.run(scenario) == []
