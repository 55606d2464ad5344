"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the gateway's protected paths.

Each protected path gets its own document at `/.well-known/oauth-protected-resource<path>`
(so `/mcp` → `/.well-known/oauth-protected-resource/mcp`), built with the SDK's routes.
Without OAuth (API keys only), the discovery paths answer 404 with the way in instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_hub.auth.authserver import AuthorizationServerMetadata
from mcp_hub.auth.errors import AuthError
from mcp_hub.auth.gate import API_KEY_HOWTO
from mcp_hub.config.auth import AuthConfig

# Where clients look for OAuth when a request is refused: RFC 9728 and RFC 8414 metadata, OpenID
# discovery, and the default dynamic client registration endpoint (RFC 7591) of MCP's auth spec.
_DISCOVERY_PATHS = (
    "/.well-known/oauth-protected-resource",
    "/.well-known/oauth-protected-resource/{rest:path}",
    "/.well-known/oauth-authorization-server",
    "/.well-known/oauth-authorization-server/{rest:path}",
    "/.well-known/openid-configuration",
    "/.well-known/openid-configuration/{rest:path}",
    "/register",
)
NO_OAUTH = (
    "this MCP server does not use OAuth, it takes an API key: {howto}; "
    "in Claude Code: claude mcp add --transport http NAME URL --header 'Authorization: Bearer <key>'"
)


def resource_metadata_url(resource: str) -> str:
    """The RFC 9728 metadata URL for a resource URL (what `WWW-Authenticate` points at)."""
    return str(build_resource_metadata_url(resource))  # type: ignore[arg-type]


def resource_for_path(resource: str, path: str) -> str:
    """The resource URL of another path on the same origin as `resource` (e.g. `/mcp/time`)."""
    parts = urlsplit(resource)
    return urlunsplit((parts.scheme, parts.netloc, "/" + path.lstrip("/"), "", ""))


def protected_resource_routes(
    resource: str,
    authorization_servers: Sequence[str],
    *,
    scopes_supported: Sequence[str] | None = None,
    resource_name: str | None = None,
) -> list[Route]:
    """The metadata route for one protected resource URL, naming the servers that issue its tokens.

    `scopes_supported` is published as given, an empty list included: a client that finds no list
    falls back to every scope the authorization server advertises (admin scopes among them), an
    empty one makes it ask for none.
    """
    # Plain strings: the SDK model keeps `http://host:port` without the trailing slash a bare
    # AnyHttpUrl would add, so the issuer clients see matches the AS metadata exactly.
    return create_protected_resource_routes(
        resource_url=resource,  # type: ignore[arg-type]
        authorization_servers=list(authorization_servers),  # type: ignore[arg-type]
        scopes_supported=list(scopes_supported) if scopes_supported is not None else None,
        resource_name=resource_name,
    )


def gateway_resource_routes(
    config: AuthConfig,
    paths: Iterable[str],
    *,
    resource_name: str = "mcp-hub",
    scopes: Mapping[str, Sequence[str]] | None = None,
    as_metadata: AuthorizationServerMetadata | None = None,
) -> list[Route]:
    """One metadata route per protected gateway path, all naming the gateway's authorization servers.

    `config.resource` gives the origin (scheme, host, port); each path becomes its own resource
    (`/mcp`, `/mcp/time`, `/time`, ...), since a client asks for a token for the exact URL it was
    given. `scopes_supported` is always there and never more than the route needs: the path's entry
    in `scopes` (a route's own `required_scopes`), else `config.required_scopes`. A route that needs
    none publishes `["offline_access"]` when the authorization server (`as_metadata`) offers it, else
    `[]`: without a list, clients ask for every scope the server advertises (admin ones included),
    and an empty one trips clients that append offline_access to it (the MCP SDK sends " offline_access").
    """
    if not config.resource:
        raise ValueError("auth.resource is needed to publish protected resource metadata")
    servers = config.authorization_servers or ([config.issuer] if config.issuer else [])
    return [
        _gateway_resource_route(
            resource_for_path(config.resource, path),
            servers,
            list((scopes or {}).get(path, config.required_scopes)),
            resource_name,
            as_metadata,
        )
        for path in paths
    ]


def _gateway_resource_route(
    resource: str,
    servers: Sequence[str],
    scopes: list[str],
    resource_name: str,
    as_metadata: AuthorizationServerMetadata | None,
) -> Route:
    path = urlsplit(resource_metadata_url(resource)).path

    async def metadata(request: Request) -> JSONResponse:
        published = scopes
        if not published and as_metadata is not None:
            try:
                offered = (await as_metadata.get()).get("scopes_supported") or []
            except AuthError:
                offered = []
            published = ["offline_access"] if "offline_access" in offered else []
        body = {
            "resource": resource,
            "authorization_servers": list(servers),
            "scopes_supported": published,
            "bearer_methods_supported": ["header"],
            "resource_name": resource_name,
        }
        return JSONResponse(body, headers={"cache-control": "public, max-age=300"})

    return Route(path, metadata, methods=["GET"])


def upstream_resource_routes(
    resource: str,
    upstream_authorization_servers: Sequence[str],
    *,
    scopes_supported: Sequence[str] | None = None,
    resource_name: str | None = None,
) -> list[Route]:
    """Metadata for a gateway path whose tokens come from an upstream's own authorization server.

    The GitHub-remote pattern: the client gets a token from the upstream's AS for this path and the
    gateway passes it through, so the document names that AS instead of the gateway's.
    """
    return protected_resource_routes(
        resource,
        upstream_authorization_servers,
        scopes_supported=scopes_supported,
        resource_name=resource_name,
    )


def api_key_only_routes() -> list[Route]:
    """404s that say how to get in, on the paths an OAuth client tries after a 401.

    For a gateway whose only way in is an API key. A client that starts OAuth discovery anyway ends
    it with this text (Claude Code shows it), not with "client registration failed (404 Not Found)".
    """
    body = {"error": "invalid_request", "error_description": NO_OAUTH.format(howto=API_KEY_HOWTO)}

    async def no_oauth(request: Request) -> JSONResponse:
        return JSONResponse(body, status_code=404, headers={"cache-control": "no-store"})

    return [Route(path, no_oauth, methods=["GET", "POST"]) for path in _DISCOVERY_PATHS]
