"""Attempts to reach what the ACL hides, by every way a request can name an object.

A gateway with two upstreams (`pub` and `sec`), routes `/mcp` (all, prefixed), `/mcp/pub` (pub only,
unprefixed) and `/mcp/sec` (sec only, unprefixed), and a group that may use pub's items but not
`sec__admin_reset`, the `secret` prompt or `vault://` resources. Every attempt must get exactly the
answer a missing object gets, and the upstream must never see it. In-process (no network): the
resolver and the ACL decision are what is under test; the transports in front are tested elsewhere.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.identity import Consumer
from mcp_hub.config import GatewayConfig, parse_config
from mcp_hub.core.calls import ToolRequest
from mcp_hub.core.hub import Gateway
from tests.support.inmemory import MemoryUpstream, modern_caller, running_gateway

DEV = Consumer("dana", ("dev",))
HIDDEN_TOOL, HIDDEN_PROMPT, HIDDEN_URI = "sec__admin_reset", "sec__secret", "vault://keys/root"


def _config() -> GatewayConfig:
    return parse_config({
        "upstreams": {"pub": {"transport": "stdio", "command": "never-started"},
                      "sec": {"transport": "stdio", "command": "never-started"}},
        "servers": [{"path": "/mcp/pub", "upstreams": ["pub"], "prefix": False},
                    {"path": "/mcp/sec", "upstreams": ["sec"], "prefix": False}],
        "default_acl": "allow",
        "groups": {"dev": {"tools": {"deny": ["sec__admin_*"]}, "prompts": {"deny": ["sec__secret"]},
                           "resources": {"deny": ["vault://*"]}}},
    })


def _upstreams() -> list[MemoryUpstream]:
    tools = [types.Tool(name=n, input_schema={"type": "object"}) for n in ("admin_reset", "status")]
    return [
        MemoryUpstream("pub", tools=[types.Tool(name="status", input_schema={"type": "object"})],
                       prompts=[types.Prompt(name="hello")],
                       resources=[types.Resource(name="doc", uri="doc://readme")],
                       templates=[types.ResourceTemplate(name="doc", uri_template="doc://{name}")]),
        MemoryUpstream("sec", tools=tools, prompts=[types.Prompt(name="secret"), types.Prompt(name="ok")],
                       resources=[types.Resource(name="root", uri=HIDDEN_URI),
                                  types.Resource(name="doc", uri="doc://readme")],
                       templates=[types.ResourceTemplate(name="vault", uri_template="vault://keys/{id}")],
                       completions={("secret", "x"): ["leak"], ("vault://keys/{id}", "id"): ["root"]}),
    ]


# Names of the hidden tool as an attacker would try them, per route.
TOOL_TRICKS = {
    "/mcp": [HIDDEN_TOOL, "SEC__ADMIN_RESET", "Sec__Admin_Reset", "sec__admin_reset ", " sec__admin_reset",
             "sec__admin_reset\t", "sec__admin_reset\x00", "sec__admin\u200b_reset", "sеc__admin_reset",
             "sec__аdmin_reset", "sec_admin_reset", "sec--admin_reset", "sec__admin-reset", "sec::admin_reset",
             "sec/admin_reset", "sec.admin_reset", "admin_reset", "sec__", "sec__admin_reset__", "__admin_reset",
             "sec__sec__admin_reset", "pub__admin_reset", "sec__admin_reset_1a2b3c4d", "sec__admin_%72eset",
             "sec__admin_reset\n", "SEC__admin_reset", "sec__Admin_reset", "sec__admin_resetx", "*", "sec__*"],
    "/mcp/sec": ["admin_reset", "ADMIN_RESET", "admin_reset ", "sec__admin_reset", "admin-reset", "admin_rese",
                 "admin_reset\x00", "аdmin_reset", "sec/admin_reset", "./admin_reset"],
    "/mcp/pub": ["admin_reset", "sec__admin_reset", "status_", "sec__status"],
}
PROMPT_TRICKS = {
    "/mcp": [HIDDEN_PROMPT, "SEC__SECRET", "sec__secret ", "sec_secret", "secret", "sec__sеcret", "pub__secret"],
    "/mcp/sec": ["secret", "Secret", "sec__secret"],
    "/mcp/pub": ["secret", "sec__secret", "ok", "sec__ok"],
}
URI_TRICKS = {
    "/mcp": [HIDDEN_URI, "mcphub://sec/vault%3A%2F%2Fkeys%2Froot", "mcphub://sec/vault%3a%2f%2fkeys%2froot",
             "mcphub://sec/vault://keys/root", "mcphub://SEC/vault%3A%2F%2Fkeys%2Froot", "vault://keys/other",
             "vault://keys/../keys/root", "VAULT://keys/root", "vault://keys/root#x", "vault://keys/root?x=1",
             "mcphub://sec/vault%253A%252F%252Fkeys%252Froot", "mcphub://nowhere/vault%3A%2F%2Fkeys%2Froot",
             "mcphub://sec/%2e%2e/vault%3A%2F%2Fkeys%2Froot", "mcphub://sec/doc%3A%2F%2Fnothing"],
    "/mcp/sec": [HIDDEN_URI, "vault://keys/7", "mcphub://sec/vault%3A%2F%2Fkeys%2F7"],
    "/mcp/pub": [HIDDEN_URI, "vault://keys/7", "mcphub://sec/vault%3A%2F%2Fkeys%2Froot",
                 "mcphub://sec/doc%3A%2F%2Freadme", "mcphub://pub/vault%3A%2F%2Fkeys%2Froot"],
}


def _same_as_missing(gw: Gateway) -> None:
    assert [r.name for r in gw.upstreams["sec"].received] == []  # type: ignore[attr-defined]
    assert gw.upstreams["sec"].reads == [] and gw.upstreams["sec"].prompt_gets == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(("route", "name"), [(r, n) for r, names in TOOL_TRICKS.items() for n in names])
async def test_hidden_tool_is_missing_by_any_name(route: str, name: str) -> None:
    async with running_gateway(_config(), list(_upstreams())) as gw:
        caller = modern_caller(DEV)
        with pytest.raises(MCPError) as caught:
            await gw.service.call_tool(gw.routes[route], caller, ToolRequest(name, {}))
        assert (caught.value.error.code, caught.value.error.message) == (types.INVALID_PARAMS, f"Unknown tool: {name}")
        listed = [t.name for t in await gw.service.list(gw.routes[route], caller, "tool")]
        assert "admin_reset" not in listed and HIDDEN_TOOL not in listed
        _same_as_missing(gw)


@pytest.mark.parametrize(("route", "name"), [(r, n) for r, names in PROMPT_TRICKS.items() for n in names])
async def test_hidden_prompt_is_missing_by_any_name(route: str, name: str) -> None:
    async with running_gateway(_config(), list(_upstreams())) as gw:
        caller = modern_caller(DEV)
        with pytest.raises(MCPError) as caught:
            await gw.service.get_prompt(gw.routes[route], caller, name, None)
        assert (caught.value.error.code, caught.value.error.message) == (types.INVALID_PARAMS, f"Unknown prompt: {name}")
        assert "secret" not in [p.name for p in await gw.service.list(gw.routes[route], caller, "prompt")]
        _same_as_missing(gw)


@pytest.mark.parametrize(("route", "uri"), [(r, u) for r, uris in URI_TRICKS.items() for u in uris])
@pytest.mark.parametrize("method", ["read", "subscribe"])
async def test_hidden_resource_is_missing_by_any_uri(route: str, uri: str, method: str) -> None:
    async with running_gateway(_config(), list(_upstreams())) as gw:
        caller = modern_caller(DEV)
        with pytest.raises(MCPError) as caught:
            if method == "read":
                await gw.service.read_resource(gw.routes[route], caller, uri)
            else:
                gw.service.resolve_subscription(gw.routes[route], caller, uri)
        error = caught.value.error
        assert (error.code, error.message, error.data) == (types.INVALID_PARAMS, f"Resource not found: {uri}",
                                                           {"uri": uri})
        listed = [str(r.uri) for r in await gw.service.list(gw.routes[route], caller, "resource")]
        assert not [u for u in listed if "vault" in u]
        assert not [t.uri_template for t in await gw.service.list(gw.routes[route], caller, "template")
                    if t.uri_template.startswith("vault")]
        _same_as_missing(gw)


@pytest.mark.parametrize(("route", "ref"), [
    ("/mcp", types.PromptReference(type="ref/prompt", name=HIDDEN_PROMPT)),
    ("/mcp/sec", types.PromptReference(type="ref/prompt", name="secret")),
    ("/mcp/pub", types.PromptReference(type="ref/prompt", name="secret")),
    ("/mcp", types.ResourceTemplateReference(type="ref/resource", uri="vault://keys/{id}")),
    ("/mcp/sec", types.ResourceTemplateReference(type="ref/resource", uri="vault://keys/{id}")),
    ("/mcp/pub", types.ResourceTemplateReference(type="ref/resource", uri="vault://keys/{id}")),
    ("/mcp", types.ResourceTemplateReference(type="ref/resource", uri="vault://keys/{ID}")),
    ("/mcp", types.PromptReference(type="ref/prompt", name="SEC__SECRET")),
])
async def test_completion_of_a_hidden_object_completes_to_nothing(route: str, ref: Any) -> None:
    async with running_gateway(_config(), list(_upstreams())) as gw:
        argument = "x" if isinstance(ref, types.PromptReference) else "id"
        params = types.CompleteRequestParams(ref=ref, argument=types.CompletionArgument(name=argument, value=""))
        result = await gw.service.complete(gw.routes[route], modern_caller(DEV), params)
        assert result.completion.values == []
        assert gw.upstreams["sec"].completes == []  # type: ignore[attr-defined]


async def test_what_the_group_may_use_still_works() -> None:
    """The control: the same gateway serves the group's allowed objects on every route that exposes them."""
    async with running_gateway(_config(), list(_upstreams())) as gw:
        caller = modern_caller(DEV)
        for route, name in (("/mcp", "sec__status"), ("/mcp/sec", "status"), ("/mcp/pub", "status")):
            answer = await gw.service.call_tool(gw.routes[route], caller, ToolRequest(name, {}))
            assert answer.error is None
        assert (await gw.service.get_prompt(gw.routes["/mcp/sec"], caller, "ok", None)).messages is not None
        assert (await gw.service.read_resource(gw.routes["/mcp/pub"], caller, "doc://readme")).contents
