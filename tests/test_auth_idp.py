"""The gateway as an OAuth resource server, against a real IdP (oidc-provider) and a real MCP app.

The app under test: `MCPServer(...).streamable_http_app()` behind `GatewayAuth.protect` (an
`AuthGate`), served by uvicorn; an upstream HTTP service behind its own gate records what the
gateway sends it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import mcp_types as types
import pytest
import structlog
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver import Context, MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mcp_hub.auth.credentials import UpstreamCredentials, build_upstream_credentials
from mcp_hub.auth.errors import UpstreamCredentialError
from mcp_hub.auth.gate import ACCESS_TOKEN_KEY, CONSUMER_KEY
from mcp_hub.auth.gateway_auth import GatewayAuth
from mcp_hub.auth.identity import Consumer
from mcp_hub.auth.keys import new_api_key
from mcp_hub.auth.metadata import resource_metadata_url
from mcp_hub.auth.verifier import build_verifier
from mcp_hub.config.auth import AuthConfig, IntrospectionConfig
from tests.support.clients import claude_mcp_list, sdk_session
from tests.support.idp import Idp, idp, idp_server, serve_asgi  # noqa: F401 - `idp` is a fixture
from tests.support.rpc import MCP_HEADERS, initialize_request
from tests.support.tools import free_port

INIT = initialize_request(client="auth-test")
# Reused: a new httpx2 client costs ~80 ms of CPU here (it builds an SSL context).
HTTP = httpx2.Client(timeout=10)


@dataclass
class World:
    """The protected app, its upstream, and what the upstream received."""

    idp: Idp
    base: str
    config: AuthConfig
    api_key: str
    upstream: str
    upstream_seen: list[dict[str, Any]] = field(default_factory=list)
    credentials: dict[str, UpstreamCredentials] = field(default_factory=dict)
    upstream_http: httpx2.AsyncClient | None = None

    @property
    def mcp(self) -> str:
        return f"{self.base}/mcp"

    def token(
        self, client_id: str = "mcp-client", *, resource: str | None = None, scope: str | None = "mcp:tools"
    ) -> str:
        return self.idp.client_credentials(client_id, resource=resource or self.mcp, scope=scope)[
            "access_token"
        ]


def _consumer_json(scope: Scope) -> dict[str, Any]:
    consumer = scope[CONSUMER_KEY]
    return {
        "name": consumer.name,
        "groups": list(consumer.groups),
        "method": consumer.method,
        "forwarded": dict(consumer.forwarded_claims),
    }


def _mcp_server(world: World) -> MCPServer:
    server = MCPServer("protected")

    @server.tool()
    def whoami(ctx: Context) -> str:
        """The consumer the gate stored in the ASGI scope."""
        request = ctx.request_context.request
        assert isinstance(request, Request)
        return json.dumps({**_consumer_json(request.scope), "user": request.scope["user"].display_name})

    @server.tool()
    async def call_upstream(ctx: Context, credential: str) -> str:
        """Call the upstream with the named credential kind, as the gateway would."""
        request = ctx.request_context.request
        assert isinstance(request, Request)
        creds = world.credentials[credential]
        try:
            headers = await creds.headers(
                request.scope[CONSUMER_KEY], request.scope[ACCESS_TOKEN_KEY], request.headers
            )
        except UpstreamCredentialError as exc:
            return json.dumps({"error": exc.description})
        if world.upstream_http is None:  # created here: it must live in the server's event loop
            world.upstream_http = httpx2.AsyncClient(timeout=10)
        response = await world.upstream_http.get(f"{world.upstream}/data", headers=headers)
        return json.dumps({"status": response.status_code})

    return server


def _dispatch(auth: GatewayAuth, admin_auth: GatewayAuth, mcp_app: Any) -> Any:
    protected = auth.protect(mcp_app, "/mcp")
    metadata = Starlette(routes=auth.routes(["/mcp"]))

    async def admin_endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("admin ok")

    admin = admin_auth.protect(Starlette(routes=[Route("/admin", admin_endpoint)]), "/admin")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await mcp_app(scope, receive, send)  # the MCP app's session manager lives in its lifespan
        elif scope["path"].startswith("/.well-known/"):
            await metadata(scope, receive, send)
        elif scope["path"].startswith("/admin"):
            await admin(scope, receive, send)
        else:
            await protected(scope, receive, send)

    return app


def _upstream_app(world: World, auth: GatewayAuth) -> Any:
    async def data(request: Request) -> JSONResponse:
        world.upstream_seen.append(
            {"authorization": request.headers.get("authorization"), **_consumer_json(request.scope)}
        )
        return JSONResponse({"ok": True})

    return auth.protect(Starlette(routes=[Route("/data", data)]), "/data")


@pytest.fixture(scope="module")
def world(idp: Idp) -> Iterator[World]:  # noqa: F811 - pytest fixture injection
    port, upstream_port = free_port(), free_port()
    base, upstream = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{upstream_port}"
    api_key, digest = new_api_key()
    config = AuthConfig.model_validate(
        {
            "mode": ["oauth", "api_key"],
            "resource": f"{base}/mcp",
            "authorization_servers": [idp.issuer],
            "introspection": {
                "client_id": "mcp-gateway",
                "client_secret": idp.gateway_secret,
                "cache_ttl_s": 0,
            },
            "api_keys": [{"consumer": "ci-bot", "groups": ["ci"], "sha256": digest}],
            # both methods on: OAuth consumers are namespaced (auth.oauth_consumers maps them explicitly)
            "static_groups": {"oauth:mcp-client": ["static-extra"]},
            "claim_to_header": {"client_id": "X-Client-Id", "groups": "X-Groups"},
            "leeway_s": 0,
        }
    )
    world = World(idp=idp, base=base, config=config, api_key=api_key, upstream=f"{upstream}/data")
    world.upstream = upstream
    auth = GatewayAuth(config)
    admin_auth = GatewayAuth(config.model_copy(update={"required_scopes": ["mcp:admin"]}))
    upstream_auth = GatewayAuth(
        AuthConfig(mode="oauth", resource=f"{upstream}/data", authorization_servers=[idp.issuer], leeway_s=1)
    )
    world.credentials = {
        "exchange": auth.credentials(
            {
                "mode": "exchange",
                "client_id": "mcp-gateway",
                "client_secret": idp.gateway_secret,
                "audience": f"{upstream}/data",
                "scopes": ["upstream:read"],
            }
        ),
        "client_credentials": auth.credentials(
            {
                "mode": "client_credentials",
                "client_id": "mcp-gateway",
                "client_secret": idp.gateway_secret,
                "token_endpoint": idp.token_endpoint,
                "resource": f"{upstream}/data",
            }
        ),
        "passthrough": auth.credentials({"mode": "passthrough", "source_header": "X-Upstream-Token"}),
    }
    mcp_app = _mcp_server(world).streamable_http_app(host="127.0.0.1")
    with (
        serve_asgi(_upstream_app(world, upstream_auth), port=upstream_port),
        serve_asgi(_dispatch(auth, admin_auth, mcp_app), port=port),
    ):
        yield world


class CapturedLogs:
    """Every stdlib log record and every raw structlog event (before any redaction) of this module."""

    def __init__(self) -> None:
        self.records: list[str] = []
        self.events = structlog.testing.LogCapture()
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
        outer = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.records.append(formatter.format(record))

        self.handler = Handler(level=logging.DEBUG)

    def text(self) -> str:
        return "\n".join(self.records) + "\n" + "\n".join(repr(e) for e in self.events.entries)


@pytest.fixture(scope="module", autouse=True)
def captured_logs() -> Iterator[CapturedLogs]:
    """Capture all log output of this module's tests, at DEBUG, from every thread."""
    captured = CapturedLogs()
    root = logging.getLogger()
    saved_level, saved_structlog = root.level, structlog.get_config()
    root.addHandler(captured.handler)
    root.setLevel(logging.DEBUG)
    structlog.configure(
        processors=[captured.events],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    try:
        yield captured
    finally:
        root.removeHandler(captured.handler)
        root.setLevel(saved_level)
        structlog.configure(**saved_structlog)


def initialize(world: World, headers: dict[str, str] | None = None) -> httpx2.Response:
    return HTTP.post(world.mcp, json=INIT, headers={**MCP_HEADERS, **(headers or {})})


async def call(world: World, tool: str, headers: dict[str, str], **arguments: Any) -> Any:
    async with sdk_session(world.mcp, "legacy", headers=headers) as client:
        result = await client.call_tool(tool, arguments)
    assert not result.is_error, result
    text = result.content[0]
    assert isinstance(text, types.TextContent)
    return json.loads(text.text)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- accepted -------------------------------------------------------------------------------


async def test_client_credentials_jwt_is_accepted(world: World) -> None:
    token = world.token()
    assert token.count(".") == 2  # a JWT: verified against the JWKS, not introspected
    me = await call(world, "whoami", bearer(token))
    assert me["name"] == "oauth:mcp-client"
    assert me["groups"] == ["engineering", "static-extra"]
    assert me["method"] == "oauth"
    assert me["forwarded"] == {"X-Client-Id": "mcp-client", "X-Groups": "engineering"}
    assert me["user"] == "mcp-client"  # the SDK's AuthenticatedUser is in scope["user"]


async def test_opaque_token_is_introspected(world: World) -> None:
    me = await call(world, "whoami", bearer(world.token("mcp-client-opaque")))
    assert (me["name"], me["groups"]) == ("oauth:mcp-client-opaque", ["support"])


async def test_authorization_code_with_pkce_and_refresh(world: World) -> None:
    tokens = world.idp.authorization_code(resource=world.mcp, account="alice")
    me = await call(world, "whoami", bearer(tokens["access_token"]))
    assert (me["name"], me["groups"]) == ("oauth:alice", ["engineering", "admins"])
    refreshed = world.idp.refresh(tokens["refresh_token"], resource=world.mcp)
    assert refreshed["access_token"] != tokens["access_token"]
    assert (await call(world, "whoami", bearer(refreshed["access_token"])))["name"] == "oauth:alice"


async def test_api_key_in_header_and_as_bearer(world: World) -> None:
    for headers in ({"X-Api-Key": world.api_key}, bearer(world.api_key)):
        me = await call(world, "whoami", headers)
        assert (me["name"], me["groups"], me["method"]) == ("ci-bot", ["ci"], "api_key")


# --- refused --------------------------------------------------------------------------------


def test_missing_token_gets_a_challenge_pointing_at_the_metadata(world: World) -> None:
    response = initialize(world)
    assert response.status_code == 401
    expected = resource_metadata_url(world.mcp)
    assert response.headers["www-authenticate"] == f'Bearer resource_metadata="{expected}"'


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    # Flip one character of the claims: still base64url, no longer what was signed.
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    return f"{header}.{flipped}.{signature}"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_audience", "token audience is not this resource"),
        ("tampered", "token signature or format invalid"),
        ("garbage", "token is not active"),  # not JWT-shaped: introspection says no
        ("unknown_api_key", "token is not active"),
    ],
)
def test_bad_tokens_get_401_invalid_token(world: World, case: str, reason: str) -> None:
    token = {
        "wrong_audience": lambda: world.token(resource="http://127.0.0.1:9/elsewhere"),
        "tampered": lambda: _tampered(world.token()),
        "garbage": lambda: "not-a-token",
        "unknown_api_key": lambda: "mcphub_" + "x" * 43,
    }[case]()
    response = initialize(world, bearer(token))
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    assert f'resource_metadata="{resource_metadata_url(world.mcp)}"' in challenge
    assert response.json()["error_description"].startswith(reason)
    assert token not in response.text and token not in challenge


def test_expired_token_is_refused(world: World) -> None:
    token = world.token("mcp-client-short")  # lives 1 s; this app allows no leeway
    issued_by = int(time.time())  # exp <= issued_by + 1, in whole seconds
    assert initialize(world, bearer(token)).status_code == 200
    time.sleep(max(0.0, issued_by + 1.05 - time.time()))
    response = initialize(world, bearer(token))
    assert response.status_code == 401
    assert "token expired" in response.headers["www-authenticate"]


def test_revoked_token_is_refused(world: World) -> None:
    token = world.token("mcp-client-opaque")
    assert initialize(world, bearer(token)).status_code == 200
    world.idp.revoke(token, "mcp-client-opaque")
    response = initialize(world, bearer(token))
    assert response.status_code == 401
    assert "not active" in response.json()["error_description"]


def test_wrong_issuer_is_refused(world: World, tmp_path: Any) -> None:
    # Another IdP signing with the very same key: only the issuer check can tell.
    assert world.idp.jwks_file is not None
    jwks = json.loads(world.idp.jwks_file.read_text())
    with idp_server(tmp_path, jwks=jwks) as other:
        token = other.client_credentials(resource=world.mcp)["access_token"]
    response = initialize(world, bearer(token))
    assert response.status_code == 401
    assert "'iss'" in response.json()["error_description"]


def test_missing_scope_gets_403(world: World) -> None:
    url = f"{world.base}/admin"
    response = HTTP.get(url, headers=bearer(world.token(scope="mcp:tools")))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    assert 'scope="mcp:admin"' in response.headers["www-authenticate"]
    admin_token = world.idp.client_credentials(resource=world.mcp, scope="mcp:tools mcp:admin")[
        "access_token"
    ]
    assert HTTP.get(url, headers=bearer(admin_token)).text == "admin ok"


def test_session_belongs_to_the_token_that_opened_it(world: World) -> None:
    owner = world.token()
    session = initialize(world, bearer(owner)).headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}

    def ping_as(token: str) -> httpx2.Response:
        headers = {
            **MCP_HEADERS,
            **bearer(token),
            "Mcp-Session-Id": session,
            "Mcp-Protocol-Version": "2025-06-18",
        }
        return HTTP.post(world.mcp, json=ping, headers=headers)

    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    HTTP.post(
        world.mcp,
        json=initialized,
        headers={
            **MCP_HEADERS,
            **bearer(owner),
            "Mcp-Session-Id": session,
            "Mcp-Protocol-Version": "2025-06-18",
        },
    )
    assert ping_as(owner).status_code == 200
    response = ping_as(world.token("mcp-client-opaque"))
    assert response.status_code in (403, 404), (
        response.text
    )  # the SDK's ownership check, fed by scope["user"]


# --- discovery ------------------------------------------------------------------------------


def test_challenge_leads_through_metadata_to_a_working_token_endpoint(world: World) -> None:
    challenge = initialize(world).headers["www-authenticate"]
    prm_url = challenge.split('resource_metadata="', 1)[1].rstrip('"')
    prm = HTTP.get(prm_url).json()
    assert prm["resource"] == world.mcp
    server = prm["authorization_servers"][0]
    as_metadata = HTTP.get(f"{server}/.well-known/oauth-authorization-server").json()
    assert as_metadata["issuer"] == server
    response = HTTP.post(
        as_metadata["token_endpoint"],
        data={"grant_type": "client_credentials", "resource": prm["resource"], "scope": "mcp:tools"},
        auth=("mcp-client", world.idp.client_secret),
    )
    token = response.json()["access_token"]
    world.idp.issued.append(token)
    assert initialize(world, bearer(token)).status_code == 200


# --- upstream credentials -------------------------------------------------------------------


async def test_token_exchange_gives_the_upstream_a_token_for_its_own_audience(world: World) -> None:
    caller = world.idp.authorization_code(resource=world.mcp, account="bob")["access_token"]
    world.upstream_seen.clear()
    for _ in range(2):
        assert await call(world, "call_upstream", bearer(caller), credential="exchange") == {"status": 200}
    seen = world.upstream_seen
    assert len(seen) == 2
    # The upstream's own gate accepted it, so its audience is the upstream; the subject is still bob.
    assert (seen[0]["name"], seen[0]["groups"]) == ("bob", ["support"])
    sent = seen[0]["authorization"].removeprefix("Bearer ")
    assert sent != caller and caller not in seen[0]["authorization"]
    assert seen[1]["authorization"] == seen[0]["authorization"]  # cached per consumer
    assert world.credentials["exchange"].exchanges == 1  # type: ignore[attr-defined]
    world.idp.issued.append(sent)


async def test_client_credentials_upstream_token_is_the_gateways_own(world: World) -> None:
    world.upstream_seen.clear()
    caller = world.token()
    for _ in range(2):
        assert await call(world, "call_upstream", bearer(caller), credential="client_credentials") == {
            "status": 200
        }
    assert [s["name"] for s in world.upstream_seen] == ["mcp-gateway", "mcp-gateway"]
    assert caller not in world.upstream_seen[0]["authorization"]
    assert world.credentials["client_credentials"].grants == 1  # type: ignore[attr-defined]
    world.idp.issued.append(world.upstream_seen[0]["authorization"].removeprefix("Bearer "))


async def test_passthrough_sends_the_callers_upstream_token_never_the_gateway_token(world: World) -> None:
    world.upstream_seen.clear()
    gateway_token = world.token()
    upstream_token = world.token(resource=f"{world.upstream}/data", scope="upstream:read")
    headers = {**bearer(gateway_token), "X-Upstream-Token": upstream_token}
    assert await call(world, "call_upstream", headers, credential="passthrough") == {"status": 200}
    assert world.upstream_seen[0]["authorization"] == f"Bearer {upstream_token}"
    missing = await call(world, "call_upstream", bearer(gateway_token), credential="passthrough")
    assert "X-Upstream-Token" in missing["error"]


# --- Claude Code ----------------------------------------------------------------------------


def test_claude_code_sees_needs_authentication_then_connected(world: World) -> None:
    assert claude_mcp_list(world.mcp) == "Needs authentication"
    assert claude_mcp_list(world.mcp, bearer(world.token())) == "Connected"


# --- no secret in any log -------------------------------------------------------------------


async def test_no_token_key_or_secret_appears_in_any_log(world: World, captured_logs: CapturedLogs) -> None:
    # Error paths on top of what the module's other tests logged: a dead IdP, a refused exchange.
    dead = build_verifier(
        AuthConfig(
            mode="oauth",
            resource=world.mcp,
            authorization_servers=[f"http://127.0.0.1:{free_port()}"],
            introspection=IntrospectionConfig(
                client_id="mcp-gateway", client_secret=world.idp.gateway_secret
            ),
        )
    )
    assert dead is not None
    for token in (world.token("mcp-client-opaque"), world.token()):
        assert await dead.verify_token(token) is None
    await dead.aclose()
    async with httpx2.AsyncClient(timeout=10) as http:
        exchange = build_upstream_credentials(
            {
                "mode": "exchange",
                "client_id": "mcp-gateway",
                "client_secret": world.idp.gateway_secret,
                "audience": world.upstream,
                "authorization_server": world.idp.issuer,
            },
            http=http,
        )
        forged = AccessToken(token="forged-" + world.api_key[::-1], client_id="x", scopes=[])
        world.idp.issued.append(forged.token)
        with pytest.raises(UpstreamCredentialError) as refused:
            await exchange.headers(Consumer("mallory"), forged, {})
        assert forged.token not in refused.value.description
    initialize(world, {"X-Api-Key": world.api_key[:-2] + "zz"})
    initialize(world, bearer(_tampered(world.token())))

    text = captured_logs.text() + world.idp.log.read_text(errors="replace")
    assert "auth.refused" in text and "auth.jwks_fetched" in text  # the capture saw the auth code log
    secrets = {s for s in [*world.idp.secrets, world.api_key] if len(s) >= 8}
    assert len(secrets) > 20
    leaked = [s[:12] + "..." for s in secrets if s in text]
    assert not leaked, f"secrets found in logs: {leaked}"
