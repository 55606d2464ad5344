"""Auth when the IdP misbehaves: down, restarted with rotated keys, asked too often."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import httpx2
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp.server.mcpserver import MCPServer

from mcp_hub.auth.authserver import AuthorizationServerMetadata
from mcp_hub.auth.errors import AuthServerUnavailable, InvalidToken
from mcp_hub.auth.gateway_auth import GatewayAuth
from mcp_hub.auth.verifier import IntrospectionVerifier, OAuthVerifier, build_verifier
from mcp_hub.config.auth import AuthConfig, IntrospectionConfig
from tests.support.idp import Idp, idp, idp_server, serve_asgi, signing_jwks  # noqa: F401 - fixture
from tests.support.rpc import MCP_HEADERS, initialize_request
from tests.support.tools import free_port

INIT = initialize_request(client="auth-test")


def rogue_token(issuer: str, resource: str, kid: str = "rogue") -> str:
    """A well-formed JWT with the right claims, signed by a key the IdP never published."""
    key = RSAKey.generate_key(2048, parameters={"kid": kid}, private=True)
    now = int(time.time())
    claims = {"iss": issuer, "aud": resource, "sub": "mallory", "iat": now, "exp": now + 300}
    return jwt.encode({"alg": "RS256", "kid": kid}, claims, key)


def test_idp_down_then_back_with_rotated_keys(tmp_path: Path) -> None:
    idp_port, app_port = free_port(), free_port()
    issuer, resource = f"http://127.0.0.1:{idp_port}", f"http://127.0.0.1:{app_port}/mcp"
    old_keys, new_key = signing_jwks("key-2024"), signing_jwks("key-2025")
    secrets = {"client_secret": "cs-resilience-" + "x" * 16, "gateway_secret": "gs-resilience-" + "y" * 16}
    config = AuthConfig(
        mode="oauth",
        resource=resource,
        authorization_servers=[issuer],
        jwks_min_refetch_s=0,
        introspection=IntrospectionConfig(
            client_id="mcp-gateway", client_secret=secrets["gateway_secret"], cache_ttl_s=0
        ),
    )
    auth = GatewayAuth(config)
    verifier = auth.verifier
    assert isinstance(verifier, OAuthVerifier) and verifier.jwt is not None
    app = auth.protect(MCPServer("resilience").streamable_http_app(host="127.0.0.1"), "/mcp")

    with serve_asgi(app, port=app_port), httpx2.Client(timeout=10) as http:

        def status(token: str) -> tuple[int, str]:
            response = http.post(
                resource, json=INIT, headers={**MCP_HEADERS, "Authorization": f"Bearer {token}"}
            )
            return response.status_code, response.headers.get("www-authenticate", "")

        with idp_server(tmp_path / "up", port=idp_port, jwks=old_keys, **secrets) as first:
            signed_old = first.client_credentials(resource=resource)["access_token"]
            opaque = first.client_credentials("mcp-client-opaque", resource=resource)["access_token"]
            assert status(signed_old)[0] == 200
            assert status(opaque)[0] == 200
        assert verifier.jwt.jwks.fetches == 1

        # The IdP is down: cached keys keep validating; introspection fails with a 401 that says why.
        assert status(signed_old)[0] == 200
        code, challenge = status(opaque)
        assert code == 401
        assert 'error_description="token introspection failed: cannot reach' in challenge
        code, challenge = status(rogue_token(issuer, resource))
        assert code == 401 and "unknown key 'rogue'" in challenge

        # Back, signing with a new key and still publishing the old one.
        rotated = {"keys": [*new_key["keys"], *old_keys["keys"]]}
        with idp_server(tmp_path / "again", port=idp_port, jwks=rotated, **secrets) as second:
            signed_new = second.client_credentials(resource=resource)["access_token"]
            assert status(signed_new)[0] == 200  # unknown kid → one refetch → accepted
            assert status(signed_old)[0] == 200
            assert verifier.jwt.jwks.fetches == 2


async def test_unknown_kid_refetch_is_rate_limited(idp: Idp) -> None:  # noqa: F811
    resource = "http://127.0.0.1:9/mcp"
    verifier = build_verifier(
        AuthConfig(
            mode="oauth", resource=resource, authorization_servers=[idp.issuer], jwks_min_refetch_s=2.0
        )
    )
    assert verifier is not None and verifier.jwt is not None
    try:
        # why first: signing keys take a while to make on a busy machine, and the window below is timed
        rogues = [rogue_token(idp.issuer, resource, f"rogue-{n}") for n in range(3)]
        good = idp.client_credentials(resource=resource)["access_token"]
        assert (await verifier.check(good)).client_id == "mcp-client"
        assert verifier.jwt.jwks.fetches == 1
        assert await verifier.verify_token(rogues[0]) is None
        assert verifier.jwt.jwks.fetches == 1  # the keys were fetched just now: no refetch
        await anyio.sleep(2.1)
        for token in rogues:
            assert await verifier.verify_token(token) is None
        assert verifier.jwt.jwks.fetches == 2  # one refetch for the first unknown kid, then rate-limited
    finally:
        await verifier.aclose()


async def test_introspection_is_cached_but_not_past_the_token_lifetime(idp: Idp) -> None:  # noqa: F811
    resource = "http://127.0.0.1:9/mcp"
    async with httpx2.AsyncClient(timeout=10) as http:
        introspection = IntrospectionVerifier(
            IntrospectionConfig(client_id="mcp-gateway", client_secret=idp.gateway_secret, cache_ttl_s=60),
            http,
            issuer=idp.issuer,
            resource=resource,
            metadata=AuthorizationServerMetadata(idp.issuer, http),
            leeway_s=0,
        )
        token = idp.client_credentials("mcp-client-opaque", resource=resource)["access_token"]
        for _ in range(3):
            assert (await introspection.check(token)).client_id == "mcp-client-opaque"
        assert introspection.requests == 1

        short = idp.client_credentials("mcp-client-short", resource=f"{resource}/opaque")["access_token"]
        introspection.resource = f"{resource}/opaque"
        issued_by = int(time.time())
        await introspection.check(short)
        await anyio.sleep(max(0.0, issued_by + 1.05 - time.time()))
        try:
            await introspection.check(short)
        except InvalidToken as exc:  # the cached entry ended with the token
            assert "not active" in exc.description or "expired" in exc.description
        else:
            raise AssertionError("an expired token was served from the introspection cache")
        assert introspection.requests == 3


async def test_unreachable_idp_is_an_auth_error_not_a_crash() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    verifier = build_verifier(
        AuthConfig(
            mode="oauth",
            resource="http://127.0.0.1:9/mcp",
            authorization_servers=[dead],
            introspection=IntrospectionConfig(client_id="gw", client_secret="s3cr3t-value"),
        )
    )
    assert verifier is not None
    try:
        for token in ("opaque-token-value", rogue_token(dead, "http://127.0.0.1:9/mcp")):
            try:
                await verifier.check(token)
            except AuthServerUnavailable as exc:
                assert "s3cr3t-value" not in exc.description and token not in exc.description
            else:
                raise AssertionError("a token was accepted with the IdP down")
            assert await verifier.verify_token(token) is None
    finally:
        await verifier.aclose()
