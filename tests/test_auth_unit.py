"""Auth pieces that need no IdP: config models, identity mapping, API keys, credentials, the gate's edges."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.server.auth.provider import AccessToken
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_hub.auth.authserver import metadata_urls
from mcp_hub.auth.credentials import (
    InjectedCredentials,
    PassthroughCredentials,
    build_upstream_credentials,
    strip_gateway_credentials,
    upstream_headers,
)
from mcp_hub.auth.errors import CredentialConfigError, UpstreamCredentialError
from mcp_hub.auth.gate import ACCESS_TOKEN_KEY, CONSUMER_KEY, AuthGate
from mcp_hub.auth.gateway_auth import GatewayAuth, check_bind
from mcp_hub.auth.identity import (
    Consumer,
    anonymous_consumer,
    claim_value,
    consumer_from_access_token,
    forwarded_claims,
    groups_from_claim,
)
from mcp_hub.auth.keys import api_key_digest, new_api_key
from mcp_hub.auth.metadata import resource_metadata_url, upstream_resource_routes
from mcp_hub.auth.verifier import ApiKeyVerifier, looks_like_jwt
from mcp_hub.config.auth import AuthConfig, UpstreamCredentialConfig

RESOURCE = "http://127.0.0.1:8000/mcp"
OAUTH = {"mode": "oauth", "resource": RESOURCE, "authorization_servers": ["http://127.0.0.1:4000"]}


def oauth_config(**extra: Any) -> AuthConfig:
    return AuthConfig.model_validate({**OAUTH, **extra})


def token(claims: dict[str, Any], **fields: Any) -> AccessToken:
    base: dict[str, Any] = {
        "token": "t",
        "client_id": "client",
        "scopes": [],
        "resource": RESOURCE,
        "claims": claims,
    }
    return AccessToken(**{**base, **fields})


# --- config ---------------------------------------------------------------------------------


def test_config_defaults_and_modes() -> None:
    assert AuthConfig().methods == frozenset() and not AuthConfig().enabled
    assert oauth_config().methods == {"oauth"}
    key, digest = new_api_key()
    both = oauth_config(mode=["oauth", "api_key"], api_keys=[{"consumer": "bot", "sha256": digest.upper()}])
    assert both.methods == {"oauth", "api_key"}
    assert both.api_keys[0].sha256 == digest  # normalised to lower case
    assert (both.consumer_claim, both.groups_claim, both.leeway_s) == ("sub", "groups", 30)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mode": "oauth"}, "needs `resource`"),
        ({"mode": "oauth", "resource": RESOURCE}, "needs `authorization_servers`"),
        ({"mode": "api_key"}, "at least one entry"),
        ({"mode": []}, "empty list"),
        ({"mode": "saml"}, "mode"),
        ({"api_keys": [{"consumer": "x", "sha256": "nothex"}]}, "SHA-256"),
        ({"claim_to_header": {"email": "X Bad"}}, "header name"),
        ({"resourse": RESOURCE}, "Extra inputs are not permitted"),
    ],
)
def test_config_errors_say_what_is_wrong(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        AuthConfig.model_validate(data)


def test_secrets_do_not_show_in_repr_or_errors() -> None:
    config = oauth_config(introspection={"client_id": "gw", "client_secret": "hunter2-secret"})
    assert "hunter2-secret" not in repr(config) and "hunter2-secret" not in str(config.model_dump())
    with pytest.raises(ValidationError) as info:
        AuthConfig.model_validate({**OAUTH, "introspection": {"client_secret": "hunter2-secret"}})
    assert "hunter2-secret" not in str(info.value)


def test_credential_configs() -> None:
    parse = TypeAdapter(UpstreamCredentialConfig).validate_python
    assert parse({"mode": "inject", "value_env": "GH"}).format == "Bearer {}"
    assert parse({"mode": "inject", "value_env": "K", "header": "X-Key"}).format == "{}"
    assert parse({"mode": "passthrough"}).source_header == "X-Upstream-Token"
    for bad, message in [
        ({"mode": "inject"}, "exactly one"),
        ({"mode": "inject", "value_env": "A", "value_file": "/f"}, "exactly one"),
        ({"mode": "inject", "value_env": "A", "format": "Bearer"}, "must contain"),
        ({"mode": "passthrough", "source_header": "X-Api-Key"}, "must not be"),
        ({"mode": "exchange", "client_id": "c", "client_secret": "s"}, "audience"),
        ({"mode": "magic"}, "does not match any of the expected tags"),
    ]:
        with pytest.raises(ValidationError, match=message):
            parse(bad)


# --- identity -------------------------------------------------------------------------------


def test_claims_become_a_consumer() -> None:
    claims = {"sub": "u-123", "email": "ann@example.test", "groups": ["eng", "ops"], "client_id": "cli"}
    consumer = consumer_from_access_token(
        token(claims), oauth_config(static_groups={"u-123": ["ops", "oncall"]})
    )
    assert consumer == Consumer(name="u-123", groups=("eng", "ops", "oncall"), method="oauth")
    by_email = consumer_from_access_token(token(claims), oauth_config(consumer_claim="email"))
    assert by_email.name == "ann@example.test"


def test_an_oauth_identity_never_merges_with_an_api_key_consumer_of_the_same_name() -> None:
    """With both methods on, a token whose claim names an API-key consumer is `oauth:<claim>`: not that
    consumer's static groups, limits or usage, unless `oauth_consumers` maps it there on purpose."""
    _, digest = new_api_key()
    both = {"mode": ["oauth", "api_key"], "api_keys": [{"consumer": "ci-bot", "groups": ["ci"], "sha256": digest}],
            "static_groups": {"ci-bot": ["deployers"]}}
    posing = consumer_from_access_token(token({"sub": "ci-bot", "groups": []}), oauth_config(**both))
    assert posing == Consumer(name="oauth:ci-bot", groups=(), method="oauth")
    mapped = consumer_from_access_token(token({"sub": "u-1"}), oauth_config(**both, oauth_consumers={"u-1": "ci-bot"}))
    assert (mapped.name, mapped.groups) == ("ci-bot", ("deployers",))
    # static groups for the namespaced name apply to it
    named = consumer_from_access_token(token({"sub": "ann"}), oauth_config(**{**both, "static_groups": {
        "oauth:ann": ["eng"]}}))
    assert (named.name, named.groups) == ("oauth:ann", ("eng",))
    # OAuth only: names are the claims, no namespace needed
    assert consumer_from_access_token(token({"sub": "ci-bot"}), oauth_config()).name == "ci-bot"


def test_groups_from_nested_namespaced_and_scope_claims() -> None:
    claims = {
        "sub": "u",
        "scope": "read write",
        "realm_access": {"roles": ["admin", "dev"]},
        "https://example.test/groups": ["ns-group"],
    }
    assert consumer_from_access_token(
        token(claims), oauth_config(groups_claim="realm_access.roles")
    ).groups == ("admin", "dev")
    assert consumer_from_access_token(token(claims), oauth_config(groups_claim="scope")).groups == (
        "read",
        "write",
    )
    assert consumer_from_access_token(
        token(claims), oauth_config(groups_claim="https://example.test/groups")
    ).groups == ("ns-group",)
    assert consumer_from_access_token(token(claims), oauth_config(groups_claim="missing.path")).groups == ()


def test_name_falls_back_to_subject_then_client() -> None:
    assert consumer_from_access_token(token({}, subject="s-1"), oauth_config()).name == "s-1"
    assert consumer_from_access_token(token({}), oauth_config()).name == "client"


def test_forwarded_claims_are_rendered_and_cannot_inject_headers() -> None:
    claims = {"email": "a@b\r\nX-Evil: 1", "groups": ["a", "b"], "org": {"id": 7}, "admin": True}
    pairs = dict(
        forwarded_claims(
            claims,
            {
                "email": "X-Email",
                "groups": "X-Groups",
                "org": "X-Org",
                "admin": "X-Admin",
                "absent": "X-Absent",
            },
        )
    )
    assert pairs == {"X-Email": "a@bX-Evil: 1", "X-Groups": "a,b", "X-Org": '{"id":7}', "X-Admin": "true"}


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Z", "C")), min_size=1), max_size=8))
def test_space_separated_groups_split_like_lists(groups: list[str]) -> None:
    assert groups_from_claim(" ".join(groups)) == groups_from_claim(groups) == groups


@given(st.text())
def test_forwarded_values_never_carry_control_characters(value: str) -> None:
    for _, rendered in forwarded_claims({"c": value}, {"c": "X-C"}):
        assert all(ch >= " " and ch != "\x7f" for ch in rendered)


def test_claim_value_prefers_exact_names() -> None:
    assert claim_value({"a.b": 1, "a": {"b": 2}}, "a.b") == 1
    assert claim_value({"a": {"b": 2}}, "a.b") == 2
    assert claim_value({"a": [1]}, "a.b") is None


def test_anonymous_consumer_gets_its_static_groups() -> None:
    assert anonymous_consumer(AuthConfig(static_groups={"anonymous": ["demo"]})).groups == ("demo",)


# --- API keys -------------------------------------------------------------------------------


async def test_api_keys() -> None:
    key, digest = new_api_key()
    assert key.startswith("mcphub_") and len(key) > 40
    assert digest == hashlib.sha256(key.encode()).hexdigest() == api_key_digest(key)
    assert new_api_key()[0] != key
    config = AuthConfig.model_validate(
        {
            "mode": "api_key",
            "api_keys": [
                {"consumer": "other", "sha256": api_key_digest("nope")},
                {"consumer": "bot", "groups": ["ci"], "sha256": digest},
            ],
            "static_groups": {"bot": ["extra"]},
        }
    )
    verifier = ApiKeyVerifier(config.api_keys)
    access = await verifier.verify_token(key)
    assert access is not None and "mcphub_" not in repr(access)
    consumer = consumer_from_access_token(access, config)
    assert (consumer.name, consumer.groups, consumer.method) == ("bot", ("ci", "extra"), "api_key")
    assert await verifier.verify_token(key + "x") is None


# --- upstream credentials -------------------------------------------------------------------


async def test_injected_credentials_are_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_SECRET", "env-secret-1")
    from_env = build_upstream_credentials({"mode": "inject", "value_env": "UPSTREAM_SECRET"})
    monkeypatch.setenv("UPSTREAM_SECRET", "changed")
    anon = anonymous_consumer()
    assert await from_env.headers(anon, None, {}) == {"Authorization": "Bearer env-secret-1"}
    assert not from_env.belongs_to_caller
    secret_file = tmp_path / "key"
    secret_file.write_text("file-secret\n")
    from_file = build_upstream_credentials(
        {"mode": "inject", "value_file": str(secret_file), "header": "X-Key"}
    )
    assert isinstance(from_file, InjectedCredentials)
    assert await from_file.headers(anon, None, {}) == {"X-Key": "file-secret"}
    monkeypatch.delenv("UPSTREAM_SECRET")
    with pytest.raises(CredentialConfigError, match="UPSTREAM_SECRET is not set"):
        build_upstream_credentials({"mode": "inject", "value_env": "UPSTREAM_SECRET"})
    with pytest.raises(CredentialConfigError, match="cannot read"):
        build_upstream_credentials({"mode": "inject", "value_file": str(tmp_path / "absent")})


async def test_passthrough_takes_only_the_source_header() -> None:
    creds = build_upstream_credentials({"mode": "passthrough"})
    assert isinstance(creds, PassthroughCredentials) and creds.belongs_to_caller
    consumer = Consumer("c", forwarded_claims=(("X-Email", "c@x"),))
    incoming = {"authorization": "Bearer gateway-token", "x-upstream-token": "ghp_upstream"}
    assert await upstream_headers(creds, consumer, None, incoming) == {
        "X-Email": "c@x",
        "Authorization": "Bearer ghp_upstream",
    }
    already = {"X-Upstream-Token": "Bearer ghp_upstream"}
    assert await creds.headers(consumer, None, already) == {"Authorization": "Bearer ghp_upstream"}
    with pytest.raises(UpstreamCredentialError, match="X-Upstream-Token"):
        await creds.headers(consumer, None, {"authorization": "Bearer gateway-token"})
    kept = strip_gateway_credentials(
        {**incoming, "Accept": "x", "X-Api-Key": "k", "Cookie": "c"}, creds.source_headers
    )
    assert kept == {"Accept": "x"}
    # Authorization as the source: only from callers who identified with X-Api-Key
    from_auth = build_upstream_credentials({"mode": "passthrough", "source_header": "Authorization"})
    assert await from_auth.headers(consumer, None, {"authorization": "Bearer gho_x", "x-api-key": "k"}) == {
        "Authorization": "Bearer gho_x"}
    with pytest.raises(UpstreamCredentialError, match="X-Api-Key"):
        await from_auth.headers(consumer, None, {"authorization": "Bearer the-gateway-key"})


async def test_exchange_refuses_callers_without_an_oauth_token() -> None:
    async with httpx2.AsyncClient() as http:
        creds = build_upstream_credentials(
            {
                "mode": "exchange",
                "client_id": "gw",
                "client_secret": "s",
                "audience": "http://up",
                "token_endpoint": "http://127.0.0.1:9/token",
            },
            http=http,
        )
        assert creds.belongs_to_caller
        with pytest.raises(UpstreamCredentialError, match="OAuth"):
            await creds.headers(anonymous_consumer(), None, {})


# --- metadata and the gate ------------------------------------------------------------------


def test_metadata_urls() -> None:
    assert resource_metadata_url(RESOURCE) == "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
    assert metadata_urls("https://idp.example/realms/x") == [
        "https://idp.example/.well-known/oauth-authorization-server/realms/x",
        "https://idp.example/.well-known/openid-configuration/realms/x",
        "https://idp.example/realms/x/.well-known/openid-configuration",
    ]


async def test_upstream_metadata_names_the_upstream_authorization_server() -> None:
    routes = upstream_resource_routes("http://127.0.0.1:8000/mcp/github", ["https://github.com/login/oauth"])
    transport = httpx2.ASGITransport(app=Starlette(routes=routes))
    async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
        document = (await client.get("/.well-known/oauth-protected-resource/mcp/github")).json()
    assert document["authorization_servers"] == ["https://github.com/login/oauth"]
    assert document["resource"] == "http://127.0.0.1:8000/mcp/github"


def test_check_bind() -> None:
    check_bind(AuthConfig(), "127.0.0.1")
    check_bind(oauth_config(), "0.0.0.0")
    check_bind(AuthConfig(allow_insecure_bind=True), "0.0.0.0")
    with pytest.raises(ValueError, match="without authentication"):
        check_bind(AuthConfig(), "0.0.0.0")


async def echo_scope(request: Request) -> JSONResponse:
    consumer = request.scope[CONSUMER_KEY]
    return JSONResponse(
        {
            "name": consumer.name,
            "groups": list(consumer.groups),
            "has_token": ACCESS_TOKEN_KEY in request.scope,
        }
    )


APP = Starlette(routes=[Route("/mcp", echo_scope)])


async def through(gate: AuthGate, headers: dict[str, str] | None = None) -> httpx2.Response:
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=gate), base_url="http://127.0.0.1:8000"
    ) as c:
        return await c.get("/mcp", headers=headers or {})


async def test_gate_without_auth_names_the_anonymous_consumer() -> None:
    gate = AuthGate(APP, AuthConfig(static_groups={"anonymous": ["demo"]}), None, resource_metadata_url=None)
    assert (await through(gate)).json() == {"name": "anonymous", "groups": ["demo"], "has_token": False}


class StubVerifier:
    """A plain SDK TokenVerifier (no `check`): the gate must not trust it blindly."""

    def __init__(self, result: AccessToken | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error

    async def verify_token(self, token: str) -> AccessToken | None:
        if self.error:
            raise self.error
        return self.result


@pytest.mark.parametrize(
    ("verifier", "status", "reason"),
    [
        (StubVerifier(error=RuntimeError("boom")), 401, "token verification failed"),
        (StubVerifier(None), 401, "token refused"),
        (StubVerifier(token({"sub": "x"}, resource="http://elsewhere/mcp")), 401, "audience"),
        (StubVerifier(token({"sub": "x"}, expires_at=1)), 401, "expired"),
        (StubVerifier(token({"sub": "x"}, scopes=["read"])), 403, "required scope: admin"),
    ],
)
async def test_gate_refusals(verifier: StubVerifier, status: int, reason: str) -> None:
    gate = AuthGate(
        APP,
        oauth_config(required_scopes=["admin"]),
        verifier,
        resource_metadata_url=resource_metadata_url(RESOURCE),
    )
    response = await through(gate, {"Authorization": "Bearer some-token"})
    assert response.status_code == status
    assert reason in response.json()["error_description"]
    assert "some-token" not in response.text + response.headers["www-authenticate"]


async def test_gate_accepts_a_token_for_its_own_path() -> None:
    config = oauth_config()
    verifier = StubVerifier(token({"sub": "x", "groups": ["g"]}, resource=f"{RESOURCE}/time"))
    gate = GatewayAuth(config, verifier=verifier).protect(APP, "/mcp/time")
    assert isinstance(gate, AuthGate)
    assert gate.resource_metadata_url == "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp/time"
    response = await through(gate, {"Authorization": "Bearer t"})
    assert response.json() == {"name": "x", "groups": ["g"], "has_token": True}
    other = AuthGate(
        APP, config, verifier, resource_metadata_url=None
    )  # the /mcp gate refuses /mcp/time tokens
    assert (await through(other, {"Authorization": "Bearer t"})).status_code == 401


async def test_gate_requires_a_verifier_for_oauth() -> None:
    with pytest.raises(ValueError, match="verifier"):
        AuthGate(APP, oauth_config(), None, resource_metadata_url=None)


def test_jwt_shape() -> None:
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert not looks_like_jwt("opaque-token") and not looks_like_jwt("a.b.c.d.e")
