"""A small REST API whose JSON answers are not objects (an array, a string, a number, nothing), with
its OpenAPI document at /openapi.json: `uvicorn --app-dir tests/openapi_services lists_api:app`."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

COLOURS = [{"name": "teal", "hex": "#008080"}, {"name": "plum", "hex": "#dda0dd"}]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": "ok", "content": {"application/json": {"schema": schema}}}}


DOCUMENT = {
    "openapi": "3.0.3",
    "info": {"title": "Lists", "version": "1"},
    "components": {"schemas": {"Colour": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}}}},
    "paths": {
        "/colours": {"get": {"operationId": "listColours", "responses": _json(
            {"type": "array", "items": {"$ref": "#/components/schemas/Colour"}})}},
        "/motto": {"get": {"operationId": "getMotto", "responses": _json({"type": "string"})}},
        "/count": {"get": {"operationId": "countColours", "responses": _json({"type": "integer"})}},
        "/first": {"get": {"operationId": "firstColour", "responses": _json({"$ref": "#/components/schemas/Colour"})}},
        "/nothing": {"get": {"operationId": "getNothing", "responses": {"200": {
            "description": "sometimes empty", "content": {"application/json": {"schema": {"type": "array"}}}}}}},
    },
}


async def document(request: Request) -> JSONResponse:
    return JSONResponse(DOCUMENT)


async def colours(request: Request) -> JSONResponse:
    return JSONResponse(COLOURS)


async def motto(request: Request) -> JSONResponse:
    return JSONResponse("colour is data")


async def count(request: Request) -> JSONResponse:
    return JSONResponse(len(COLOURS))


async def first(request: Request) -> JSONResponse:
    return JSONResponse(COLOURS[0])


async def nothing(request: Request) -> Response:
    return Response(b"", status_code=200, media_type="application/json")


app = Starlette(routes=[
    Route("/openapi.json", document), Route("/colours", colours), Route("/motto", motto),
    Route("/count", count), Route("/first", first), Route("/nothing", nothing),
])
