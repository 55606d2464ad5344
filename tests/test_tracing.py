"""OpenTelemetry tracing through a real gateway: a real OTLP/HTTP receiver decoding what the gateway exports,
a real upstream over Streamable HTTP that reports the trace context it received, SDK clients of both eras.

What is shown: one span per MCP request with the call's consumer, groups, method, tool, upstream, ACL
decision, tokens, cost and outcome; admission, upstream call and settle as its children; the caller's
`traceparent` (HTTP header, or a 2026-07-28 request's `_meta`) as its parent; the upstream sent the
upstream-call span as its parent in the caller's trace (header and `_meta`); the OTEL_* variables alone
turn it on; with tracing off nothing is exported and the caller's trace context passes through as before;
a bad `tracing:` section (or missing packages) is a config error.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from mcp.shared.exceptions import MCPError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mcp_hub.auth.keys import new_api_key
from tests.support.clients import sdk_session
from tests.support.gateway import RunningGateway, gateway_env, run_gateway, wait_until
from tests.support.processes import running, wait_for_port
from tests.support.tools import ROOT, free_port

ALICE_KEY, ALICE_HASH = new_api_key()
BOB_KEY, BOB_HASH = new_api_key()
EXPORT_TOKEN = "otlp-" + secrets.token_hex(8)


# -- a real OTLP/HTTP receiver --------------------------------------------------------------------


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status: int


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass
class OtlpReceiver:
    """Collects the spans of every `POST /v1/traces` (protobuf `ExportTraceServiceRequest`)."""

    port: int
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: list[dict[str, str]] = field(default_factory=list)  # each export request's headers
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def export(self, request: Request) -> Response:
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        received = []
        for resource_spans in message.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), parent_id=span.parent_span_id.hex(),
                        name=span.name, kind=span.kind, attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        resource=resource, status=span.status.code,
                    ))
        with self.lock:
            self.requests.append(dict(request.headers))
            self.spans.extend(received)
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.snapshot() if s.trace_id == trace_id]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(free_port())
    app = Starlette(routes=[Route("/v1/traces", receiver.export, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=receiver.port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=20, what="the OTLP receiver")
        yield receiver
    finally:
        server.should_exit = True
        thread.join(10)


# -- the upstream and the gateway ------------------------------------------------------------------


@contextlib.contextmanager
def trace_probe(tmp_path: Path) -> Iterator[str]:
    """The trace-probe upstream on Streamable HTTP; yields its URL."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.servers.trace_probe", "--port", str(port)]
    with running(cmd, env=gateway_env(), cwd=ROOT, log=tmp_path / "probe.log") as proc:
        wait_for_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}/mcp"


def _config(probe_url: str, tracing: dict[str, Any] | None, **listen: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": listen,
        "auth": {"mode": "api_key", "api_keys": [
            {"consumer": "alice", "groups": ["developer", "ops"], "sha256": ALICE_HASH},
            {"consumer": "bob", "groups": [], "sha256": BOB_HASH},
        ]},
        "upstreams": {"probe": {"transport": "streamable-http", "url": probe_url}},
        "default_acl": "deny",
        "groups": {"developer": {"tools": {"allow": ["probe__*"]}, "resources": {"allow": ["*"]}}},
        "costs": {"probe__*": {"per_call": 0.25}},
    }
    if tracing is not None:
        config["tracing"] = tracing
    return config


# Exports come quickly (the batch processor's delay, from the standard variable), so waits are short.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}


def _traceparent() -> tuple[str, str, str]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _probe(gw: RunningGateway, mode: str, *, key: str = ALICE_KEY, header: str | None = None,
                 meta: str | None = None) -> dict[str, Any]:
    headers = {**_auth(key), **({"traceparent": header} if header else {})}
    async with sdk_session(gw.mcp, mode, headers=headers) as client:  # type: ignore[arg-type]
        result = await client.call_tool("probe__probe", {"note": "hello tracing world"},
                                        meta={"traceparent": meta} if meta else None)
    assert not result.is_error, result
    return json.loads(result.content[0].text)  # type: ignore[union-attr]


def _request_span(receiver: OtlpReceiver, trace_id: str, name: str = "tools/call probe__probe") -> ReceivedSpan:
    wait_until(lambda: any(s.name == "settle" for s in receiver.trace(trace_id))
               and any(s.name == name for s in receiver.trace(trace_id)), timeout=30, what="the call's spans")
    (span,) = [s for s in receiver.trace(trace_id) if s.name == name]
    return span


def _children(receiver: OtlpReceiver, parent: ReceivedSpan) -> dict[str, ReceivedSpan]:
    return {s.name: s for s in receiver.trace(parent.trace_id) if s.parent_id == parent.span_id}


SPAN_KIND_SERVER, SPAN_KIND_CLIENT, STATUS_ERROR = 2, 3, 2


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as r:
        yield r


@pytest.fixture(scope="module")
def probe_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with trace_probe(tmp_path_factory.mktemp("probe")) as url:
        yield url


@pytest.fixture(scope="module", params=["direct", "sdk"])
def traced(request: pytest.FixtureRequest, receiver: OtlpReceiver, probe_url: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway tracing to the receiver, its calls framed by the direct entry or by the SDK's."""
    tracing = {"enabled": True, "endpoint": receiver.url, "service_name": f"hub-{request.param}",
               "headers": {"Authorization": "Bearer ${OTEL_EXPORT_TOKEN}"}}
    config = _config(probe_url, tracing, direct_calls=request.param == "direct")
    env = {**FAST_EXPORT, "OTEL_EXPORT_TOKEN": EXPORT_TOKEN}
    with run_gateway(config, tmp_path_factory.mktemp(f"traced-{request.param}"), env=env, wait_healthy=True) as gw:
        yield gw


# -- tracing on --------------------------------------------------------------------------------------


async def test_a_call_is_one_span_with_its_attributes_under_the_callers_trace(
    traced: RunningGateway, receiver: OtlpReceiver
) -> None:
    header, trace_id, caller_span = _traceparent()
    seen = await _probe(traced, "legacy", header=header)

    span = _request_span(receiver, trace_id)
    assert span.parent_id == caller_span  # the caller's span is the parent of the gateway's
    assert span.kind == SPAN_KIND_SERVER
    attrs = span.attributes
    assert attrs["mcp_hub.consumer"] == "alice"
    assert attrs["mcp_hub.groups"] == ["developer", "ops"]
    assert attrs["mcp.method.name"] == "tools/call"
    assert attrs["gen_ai.tool.name"] == "probe__probe"
    assert attrs["mcp_hub.upstream"] == "probe"
    assert attrs["mcp_hub.acl.decision"] == "allow"
    assert attrs["gen_ai.usage.input_tokens"] > 0 and attrs["gen_ai.usage.output_tokens"] > 0
    assert attrs["mcp_hub.cost"] == pytest.approx(0.25)
    assert attrs["mcp_hub.outcome"] == "ok"
    assert span.status != STATUS_ERROR
    assert span.resource["service.name"] in ("hub-direct", "hub-sdk")

    children = _children(receiver, span)
    assert {"admission", "upstream", "settle"} <= set(children)
    upstream = children["upstream"]
    assert upstream.kind == SPAN_KIND_CLIENT and upstream.attributes["mcp_hub.upstream"] == "probe"
    # The upstream got the caller's trace with the gateway's upstream-call span as its parent, both ways.
    expected = f"00-{trace_id}-{upstream.span_id}-01"
    assert seen == {"header": expected, "meta": expected}

    # The export carried the configured header (its value came from ${OTEL_EXPORT_TOKEN}), and no log shows it.
    assert any(r.get("authorization") == f"Bearer {EXPORT_TOKEN}" for r in receiver.requests)
    assert EXPORT_TOKEN not in traced.log_text()


async def test_a_2026_caller_s_meta_traceparent_is_the_parent(traced: RunningGateway, receiver: OtlpReceiver) -> None:
    meta, trace_id, caller_span = _traceparent()
    seen = await _probe(traced, "auto", meta=meta)
    span = _request_span(receiver, trace_id)
    assert span.parent_id == caller_span
    upstream = _children(receiver, span)["upstream"]
    assert seen["meta"] == seen["header"] == f"00-{trace_id}-{upstream.span_id}-01"


async def test_meta_wins_over_the_header(traced: RunningGateway, receiver: OtlpReceiver) -> None:
    header, header_trace, _ = _traceparent()
    meta, meta_trace, meta_span = _traceparent()
    await _probe(traced, "auto", header=header, meta=meta)
    assert _request_span(receiver, meta_trace).parent_id == meta_span
    assert not [s for s in receiver.trace(header_trace) if s.name.startswith("tools/call")]


async def test_a_call_without_trace_context_starts_a_trace(traced: RunningGateway, receiver: OtlpReceiver) -> None:
    seen = await _probe(traced, "legacy")
    version, trace_id, parent_id, flags = seen["header"].split("-")
    assert seen["meta"] == seen["header"] and int(flags, 16) & 1  # sampled
    span = _request_span(receiver, trace_id)
    assert span.parent_id == ""  # a root span
    assert _children(receiver, span)["upstream"].span_id == parent_id


async def test_a_denied_call_records_the_decision(traced: RunningGateway, receiver: OtlpReceiver) -> None:
    header, trace_id, caller_span = _traceparent()
    async with sdk_session(traced.mcp, "legacy", headers={**_auth(BOB_KEY), "traceparent": header}) as client:
        with pytest.raises(MCPError, match="Unknown tool"):
            await client.call_tool("probe__probe", {"note": "x"})
    span = _request_span(receiver, trace_id)
    assert span.parent_id == caller_span
    attrs = span.attributes
    assert (attrs["mcp_hub.consumer"], attrs["mcp_hub.acl.decision"], attrs["mcp_hub.outcome"]) == (
        "bob", "deny", "denied")
    assert span.status == STATUS_ERROR
    assert "upstream" not in _children(receiver, span)  # nothing went out


async def test_other_requests_have_spans_too(traced: RunningGateway, receiver: OtlpReceiver) -> None:
    header, trace_id, caller_span = _traceparent()
    async with sdk_session(traced.mcp, "legacy", headers={**_auth(ALICE_KEY), "traceparent": header}) as client:
        await client.list_tools()
        read = await client.read_resource("probe://context/x")
    seen = json.loads(read.contents[0].text)  # type: ignore[union-attr]
    wait_until(lambda: {"tools/list", "resources/read probe://context/x"}
               <= {s.name for s in receiver.trace(trace_id)}, timeout=30, what="the requests' spans")
    spans = {s.name: s for s in receiver.trace(trace_id)}
    read_span = spans["resources/read probe://context/x"]
    assert read_span.parent_id == caller_span
    assert read_span.attributes["mcp_hub.acl.decision"] == "allow"
    assert read_span.attributes["mcp_hub.upstream"] == "probe"
    assert seen["header"] == f"00-{trace_id}-{read_span.span_id}-01"


# -- the OTEL_* variables alone -------------------------------------------------------------------------


async def test_the_otel_variables_alone_turn_tracing_on(
    receiver: OtlpReceiver, probe_url: str, tmp_path: Path
) -> None:
    env = {**FAST_EXPORT, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
           "OTEL_SERVICE_NAME": "hub-from-env", "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test"}
    with run_gateway(_config(probe_url, None), tmp_path, env=env, wait_healthy=True) as gw:
        header, trace_id, caller_span = _traceparent()
        await _probe(gw, "legacy", header=header)
        span = _request_span(receiver, trace_id)
    assert span.parent_id == caller_span
    assert span.resource["service.name"] == "hub-from-env"
    assert span.resource["deployment.environment"] == "test"


# -- tracing off -----------------------------------------------------------------------------------------


async def test_tracing_off_exports_nothing_and_passes_the_callers_context_on(
    probe_url: str, tmp_path: Path
) -> None:
    with otlp_receiver() as quiet:
        # The receiver is where an export would go by the config's neighbours; `enabled: false` wins over both.
        config = _config(probe_url, {"enabled": False, "endpoint": quiet.url})
        env = {**FAST_EXPORT, "OTEL_EXPORTER_OTLP_ENDPOINT": quiet.url}
        with run_gateway(config, tmp_path, env=env, wait_healthy=True, name="off") as gw:
            header, _, _ = _traceparent()
            seen = await _probe(gw, "legacy", header=header)
            unset = await _probe(gw, "legacy")
        # The gateway has exited (a tracing gateway exports what is queued on its way out): nothing came.
        assert quiet.requests == [] and quiet.spans == []
    assert seen == {"header": header, "meta": header}  # passed on as it came, as without tracing
    assert unset == {"header": None, "meta": None}


async def test_no_tracing_section_and_no_variables_is_off(probe_url: str, tmp_path: Path) -> None:
    with otlp_receiver() as quiet:
        env = {k: v for k, v in FAST_EXPORT.items()}
        with run_gateway(_config(probe_url, None), tmp_path, env=env, wait_healthy=True, name="default") as gw:
            await _probe(gw, "legacy", header=_traceparent()[0])
        assert quiet.requests == []


# -- config errors ---------------------------------------------------------------------------------------


def _check(config: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    clean = {k: v for k, v in gateway_env(env).items() if not k.startswith("OTEL_")}
    clean.update({k: v for k, v in (env or {}).items()})
    return subprocess.run([sys.executable, "-m", "mcp_hub.cli", "check", str(path)], env=clean,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


BASE = {"upstreams": {"t": {"transport": "stdio", "command": "mcp-server-time"}}}


@pytest.mark.parametrize(("tracing", "expected"), [
    ({"enabled": True, "sample_ratio": 2}, "tracing.sample_ratio"),
    ({"endpoint": "ftp://collector:4318"}, "tracing.endpoint: must be an http:// or https:// URL with a host"),
    ({"endpoint": "http://user:pw@collector:4318"}, "tracing.endpoint: must not carry credentials"),
    ({"enable": True}, "tracing.enable"),
    ({"headers": {"Bad Header": "x"}}, "is not a valid HTTP header name"),
])
def test_a_bad_tracing_section_is_a_config_error(tracing: dict[str, Any], expected: str, tmp_path: Path) -> None:
    out = _check({**BASE, "tracing": tracing}, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr
    assert "pw@" not in out.stderr


def test_an_unknown_key_gets_a_suggestion(tmp_path: Path) -> None:
    out = _check({**BASE, "tracing": {"sample_rate": 0.5}}, tmp_path)
    assert out.returncode == 2
    assert "sample_ratio" in out.stderr  # did you mean


@pytest.mark.parametrize(("env", "expected"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: the gateway exports traces over OTLP/HTTP only"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL=grpc"),
])
def test_an_export_the_gateway_lacks_is_a_config_error(env: dict[str, str], expected: str, tmp_path: Path) -> None:
    out = _check({**BASE, "tracing": {"enabled": True}}, tmp_path, env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert expected in out.stderr and "Traceback" not in out.stderr


def test_otel_traces_exporter_none_keeps_it_off(tmp_path: Path) -> None:
    out = _check(BASE, tmp_path, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"})
    assert out.returncode == 0, out.stdout + out.stderr


_BLOCK_OTEL_SDK = '''
import sys
from importlib.abc import MetaPathFinder

class _NotInstalled(MetaPathFinder):
    """As if the `otel` extra were not installed: its packages cannot be found."""
    def find_spec(self, name, path=None, target=None):
        if name in ("opentelemetry.sdk", "opentelemetry.exporter") or name.startswith(
                ("opentelemetry.sdk.", "opentelemetry.exporter.")):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


def test_tracing_without_its_packages_says_what_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(_BLOCK_OTEL_SDK)
    env = {"PYTHONPATH": os.pathsep.join([str(shim), str(ROOT)])}
    out = _check({**BASE, "tracing": {"enabled": True}}, tmp_path, env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "pip install 'mcp-hub[otel]'" in out.stderr
    assert "opentelemetry-sdk" in out.stderr and "Traceback" not in out.stderr
    # The same packages missing, tracing not asked for: nothing is wrong.
    assert _check(BASE, tmp_path, env).returncode == 0
