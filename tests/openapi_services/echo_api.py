"""A real HTTP service for the OpenAPI connector's tests: it echoes what it receives.

Run with `python -m uvicorn --app-dir tests/openapi_services echo_api:app --port P`. It serves:
- `/spec/<file>`: the OpenAPI documents of this folder (so tests can load a document by URL);
- `/echo/...` and friends: answers with the request as the server saw it (raw path, raw query,
  parsed query, headers, cookies, JSON / form / multipart body);
- `/oauth/token`: an OAuth 2.0 client-credentials token endpoint; `/auth/oauth` accepts its tokens;
- `/status/{code}`, `/slow`, `/text`, `/binary`, `/image`, `/redirect`, `/tree`: response shapes.
A request that escaped its path segment would reach `/secret`, which records the fact.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

HERE = Path(__file__).resolve().parent
CLIENT_ID = "hub-client"
CLIENT_SECRET = "s3cret-client-value"
TOKEN_LIFETIME = int(os.environ.get("ECHO_TOKEN_LIFETIME", "3600"))
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

issued: dict[str, int] = {}
state: dict[str, Any] = {"tokens_issued": 0, "secret_hits": 0, "token_requests": []}


async def describe(request: Request) -> dict[str, Any]:
    """The request as this server saw it."""
    out: dict[str, Any] = {
        "method": request.method,
        "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
        "path": request.url.path,
        "path_params": dict(request.path_params),
        "query": request.scope.get("query_string", b"").decode("latin-1"),
        "query_params": [[k, v] for k, v in request.query_params.multi_items()],
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "cookies": dict(request.cookies),
        "json": None,
        "form": None,
        "files": None,
        "body_text": None,
    }
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form-urlencoded"):
        form = await request.form()
        fields: list[list[Any]] = []
        files: list[dict[str, Any]] = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                data = await value.read()
                files.append({"name": key, "filename": value.filename, "content_type": value.content_type,
                              "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            else:
                fields.append([key, value])
        out["form"] = fields
        out["files"] = files
        return out
    body = await request.body()
    if body:
        out["body_text"] = body.decode("utf-8", errors="replace")
        if "json" in content_type:
            try:
                out["json"] = json.loads(body)
            except ValueError:
                pass
    return out


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(await describe(request))


async def created(request: Request) -> JSONResponse:
    return JSONResponse(await describe(request), status_code=201)


async def no_content(request: Request) -> Response:
    return Response(status_code=204)


async def secret(request: Request) -> JSONResponse:
    state["secret_hits"] += 1
    return JSONResponse({"secret": True})


async def spec(request: Request) -> Response:
    name = request.path_params["name"]
    path = (HERE / name).resolve()
    if path.parent != HERE or not path.is_file() or path.suffix not in (".yaml", ".json"):
        return PlainTextResponse("not found", status_code=404)
    return Response(path.read_bytes(), media_type="application/yaml" if path.suffix == ".yaml" else "application/json")


async def status(request: Request) -> Response:
    code = int(request.path_params["code"])
    return JSONResponse({"error": f"status {code} as asked", "detail": "x" * 5000}, status_code=code)


async def slow(request: Request) -> JSONResponse:
    await asyncio.sleep(float(request.query_params.get("seconds", "5")))
    return JSONResponse({"slept": True})


async def text(request: Request) -> PlainTextResponse:
    return PlainTextResponse("plain text answer\n")


async def binary(request: Request) -> Response:
    return Response(bytes(range(256)), media_type="application/octet-stream")


async def image(request: Request) -> Response:
    return Response(PNG, media_type="image/png")


async def redirect(request: Request) -> RedirectResponse:
    return RedirectResponse("/text", status_code=302)


async def tree(request: Request) -> JSONResponse:
    if request.method == "GET":
        return JSONResponse({"name": "root", "children": [{"name": "leaf", "children": []}], "extra": None})
    return JSONResponse(await describe(request))


async def token(request: Request) -> JSONResponse:
    form = await request.form()
    client_id, client_secret = form.get("client_id"), form.get("client_secret")
    header = request.headers.get("authorization", "")
    if header.startswith("Basic "):
        raw = base64.b64decode(header[6:]).decode()
        client_id, _, client_secret = raw.partition(":")
    state["token_requests"].append({"grant_type": form.get("grant_type"), "scope": form.get("scope")})
    if form.get("grant_type") != "client_credentials" or client_id != CLIENT_ID or client_secret != CLIENT_SECRET:
        return JSONResponse({"error": "invalid_client", "error_description": "bad client credentials"}, 401)
    state["tokens_issued"] += 1
    value = f"tok-{state['tokens_issued']}"
    issued[value] = state["tokens_issued"]
    return JSONResponse({"access_token": value, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME})


async def revoke_all(request: Request) -> JSONResponse:
    issued.clear()
    return JSONResponse({"revoked": True})


async def oauth_protected(request: Request) -> JSONResponse:
    header = request.headers.get("authorization", "")
    if not header.startswith("Bearer ") or header[7:] not in issued:
        return JSONResponse({"error": "invalid_token"}, status_code=401)
    return JSONResponse(await describe(request))


async def stats(request: Request) -> JSONResponse:
    return JSONResponse(state)


app = Starlette(routes=[
    Route("/spec/{name}", spec),
    Route("/echo/items/{itemId}", echo, methods=["GET", "PUT", "PATCH"]),
    Route("/echo/items/{itemId}", no_content, methods=["DELETE"]),
    Route("/echo/items", created, methods=["POST"]),
    Route("/echo/forms", echo, methods=["POST"]),
    Route("/echo/uploads", echo, methods=["POST"]),
    Route("/echo/raw", echo, methods=["POST"]),
    Route("/echo/styles/{label}/{matrix}/{plain}", echo, methods=["GET"]),
    # `:path` so the test sees any value that reached here; the raw path tells how it was encoded.
    Route("/echo/files/{name:path}", echo, methods=["GET"]),
    Route("/echo/auth", echo, methods=["GET"]),
    Route("/echo/public", echo, methods=["GET"]),
    Route("/echo", echo, methods=["GET"]),
    Route("/secret", secret, methods=["GET"]),
    Route("/echo/secret", secret, methods=["GET"]),
    Route("/status/{code:int}", status),
    Route("/slow", slow),
    Route("/text", text),
    Route("/binary", binary),
    Route("/image", image),
    Route("/redirect", redirect),
    Route("/tree", tree, methods=["GET", "POST"]),
    Route("/oauth/token", token, methods=["POST"]),
    Route("/oauth/revoke-all", revoke_all, methods=["POST"]),
    Route("/auth/oauth", oauth_protected),
    Route("/stats", stats),
])
