"""A reference upstream for gateway tests: what the MCP conformance suite's server scenarios look for
(@modelcontextprotocol/conformance 0.2.0-alpha.12, requirement sets 2025-11-25 and 2026-07-28).

Written the way independent server authors write servers, not the way the gateway would like them:

- the handshake-era tools (`test_sampling`, `test_elicitation`, `test_elicitation_sep1034_defaults`,
  `test_elicitation_sep1330_enums`) ask the client mid-call with a server-to-client request on the
  session, as a 2025-11-25 server does; they know nothing of InputRequiredResult;
- the 2026-07-28 tools (`test_input_required_result_*`, `test_missing_capability`,
  `test_streaming_elicitation`) and the prompt `test_input_required_result_prompt` answer with an
  InputRequiredResult and read the answers from the retry; they never send a request mid-call;
- capability checks read the capabilities the client declared for the request (`initialize` on a
  session, `_meta` on a 2026-07-28 request) and answer -32021 when one is missing.

No tool looks at the protocol version. The SDK serves both eras on one Streamable HTTP endpoint
(stateful `initialize` sessions and 2026-07-28 per-request envelopes), seals `requestState`, applies
the per-request log opt-in and serves `subscriptions/listen`.

    python -m tests.servers.reference_server --port 3901        # http://127.0.0.1:3901/mcp
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import anyio
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import Message, Prompt, UserMessage
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp_types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    CallToolResult,
    ClientCapabilities,
    Completion,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitationCapability,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    ListRootsRequest,
    ListRootsResult,
    LoggingLevel,
    MissingRequiredClientCapabilityErrorData,
    PromptReference,
    ResourceTemplateReference,
    RootsCapability,
    SamplingCapability,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)

from tests.servers._common import advertise_list_changed, build_parser, serve, tiny_png, tiny_wav

# why: logging, sampling and roots are deprecated in 2026-07-28 but are what the 2025-11-25 scenarios test
warnings.filterwarnings("ignore", message=r"The .* capability is deprecated")

PNG_B64 = base64.b64encode(tiny_png((0, 128, 255))).decode()
WAV_B64 = base64.b64encode(tiny_wav()).decode()
WATCHED = "test://watched-resource"
LEVELS: list[LoggingLevel] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
_SEVEN_DAYS_MS = 7 * 24 * 3600 * 1000

server: MCPServer[Any] = MCPServer(
    "mcp-reference-server",
    version="0.3.0",
    instructions="Reference server: the tools, resources and prompts of the MCP conformance scenarios.",
    log_level="WARNING",
    # why: the lists and reads of this server change only when a test hook says so
    cache_hints={
        "tools/list": CacheHint(ttl_ms=0, scope="public"),
        "prompts/list": CacheHint(ttl_ms=0, scope="public"),
        "resources/list": CacheHint(ttl_ms=60_000, scope="public"),
        "resources/templates/list": CacheHint(ttl_ms=_SEVEN_DAYS_MS, scope="public"),
        "resources/read": CacheHint(ttl_ms=60_000, scope="public"),
    },
)


class _State:
    """Process-wide mutable state."""

    min_level: LoggingLevel = "debug"  # set by logging/setLevel on a handshake session
    subscribed: dict[str, list[Any]] = {}  # resource URI -> sessions that subscribed
    sessions: dict[int, Any] = {}  # id of a connection with a standing channel (a session) -> its session
    tool_revision = 0
    prompt_revision = 0


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _fail(text: str) -> CallToolResult:
    return CallToolResult(content=[_text(text)], is_error=True)


def _has(ctx: Context[Any, Any], capability: ClientCapabilities) -> bool:
    """Whether the client declared `capability` (on its session or in this request's `_meta`)."""
    return ctx.session.check_client_capability(capability)


def _missing_capability(name: str) -> MCPError:
    data = MissingRequiredClientCapabilityErrorData(required_capabilities=ClientCapabilities(**{name: {}}))
    return MCPError(
        code=MISSING_REQUIRED_CLIENT_CAPABILITY,
        message=f"this request needs the client capability {name!r}, which the client did not declare",
        data=data.model_dump(by_alias=True, mode="json", exclude_none=True),
    )


SAMPLING = ClientCapabilities(sampling=SamplingCapability())
ELICITATION = ClientCapabilities(elicitation=ElicitationCapability())
ROOTS = ClientCapabilities(roots=RootsCapability())


# --- content tools ------------------------------------------------------------------------------


@server.tool()
def test_simple_text() -> CallToolResult:
    """Returns one text block."""
    return CallToolResult(content=[_text("This is a simple text response for testing.")])


@server.tool()
def test_image_content() -> CallToolResult:
    """Returns a 1x1 PNG image."""
    return CallToolResult(content=[ImageContent(type="image", data=PNG_B64, mime_type="image/png")])


@server.tool()
def test_audio_content() -> CallToolResult:
    """Returns 0.1 s of silence as WAV audio."""
    return CallToolResult(content=[AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")])


@server.tool()
def test_embedded_resource() -> CallToolResult:
    """Returns an embedded text resource."""
    resource = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])


@server.tool()
def test_multiple_content_types() -> CallToolResult:
    """Returns text, an image and an embedded JSON resource."""
    resource = TextResourceContents(
        uri="test://mixed-content-resource",
        mime_type="application/json",
        text=json.dumps({"test": "data", "value": 123}),
    )
    return CallToolResult(
        content=[
            _text("Multiple content types test:"),
            ImageContent(type="image", data=PNG_B64, mime_type="image/png"),
            EmbeddedResource(type="resource", resource=resource),
        ]
    )


@server.tool()
def test_error_handling() -> CallToolResult:
    """Always fails, with isError: true."""
    return _fail("This tool intentionally returns an error for testing")


async def _log(ctx: Context[Any, Any], level: LoggingLevel, message: str) -> None:
    # why: logging/setLevel filters on a session; a 2026-07-28 request's own opt-in is applied by the SDK
    if LEVELS.index(level) >= LEVELS.index(_State.min_level):
        await ctx.log(level, message, logger_name="reference")


@server.tool()
async def test_tool_with_logging(ctx: Context[Any, Any]) -> CallToolResult:
    """Sends three info log messages while it runs."""
    for message in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await _log(ctx, "info", message)
        await anyio.sleep(0.05)
    return CallToolResult(content=[_text("Tool with logging executed successfully")])


@server.tool()
async def test_logging_tool(ctx: Context[Any, Any]) -> CallToolResult:
    """Logs at every level; a client hears only the levels it opted in to."""
    for level in LEVELS:
        await _log(ctx, level, f"a {level} message from test_logging_tool")
    return CallToolResult(content=[_text("logged at every level")])


@server.tool()
async def test_tool_with_progress(ctx: Context[Any, Any]) -> CallToolResult:
    """Reports progress 0, 50 and 100 of 100."""
    for progress in (0, 50, 100):
        await ctx.report_progress(progress, 100, f"{progress}% done")
        await anyio.sleep(0.05)
    return CallToolResult(content=[_text("Tool with progress executed successfully")])


@server.tool()
async def test_reconnection(ctx: Context[Any, Any]) -> CallToolResult:
    """Closes its SSE stream mid-call and answers on the stream the client resumes."""
    await ctx.close_sse_stream()
    await anyio.sleep(0.3)
    return CallToolResult(content=[_text("Reconnection test completed successfully")])


# --- handshake-era tools: they ask the client mid-call -------------------------------------------


@server.tool()
async def test_sampling(prompt: str, ctx: Context[Any, Any]) -> CallToolResult:
    """Asks the client's LLM (sampling/createMessage) and returns what it said."""
    if not _has(ctx, SAMPLING):
        return _fail("The client does not support sampling.")
    answer = await ctx.session.create_message(
        [SamplingMessage(role="user", content=_text(prompt))],
        max_tokens=100,
        related_request_id=ctx.request_id,
    )
    content = answer.content
    text = content.text if isinstance(content, TextContent) else json.dumps(content.model_dump(mode="json"))
    return CallToolResult(content=[_text(f"LLM response: {text}")])


async def _elicit(ctx: Context[Any, Any], message: str, schema: dict[str, Any]) -> ElicitResult | None:
    if not _has(ctx, ELICITATION):
        return None
    return await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)


def _elicited(label: str, answer: ElicitResult | None) -> CallToolResult:
    if answer is None:
        return _fail("The client does not support elicitation.")
    return CallToolResult(
        content=[_text(f"{label}: action={answer.action}, content={json.dumps(answer.content)}")]
    )


@server.tool()
async def test_elicitation(message: str, ctx: Context[Any, Any]) -> CallToolResult:
    """Asks the user (elicitation/create) for a username and an email address."""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return _elicited("User response", await _elicit(ctx, message, schema))


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context[Any, Any]) -> CallToolResult:
    """Asks for a form whose fields of every primitive type carry a default (SEP-1034)."""
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {
                "type": "string",
                "description": "User status",
                "enum": ["active", "inactive", "pending"],
                "default": "active",
            },
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
        "required": [],
    }
    answer = await _elicit(ctx, "Please review and update the form fields with defaults", schema)
    return _elicited("Elicitation completed", answer)


def _titled(values: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"const": const, "title": title} for const, title in values]


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context[Any, Any]) -> CallToolResult:
    """Asks for a form with the five enum shapes of SEP-1330."""
    options = ["option1", "option2", "option3"]
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "description": "Pick one", "enum": options},
            "titledSingle": {
                "type": "string",
                "description": "Pick one (titled)",
                "oneOf": _titled(
                    [("value1", "First Option"), ("value2", "Second Option"), ("value3", "Third Option")]
                ),
            },
            "legacyEnum": {
                "type": "string",
                "description": "Pick one (legacy titles)",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Pick several",
                "minItems": 1,
                "items": {"type": "string", "enum": options},
            },
            "titledMulti": {
                "type": "array",
                "description": "Pick several (titled)",
                "minItems": 1,
                "items": {
                    "anyOf": _titled(
                        [("value1", "First Choice"), ("value2", "Second Choice"), ("value3", "Third Choice")]
                    )
                },
            },
        },
        "required": [],
    }
    answer = await _elicit(ctx, "Please select options from the enum fields", schema)
    return _elicited("Elicitation completed", answer)


# --- 2026-07-28 tools: they answer with InputRequiredResult and read the retry ------------------


def _ask_elicit(message: str, properties: dict[str, Any]) -> ElicitRequest:
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _ask_sample(text: str, max_tokens: int) -> CreateMessageRequest:
    return CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=_text(text))], max_tokens=max_tokens
        )
    )


_NAME_QUESTION = _ask_elicit("What is your name?", {"name": {"type": "string"}})


def _answer(ctx: Context[Any, Any], key: str, kind: type[Any]) -> Any:
    """The client's answer under `key` if it is of the kind asked for, else None."""
    answer = (ctx.input_responses or {}).get(key)
    return answer if isinstance(answer, kind) else None


def _accepted(answer: ElicitResult | None, field: str) -> Any:
    if answer is None or answer.action != "accept" or not answer.content:
        return None
    return answer.content.get(field)


def _needs(
    ctx: Context[Any, Any], requests: dict[str, InputRequest], state: str | None = None
) -> InputRequiredResult:
    """Ask for `requests`, after checking the client declared what each one needs."""
    for request in requests.values():
        if isinstance(request, CreateMessageRequest) and not _has(ctx, SAMPLING):
            raise _missing_capability("sampling")
        if isinstance(request, ElicitRequest) and not _has(ctx, ELICITATION):
            raise _missing_capability("elicitation")
        if isinstance(request, ListRootsRequest) and not _has(ctx, ROOTS):
            raise _missing_capability("roots")
    return InputRequiredResult(input_requests=requests, request_state=state)


@server.tool()
async def test_input_required_result_elicitation(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Asks the user's name (elicitation, key `user_name`) and greets them."""
    name = _accepted(_answer(ctx, "user_name", ElicitResult), "name")
    if not isinstance(name, str):
        return _needs(ctx, {"user_name": _NAME_QUESTION})
    return CallToolResult(content=[_text(f"Hello, {name}!")])


@server.tool()
async def test_input_required_result_sampling(ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Asks the client's LLM for the capital of France (key `capital_question`)."""
    answer = _answer(ctx, "capital_question", CreateMessageResult)
    if answer is None:
        return _needs(ctx, {"capital_question": _ask_sample("What is the capital of France?", 100)})
    text = answer.content.text if isinstance(answer.content, TextContent) else "(non-text answer)"
    return CallToolResult(content=[_text(f"The LLM said: {text}")])


@server.tool()
async def test_input_required_result_list_roots(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Asks the client for its roots (key `client_roots`) and lists them."""
    answer = _answer(ctx, "client_roots", ListRootsResult)
    if answer is None:
        return _needs(ctx, {"client_roots": ListRootsRequest()})
    roots = ", ".join(f"{root.name or ''} <{root.uri}>" for root in answer.roots) or "none"
    return CallToolResult(content=[_text(f"Client roots: {roots}")])


@server.tool()
async def test_input_required_result_request_state(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Asks for a confirmation and carries a requestState it checks on the retry."""
    question = {"confirm": _ask_elicit("Please confirm", {"ok": {"type": "boolean"}})}
    ok = _accepted(_answer(ctx, "confirm", ElicitResult), "ok")
    if ok is None:
        return _needs(ctx, question, "confirm:1")
    if ctx.request_state != "confirm:1":
        raise MCPError(code=-32602, message="requestState missing or not the one this tool issued")
    return CallToolResult(content=[_text(f"state-ok: confirmed={ok}")])


@server.tool()
async def test_input_required_result_multiple_inputs(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Asks three things at once: a name (elicitation), a greeting (sampling) and the roots."""
    name = _accepted(_answer(ctx, "user_name", ElicitResult), "name")
    greeting = _answer(ctx, "greeting", CreateMessageResult)
    roots = _answer(ctx, "client_roots", ListRootsResult)
    if name is None or greeting is None or roots is None or ctx.request_state != "three-questions":
        return _needs(
            ctx,
            {
                "user_name": _NAME_QUESTION,
                "greeting": _ask_sample("Generate a greeting", 50),
                "client_roots": ListRootsRequest(),
            },
            "three-questions",
        )
    said = greeting.content.text if isinstance(greeting.content, TextContent) else "?"
    return CallToolResult(content=[_text(f"{said} {name} ({len(roots.roots)} root(s))")])


@server.tool()
async def test_input_required_result_multi_round(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Two questions in two rounds: a name, then a colour; requestState records the progress."""
    state = json.loads(ctx.request_state) if ctx.request_state else {}
    if "name" not in state:
        name = _accepted(_answer(ctx, "step1", ElicitResult), "name")
        if name is None:
            return _needs(
                ctx,
                {"step1": _ask_elicit("Step 1: What is your name?", {"name": {"type": "string"}})},
                json.dumps({}),
            )
        state = {"name": name}
    color = _accepted(_answer(ctx, "step2", ElicitResult), "color")
    if color is None:
        question = _ask_elicit("Step 2: What is your favorite color?", {"color": {"type": "string"}})
        return _needs(ctx, {"step2": question}, json.dumps(state))
    return CallToolResult(content=[_text(f"{state['name']} likes {color}")])


@server.tool()
async def test_input_required_result_tampered_state(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Carries a requestState; the SDK seals it, so a tampered echo is refused before this runs."""
    ok = _accepted(_answer(ctx, "confirm", ElicitResult), "ok")
    if ok is None or ctx.request_state != "untampered":
        return _needs(
            ctx, {"confirm": _ask_elicit("Please confirm", {"ok": {"type": "boolean"}})}, "untampered"
        )
    return CallToolResult(content=[_text("state verified")])


@server.tool()
async def test_input_required_result_capabilities(
    ctx: Context[Any, Any],
) -> CallToolResult | InputRequiredResult:
    """Asks only what the client declared it can answer: sampling, elicitation and/or roots."""
    wanted: dict[str, InputRequest] = {}
    if _has(ctx, SAMPLING) and _answer(ctx, "summary", CreateMessageResult) is None:
        wanted["summary"] = _ask_sample("Summarise the capabilities test in one line", 50)
    if _has(ctx, ELICITATION) and _answer(ctx, "user_name", ElicitResult) is None:
        wanted["user_name"] = _NAME_QUESTION
    if _has(ctx, ROOTS) and _answer(ctx, "client_roots", ListRootsResult) is None:
        wanted["client_roots"] = ListRootsRequest()
    if wanted:
        return _needs(ctx, wanted)
    return CallToolResult(content=[_text("every declared capability answered")])


@server.tool()
async def test_missing_capability(ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Needs the client's LLM; a client that did not declare sampling gets -32021."""
    answer = _answer(ctx, "llm", CreateMessageResult)
    if answer is None:
        return _needs(ctx, {"llm": _ask_sample("Say something", 20)})
    return CallToolResult(content=[_text("sampling answered")])


@server.tool()
async def test_streaming_elicitation(ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Reports progress, then asks for a name; the question travels in the result, not on the stream."""
    await ctx.report_progress(1, 2, "about to ask")
    name = _accepted(_answer(ctx, "user_name", ElicitResult), "name")
    if name is None:
        return _needs(ctx, {"user_name": _NAME_QUESTION})
    return CallToolResult(content=[_text(f"streamed for {name}")])


# --- test hooks for list changes -------------------------------------------------------------


async def _remember_sessions(ctx: Any, call_next: Any) -> Any:
    """Keep every session that has a standing channel, to tell it when a list changes."""
    connection = getattr(ctx.session, "_connection", None)
    if connection is not None and connection.has_standalone_channel:
        _State.sessions[id(connection)] = ctx.session
    return await call_next(ctx)


async def _tell_sessions(send: str) -> None:
    """Send a list_changed notification on every remembered session (listeners hear it from the bus)."""
    for key, session in list(_State.sessions.items()):
        try:
            with anyio.fail_after(1):
                await getattr(session, send)()
        except Exception:  # noqa: BLE001 - a session that went away stops receiving
            _State.sessions.pop(key, None)


def _dynamic_tool() -> str:
    """A tool whose definition changes each time test_trigger_tool_change runs."""
    return f"dynamic tool, revision {_State.tool_revision}"


def _install_dynamic_tool() -> None:
    tool = Tool.from_function(_dynamic_tool, name="test_dynamic_tool", description=_dynamic_tool())
    server._tool_manager._tools[tool.name] = tool  # noqa: SLF001 - replace in place, keeping the list's order


@server.tool()
async def test_trigger_tool_change(ctx: Context[Any, Any]) -> CallToolResult:
    """Changes the definition of test_dynamic_tool and announces that the tool list changed."""
    _State.tool_revision += 1
    _install_dynamic_tool()
    await ctx.notify_tools_changed()
    await _tell_sessions("send_tool_list_changed")
    return CallToolResult(content=[_text(f"tool list changed (revision {_State.tool_revision})")])


@server.tool()
async def test_trigger_prompt_change(ctx: Context[Any, Any]) -> CallToolResult:
    """Changes the description of test_dynamic_prompt and announces that the prompt list changed."""
    _State.prompt_revision += 1
    _install_dynamic_prompt()
    await ctx.notify_prompts_changed()
    await _tell_sessions("send_prompt_list_changed")
    return CallToolResult(content=[_text(f"prompt list changed (revision {_State.prompt_revision})")])


@server.tool()
async def test_update_watched_resource(ctx: Context[Any, Any]) -> CallToolResult:
    """Tells every session subscribed to test://watched-resource (and every listener) that it changed."""
    sessions = _State.subscribed.get(WATCHED, [])
    for session in list(sessions):
        try:
            await session.send_resource_updated(WATCHED)
        except Exception:  # noqa: BLE001 - a session that went away stops receiving
            sessions.remove(session)
    await ctx.notify_resource_updated(WATCHED)
    return CallToolResult(content=[_text("watched resource updated")])


def json_schema_2020_12_tool(
    name: str | None = None,
    address: dict[str, Any] | None = None,
    contactMethod: str | None = None,  # noqa: N803 - the wire name
    phone: str | None = None,
    email: str | None = None,
) -> CallToolResult:
    """Takes a contact whose input schema uses JSON Schema 2020-12 keywords."""
    contact = {
        "name": name,
        "address": address,
        "contactMethod": contactMethod,
        "phone": phone,
        "email": email,
    }
    return CallToolResult(content=[_text(f"contact received: {json.dumps(contact, sort_keys=True)}")])


# why: the schema (with $defs, $anchor, allOf/anyOf, if/then/else) is published as written; a
# signature-derived schema cannot say any of it
_schema_tool = Tool.from_function(json_schema_2020_12_tool, name="json_schema_2020_12_tool")
_schema_tool.parameters = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}
server._tool_manager._tools[_schema_tool.name] = _schema_tool  # noqa: SLF001 - add_tool would rebuild the schema
_install_dynamic_tool()


# --- resources -------------------------------------------------------------------------------


@server.resource(
    "test://static-text", name="static-text", description="A static text resource", mime_type="text/plain"
)
def static_text() -> str:
    return "This is the content of the static text resource."


@server.resource(
    "test://static-binary",
    name="static-binary",
    description="A static binary resource (PNG)",
    mime_type="image/png",
)
def static_binary() -> bytes:
    return tiny_png((0, 128, 255))


@server.resource(
    WATCHED,
    name="watched-resource",
    description="A resource clients can subscribe to",
    mime_type="text/plain",
)
def watched_resource() -> str:
    return "Watched resource content"


@server.resource(
    "test://template/{id}/data",
    name="template-data",
    description="Data for the id in the URI",
    mime_type="application/json",
)
def template_data(id: str) -> str:
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


async def _subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
    _State.subscribed.setdefault(str(params.uri), []).append(ctx.session)
    return EmptyResult()


async def _unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
    connection = getattr(ctx.session, "_connection", None)
    sessions = _State.subscribed.get(str(params.uri), [])
    _State.subscribed[str(params.uri)] = [
        s for s in sessions if getattr(s, "_connection", None) is not connection
    ]
    return EmptyResult()


async def _set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
    _State.min_level = params.level
    return EmptyResult()


# --- prompts ---------------------------------------------------------------------------------


@server.prompt()
def test_simple_prompt() -> list[Message]:
    """A prompt without arguments."""
    return [UserMessage("This is a simple prompt for testing.")]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[Message]:
    """A prompt with two required arguments."""
    return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[Message]:  # noqa: N803 - the wire name
    """A prompt that embeds the resource it is given."""
    resource = TextResourceContents(
        uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."
    )
    return [
        UserMessage(EmbeddedResource(type="resource", resource=resource)),
        UserMessage("Please process the embedded resource above."),
    ]


@server.prompt()
def test_prompt_with_image() -> list[Message]:
    """A prompt that carries a PNG image."""
    return [
        UserMessage(ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
        UserMessage("Please analyze the image above."),
    ]


@server.prompt()
async def test_input_required_result_prompt(ctx: Context[Any, Any]) -> list[Message] | InputRequiredResult:
    """A prompt that first asks the user what context to use (key `user_context`)."""
    context = _accepted(_answer(ctx, "user_context", ElicitResult), "context")
    if context is None:
        question = _ask_elicit("What context should the prompt use?", {"context": {"type": "string"}})
        return _needs(ctx, {"user_context": question})
    return [UserMessage(f"Answer with this context in mind: {context}")]


def _install_dynamic_prompt() -> None:
    """A prompt whose description changes each time test_trigger_prompt_change runs."""
    revision = _State.prompt_revision

    def test_dynamic_prompt() -> list[Message]:
        return [UserMessage(f"dynamic prompt, revision {revision}")]

    prompt = Prompt.from_function(test_dynamic_prompt, description=f"A prompt at revision {revision}")
    server._prompt_manager._prompts[prompt.name] = prompt  # noqa: SLF001 - replace in place, keeping the order


_install_dynamic_prompt()


# --- completion --------------------------------------------------------------------------------

COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test", "testing", "tests"],
    "arg2": ["world", "word", "work"],
    "id": ["1", "2", "3", "123"],
}


@server.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference, argument: Any, context: Any
) -> Completion:
    values = [v for v in COMPLETIONS.get(argument.name, []) if v.startswith(argument.value or "")]
    return Completion(values=values, total=len(values), has_more=False)


# why: MCPServer has no decorator for these handshake-era methods; the SDK keeps them off the 2026-07-28 wire
_lowlevel = server._lowlevel_server  # noqa: SLF001
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)
# why: a session is told when the tool or prompt list changes (test_trigger_*), so the handshake says so
advertise_list_changed(server)
server.middleware.append(_remember_sessions)


def main() -> None:
    args = build_parser("MCP reference server (conformance scenarios, both protocol eras)", 3901).parse_args()
    serve(server, args, resumable=True)


if __name__ == "__main__":
    main()
