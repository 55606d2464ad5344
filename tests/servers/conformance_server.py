"""The server the MCP conformance suite (`conformance server`, @modelcontextprotocol/conformance 0.1.16) expects.

Every tool, resource, template and prompt its server scenarios look for, with the texts they ask for.
Server-to-client requests (sampling, elicitation) work in both protocol eras: mid-call requests on a
handshake session, an `InputRequiredResult` round on 2026-07-28, so the server behaves the same whether
a client (or a gateway) reaches it with `initialize` or with the modern envelope.

    python -m tests.servers.conformance_server --port 3900                      # http://127.0.0.1:3900/mcp
    python -m tests.servers.conformance_server --transport sse --port 3900      # http://127.0.0.1:3900/sse
    python -m tests.servers.conformance_server --transport stdio
"""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.mcpserver.tools import Tool
from mcp.shared.message import ServerMessageMetadata
from mcp_types import (
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
    InputRequiredResult,
    LoggingLevel,
    PromptReference,
    ResourceTemplateReference,
    SamplingCapability,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.servers._common import advertise_list_changed, build_parser, serve, tiny_png, tiny_wav

# why: logging, sampling and roots are deprecated in 2026-07-28 but are exactly what the scenarios test
warnings.filterwarnings("ignore", message=r"The .* capability is deprecated")

PNG_B64 = base64.b64encode(tiny_png()).decode()
WAV_B64 = base64.b64encode(tiny_wav()).decode()
WATCHED = "test://watched-resource"
LEVELS: list[LoggingLevel] = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]

mcp: MCPServer[Any] = MCPServer(
    "mcp-conformance-test-server",
    version="1.0.0",
    instructions="Implements every tool, resource and prompt of the MCP conformance server scenarios.",
    log_level="WARNING",
)


class _State:
    """Process-wide mutable state: the minimum log level and who subscribed to which URI."""

    min_level: LoggingLevel = "debug"
    subscribers: dict[str, list[Any]] = {}


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


async def _log(ctx: Context[Any, Any], level: LoggingLevel, message: str) -> None:
    # why: honour logging/setLevel (handshake era); on 2026-07-28 the SDK applies the per-request opt-in itself
    if LEVELS.index(level) >= LEVELS.index(_State.min_level):
        await ctx.log(level, message, logger_name="conformance")


def _modern(ctx: Context[Any, Any]) -> bool:
    return ctx.protocol_version in MODERN_PROTOCOL_VERSIONS


async def _ask_client(
    ctx: Context[Any, Any], request: CreateMessageRequest | ElicitRequest
) -> dict[str, Any] | InputRequiredResult:
    """Send one server-to-client request the way the connection's era allows; return the raw answer.

    why: a 2026-07-28 call has no back channel, so the question goes back as an InputRequiredResult
    and the answer arrives on the retry, while a handshake session gets a request mid-call.
    """
    if _modern(ctx):
        answer = (ctx.input_responses or {}).get("ask")
        if answer is None:
            return InputRequiredResult(input_requests={"ask": request}, request_state="asked")
        return answer.model_dump(by_alias=True, mode="json", exclude_none=True)
    if isinstance(request, CreateMessageRequest):
        needed = ClientCapabilities(sampling=SamplingCapability())
    else:
        needed = ClientCapabilities(elicitation=ElicitationCapability())
    if not ctx.session.check_client_capability(needed):
        raise ValueError(f"the client did not declare the capability {request.method} needs")
    result_type = CreateMessageResult if isinstance(request, CreateMessageRequest) else ElicitResult
    result = await ctx.session.send_request(
        request,
        result_type,  # type: ignore[arg-type]
        # why: related to this call so the request rides the call's own SSE stream
        metadata=ServerMessageMetadata(related_request_id=ctx.request_context.request_id),
    )
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def _elicit(message: str, schema: dict[str, Any]) -> ElicitRequest:
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))


def _error_result(text: str) -> CallToolResult:
    return CallToolResult(content=[_text(text)], is_error=True)


# --- tools -----------------------------------------------------------------------------------


@mcp.tool()
def test_simple_text() -> CallToolResult:
    """Returns a simple text response."""
    return CallToolResult(content=[_text("This is a simple text response for testing.")])


@mcp.tool()
def test_image_content() -> CallToolResult:
    """Returns a 1x1 red PNG image."""
    return CallToolResult(content=[ImageContent(type="image", data=PNG_B64, mime_type="image/png")])


@mcp.tool()
def test_audio_content() -> CallToolResult:
    """Returns a short silent WAV clip."""
    return CallToolResult(content=[AudioContent(type="audio", data=WAV_B64, mime_type="audio/wav")])


@mcp.tool()
def test_embedded_resource() -> CallToolResult:
    """Returns an embedded text resource."""
    resource = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return CallToolResult(content=[EmbeddedResource(type="resource", resource=resource)])


@mcp.tool()
def test_multiple_content_types() -> CallToolResult:
    """Returns text, an image and an embedded resource in one result."""
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


@mcp.tool()
async def test_tool_with_logging(ctx: Context[Any, Any]) -> CallToolResult:
    """Sends three info log notifications while it runs."""
    await _log(ctx, "info", "Tool execution started")
    await anyio.sleep(0.05)
    await _log(ctx, "info", "Tool processing data")
    await anyio.sleep(0.05)
    await _log(ctx, "info", "Tool execution completed")
    return CallToolResult(content=[_text("Tool with logging executed successfully")])


@mcp.tool()
def test_error_handling() -> CallToolResult:
    """Always fails with isError: true."""
    return _error_result("This tool intentionally returns an error for testing")


@mcp.tool()
async def test_tool_with_progress(ctx: Context[Any, Any]) -> CallToolResult:
    """Reports progress 0, 50 and 100 out of 100."""
    for step, progress in enumerate((0, 50, 100)):
        if step:
            await anyio.sleep(0.05)
        await ctx.report_progress(progress, 100, f"step {step + 1} of 3")
    return CallToolResult(content=[_text("Tool with progress executed successfully")])


@mcp.tool()
async def test_sampling(prompt: str, ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Asks the client's LLM (sampling/createMessage) and returns its answer."""
    request = CreateMessageRequest(
        params=CreateMessageRequestParams(
            messages=[SamplingMessage(role="user", content=_text(prompt))], max_tokens=100
        )
    )
    try:
        answer = await _ask_client(ctx, request)
    except ValueError as exc:
        return _error_result(str(exc))
    if isinstance(answer, InputRequiredResult):
        return answer
    content = answer.get("content")
    text = content.get("text", "") if isinstance(content, dict) else json.dumps(content)
    return CallToolResult(content=[_text(f"LLM response: {text}")])


async def _elicitation_tool(
    ctx: Context[Any, Any], message: str, schema: dict[str, Any], label: str
) -> CallToolResult | InputRequiredResult:
    try:
        answer = await _ask_client(ctx, _elicit(message, schema))
    except ValueError as exc:
        return _error_result(str(exc))
    if isinstance(answer, InputRequiredResult):
        return answer
    action, content = answer.get("action"), answer.get("content")
    if label == "User response":
        return CallToolResult(content=[_text(f"User response: action={action}, content={json.dumps(content)}")])
    return CallToolResult(content=[_text(f"{label}: action={action}, content={json.dumps(content)}")])


@mcp.tool()
async def test_elicitation(message: str, ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Asks the user (elicitation/create) for a username and an email."""
    schema = {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    }
    return await _elicitation_tool(ctx, message, schema, "User response")


@mcp.tool()
async def test_elicitation_sep1034_defaults(ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Elicits a form whose fields carry default values of every primitive type (SEP-1034)."""
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
    return await _elicitation_tool(ctx, "Please review and update the form fields with defaults", schema,
                                   "Elicitation completed")


@mcp.tool()
async def test_elicitation_sep1330_enums(ctx: Context[Any, Any]) -> CallToolResult | InputRequiredResult:
    """Elicits a form with the five enum shapes of SEP-1330."""
    schema = {
        "type": "object",
        "properties": {
            "untitledSingle": {
                "type": "string",
                "description": "Choose an option",
                "enum": ["option1", "option2", "option3"],
            },
            "titledSingle": {
                "type": "string",
                "description": "Choose a titled option",
                "oneOf": [
                    {"const": "value1", "title": "First Option"},
                    {"const": "value2", "title": "Second Option"},
                    {"const": "value3", "title": "Third Option"},
                ],
            },
            "legacyEnum": {
                "type": "string",
                "description": "Choose a legacy option",
                "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"],
            },
            "untitledMulti": {
                "type": "array",
                "description": "Choose multiple options",
                "minItems": 1,
                "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
            },
            "titledMulti": {
                "type": "array",
                "description": "Choose multiple titled options",
                "minItems": 1,
                "items": {
                    "anyOf": [
                        {"const": "value1", "title": "First Choice"},
                        {"const": "value2", "title": "Second Choice"},
                        {"const": "value3", "title": "Third Choice"},
                    ]
                },
            },
        },
        "required": [],
    }
    return await _elicitation_tool(ctx, "Please select options from the enum fields", schema,
                                   "Elicitation completed")


@mcp.tool()
async def test_reconnection(ctx: Context[Any, Any]) -> CallToolResult:
    """Closes its SSE stream mid-call, then answers on the resumed stream (SEP-1699 polling)."""
    await ctx.close_sse_stream()
    await anyio.sleep(0.3)
    return CallToolResult(content=[_text("Reconnection test completed successfully")])


@mcp.tool()
async def test_update_watched_resource(ctx: Context[Any, Any]) -> CallToolResult:
    """Sends notifications/resources/updated for test://watched-resource to every subscribed session."""
    delivered = 0
    for session in list(_State.subscribers.get(WATCHED, [])):
        try:
            await session.send_resource_updated(WATCHED)
            delivered += 1
        except Exception:  # noqa: BLE001 - a session that went away just stops receiving
            _State.subscribers[WATCHED].remove(session)
    await ctx.notify_resource_updated(WATCHED)  # why: 2026-07-28 clients listen on subscriptions/listen
    return CallToolResult(content=[_text(f"notified {delivered} subscriber(s)")])


def json_schema_2020_12_tool(name: str | None = None, address: dict[str, Any] | None = None) -> CallToolResult:
    """Tool with JSON Schema 2020-12 features."""
    return CallToolResult(content=[_text(f"JSON Schema 2020-12 tool called with name={name}, address={address}")])


# why: the scenario checks that $schema, $defs and additionalProperties survive tools/list verbatim,
# which a signature-derived schema cannot express; the function still validates the same two fields.
_schema_tool = Tool.from_function(json_schema_2020_12_tool)
_schema_tool.parameters = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}
mcp._tool_manager._tools[_schema_tool.name] = _schema_tool  # noqa: SLF001 - add_tool would rebuild the schema


# --- resources -------------------------------------------------------------------------------


@mcp.resource("test://static-text", name="static-text", description="A static text resource", mime_type="text/plain")
def static_text() -> str:
    return "This is the content of the static text resource."


@mcp.resource("test://static-binary", name="static-binary", description="A static PNG image", mime_type="image/png")
def static_binary() -> bytes:
    return tiny_png()


@mcp.resource(
    "test://template/{id}/data",
    name="template-data",
    description="Data for one id, from a resource template",
    mime_type="application/json",
)
def template_data(id: str) -> str:  # noqa: A002 - the template variable is called id
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@mcp.resource(WATCHED, name="watched-resource", description="A resource clients can subscribe to",
              mime_type="text/plain")
def watched_resource() -> str:
    return "Watched resource content."


# --- prompts ---------------------------------------------------------------------------------


@mcp.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """A simple prompt without arguments."""
    return [UserMessage("This is a simple prompt for testing.")]


@mcp.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """A prompt with two required arguments."""
    return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]


@mcp.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 - wire name
    """A prompt that embeds the resource named by resourceUri."""
    resource = TextResourceContents(uri=resourceUri, mime_type="text/plain",
                                    text="Embedded resource content for testing.")
    return [
        UserMessage(EmbeddedResource(type="resource", resource=resource)),
        UserMessage("Please process the embedded resource above."),
    ]


@mcp.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """A prompt that carries a PNG image."""
    return [
        UserMessage(ImageContent(type="image", data=PNG_B64, mime_type="image/png")),
        UserMessage("Please analyze the image above."),
    ]


# --- completion, logging level, subscriptions ------------------------------------------------

COMPLETIONS: dict[str, list[str]] = {
    "arg1": ["paris", "park", "party", "test", "testing"],
    "arg2": ["world", "word", "work"],
    "id": ["1", "2", "3", "123"],
}


@mcp.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference, argument: Any, context: Any
) -> Completion:
    candidates = COMPLETIONS.get(argument.name, [])
    values = [value for value in candidates if value.startswith(argument.value or "")]
    return Completion(values=values, total=len(values), has_more=False)


async def _set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
    _State.min_level = params.level
    return EmptyResult()


async def _subscribe(ctx: Any, params: SubscribeRequestParams) -> EmptyResult:
    _State.subscribers.setdefault(str(params.uri), []).append(ctx.session)
    return EmptyResult()


async def _unsubscribe(ctx: Any, params: UnsubscribeRequestParams) -> EmptyResult:
    sessions = _State.subscribers.get(str(params.uri), [])
    # why: the session proxy differs per request, so match on the connection behind it
    connection = getattr(ctx.session, "_connection", None)
    _State.subscribers[str(params.uri)] = [s for s in sessions if getattr(s, "_connection", None) is not connection]
    return EmptyResult()


# why: MCPServer has no decorator for these three; the low-level server derives the capabilities from them
_lowlevel = mcp._lowlevel_server  # noqa: SLF001
_lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)
_lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
_lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)
advertise_list_changed(mcp)


def main() -> None:
    args = build_parser("MCP conformance test server", 3900).parse_args()
    serve(mcp, args, resumable=True)


if __name__ == "__main__":
    main()
