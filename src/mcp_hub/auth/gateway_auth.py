"""`GatewayAuth`: what the app wires in, built once from the `auth:` config.

auth = GatewayAuth(AuthConfig.model_validate(config.auth))
app = auth.protect(mcp_app, "/mcp")            # an AuthGate for that path
routes += auth.routes(["/mcp", "/mcp/time"])   # RFC 9728 metadata, one per path
creds = auth.credentials(upstream.credentials) # UpstreamCredentials for one upstream
await auth.aclose()                            # at shutdown
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx2
from mcp.server.auth.provider import TokenVerifier
from starlette.routing import Route
from starlette.types import ASGIApp

from mcp_hub.auth.authserver import AuthorizationServerMetadata
from mcp_hub.auth.credentials import UpstreamCredentials, build_upstream_credentials
from mcp_hub.auth.gate import AuthGate
from mcp_hub.auth.metadata import gateway_resource_routes, resource_for_path, resource_metadata_url
from mcp_hub.auth.verifier import build_verifier
from mcp_hub.config.auth import AuthConfig, UpstreamCredentialConfig


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(config: AuthConfig, host: str) -> None:
    """Refuse to serve without auth on a non-loopback address unless `allow_insecure_bind` says so."""
    if not config.enabled and not _is_loopback(host) and not config.allow_insecure_bind:
        raise ValueError(
            f"refusing to listen on {host} without authentication: set auth.mode "
            "(oauth or api_key), bind to 127.0.0.1, or set auth.allow_insecure_bind: true"
        )


class GatewayAuth:
    """The verifier, the gates, the metadata routes and upstream credentials for one gateway.

    One HTTP client serves JWKS fetches, introspection, discovery and token requests; pass `http`
    to share the gateway's, otherwise one is created and closed by `aclose()`.
    """

    def __init__(
        self,
        config: AuthConfig,
        *,
        http: httpx2.AsyncClient | None = None,
        verifier: TokenVerifier | None = None,
    ) -> None:
        self.config = config
        self._owns_http = http is None
        self.http = http or httpx2.AsyncClient(timeout=config.http_timeout_s, follow_redirects=False)
        # The resource URL of every protected path: each is a resource of its own (the verifier
        # accepts their audiences, each path's gate accepts its own and `config.resource`).
        self.resources: set[str] = set()
        self.verifier = verifier or build_verifier(config, http=self.http, routes=self.resources)

    def resource_for(self, path: str) -> str | None:
        """The resource URL of a gateway path (`/mcp/time` → `https://hub.example/mcp/time`)."""
        return resource_for_path(self.config.resource, path) if self.config.resource else None

    def protect(self, app: ASGIApp, path: str, required_scopes: Sequence[str] | None = None) -> ASGIApp:
        """`app` behind an `AuthGate` whose 401s point at this path's protected resource metadata.

        `required_scopes`: the path's own (a route's `required_scopes`), else `auth.required_scopes`.
        """
        resource = self.resource_for(path)
        if resource:
            self.resources.add(resource)
        metadata_url = (
            resource_metadata_url(resource) if resource and "oauth" in self.config.methods else None
        )
        return AuthGate(
            app,
            self.config,
            self.verifier,
            resource_metadata_url=metadata_url,
            resource=resource,
            required_scopes=None if required_scopes is None else list(required_scopes),
        )

    def routes(
        self, paths: Iterable[str], scopes: Mapping[str, Sequence[str]] | None = None
    ) -> list[Route]:
        """Protected resource metadata routes for the given gateway paths (none unless OAuth is on).

        `scopes`: a path's own required scopes where they differ from `auth.required_scopes`.
        """
        if "oauth" not in self.config.methods:
            return []
        paths = list(paths)
        self.resources.update(r for r in map(self.resource_for, paths) if r)
        servers = self.config.authorization_servers or ([self.config.issuer] if self.config.issuer else [])
        as_metadata = AuthorizationServerMetadata(servers[0], self.http) if servers else None
        return gateway_resource_routes(self.config, paths, scopes=scopes, as_metadata=as_metadata)

    def credentials(self, data: UpstreamCredentialConfig | Mapping[str, Any] | None) -> UpstreamCredentials:
        """The credentials object for one upstream's `credentials:` block."""
        return build_upstream_credentials(data, auth=self.config, http=self.http)

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            await self.http.aclose()
