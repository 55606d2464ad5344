"""The request service in process: every method through the resolver, the ACL and the meter, against
in-memory upstreams (tests/support/inmemory.py). No subprocess, no network."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from mcp_hub.auth.identity import Consumer
from mcp_hub.catalog.view import UpstreamCatalog
from mcp_hub.config import GatewayConfig, parse_config
from mcp_hub.core.calls import MAX_ROUNDS, CallAnswer, Caller, ToolRequest, traceparent_of
from mcp_hub.core.hub import Gateway
from mcp_hub.core.service import RESOURCE_NOT_FOUND
from mcp_hub.metering.observability import configure_logging
from mcp_hub.metering.record import LIMIT_EXCEEDED
from mcp_hub.upstreams.base import UpstreamUnavailable
from tests.support.inmemory import (
    HANG,
    MemoryUpstream,
    RecordingPeer,
    ask,
    elicit,
    handshake_caller,
    modern_caller,
    running_gateway,
    text_result,
)

DEV = Consumer("dana", ("dev",))
OPS = Consumer("oscar", ("ops",))
BOTH = Consumer("bea", ("ops", "dev"))
ADMIN = Consumer("root", ("admin",))
NOBODY = Consumer("nemo")

ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
SHARED = "file:///shared"
HUB_A_SHARED = "mcphub://a/file%3A%2F%2F%2Fshared"
HUB_B_SHARED = "mcphub://b/file%3A%2F%2F%2Fshared"

# Default deny; dev sees upstream a's items but a__secret, ops mostly b's; a consumer in both gets the union
# minus whatever either group denies.
POLICY: dict[str, Any] = {
    "default_acl": "deny",
    "groups": {
        "dev": {
            "tools": {"allow": ["a__*"], "deny": ["a__secret"]},
            "prompts": {"allow": ["a__*"]},
            "resources": {"allow": ["file:///a/*", "note://*"]},
        },
        "ops": {
            "tools": {"allow": ["b__*", "a__secret", "a__echo"]},
            "prompts": {"allow": ["*"], "deny": ["a__greet"]},
            # Resource rules match a resource's own URI, whichever form (plain or mcphub://) addresses it.
            "resources": {"allow": ["*"], "deny": ["note://*"]},
        },
        "admin": {
            "tools": {"allow": ["*"]}, "prompts": {"allow": ["*"]}, "resources": {"allow": ["*"]},
        },
    },
}


def make_config(**extra: Any) -> GatewayConfig:
    raw: dict[str, Any] = {
        "upstreams": {
            "a": {"transport": "stdio", "command": "never-started"},
            "b": {"transport": "stdio", "command": "never-started"},
        },
        "servers": [{"path": "/mcp/a", "upstreams": ["a"], "prefix": False}],
        **POLICY,
    }
    raw.update(extra)
    return parse_config(raw)


def tool(name: str, schema: dict[str, Any] | None = None) -> types.Tool:
    return types.Tool(name=name, input_schema=schema or {"type": "object"})


def make_upstreams() -> tuple[MemoryUpstream, MemoryUpstream]:
    a = MemoryUpstream(
        "a",
        tools=[tool("echo", ECHO_SCHEMA), tool("secret"), tool("ask"), tool("slow")],
        prompts=[types.Prompt(name="greet", arguments=[types.PromptArgument(name="name")])],
        resources=[types.Resource(name="readme", uri="file:///a/readme"), types.Resource(name="shared", uri=SHARED)],
        templates=[types.ResourceTemplate(name="note", uri_template="note://{id}")],
        completions={("greet", "name"): ["alice", "albert", "bob"], ("note://{id}", "id"): ["1", "12", "2"]},
    )
    b = MemoryUpstream(
        "b",
        tools=[tool("echo", ECHO_SCHEMA), tool("flaky")],
        prompts=[types.Prompt(name="summary")],
        resources=[types.Resource(name="data", uri="file:///b/data"), types.Resource(name="shared", uri=SHARED)],
        templates=[types.ResourceTemplate(name="log", uri_template="log://{day}")],
        completions={("log://{day}", "day"): ["mon", "tue"]},
    )
    return a, b


@pytest.fixture
def audit_log() -> Iterator[Callable[..., list[dict[str, Any]]]]:
    """The audit lines written so far, filtered by field values (as tests/test_observability.py captures them)."""
    trail = io.StringIO()
    configure_logging(json=True, stream=io.StringIO(), audit_stream=trail)

    def lines(**match: Any) -> list[dict[str, Any]]:
        out = [json.loads(line) for line in trail.getvalue().splitlines() if line.strip()]
        assert all(line["logger"] == "mcp_hub.audit" for line in out)
        return [line for line in out if all(line.get(k) == v for k, v in match.items())]

    yield lines
    configure_logging(json=True, stream=io.StringIO())


async def call(gw: Gateway, caller: Caller, name: str, arguments: dict[str, Any] | None = None, *,
               route: str = "/mcp", settle: bool = True, **request: Any) -> CallAnswer:
    answer = await gw.service.call_tool(gw.routes[route], caller, ToolRequest(name, arguments, **request))
    if settle:
        await answer.settle()
    return answer


def text_of(answer: CallAnswer) -> str:
    assert answer.error is None, answer.error
    assert answer.result is not None
    return str(answer.result["content"][0]["text"])


# -- listings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("consumer", "tools", "prompts", "resources", "templates"), [
    (DEV, ["a__echo", "a__ask", "a__slow"], ["a__greet"], ["file:///a/readme"], ["note://{id}"]),
    (OPS, ["a__echo", "a__secret", "b__echo", "b__flaky"], ["b__summary"],
     ["file:///a/readme", "file:///b/data", HUB_A_SHARED, HUB_B_SHARED], ["log://{day}"]),
    # In both groups: an allow in one group never beats a deny in the other.
    (BOTH, ["a__echo", "a__ask", "a__slow", "b__echo", "b__flaky"], ["b__summary"],
     ["file:///a/readme", "file:///b/data", HUB_A_SHARED, HUB_B_SHARED], ["log://{day}"]),
    (NOBODY, [], [], [], []),
])
async def test_listings_are_filtered_per_group(
    consumer: Consumer, tools: list[str], prompts: list[str], resources: list[str], templates: list[str],
) -> None:
    async with running_gateway(make_config(), list(make_upstreams())) as gw:
        route, caller = gw.routes["/mcp"], modern_caller(consumer)
        assert sorted(t.name for t in await gw.service.list(route, caller, "tool")) == sorted(tools)
        assert sorted(p.name for p in await gw.service.list(route, caller, "prompt")) == sorted(prompts)
        assert sorted(str(r.uri) for r in await gw.service.list(route, caller, "resource")) == sorted(resources)
        assert sorted(t.uri_template for t in await gw.service.list(route, caller, "template")) == sorted(templates)


async def test_admin_listing_shows_shared_uris_namespaced() -> None:
    async with running_gateway(make_config(), list(make_upstreams())) as gw:
        listed = await gw.service.list(gw.routes["/mcp"], modern_caller(ADMIN), "resource")
        assert sorted(str(r.uri) for r in listed) == sorted(
            ["file:///a/readme", "file:///b/data", HUB_A_SHARED, HUB_B_SHARED])
        tools = await gw.service.list(gw.routes["/mcp"], modern_caller(ADMIN), "tool")
        assert [t.name for t in tools] == ["a__echo", "a__secret", "a__ask", "a__slow", "b__echo", "b__flaky"]


# -- tools/call ----------------------------------------------------------------------------------


async def test_allowed_call_reaches_the_upstream_under_its_original_name(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(DEV), "a__echo", {"text": "hi"})
    assert json.loads(text_of(answer)) == {"upstream": "a", "tool": "echo", "arguments": {"text": "hi"}}
    assert answer.result is not None and not answer.result.get("isError")
    assert [(r.name, r.arguments, r.consumer) for r in a.received] == [("echo", {"text": "hi"}, "dana")]
    assert b.received == []
    [line] = audit_log(method="tools/call")
    assert (line["tool"], line["upstream"], line["decision"], line["outcome"]) == ("a__echo", "a", "allow", "ok")
    assert line["rule"] == "groups.dev.tools.allow[0]: a__*"
    assert line["tokens_out"] > 0


async def test_hidden_and_missing_tools_get_the_same_error(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        errors = []
        for name in ("a__secret", "a__nope"):
            with pytest.raises(MCPError) as caught:
                await call(gw, handshake_caller(DEV), name, {})
            errors.append(caught.value.error)
    hidden, missing = errors
    assert hidden.code == missing.code == types.INVALID_PARAMS
    assert hidden.message == "Unknown tool: a__secret"
    assert missing.message == "Unknown tool: a__nope"
    assert hidden.data == missing.data
    assert a.received == []
    [denied] = audit_log(method="tools/call", tool="a__secret")
    [unknown] = audit_log(method="tools/call", tool="a__nope")
    assert (denied["outcome"], denied["decision"]) == ("denied", "deny")
    assert denied["rule"] == "groups.dev.tools.deny[0]: a__secret"
    assert (unknown["outcome"], unknown["decision"]) == ("unknown_tool", "deny")


@pytest.mark.parametrize(("arguments", "problem"), [
    ({"text": 5}, "text: 5 is not of type 'string'"),
    ({}, "arguments: 'text' is a required property"),
    (None, "arguments: 'text' is a required property"),
])
async def test_invalid_arguments_are_refused_before_the_upstream(
    arguments: dict[str, Any] | None, problem: str, audit_log: Any,
) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        with pytest.raises(MCPError) as caught:
            await call(gw, handshake_caller(DEV), "a__echo", arguments)
    assert caught.value.error.code == types.INVALID_PARAMS
    assert caught.value.error.message == f"Invalid arguments for tool a__echo: {problem}"
    assert a.received == []
    assert [line["outcome"] for line in audit_log(method="tools/call")] == ["invalid_arguments"]


async def test_unavailable_upstream_gives_an_error_result(audit_log: Any) -> None:
    a, b = make_upstreams()
    b.script("flaky", UpstreamUnavailable("upstream 'b' is reconnecting"))
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(OPS), "b__flaky", {})
    assert answer.error is None
    assert answer.result == {"content": [{"type": "text", "text": "upstream 'b' is reconnecting"}], "isError": True}
    [line] = audit_log(method="tools/call")
    assert (line["upstream"], line["outcome"]) == ("b", "unavailable")


async def test_upstream_json_rpc_error_is_passed_on(audit_log: Any) -> None:
    a, b = make_upstreams()
    failure = MCPError(code=-32001, message="quota exceeded upstream", data={"retry": 5})
    b.script("flaky", failure)
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(OPS), "b__flaky", {})
    assert answer.result is None
    assert answer.error is not None
    assert (answer.error.error.code, answer.error.error.message, answer.error.error.data) == (
        -32001, "quota exceeded upstream", {"retry": 5})
    [line] = audit_log(method="tools/call")
    assert (line["outcome"], line["error"]) == ("error", "quota exceeded upstream")


async def test_tool_error_result_is_audited_as_such(audit_log: Any) -> None:
    a, b = make_upstreams()
    b.script("flaky", text_result("it broke", is_error=True))
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(OPS), "b__flaky", {})
    assert text_of(answer) == "it broke"
    assert [line["outcome"] for line in audit_log(method="tools/call")] == ["tool_error"]


async def test_settle_records_nothing_until_awaited(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(DEV), "a__echo", {"text": "hi"}, settle=False)
        assert a.received  # the call ran...
        assert audit_log(method="tools/call") == []  # ...but is not recorded yet
        await anyio.sleep(0.01)
        assert audit_log(method="tools/call") == []
        await answer.settle()
        assert [line["outcome"] for line in audit_log(method="tools/call")] == ["ok"]
        await answer.settle()  # settled once only
        assert len(audit_log(method="tools/call")) == 1


async def test_cancelled_call_is_settled_as_cancelled(audit_log: Any) -> None:
    a, b = make_upstreams()
    a.script("slow", HANG)
    async with running_gateway(make_config(), [a, b]) as gw:
        with anyio.move_on_after(0.1) as scope:
            await call(gw, handshake_caller(DEV), "a__slow", {})
        assert scope.cancelled_caught
    assert [line["outcome"] for line in audit_log(method="tools/call", tool="a__slow")] == ["cancelled"]


# -- input_required rounds -----------------------------------------------------------------------


async def test_handshake_caller_answers_the_upstreams_input_requests(audit_log: Any) -> None:
    a, b = make_upstreams()
    a.script("ask", ask({"who": elicit("Who are you?")}, "up-state-1"),
             ask({"why": elicit("Why?")}, "up-state-2"), text_result("done"))
    peer = RecordingPeer({"elicitation/create": lambda params: {"action": "accept",
                                                                "content": {"answer": params["message"]}}})
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(DEV, peer), "a__ask", {})
    assert text_of(answer) == "done"
    assert [(m, p["message"]) for m, p in peer.requests] == [
        ("elicitation/create", "Who are you?"), ("elicitation/create", "Why?")]
    assert [(r.input_responses, r.request_state) for r in a.received] == [
        (None, None),
        ({"who": {"action": "accept", "content": {"answer": "Who are you?"}}}, "up-state-1"),
        ({"why": {"action": "accept", "content": {"answer": "Why?"}}}, "up-state-2"),
    ]
    assert [line["outcome"] for line in audit_log(method="tools/call")] == ["ok"]


async def test_handshake_caller_that_cannot_answer_gets_an_error() -> None:
    a, b = make_upstreams()
    a.script("ask", ask({"who": elicit("Who?")}, "s"))
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(DEV, RecordingPeer()), "a__ask", {})
    assert answer.error is not None
    assert answer.error.error.message == "elicitation/create: the caller cannot answer it"
    assert len(a.received) == 1


async def test_upstream_that_keeps_asking_is_given_up_on(audit_log: Any) -> None:
    a, b = make_upstreams()
    a.script("ask", ask({"again": elicit("Again?")}, "loop"))
    peer = RecordingPeer({"elicitation/create": {"action": "decline"}})
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, handshake_caller(DEV, peer), "a__ask", {})
    assert answer.result is None and answer.error is not None
    assert answer.error.error.code == types.INTERNAL_ERROR
    assert "kept asking for input" in answer.error.error.message
    assert len(peer.requests) == MAX_ROUNDS == 8
    assert len(a.received) == MAX_ROUNDS + 1
    [line] = audit_log(method="tools/call")
    assert line["outcome"] == "error" and "kept asking for input" in line["error"]


async def test_modern_caller_gets_the_upstreams_rounds_with_a_sealed_state(audit_log: Any) -> None:
    """A 2026-07-28 upstream's input_required round reaches a 2026-07-28 caller as it came (every input
    request, under its own key), with the upstream's state sealed in one of the gateway's."""
    a, b = make_upstreams()
    asked = ask({"who": elicit("Who are you?"), "why": elicit("Why?")}, "up-state-1")
    a.script("ask", asked, text_result("hello dana"))
    caller = modern_caller(DEV)
    async with running_gateway(make_config(), [a, b]) as gw:
        first = await call(gw, caller, "a__ask", {})
        assert first.error is None and first.result is not None
        assert first.result["resultType"] == "input_required"
        state = first.result["requestState"]
        assert state.startswith("hub2.")
        assert "up-state-1" not in state  # sealed: the upstream's own state is not readable by the caller
        assert first.result["inputRequests"] == asked["inputRequests"]
        key, response = "who", {"action": "accept", "content": {"answer": "dana"}}
        # The round is recorded as such (not charged); the call is charged when it completes.
        assert [line["outcome"] for line in audit_log(method="tools/call")] == ["input_required"]
        assert [r.had_peer for r in a.received] == [False]

        response = {"action": "accept", "content": {"answer": "dana"}}
        final = await call(gw, caller, "a__ask", {}, request_state=state, input_responses={key: response})
        assert text_of(final) == "hello dana"
        # The upstream got the caller's answer under its own key, with its own state.
        assert [(r.input_responses, r.request_state) for r in a.received] == [
            (None, None), ({"who": response}, "up-state-1")]
        assert [line["outcome"] for line in audit_log(method="tools/call")] == ["input_required", "ok"]

        # A state answers one round: replayed, it is refused.
        with pytest.raises(MCPError) as caught:
            await call(gw, caller, "a__ask", {}, request_state=state, input_responses={key: response})
        assert "request_state" in caught.value.error.message


async def test_modern_caller_takes_several_rounds() -> None:
    a, b = make_upstreams()
    a.script("ask", ask({"one": elicit("First?")}, "s1"), ask({"two": elicit("Second?")}, "s2"), text_result("ok"))
    caller = modern_caller(DEV)
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, caller, "a__ask", {})
        messages = []
        for _ in range(3):
            assert answer.result is not None
            if answer.result.get("resultType") != "input_required":
                break
            [(key, request)] = answer.result["inputRequests"].items()
            messages.append(request["params"]["message"])
            answer = await call(gw, caller, "a__ask", {}, request_state=answer.result["requestState"],
                                input_responses={key: {"action": "accept", "content": {"answer": key}}})
    assert messages == ["First?", "Second?"]
    assert text_of(answer) == "ok"
    assert [r.request_state for r in a.received] == [None, "s1", "s2"]


@pytest.mark.parametrize("tamper", [
    lambda s: s[:-3] + ("AAA" if not s.endswith("AAA") else "BBB"),
    lambda s: "hub2." + "A" * (len(s) - 5),
    lambda s: s[:40] + s[41:],
    lambda s: "hub1.garbage",
])
async def test_tampered_request_state_is_refused(tamper: Callable[[str], str]) -> None:
    a, b = make_upstreams()
    a.script("ask", ask({"who": elicit("Who?")}, "s"), text_result("fine"))
    caller = modern_caller(DEV)
    async with running_gateway(make_config(), [a, b]) as gw:
        first = await call(gw, caller, "a__ask", {})
        assert first.result is not None
        state = first.result["requestState"]
        [key] = first.result["inputRequests"]
        responses = {key: {"action": "accept", "content": {"answer": "x"}}}
        with pytest.raises(MCPError) as caught:
            await call(gw, caller, "a__ask", {}, request_state=tamper(state), input_responses=responses)
        assert caught.value.error.code == types.INVALID_PARAMS
        assert "request_state" in caught.value.error.message
        assert len(a.received) == 1  # nothing reached the upstream
        # Another consumer cannot finish someone else's call either.
        with pytest.raises(MCPError, match="request_state"):
            await call(gw, modern_caller(BOTH), "a__ask", {}, request_state=state, input_responses=responses)
        # The genuine state still completes the call.
        assert text_of(await call(gw, caller, "a__ask", {}, request_state=state, input_responses=responses)) == "fine"


async def test_the_upstream_sees_what_the_caller_declared(audit_log: Any) -> None:
    """A 2026-07-28 upstream decides what to ask by the caller's declared capabilities (not the gateway's):
    they reach it with the request, and its answer reaches the caller as it came."""
    a, b = make_upstreams()
    a.script("ask", ask({"who": elicit("Who?")}, "s"))
    declared = {"sampling": {}}
    caller = modern_caller(DEV, declares=lambda method: method == "sampling/createMessage")
    caller.capabilities = declared
    async with running_gateway(make_config(), [a, b]) as gw:
        answer = await call(gw, caller, "a__ask", {})
    assert [r.client_capabilities for r in a.received] == [declared]
    assert answer.error is None and answer.result is not None and answer.result["resultType"] == "input_required"
    assert [line["outcome"] for line in audit_log(method="tools/call")] == ["input_required"]


async def test_upstream_error_on_a_resumed_call_is_an_answer_and_audited(audit_log: Any) -> None:
    a, b = make_upstreams()
    a.script("ask", ask({"who": elicit("Who?")}, "s1"),
             MCPError(code=types.INVALID_PARAMS, message="upstream: request_state s1 has expired"))
    caller = modern_caller(DEV)
    async with running_gateway(make_config(), [a, b]) as gw:
        first = await call(gw, caller, "a__ask", {})
        assert first.result is not None
        [key] = first.result["inputRequests"]
        answer = await call(gw, caller, "a__ask", {}, request_state=first.result["requestState"],
                            input_responses={key: {"action": "decline"}})
    assert answer.error is not None and answer.error.error.message == "upstream: request_state s1 has expired"
    assert [line["outcome"] for line in audit_log(method="tools/call")] == ["input_required", "error"]


# -- admission -----------------------------------------------------------------------------------


async def test_rate_limit_admits_n_then_refuses(audit_log: Any) -> None:
    a, b = make_upstreams()
    config = make_config(rate_limits=[{"requests": 3, "window": "1 minute", "tools": ["a__*"]}])
    async with running_gateway(config, [a, b]) as gw:
        for i in range(3):
            assert json.loads(text_of(await call(gw, handshake_caller(DEV), "a__echo", {"text": str(i)})))
        with pytest.raises(MCPError) as caught:
            await call(gw, handshake_caller(DEV), "a__echo", {"text": "over"})
        # Another consumer has a rate of its own; other tools are not limited.
        assert text_of(await call(gw, handshake_caller(OPS), "a__echo", {"text": "mine"}))
        assert text_of(await call(gw, handshake_caller(OPS), "b__echo", {"text": "free"}))
    error = caught.value.error
    assert error.code == LIMIT_EXCEEDED == -32029
    assert error.data["limit"] == "rate_limits[0]: 3 requests per 1 minute"
    assert (error.data["kind"], error.data["subject"], error.data["remaining"]) == ("requests", "dana", 0)
    assert "Rate limit rate_limits[0]" in error.message
    assert len([r for r in a.received if r.consumer == "dana"]) == 3
    assert [line["outcome"] for line in audit_log(method="tools/call", consumer="dana")] == ["ok"] * 3 + ["limited"]


async def test_token_budget_is_charged_when_the_call_is_settled(audit_log: Any) -> None:
    a, b = make_upstreams()
    config = make_config(groups={**POLICY["groups"], "dev": {
        **POLICY["groups"]["dev"], "budgets": [{"tokens": 20, "window": "1 hour", "per": "consumer"}]}})
    async with running_gateway(config, [a, b]) as gw:
        big = await call(gw, handshake_caller(DEV), "a__echo", {"text": "x" * 200}, settle=False)
        # Not settled yet: nothing is charged, the next call is admitted.
        small = await call(gw, handshake_caller(DEV), "a__echo", {"text": "y"}, settle=False)
        assert small.error is None
        await big.settle()
        await small.settle()
        with pytest.raises(MCPError) as caught:
            await call(gw, handshake_caller(DEV), "a__echo", {"text": "z"})
    error = caught.value.error
    assert error.code == LIMIT_EXCEEDED
    assert error.data["kind"] == "tokens"
    assert error.data["limit"] == "groups.dev.budgets[0]: 20 tokens per 1 hour"
    assert error.message.startswith("Token budget groups.dev.budgets[0]")
    assert len(a.received) == 2
    outcomes = [line["outcome"] for line in audit_log(method="tools/call")]
    assert outcomes == ["ok", "ok", "limited"]


# -- prompts, resources, completion, subscriptions -----------------------------------------------


async def test_get_prompt_forwards_the_original_name(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        result = await gw.service.get_prompt(gw.routes["/mcp"], modern_caller(DEV), "a__greet", {"name": "Ann"})
    assert isinstance(result.messages[0].content, types.TextContent)
    assert result.messages[0].content.text == 'a:greet:{"name": "Ann"}'
    assert a.prompt_gets == [("greet", {"name": "Ann"})]
    [line] = audit_log(method="prompts/get")
    assert (line["target"], line["upstream"], line["outcome"], line["decision"]) == ("a__greet", "a", "ok", "allow")


async def test_hidden_and_missing_prompts_get_the_same_error(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        errors = []
        for name in ("a__greet", "a__nope"):  # a__greet: denied to ops
            with pytest.raises(MCPError) as caught:
                await gw.service.get_prompt(gw.routes["/mcp"], modern_caller(BOTH), name, None)
            errors.append(caught.value.error)
    assert [(e.code, e.message) for e in errors] == [
        (types.INVALID_PARAMS, "Unknown prompt: a__greet"), (types.INVALID_PARAMS, "Unknown prompt: a__nope")]
    assert a.prompt_gets == []
    assert [line["outcome"] for line in audit_log(method="prompts/get")] == ["denied", "not_found"]


async def test_prompt_of_an_unavailable_upstream_is_an_internal_error(audit_log: Any) -> None:
    a, b = make_upstreams()
    a.failure = UpstreamUnavailable("upstream 'a' is down")
    async with running_gateway(make_config(), [a, b]) as gw:
        with pytest.raises(MCPError) as caught:
            await gw.service.get_prompt(gw.routes["/mcp"], modern_caller(DEV), "a__greet", None)
    assert (caught.value.error.code, caught.value.error.message) == (types.INTERNAL_ERROR, "upstream 'a' is down")
    assert [line["outcome"] for line in audit_log(method="prompts/get")] == ["unavailable"]


async def test_read_listed_and_template_matched_resources(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        route, dev = gw.routes["/mcp"], modern_caller(DEV)
        listed = await gw.service.read_resource(route, dev, "file:///a/readme")
        matched = await gw.service.read_resource(route, dev, "note://42")
        log = await gw.service.read_resource(route, modern_caller(OPS), "log://mon")
    assert [(str(c.uri), c.text) for c in listed.contents] == [("file:///a/readme", "a read file:///a/readme")]
    assert [(str(c.uri), c.text) for c in matched.contents] == [("note://42", "a read note://42")]
    assert [c.text for c in log.contents] == ["b read log://mon"]
    assert a.reads == ["file:///a/readme", "note://42"]
    assert b.reads == ["log://mon"]
    assert [(line["target"], line["upstream"]) for line in audit_log(method="resources/read", outcome="ok")] == [
        ("file:///a/readme", "a"), ("note://42", "a"), ("log://mon", "b")]


async def test_shared_uri_is_read_under_its_hub_uri(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        route = gw.routes["/mcp"]
        result = await gw.service.read_resource(route, modern_caller(ADMIN), HUB_B_SHARED)
        assert [(str(c.uri), c.text) for c in result.contents] == [(HUB_B_SHARED, f"b read {SHARED}")]
        assert b.reads == [SHARED] and a.reads == []
        # The bare URI is ambiguous on this route: not found.
        with pytest.raises(MCPError) as caught:
            await gw.service.read_resource(route, modern_caller(ADMIN), SHARED)
        assert caught.value.error.code == RESOURCE_NOT_FOUND


async def test_hidden_and_missing_resources_get_the_same_error(audit_log: Any) -> None:
    a, b = make_upstreams()
    refused = ["file:///b/data", "file:///nowhere", "mcphub://zzz/x", "mcphub://a/unlisted", HUB_A_SHARED]
    async with running_gateway(make_config(), [a, b]) as gw:
        route = gw.routes["/mcp"]
        assert (await gw.service.read_resource(route, modern_caller(DEV), "note://7")).contents
        errors = []
        for uri in refused:
            with pytest.raises(MCPError) as caught:
                await gw.service.read_resource(route, modern_caller(DEV), uri)
            errors.append(caught.value.error)
    assert [(e.code, e.message, e.data) for e in errors] == [
        (RESOURCE_NOT_FOUND, f"Resource not found: {uri}", {"uri": uri}) for uri in refused]
    assert a.reads == ["note://7"] and b.reads == []
    outcomes = {line["target"]: line["outcome"] for line in audit_log(method="resources/read")}
    assert outcomes == {"note://7": "ok", "file:///b/data": "denied", "file:///nowhere": "not_found",
                        "mcphub://zzz/x": "not_found", "mcphub://a/unlisted": "not_found", HUB_A_SHARED: "denied"}


async def test_a_denied_uri_cannot_be_read_through_its_mcphub_alias() -> None:
    a, b = make_upstreams()
    config = make_config(groups={"ops": {"resources": {"allow": ["*"], "deny": ["note://*"]}}})
    async with running_gateway(config, [a, b]) as gw:
        route, ops = gw.routes["/mcp"], modern_caller(OPS)
        with pytest.raises(MCPError):
            await gw.service.read_resource(route, ops, "note://1")
        with pytest.raises(MCPError):
            await gw.service.read_resource(route, ops, "mcphub://a/note%3A%2F%2F1")
    assert a.reads == []


async def test_complete_a_prompt_argument() -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        params = types.CompleteRequestParams(ref=types.PromptReference(type="ref/prompt", name="a__greet"),
                                             argument=types.CompletionArgument(name="name", value="al"))
        result = await gw.service.complete(gw.routes["/mcp"], modern_caller(DEV), params)
        # A prompt the caller may not see completes to nothing, as a missing one does.
        hidden = await gw.service.complete(gw.routes["/mcp"], modern_caller(OPS), params)
        missing = await gw.service.complete(gw.routes["/mcp"], modern_caller(DEV), params.model_copy(
            update={"ref": types.PromptReference(type="ref/prompt", name="a__nope")}))
    assert result.completion.values == ["alice", "albert"]
    assert hidden.completion.values == missing.completion.values == []
    [forwarded] = a.completes
    assert isinstance(forwarded.ref, types.PromptReference) and forwarded.ref.name == "greet"


async def test_complete_a_resource_template_argument(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        route = gw.routes["/mcp"]

        def params(uri: str, value: str = "1") -> types.CompleteRequestParams:
            return types.CompleteRequestParams(ref=types.ResourceTemplateReference(type="ref/resource", uri=uri),
                                               argument=types.CompletionArgument(name="id", value=value))

        allowed = await gw.service.complete(route, modern_caller(DEV), params("note://{id}"))
        denied = await gw.service.complete(route, modern_caller(OPS), params("note://{id}"))
        missing = await gw.service.complete(route, modern_caller(DEV), params("none://{id}"))
    assert allowed.completion.values == ["1", "12"]
    assert denied.completion.values == missing.completion.values == []
    assert len(a.completes) == 1 and b.completes == []
    assert a.completes[0].ref == types.ResourceTemplateReference(type="ref/resource", uri="note://{id}")
    outcomes = [line["outcome"] for line in audit_log(method="completion/complete")]
    assert outcomes == ["ok", "denied", "not_found"]


async def test_subscription_resolution() -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        route = gw.routes["/mcp"]
        target = gw.service.resolve_subscription(route, modern_caller(ADMIN), HUB_A_SHARED)
        # the ACL decides on the resource's own URI, whichever form addressed it
        assert (target.upstream, target.original, target.name) == ("a", SHARED, SHARED)
        await gw.service.subscribe_upstream(modern_caller(ADMIN), HUB_A_SHARED, target)
        assert a.subscribed == [SHARED] and b.subscribed == []
        templated = gw.service.resolve_subscription(route, modern_caller(DEV), "note://5")
        assert (templated.upstream, templated.original) == ("a", "note://5")
        for caller, uri in ((modern_caller(DEV), "file:///b/data"), (modern_caller(DEV), "file:///missing")):
            with pytest.raises(MCPError) as caught:
                gw.service.resolve_subscription(route, caller, uri)
            assert (caught.value.error.code, caught.value.error.message) == (
                RESOURCE_NOT_FOUND, f"Resource not found: {uri}")
        b.failure = UpstreamUnavailable("upstream 'b' does not support subscriptions")
        b_target = gw.service.resolve_subscription(route, modern_caller(OPS), "file:///b/data")
        with pytest.raises(MCPError) as caught:
            await gw.service.subscribe_upstream(modern_caller(OPS), "file:///b/data", b_target)
        assert caught.value.error.code == types.INTERNAL_ERROR


# -- a virtual route -----------------------------------------------------------------------------


async def test_virtual_route_exposes_only_its_upstream(audit_log: Any) -> None:
    a, b = make_upstreams()
    async with running_gateway(make_config(), [a, b]) as gw:
        route, admin = gw.routes["/mcp/a"], modern_caller(ADMIN)
        assert route.upstreams == ["a"]
        assert [t.name for t in await gw.service.list(route, admin, "tool")] == ["echo", "secret", "ask", "slow"]
        assert [p.name for p in await gw.service.list(route, admin, "prompt")] == ["greet"]
        assert sorted(str(r.uri) for r in await gw.service.list(route, admin, "resource")) == [
            "file:///a/readme", SHARED]
        assert [t.uri_template for t in await gw.service.list(route, admin, "template")] == ["note://{id}"]
        # The ACL decides on canonical names (as on /mcp), the same on every route: dev's `a__*` allow and its
        # `a__secret` deny hold on this unprefixed route too.
        assert [t.name for t in await gw.service.list(route, modern_caller(DEV), "tool")] == ["echo", "ask", "slow"]
        with pytest.raises(MCPError, match="^Unknown tool: secret$"):
            await call(gw, modern_caller(DEV), "secret", {}, route="/mcp/a")

        assert json.loads(text_of(await call(gw, admin, "echo", {"text": "v"}, route="/mcp/a")))["upstream"] == "a"
        shared = await gw.service.read_resource(route, admin, SHARED)
        assert [(str(c.uri), c.text) for c in shared.contents] == [(SHARED, f"a read {SHARED}")]
        for name in ("b__echo", "a__echo", "flaky"):
            with pytest.raises(MCPError, match=f"^Unknown tool: {name}$"):
                await call(gw, admin, name, {"text": "v"}, route="/mcp/a")
        for uri in (HUB_B_SHARED, "file:///b/data", "log://mon"):
            with pytest.raises(MCPError) as caught:
                await gw.service.read_resource(route, admin, uri)
            assert caught.value.error.message == f"Resource not found: {uri}"
        with pytest.raises(MCPError, match="Unknown prompt: summary"):
            await gw.service.get_prompt(route, admin, "summary", None)
        assert (await gw.service.get_prompt(route, admin, "greet", None)).messages
    assert b.received == [] and b.reads == [] and b.prompt_gets == []
    assert [(r.name, r.arguments) for r in a.received] == [("echo", {"text": "v"})]


async def test_the_callers_trace_context_reaches_the_upstream() -> None:
    """A well-formed W3C traceparent goes on in `_meta` and as an HTTP header; anything else is dropped."""
    a, b = make_upstreams()
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with running_gateway(make_config(), [a, b]) as gw:
        await call(gw, handshake_caller(DEV), "a__echo", {"text": "t"}, traceparent=good)
        await call(gw, handshake_caller(DEV), "a__echo", {"text": "u"})
    assert [(r.traceparent, (r.headers or {}).get("traceparent")) for r in a.received] == [(good, good), (None, None)]
    assert traceparent_of("00-xyz\r\nX-Evil: 1", None, good) == good
    assert traceparent_of("01-" + "0" * 40) is None


class _PerConsumerMemory(MemoryUpstream):
    """Lists its items only once a caller's session is open (as a per-consumer upstream does)."""

    per_consumer = True

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        offer, self.offer = self.offer, UpstreamCatalog()
        self._later = offer
        await super().run(task_status=task_status)

    async def prepare(self, ctx: Any) -> None:
        self._set_catalog(self._later)


async def test_a_per_consumer_upstreams_tool_can_be_called_before_any_listing() -> None:
    a, b = make_upstreams()
    own = _PerConsumerMemory("a", tools=[tool("echo", ECHO_SCHEMA)])
    async with running_gateway(make_config(), [own, b]) as gw:
        assert gw.routes["/mcp"].view.resolve_tool("a__echo") is None  # nothing listed yet
        answer = await call(gw, handshake_caller(DEV), "a__echo", {"text": "first"})
    assert json.loads(text_of(answer))["arguments"] == {"text": "first"}
