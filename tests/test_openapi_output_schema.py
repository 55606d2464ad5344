"""JSON answers whose root is not an object: an output schema of the form MCP's SDKs use for such
results, `{"type": "object", "properties": {"result": <schema>}, "required": ["result"]}`, and
structured content `{"result": <answer>}` that validates against it, through a real gateway and a
real MCP client; the text content is the API's answer as before."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.gateway import run_gateway
from tests.support.processes import running, wait_for_http
from tests.support.tools import ROOT, free_port

SERVICES = Path(__file__).parent / "openapi_services"


@pytest.fixture(scope="module")
def lists_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("lists")
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(SERVICES), "lists_api:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with running(args, cwd=ROOT, log=tmp / "lists.log") as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/openapi.json", proc=proc)
        yield url


def _client(url: str) -> Client:
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(timeout=30)), mode="legacy")


async def test_non_object_answers_have_wrapped_schemas_and_results(lists_api: str, tmp_path: Path) -> None:
    config = {"openapi": {"lists": {"spec": f"{lists_api}/openapi.json", "base_url": lists_api}}}
    with run_gateway(config, tmp_path, wait_healthy=True) as gw:
        async with _client(gw.mcp) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            schemas = {name: tool.output_schema for name, tool in listed.items()}
            for name in ("lists__listColours", "lists__getMotto", "lists__countColours", "lists__getNothing"):
                schema = schemas[name]
                assert schema is not None and schema["type"] == "object", name
                assert schema["required"] == ["result"] and list(schema["properties"]) == ["result"], schema
                Draft202012Validator.check_schema(schema)
            assert schemas["lists__getMotto"]["properties"]["result"]["type"] == ["string", "null"]
            assert schemas["lists__countColours"]["properties"]["result"]["type"] == ["integer", "null"]
            items = schemas["lists__listColours"]["properties"]["result"]["items"]
            assert set(items["properties"]) == {"name", "hex"}
            # An object answer keeps its own schema, unwrapped.
            assert set(schemas["lists__firstColour"]["properties"]) == {"name", "hex"}

            expected: dict[str, Any] = {
                "lists__listColours": [{"name": "teal", "hex": "#008080"}, {"name": "plum", "hex": "#dda0dd"}],
                "lists__getMotto": "colour is data",
                "lists__countColours": 2,
            }
            for name, answer in expected.items():
                # The SDK client validates structured content against the output schema itself.
                result = await client.call_tool(name, {})
                assert not result.is_error, result
                assert result.structured_content == {"result": answer}
                Draft202012Validator(schemas[name]).validate(result.structured_content)
                assert json.loads(result.content[0].text) == answer  # text content unchanged
            first = await client.call_tool("lists__firstColour", {})
            assert first.structured_content == {"name": "teal", "hex": "#008080"}
            empty = await client.call_tool("lists__getNothing", {})
            assert empty.structured_content == {"result": None}
            Draft202012Validator(schemas["lists__getNothing"]).validate(empty.structured_content)
