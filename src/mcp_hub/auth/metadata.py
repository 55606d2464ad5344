"""OAuth 2.0 Protected Resource Metadata (RFC 9728) for the gateway's protected paths.

Each protected path gets its own document at `/.well-known/oauth-protected-resource<path>`
(so `/mcp` → `/.well-known/oauth-protected-resource/mcp`), built with the SDK's routes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit, urlunsplit

from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from starlette.routing import Route

from mcp_hub.config.auth import AuthConfig


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
    """The metadata route for one protected resource URL, naming the servers that issue its tokens."""
    # Plain strings: the SDK model keeps `http://host:port` without the trailing slash a bare
    # AnyHttpUrl would add, so the issuer clients see matches the AS metadata exactly.
    return create_protected_resource_routes(
        resource_url=resource,  # type: ignore[arg-type]
        authorization_servers=list(authorization_servers),  # type: ignore[arg-type]
        scopes_supported=list(scopes_supported) if scopes_supported else None,
        resource_name=resource_name,
    )


def gateway_resource_routes(
    config: AuthConfig, paths: Iterable[str], *, resource_name: str = "mcp-hub"
) -> list[Route]:
    """One metadata route per protected gateway path, all naming the gateway's authorization servers.

    `config.resource` gives the origin (scheme, host, port); each path becomes its own resource
    (`/mcp`, `/mcp/time`, ...), since a client asks for a token for the exact URL it was given.
    """
    if not config.resource:
        raise ValueError("auth.resource is needed to publish protected resource metadata")
    servers = config.authorization_servers or ([config.issuer] if config.issuer else [])
    routes: list[Route] = []
    for path in paths:
        routes.extend(
            protected_resource_routes(
                resource_for_path(config.resource, path),
                servers,
                scopes_supported=config.required_scopes or None,
                resource_name=resource_name,
            )
        )
    return routes


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
