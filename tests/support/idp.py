"""A real OAuth authorization server for tests: `tests/idp/idp.mjs` (oidc-provider 9 on Node 22).

    with idp_server(tmp_path) as idp:           # or the session fixture `idp`
        token = idp.client_credentials(resource="http://127.0.0.1:8000/mcp")["access_token"]

Clients the script knows: `mcp-client` (JWT tokens, groups [engineering]), `mcp-client-opaque`
(opaque tokens, groups [support]), `mcp-client-short` (tokens live 1 s), `mcp-gateway` (the
gateway's own client: introspection, token exchange, client credentials) and `mcp-public`
(authorization code + PKCE, redirect http://127.0.0.1/callback). Users: alice, bob, anyone else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pytest
import uvicorn
from joserfc.jwk import RSAKey

from tests.support.processes import running, wait_for_http
from tests.support.tools import NPM_MODULES, ROOT, free_port, missing, node22, node22_env

IDP_SCRIPT = ROOT / "tests" / "idp" / "idp.mjs"
PUBLIC_REDIRECT = "http://127.0.0.1/callback"
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


def signing_jwks(*kids: str) -> dict[str, Any]:
    """A private JWK set of fresh RS256 keys (the first one signs), for IDP_JWKS_FILE."""
    keys = []
    for kid in kids or ("test-key",):
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": "RS256", "use": "sig"}, private=True)
        keys.append(key.as_dict(private=True))
    return {"keys": keys}


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Idp:
    """A running test IdP and the secrets of its confidential clients."""

    port: int
    client_secret: str
    gateway_secret: str
    log: Path
    jwks_file: Path | None = None
    issued: list[str] = field(default_factory=list)  # every token handed out, for leak checks
    # One client for every call: creating an httpx2 client costs ~80 ms here (SSL context).
    http: httpx2.Client = field(default_factory=lambda: httpx2.Client(timeout=10))

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def secrets(self) -> list[str]:
        """Every secret the tests used with this IdP: client secrets and issued tokens."""
        return [self.client_secret, self.gateway_secret, *self.issued]

    def secret_for(self, client_id: str) -> str:
        return self.gateway_secret if client_id == "mcp-gateway" else self.client_secret

    def _token_request(
        self, data: dict[str, str], client_id: str | None, endpoint: str | None = None
    ) -> dict[str, Any]:
        auth = (client_id, self.secret_for(client_id)) if client_id else None
        response = self.http.post(endpoint or self.token_endpoint, data=data, auth=auth)
        body = response.json()
        if response.status_code != 200:
            raise AssertionError(f"token request failed: {response.status_code} {body}")
        self.issued.extend(v for k, v in body.items() if k in ("access_token", "refresh_token", "id_token"))
        return body

    def client_credentials(
        self, client_id: str = "mcp-client", *, resource: str, scope: str | None = "mcp:tools"
    ) -> dict[str, Any]:
        """A token response from the client credentials grant for `resource`."""
        data = {"grant_type": "client_credentials", "resource": resource}
        if scope:
            data["scope"] = scope
        return self._token_request(data, client_id)

    def exchange(
        self, subject_token: str, *, audience: str, client_id: str = "mcp-gateway"
    ) -> dict[str, Any]:
        """A token exchange (RFC 8693) response, as the gateway would make it."""
        return self._token_request(
            {
                "grant_type": TOKEN_EXCHANGE,
                "subject_token": subject_token,
                "subject_token_type": ACCESS_TOKEN_TYPE,
                "audience": audience,
            },
            client_id,
        )

    def revoke(self, token: str, client_id: str) -> None:
        """Revoke a token as the client it was issued to."""
        response = self.http.post(
            f"{self.issuer}/token/revocation",
            data={"token": token},
            auth=(client_id, self.secret_for(client_id)),
        )
        assert response.status_code == 200, response.text

    def introspect(self, token: str) -> dict[str, Any]:
        response = self.http.post(
            f"{self.issuer}/token/introspection",
            data={"token": token},
            auth=("mcp-gateway", self.gateway_secret),
        )
        return response.json()

    def authorization_code(
        self,
        *,
        resource: str,
        account: str = "alice",
        scope: str = "openid offline_access mcp:tools",
        client_id: str = "mcp-public",
        redirect_uri: str = PUBLIC_REDIRECT,
        authorization_endpoint: str | None = None,
        token_endpoint: str | None = None,
    ) -> dict[str, Any]:
        """Authorization code + PKCE, driven headlessly through the dev login and consent forms."""
        verifier, challenge = pkce_pair()
        state = secrets.token_urlsafe(8)
        params = {
            "client_id": client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": scope,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "state": state,
            "resource": resource,
            "prompt": "consent",
        }
        with httpx2.Client(timeout=10, follow_redirects=False) as browser:
            first = browser.get(authorization_endpoint or f"{self.issuer}/auth", params=params)
            query = parse_qs(urlsplit(login(browser, first, redirect_uri, account=account)).query)
        assert query.get("state") == [state], query
        assert "code" in query, query
        return self._token_request(
            {
                "grant_type": "authorization_code",
                "code": query["code"][0],
                "code_verifier": verifier,
                "redirect_uri": redirect_uri,
                "client_id": client_id,
                "resource": resource,
            },
            None,
            endpoint=token_endpoint,
        )

    def refresh(self, refresh_token: str, *, resource: str, client_id: str = "mcp-public") -> dict[str, Any]:
        """A refresh token grant for a public client."""
        return self._token_request(
            {
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": client_id,
                "resource": resource,
            },
            None,
        )


def login(browser: httpx2.Client, response: httpx2.Response, redirect_uri: str, *, account: str = "alice") -> str:
    """What a user's browser does from an authorization request's first answer (`response`): the dev
    login and consent forms, posted headlessly. Returns the redirect URL with the code (or an error)."""
    for _ in range(10):
        location = response.headers.get("location", "")
        if location.startswith(redirect_uri):
            return location
        assert response.status_code in (302, 303), f"unexpected {response.status_code}: {response.text[:300]}"
        url = urljoin(str(response.url), location)
        page = browser.get(url)
        if page.status_code in (302, 303):
            response = page
            continue
        # A dev interaction form: post the login, then the consent.
        prompt = re.search(r'name="prompt" value="(\w+)"', page.text)
        assert prompt, f"no interaction form at {url}: {page.text[:300]}"
        form = {"prompt": prompt.group(1)}
        if form["prompt"] == "login":
            form.update(login=account, password="any")
        response = browser.post(url, data=form)
    raise AssertionError("authorization flow did not reach the redirect URI")


def browse_login(authorization_url: str, redirect_uri: str, *, account: str = "alice") -> str:
    """A headless browser opening an authorization URL and logging in; returns the redirect URL."""
    with httpx2.Client(timeout=10, follow_redirects=False) as browser:
        return login(browser, browser.get(authorization_url), redirect_uri, account=account)


def _require_components() -> str:
    node = node22()
    if not (NPM_MODULES / "oidc-provider" / "lib" / "index.js").exists():
        missing("npm package oidc-provider")
    return node


@contextlib.contextmanager
def idp_server(
    workdir: Path,
    *,
    port: int | None = None,
    jwks: dict[str, Any] | None = None,
    client_secret: str | None = None,
    gateway_secret: str | None = None,
    cimd: tuple[str, str] | None = None,
) -> Iterator[Idp]:
    """Run the test IdP on 127.0.0.1 for the duration of the block (a free port unless given).

    `cimd`: (https origin of Client ID Metadata Documents, http://127.0.0.1:PORT that serves them).
    """
    node = _require_components()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    idp = Idp(
        port=port,
        client_secret=client_secret or "cs-" + secrets.token_urlsafe(24),
        gateway_secret=gateway_secret or "gs-" + secrets.token_urlsafe(24),
        log=workdir / f"idp-{port}.log",
    )
    env = {
        "IDP_NODE_MODULES": str(NPM_MODULES),
        "IDP_CLIENT_SECRET": idp.client_secret,
        "IDP_GATEWAY_SECRET": idp.gateway_secret,
    }
    if cimd is not None:
        env["IDP_CIMD_ORIGIN"], env["IDP_CIMD_SERVE"] = cimd
    if jwks is not None:
        idp.jwks_file = workdir / f"jwks-{port}-{secrets.token_hex(4)}.json"
        idp.jwks_file.write_text(json.dumps(jwks))
        env["IDP_JWKS_FILE"] = str(idp.jwks_file)
    with running([node, str(IDP_SCRIPT), str(port)], env=node22_env(env), log=idp.log) as proc:
        try:
            wait_for_http(f"{idp.issuer}/.well-known/openid-configuration", timeout=20, proc=proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{exc}\n--- idp log ---\n{idp.log.read_text(errors='replace')}") from None
        try:
            yield idp
        finally:
            idp.http.close()


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Idp]:
    """One test IdP for the whole session, signing with a key set kept in `idp.jwks_file`."""
    with idp_server(tmp_path_factory.mktemp("idp"), jwks=signing_jwks("session-key")) as server:
        yield server


@contextlib.contextmanager
def serve_asgi(app: Any, *, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a background thread; yields its base URL.

    A thread, not a process, so tests can hand the app live Python objects (verifiers, recorders).
    """
    port = port or free_port()
    # log_config=None: uvicorn's records propagate to the root logger, where tests can inspect them.
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
