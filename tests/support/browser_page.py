"""The web app of the browser tests: `browser_page.html` (an MCP client in page JavaScript) and its Client
ID Metadata Document, served from its own origin.

    with serve_asgi(browser_app(CIMD_ORIGIN)) as origin:
        page.goto(f"{origin}/?mcp={mcp_url}&client_id={client_id(CIMD_ORIGIN)}")

The client is known to the authorization server by `client_id(cimd_origin)`, an https URL the test IdP
reads from this app (idp_server(cimd=(cimd_origin, origin))): a browser cannot register dynamically at
oidc-provider, whose registration endpoint answers no cross-origin request. Its redirect URI is
`{origin}/callback`, on whatever loopback origin the app is served from.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

PAGE = Path(__file__).with_name("browser_page.html")
DOCUMENT_PATH = "/oauth/client.json"


def client_id(cimd_origin: str) -> str:
    return f"{cimd_origin}{DOCUMENT_PATH}"


def browser_app(cimd_origin: str) -> Starlette:
    html = PAGE.read_text(encoding="utf-8")

    async def page(request: Request) -> HTMLResponse:
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    async def document(request: Request) -> JSONResponse:
        origin = f"{request.url.scheme}://{request.url.netloc}"
        return JSONResponse(
            {
                "client_id": client_id(cimd_origin),
                "client_name": "MCP browser test client",
                "redirect_uris": [f"{origin}/callback"],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
                "application_type": "web",
            },
            headers={"cache-control": "max-age=60"},
        )

    return Starlette(routes=[
        Route("/", page), Route("/callback", page), Route("/probe", page), Route(DOCUMENT_PATH, document),
    ])
