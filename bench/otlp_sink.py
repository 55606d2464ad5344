"""A local OTLP/HTTP trace receiver for `bench/overhead.py --tracing`: decodes every export and counts its spans.

    python bench/otlp_sink.py PORT       # POST /v1/traces takes exports; GET /count answers {"spans": N, "exports": M}
"""

from __future__ import annotations

import sys

import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

counts = {"spans": 0, "exports": 0}
OK = ExportTraceServiceResponse().SerializeToString()


async def export(request: Request) -> Response:
    message = ExportTraceServiceRequest()
    message.ParseFromString(await request.body())
    counts["exports"] += 1
    counts["spans"] += sum(len(s.spans) for rs in message.resource_spans for s in rs.scope_spans)
    return Response(OK, media_type="application/x-protobuf")


async def count(request: Request) -> Response:
    return JSONResponse(counts)


app = Starlette(routes=[Route("/v1/traces", export, methods=["POST"]), Route("/count", count)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
