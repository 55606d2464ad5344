"""/healthz and /metrics: liveness for anyone, detail for an authorized caller only.

Detail (upstream names and states, counters, the metrics with tool, consumer and group labels) tells an
outsider what the gateway fronts and who uses it. Once the gateway has any credential configured (caller
auth, admin keys or scrape keys), detail needs `Authorization: Bearer <admin or scrape key>`; without one,
/healthz answers `{"status": ...}` (what a liveness or readiness probe needs) and /metrics answers 401.
A gateway with no credential configured at all (a local development setup) shows detail to every caller,
as it lets every caller call every tool.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from mcp_hub.admin.credentials import bearer_credential, matching_key
from mcp_hub.core.hub import Gateway

ASK_FOR_KEY = "send `Authorization: Bearer <scrape key>` (admin.scrape_keys) or an admin key"


def detail_allowed(gateway: Gateway, request: Request) -> bool:
    """Whether this request may see health detail and metrics."""
    config = gateway.config
    keys = [*config.admin.keys, *config.admin.scrape_keys]
    if not keys and not config.auth.enabled:
        return True
    credential = bearer_credential(request.headers)
    return credential is not None and matching_key(credential, keys) is not None


def monitoring_routes(gateway: Gateway, render_metrics: Callable[[], tuple[bytes, str]] | None) -> list[BaseRoute]:
    """The /healthz route, and /metrics when metrics are kept."""

    async def healthz(request: Request) -> Response:
        health = gateway.health()
        if detail_allowed(gateway, request):
            return JSONResponse(health)
        return JSONResponse({"status": health["status"]})

    routes: list[BaseRoute] = [Route("/healthz", healthz, methods=["GET"])]
    if render_metrics is not None:
        render = render_metrics

        async def metrics(request: Request) -> Response:
            if not detail_allowed(gateway, request):
                return JSONResponse({"error": "unauthorized", "message": f"/metrics: {ASK_FOR_KEY}"},
                                    status_code=401, headers={"WWW-Authenticate": 'Bearer realm="mcp-hub-metrics"'})
            body, content_type = render()
            return Response(body, media_type=content_type)

        routes.append(Route("/metrics", metrics, methods=["GET"]))
    return routes
