"""Helpers for the OpenAPI connector's tests: the echo service as a real process, a running upstream,
and valid arguments generated from a tool's input schema."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from jsonschema import Draft202012Validator

from mcp_hub.upstreams.openapi import OpenAPIUpstream, OpenAPIUpstreamConfig
from tests.support.processes import running, wait_for_http
from tests.support.tools import ROOT, free_port

HERE = Path(__file__).resolve().parent
ECHO_SPEC = HERE / "echo_api.yaml"


@dataclass(frozen=True)
class Service:
    """A running test service."""

    url: str
    log: Path

    def spec_url(self, name: str = "echo_api.yaml") -> str:
        return f"{self.url}/spec/{name}"


@contextlib.contextmanager
def echo_service(tmp: Path, env: dict[str, str] | None = None) -> Iterator[Service]:
    """tests/openapi_services/echo_api.py under uvicorn, as its own process on a loopback port."""
    import os

    port = free_port()
    log = tmp / f"echo-{port}.log"
    args = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "echo_api:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with running(args, env={**os.environ, **(env or {})}, cwd=ROOT, log=log) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/stats", proc=proc)
        yield Service(url, log)


@contextlib.asynccontextmanager
async def started(
    config: OpenAPIUpstreamConfig | dict[str, Any], *, name: str = "api", **kwargs: Any
) -> AsyncIterator[OpenAPIUpstream]:
    """An `OpenAPIUpstream` whose `run()` has made its first attempt; cancelled on exit."""
    if isinstance(config, dict):
        config = OpenAPIUpstreamConfig.model_validate(config)
    upstream = OpenAPIUpstream(name, config, **kwargs)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(30):
            await tg.start(upstream.run)
        try:
            yield upstream
        finally:
            tg.cancel_scope.cancel()


# -- arguments from schemas -------------------------------------------------------------------

_FORMATS = {
    "date-time": "2024-01-02T03:04:05Z",
    "date": "2024-01-02",
    "time": "03:04:05Z",
    "email": "someone@example.com",
    "uri": "https://example.com/x",
    "url": "https://example.com/x",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
    "byte": "aGVsbG8=",
    "binary": "aGVsbG8=",
    "int32": 1,
    "int64": 1,
}


class ArgumentGenerator:
    """Builds a value that satisfies a JSON Schema (examples, defaults and enums first)."""

    def __init__(self, root: dict[str, Any], *, fill: bool = False) -> None:
        self.root = root
        self.fill = fill  # also give optional properties (to exercise every parameter)
        self.validator = Draft202012Validator(root)

    def resolve(self, schema: Any) -> Any:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            name = schema["$ref"].split("/")[-1]
            merged = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self.root.get("$defs", {}).get(name, {}), **merged}
        return schema

    def valid(self, schema: Any, value: Any) -> bool:
        sub = dict(schema) if isinstance(schema, dict) else schema
        if isinstance(sub, dict) and "$defs" in self.root:
            sub["$defs"] = self.root["$defs"]
        return not any(True for _ in Draft202012Validator(sub).iter_errors(value))

    def value(self, schema: Any, depth: int = 0) -> Any:  # noqa: C901 - a dispatch over schema shapes
        schema = self.resolve(schema)
        if schema is True or not isinstance(schema, dict):
            return "x"
        for key in ("const",):
            if key in schema:
                return schema[key]
        if schema.get("examples"):
            candidate = schema["examples"][0]
            if self.valid(schema, candidate):
                return candidate
        if "default" in schema and self.valid(schema, schema["default"]):
            return schema["default"]
        if schema.get("enum"):
            return next((e for e in schema["enum"] if e is not None), schema["enum"][0])
        for key in ("oneOf", "anyOf"):
            if key in schema:
                base = {k: v for k, v in schema.items() if k not in (key, "description")}
                for branch in schema[key]:
                    merged = self.merge(base, self.resolve(branch))
                    candidate = self.value(merged, depth + 1)
                    if self.valid(schema, candidate):
                        return candidate
                return self.value(schema[key][0], depth + 1)
        if "allOf" in schema:
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                merged = self.merge(merged, self.resolve(part))
            return self.value(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in schema else ("array" if "items" in schema else "string")
        if kind == "object":
            out = {}
            props = schema.get("properties", {})
            for name in schema.get("required", []):
                out[name] = self.value(props.get(name, {}), depth + 1)
            optional = list(props) if self.fill and depth < 3 else list(props)[: max(0, schema.get("minProperties", 0) - len(out))]
            for name in optional:
                out.setdefault(name, self.value(props[name], depth + 1))
            return out
        if kind == "array":
            count = max(1, schema.get("minItems", 1)) if depth < 6 else schema.get("minItems", 0)
            return [self.value(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "integer":
            return int(self.number(schema))
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        fmt = schema.get("format")
        text = str(_FORMATS.get(fmt, "abc")) if isinstance(fmt, str) else "abc"
        low, high = schema.get("minLength", 0), schema.get("maxLength", 10_000)
        if len(text) < low:
            text = text + "x" * (low - len(text))
        return text[: max(high, 1)] if high < len(text) else text

    @staticmethod
    def number(schema: dict[str, Any]) -> float:
        low = schema.get("minimum", schema.get("exclusiveMinimum", None))
        high = schema.get("maximum", schema.get("exclusiveMaximum", None))
        value = 1.0
        if low is not None and value <= low:
            value = low + 1
        if high is not None and value >= high:
            value = high - 1 if low is None or high - 1 >= low else (low + high) / 2
        step = schema.get("multipleOf")
        if step:
            value = step * max(1, round(value / step))
        return value

    @staticmethod
    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        out = dict(a)
        for key, value in b.items():
            if key == "properties":
                out["properties"] = {**out.get("properties", {}), **value}
            elif key == "required":
                out["required"] = list(dict.fromkeys([*out.get("required", []), *value]))
            else:
                out.setdefault(key, value)
        return out


def arguments_for(input_schema: dict[str, Any], *, fill: bool = False) -> dict[str, Any]:
    """Arguments that satisfy a tool's input schema (checked with jsonschema); `fill`: all properties."""
    generator = ArgumentGenerator(input_schema, fill=fill)
    args = generator.value(input_schema)
    errors = list(Draft202012Validator(input_schema).iter_errors(args))
    assert not errors, f"generated arguments {args!r} do not fit the schema: {errors[0].message}"
    return args
