"""The test servers and the outside clients, proven against each other with no gateway in between.

The gateway's tests point the same helpers at the gateway's URL; this file is the baseline they compare with.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client.stdio import StdioServerParameters
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

from tests.servers.launch import ServerProcess, http_server
from tests.support.clients import (
    Recorder,
    claude_mcp_list,
    inspector_call_tool,
    inspector_list_tools,
    sdk_session,
    stdio_target,
)
from tests.support.conformance import run_conformance

DEMO_TOOLS = {"echo", "add", "tiny_image", "slow", "progress", "ask_llm", "ask_user", "list_client_roots",
              "log_message", "crash", "big", "add_tool"}
GITHUB_TOOLS = {"search_repositories", "get_file_contents", "list_issues", "list_pull_requests", "search_users",
                "search_code", "create_issue", "create_pull_request", "merge_pull_request", "delete_file",
                "push_files", "whoami"}
# why: the active suite of @modelcontextprotocol/conformance 0.1.16 has 30 server scenarios
CONFORMANCE_SCENARIOS = 30


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="module")
def demo_http(logs: Path) -> Iterator[ServerProcess]:
    with http_server("demo_server", logs, "--name", "demo-streamable-http", "--extra-tool", "extra_tool") as server:
        yield server


@pytest.fixture(scope="module")
def demo_sse(logs: Path) -> Iterator[ServerProcess]:
    with http_server("demo_server", logs, "--name", "demo-sse", "--extra-tool", "extra_tool",
                     transport="sse") as server:
        yield server


@pytest.fixture(scope="module")
def conformance_http(logs: Path) -> Iterator[ServerProcess]:
    with http_server("conformance_server", logs) as server:
        yield server


@pytest.fixture
def demo_target(request: pytest.FixtureRequest) -> str | StdioServerParameters:
    transport = request.param
    if transport == "stdio":
        return stdio_target("tests.servers.demo_server", "--transport", "stdio", "--name", "demo-stdio",
                            "--extra-tool", "extra_tool")
    return request.getfixturevalue("demo_sse" if transport == "sse" else "demo_http").url


def _text(result: types.CallToolResult) -> str:
    assert not result.is_error, result
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def test_conformance_suite_passes_against_conformance_server(
    conformance_http: ServerProcess, tmp_path: Path, record_property: Any
) -> None:
    result = run_conformance(conformance_http.url, tmp_path / "conformance")
    record_property("conformance_scenarios_passed", result.passed)
    record_property("conformance_checks_passed", result.checks_passed)
    print(f"conformance direct: {result.passed}/{len(result.scenarios)} scenarios, {result.checks_passed} checks")
    assert result.ok, result.failure_report() + "\n" + result.output[-3000:]
    assert len(result.scenarios) >= CONFORMANCE_SCENARIOS, sorted(result.scenarios)
    # why: the verdicts come from the written checks; prove they were read, not only the exit code
    assert result.raw["tools-call-sampling"][0]["details"]["samplingRequested"] is True
    assert result.raw["tools-call-elicitation"][0]["details"]["elicitationRequested"] is True
    assert result.raw["tools-call-sampling"][0]["details"]["result"]["content"][0]["text"].startswith("LLM response")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_conformance_server_asks_the_client_in_both_eras(conformance_http: ServerProcess, mode: str) -> None:
    # why: the suite only speaks the handshake era; a gateway may reach the same tools with 2026-07-28
    recorder = Recorder(sampled_text="from the client", elicited={"username": "ada", "email": "ada@example.com"})
    async with sdk_session(conformance_http.url, mode, recorder=recorder) as client:
        sampled = await client.call_tool("test_sampling", {"prompt": "Test prompt"})
        assert _text(sampled) == "LLM response: from the client"
        elicited = await client.call_tool("test_elicitation", {"message": "Who are you?"})
        assert '"username": "ada"' in _text(elicited)
        enums = await client.call_tool("test_elicitation_sep1330_enums", {})
        assert "action=accept" in _text(enums)
        schema = recorder.elicitation_requests[-1].requested_schema  # type: ignore[union-attr]
        assert schema["properties"]["legacyEnum"]["enumNames"] == ["Option One", "Option Two", "Option Three"]
        await client.call_tool("test_tool_with_logging", {})
        await recorder.wait_for(lambda r: len(r.logs) >= 3)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
@pytest.mark.parametrize("demo_target", ["stdio", "sse", "streamable-http"], indirect=True)
async def test_demo_server_through_sdk_client(demo_target: str | StdioServerParameters, mode: str) -> None:
    recorder = Recorder(sampled_text="the sampled reply", elicited={"answer": "forty-two"})
    async with sdk_session(demo_target, mode, recorder=recorder) as client:  # type: ignore[arg-type]
        eras = HANDSHAKE_PROTOCOL_VERSIONS if mode == "legacy" else MODERN_PROTOCOL_VERSIONS
        assert client.protocol_version in eras
        assert client.server_info is not None and client.server_info.name.startswith("demo-")

        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert DEMO_TOOLS | {"extra_tool"} <= set(tools)
        assert tools["add"].output_schema is not None

        assert _text(await client.call_tool("echo", {"text": "hello"})) == "hello"
        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert added.structured_content == {"sum": 5}
        image = (await client.call_tool("tiny_image", {})).content[0]
        assert isinstance(image, types.ImageContent) and image.mime_type == "image/png"
        assert base64.b64decode(image.data).startswith(b"\x89PNG")
        assert len(_text(await client.call_tool("big", {"n_bytes": 100_000}))) == 100_000
        assert _text(await client.call_tool("extra_tool", {})) == "extra_tool called"

        resources = (await client.list_resources()).resources
        assert "demo://readme" in {str(r.uri) for r in resources}
        readme = (await client.read_resource("demo://readme")).contents[0]
        assert isinstance(readme, types.TextResourceContents) and readme.text.startswith("# Demo server")
        templates = (await client.list_resource_templates()).resource_templates
        assert "demo://items/{id}" in {t.uri_template for t in templates}
        item = (await client.read_resource("demo://items/42")).contents[0]
        assert isinstance(item, types.TextResourceContents) and '"item 42"' in item.text

        prompt = await client.get_prompt("greet", {"name": "Bob"})
        assert isinstance(prompt.messages[0].content, types.TextContent) and "Bob" in prompt.messages[0].content.text
        completion = await client.complete(types.PromptReference(type="ref/prompt", name="greet"),
                                           {"name": "name", "value": "ca"})
        assert completion.completion.values == ["Carol"]

        progress: list[tuple[float, float | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append((value, total))

        assert _text(await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)) == "done 3 steps"
        assert progress == [(1, 3), (2, 3), (3, 3)]

        assert _text(await client.call_tool("ask_llm", {"prompt": "say hi"})) == "the sampled reply"
        sampled = recorder.sampling_requests[0].messages[0].content
        assert isinstance(sampled, types.TextContent) and sampled.text == "say hi"
        assert _text(await client.call_tool("ask_user", {"question": "What is six times seven?"})) == "forty-two"
        assert recorder.elicitation_requests[0].message == "What is six times seven?"
        roots = await client.call_tool("list_client_roots", {})
        assert roots.structured_content == {"result": ["file:///tmp/demo-root"]}

        await client.call_tool("log_message", {"text": "a log line"})
        await recorder.wait_for(lambda r: any(log.data == "a log line" for log in r.logs))

        # why: a tool added at runtime is announced per era: a notification, or a subscriptions/listen event
        new_tool = f"added_{mode}_{id(recorder) % 10_000}"
        if mode == "legacy":
            await client.call_tool("add_tool", {"name": new_tool})
            await recorder.wait_for(
                lambda r: any(isinstance(n, types.ToolListChangedNotification) for n in r.notifications)
            )
        else:
            async with client.listen(tools_list_changed=True) as subscription:
                await client.call_tool("add_tool", {"name": new_tool})
                with anyio.fail_after(5):
                    async for _event in subscription:
                        break
        assert new_tool in {tool.name for tool in (await client.list_tools()).tools}


async def test_demo_crash_exits_the_process(logs: Path) -> None:
    with http_server("demo_server", logs) as server:
        with pytest.raises(BaseException):  # noqa: B017 - the SDK wraps the closed stream in an ExceptionGroup
            async with sdk_session(server.url, "legacy", read_timeout_seconds=10) as client:
                await client.call_tool("crash", {})
        assert server.proc.wait(timeout=10) == 3


async def test_github_like_reports_the_credential_it_received(logs: Path) -> None:
    with http_server("github_like", logs, "--require-token", "ghp_test") as server:
        async with sdk_session(server.url, "legacy", headers={"Authorization": "Bearer ghp_test"}) as client:
            assert GITHUB_TOOLS <= {tool.name for tool in (await client.list_tools()).tools}
            who = await client.call_tool("whoami", {})
            assert '"authorization": "Bearer ghp_test"' in _text(who)
            issue = await client.call_tool("create_issue", {"owner": "o", "repo": "r", "title": "t"})
            assert '"title": "t"' in _text(issue)
        with pytest.raises(BaseException):  # noqa: B017 - 401 surfaces from the transport's task group
            async with sdk_session(server.url, "legacy") as client:
                await client.list_tools()

    stdio = stdio_target("tests.servers.github_like", "--transport", "stdio",
                         env={"GITHUB_PERSONAL_ACCESS_TOKEN": "ghp_env"})
    async with sdk_session(stdio, "auto") as client:
        assert '"env_token": "ghp_env"' in _text(await client.call_tool("whoami", {}))


def test_inspector_lists_and_calls_demo_tools(demo_http: ServerProcess) -> None:
    tools = inspector_list_tools(demo_http.url)
    assert DEMO_TOOLS <= {tool["name"] for tool in tools}
    result = inspector_call_tool(demo_http.url, "add", {"a": 2, "b": 3})
    assert result["structuredContent"] == {"sum": 5} and not result["isError"]
    # why: the CLI would turn "42" into a number; the helper must keep strings strings
    assert inspector_call_tool(demo_http.url, "echo", {"text": "42"})["content"][0]["text"] == "42"


def test_claude_code_reports_demo_server_connected(demo_http: ServerProcess) -> None:
    assert claude_mcp_list(demo_http.url) == "Connected"
