"""A small internal REST API (an inventory service) for the internal-rest-api example and its test.

    python examples/internal_api_service.py --port 9300      # http://127.0.0.1:9300, document at /openapi.yaml

It serves its own OpenAPI document (`internal-api.openapi.yaml`, beside this file) and checks the
`X-Api-Key` header against INVENTORY_API_KEY when that variable is set.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

DOCUMENT = Path(__file__).with_name("internal-api.openapi.yaml")


def create_app(api_key: str | None = None) -> Starlette:
    """The inventory API: list, read, create and delete items; `api_key` protects everything but the document."""
    items: dict[int, dict[str, Any]] = {
        1: {"id": 1, "name": "keyboard", "quantity": 12, "location": "shelf-a"},
        2: {"id": 2, "name": "monitor", "quantity": 3, "location": "shelf-b"},
    }

    def authorized(request: Request) -> bool:
        return api_key is None or request.headers.get("x-api-key") == api_key

    def refuse() -> Response:
        return JSONResponse({"error": "missing or wrong X-Api-Key"}, status_code=401)

    async def document(request: Request) -> Response:
        return PlainTextResponse(DOCUMENT.read_text(), media_type="application/yaml")

    async def list_items(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        location = request.query_params.get("location")
        found = [i for i in items.values() if location is None or i["location"] == location]
        return JSONResponse({"items": found, "count": len(found)})

    async def get_item(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        item = items.get(int(request.path_params["item_id"]))
        return JSONResponse(item) if item else JSONResponse({"error": "no such item"}, status_code=404)

    async def create_item(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return JSONResponse({"error": "name is required"}, status_code=400)
        item_id = max(items, default=0) + 1
        items[item_id] = {"id": item_id, "name": body["name"], "quantity": int(body.get("quantity", 0)),
                          "location": str(body.get("location", "unassigned"))}
        return JSONResponse(items[item_id], status_code=201)

    async def delete_item(request: Request) -> Response:
        if not authorized(request):
            return refuse()
        if items.pop(int(request.path_params["item_id"]), None) is None:
            return JSONResponse({"error": "no such item"}, status_code=404)
        return Response(status_code=204)

    return Starlette(routes=[
        Route("/openapi.yaml", document, methods=["GET"]),
        Route("/items", list_items, methods=["GET"]),
        Route("/items", create_item, methods=["POST"]),
        Route("/items/{item_id:int}", get_item, methods=["GET"]),
        Route("/items/{item_id:int}", delete_item, methods=["DELETE"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9300)
    args = parser.parse_args()
    uvicorn.run(create_app(os.environ.get("INVENTORY_API_KEY")), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
