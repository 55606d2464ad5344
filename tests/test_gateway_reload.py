"""Hot reload: a new config reconnects only what changed, keeps sessions, notifies; a bad one is refused."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import yaml
from mcp import Client

from tests.support.gateway import python_server, run_gateway, wait_until


def _cfg(**extra_upstreams: Any) -> dict[str, Any]:
    return {"upstreams": {"a": python_server("tests.servers.demo_server", "--transport", "stdio"), **extra_upstreams}}


async def test_reload_on_file_change_keeps_sessions_and_notifies(tmp_path: Path) -> None:
    with run_gateway(_cfg(), tmp_path, wait_healthy=True) as gw:
        changed = anyio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        async with Client(gw.mcp, mode="legacy", message_handler=on_message) as client:
            before = {t.name for t in (await client.list_tools()).tools}
            assert "a__echo" in before and not any(n.startswith("b__") for n in before)
            connects_before = gw.health()["upstreams"]["a"]
            # add upstream b; a is unchanged and must not be restarted
            gw.config_path.write_text(yaml.safe_dump(_cfg(b=python_server(
                "tests.servers.demo_server", "--transport", "stdio", "--extra-tool", "only_in_b"))))
            with anyio.fail_after(30):
                await changed.wait()
            after = {t.name for t in (await client.list_tools()).tools}
            assert "b__only_in_b" in after and "a__echo" in after
            # the same session keeps working, on both upstreams
            assert (await client.call_tool("a__echo", {"text": "same session"})).content[0].text == "same session"
            assert (await client.call_tool("b__only_in_b", {})).content[0].text == "only_in_b called"
            assert gw.health()["upstreams"]["a"]["connects"] == connects_before["connects"] == 1
            assert "config reloaded" in gw.log_text()


async def test_invalid_reload_is_refused_and_old_config_serves(tmp_path: Path) -> None:
    with run_gateway(_cfg(), tmp_path, wait_healthy=True) as gw:
        gw.config_path.write_text("upstreams:\n  a:\n    transport: telepathy\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_until(lambda: "config reload refused" in gw.log_text(), what="refusal logged")
        assert "upstreams.a.transport: must be one of stdio, sse, streamable-http" in gw.log_text()
        async with Client(gw.mcp, mode="legacy") as client:
            assert (await client.call_tool("a__echo", {"text": "still here"})).content[0].text == "still here"
        assert gw.health()["status"] == "ok"


async def test_sighup_reload_removes_and_changes_upstreams(tmp_path: Path) -> None:
    with run_gateway(_cfg(b=python_server("tests.servers.demo_server", "--transport", "stdio")), tmp_path,
                     wait_healthy=True) as gw:
        new = _cfg()
        new["upstreams"]["a"]["args"] += ["--extra-tool", "new_in_a"]
        gw.config_path.write_text(yaml.safe_dump(new))
        os.kill(gw.proc.pid, signal.SIGHUP)
        wait_until(lambda: set(gw.health()["upstreams"]) == {"a"} and gw.health()["upstreams"]["a"]["tools"] > 0
                   and gw.health()["status"] == "ok", timeout=30, what="b removed, a restarted")
        async with Client(gw.mcp, mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "a__new_in_a" in names and not any(n.startswith("b__") for n in names)
