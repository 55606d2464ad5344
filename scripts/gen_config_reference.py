"""Generate docs/configuration.md from the config's pydantic models: every key, its type, default and
description, so the reference cannot drift from the code.

    python scripts/gen_config_reference.py          # rewrite docs/configuration.md
    python scripts/gen_config_reference.py --check  # exit 1 when the committed file is out of date

Descriptions come from, in order: the field's `description`, the `#` comment lines right above the
field in its model's source, or `NOTES` below (for keys whose model documents them nowhere else).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, BeforeValidator, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mcp_hub.config import admin as admin_models  # noqa: E402
from mcp_hub.config import auth as auth_models  # noqa: E402
from mcp_hub.config import catalog as catalog_models  # noqa: E402
from mcp_hub.config import models as gateway_models  # noqa: E402
from mcp_hub.config import openapi as openapi_models  # noqa: E402
from mcp_hub.config import policy as policy_models  # noqa: E402
from mcp_hub.config import tracing as tracing_models  # noqa: E402

OUTPUT = ROOT / "docs" / "configuration.md"
CONNECTORS = ROOT / "src" / "mcp_hub" / "connectors"

# Keys whose models say nothing about them (no description, no comment): "Model.field" -> text.
NOTES: dict[str, str] = {
    "GatewayConfig.listen": "Where and how the gateway serves HTTP.",
    "GatewayConfig.upstreams": "MCP servers behind the gateway, by name (letters, digits, `_`, `-`; at most 48).",
    "GatewayConfig.openapi": "REST APIs described by OpenAPI documents, by name; each becomes an upstream of tools.",
    "GatewayConfig.servers": "Virtual servers: more paths, each exposing a chosen set of upstreams. `/mcp` "
    "always exists and exposes every upstream, prefixed, unless an entry for `/mcp` says otherwise.",
    "GatewayConfig.auth": "How callers authenticate and how their tokens become consumers and groups.",
    "ListenConfig.host": "Address to bind. Anything but loopback needs `auth` (or `auth.allow_insecure_bind`).",
    "ListenConfig.port": "TCP port (`serve --port` overrides it).",
    "ListenConfig.json_response": "Answer Streamable HTTP requests with JSON bodies instead of SSE streams.",
    "ListenConfig.separator": "Between prefix and name in exposed names: `time__get_current_time`.",
    "ListenConfig.max_request_body": "Largest request body accepted, in bytes.",
    "ListenConfig.allowed_origins": "Origin headers accepted (DNS-rebinding protection); loopback origins by default.",
    "StdioUpstreamConfig.transport": "The MCP transport.",
    "StdioUpstreamConfig.command": "Program to start (found on PATH).",
    "StdioUpstreamConfig.args": "Its arguments.",
    "StdioUpstreamConfig.env": "Extra environment variables for it (added to the gateway's).",
    "StdioUpstreamConfig.cwd": "Working folder (default: the gateway's).",
    "SseUpstreamConfig.transport": "The MCP transport.",
    "SseUpstreamConfig.url": "The server's SSE endpoint, e.g. `http://127.0.0.1:9100/sse`.",
    "SseUpstreamConfig.headers": "Headers sent on every request (use `${VAR}` for secrets, or `credentials`).",
    "StreamableHttpUpstreamConfig.transport": "The MCP transport.",
    "StreamableHttpUpstreamConfig.url": "The server's MCP endpoint, e.g. `https://api.example.com/mcp`.",
    "StreamableHttpUpstreamConfig.headers": "Headers sent on every request (use `${VAR}` for secrets, or `credentials`).",
    "ServerRoute.path": "URL path of the virtual server, e.g. `/mcp/time`.",
    "AuthConfig.mode": "`none`, `oauth` (bearer tokens from your authorization server), `api_key` (keys in "
    "`api_keys`), or a list of both.",
    "AuthConfig.resource": "This gateway's URL as an OAuth protected resource (tokens must be issued for it).",
    "AuthConfig.authorization_servers": "Issuer URLs of the authorization servers whose tokens are accepted "
    "(metadata and JWKS are discovered from the first).",
    "AuthConfig.consumer_claim": "Claim that names the consumer.",
    "AuthConfig.groups_claim": "Claim that lists the consumer's groups (a list, or a space-separated string); "
    "a dotted path reaches into objects (`realm_access.roles`).",
    "AuthConfig.api_keys": "API keys callers may present (`Authorization: Bearer` or `X-Api-Key`).",
    "AuthConfig.jwks_uri": "JWKS URL for JWT access tokens (default: from the authorization server's metadata).",
    "AuthConfig.introspection": "RFC 7662 introspection for opaque access tokens.",
    "AuthConfig.issuer": "Expected `iss` of tokens (default: the first authorization server).",
    "AuthConfig.required_scopes": "Scopes every token must carry (403 `insufficient_scope` otherwise).",
    "AuthConfig.leeway_s": "Clock skew tolerated on `exp` and `nbf`, in seconds.",
    "AuthConfig.insecure_relaxed_audience": "Accept tokens not issued for `resource` (do not, unless your IdP "
    "cannot set an audience).",
    "AuthConfig.static_groups": "Groups added to named consumers, whatever their token says "
    "(`anonymous` is the consumer when auth is off).",
    "AuthConfig.claim_to_header": "Token claims forwarded to upstreams as request headers: claim -> header name.",
    "AuthConfig.allow_insecure_bind": "Allow listening on a non-loopback address with auth off.",
    "AuthConfig.http_timeout_s": "Timeout of requests to the authorization server, in seconds.",
    "ApiKeyConfig.consumer": "The consumer this key stands for.",
    "ApiKeyConfig.groups": "Its groups.",
    "ApiKeyConfig.sha256": "SHA-256 hex digest of the key (`mcp-hub keys new` prints both); never the key itself.",
    "IntrospectionConfig.endpoint": "Introspection endpoint (default: from the authorization server's metadata).",
    "IntrospectionConfig.client_id": "The gateway's client at the authorization server.",
    "IntrospectionConfig.client_secret": "Its secret (write `${VAR}`).",
    "IntrospectionConfig.auth_method": "How the gateway authenticates to the endpoint.",
    "IntrospectionConfig.cache_size": "Most introspection results kept.",
    "InjectCredentialConfig.mode": "The gateway sends its own credential.",
    "InjectCredentialConfig.header": "Header that carries it upstream.",
    "InjectCredentialConfig.value_env": "Environment variable holding the credential.",
    "InjectCredentialConfig.value_file": "File holding the credential.",
    "InjectCredentialConfig.format": "How the header value is built; `{}` is the credential "
    "(default `Bearer {}` for Authorization, `{}` otherwise).",
    "PassthroughCredentialConfig.mode": "The caller's own credential is forwarded.",
    "PassthroughCredentialConfig.header": "Header that carries it upstream.",
    "PassthroughCredentialConfig.source_header": "Request header the caller puts its upstream credential in.",
    "PassthroughCredentialConfig.format": "How the header value is built; `{}` is the credential.",
    "ExchangeCredentialConfig.mode": "RFC 8693 token exchange of the caller's token.",
    "ExchangeCredentialConfig.header": "Header that carries the exchanged token upstream.",
    "ExchangeCredentialConfig.token_endpoint": "Token endpoint (default: discovered).",
    "ExchangeCredentialConfig.client_id": "The gateway's client at the authorization server.",
    "ExchangeCredentialConfig.client_secret": "Its secret (write `${VAR}`).",
    "ExchangeCredentialConfig.audience": "Audience of the token asked for.",
    "ExchangeCredentialConfig.resource": "Resource indicator (RFC 8707) of the token asked for.",
    "ExchangeCredentialConfig.scopes": "Scopes asked for.",
    "ExchangeCredentialConfig.auth_method": "How the gateway authenticates to the token endpoint.",
    "ClientCredentialsConfig.mode": "The gateway's own token from the client credentials grant.",
    "ClientCredentialsConfig.header": "Header that carries the token upstream.",
    "ClientCredentialsConfig.token_endpoint": "Token endpoint (default: discovered).",
    "ClientCredentialsConfig.authorization_server": "Where to discover the token endpoint.",
    "ClientCredentialsConfig.client_id": "The gateway's client at the authorization server.",
    "ClientCredentialsConfig.client_secret": "Its secret (write `${VAR}`).",
    "ClientCredentialsConfig.scopes": "Scopes asked for.",
    "ClientCredentialsConfig.audience": "Audience of the token asked for.",
    "ClientCredentialsConfig.resource": "Resource indicator (RFC 8707) of the token asked for.",
    "ClientCredentialsConfig.auth_method": "How the gateway authenticates to the token endpoint.",
    "PolicyConfig.rate_limits": "Rate limits every consumer gets, each its own (per: consumer).",
    "AuthConfig.jwks_max_age_s": "Cached JWKS keys are refetched after this many seconds.",
    "RateLimitRule.strategy": "How calls are counted in the window (`moving-window` is exact).",
    "PolicyConfig.default_acl": "What happens to names no rule mentions: `allow` or `deny`.",
    "PolicyConfig.groups": "Rules per group: what members see and call, and their budgets and rate limits.",
    "PolicyConfig.consumers": "Limits of one consumer (by name), on top of its groups'.",
    "PolicyConfig.cost_unit": "Currency (or unit) of `costs`, as shown in metrics.",
    "PolicyConfig.token_counter": "How tokens are counted: `estimate` (~4 characters a token) or `bytes`.",
    "PolicyConfig.storage": "Where budget and rate-limit counters live: `memory://`, or `redis://host:port` "
    "(also `rediss://`, `redis+unix://`) so replicas share them.",
    "PolicyConfig.metrics": "Prometheus label options.",
    "AccessRules.allow": "Globs of exposed names (or resource URIs) the group may see and use.",
    "AccessRules.deny": "Globs the group may not; a deny in any of a consumer's groups wins.",
    "GroupPolicy.tools": "Tool rules.",
    "GroupPolicy.resources": "Resource rules (globs over exposed resource URIs).",
    "GroupPolicy.prompts": "Prompt rules.",
    "GroupPolicy.budgets": "Token budgets (shared by the group unless `per: consumer`).",
    "GroupPolicy.rate_limits": "Request rate limits (each member its own unless `per: group`).",
    "ConsumerPolicy.budgets": "Token budgets of this consumer.",
    "ConsumerPolicy.rate_limits": "Request rate limits of this consumer.",
    "BudgetRule.tokens": "Tokens allowed per window.",
    "BudgetRule.window": "Window length.",
    "BudgetRule.count": "Which tokens count: `input`, `output` or `total`.",
    "RateLimitRule.requests": "Calls allowed per window.",
    "RateLimitRule.window": "Window length.",
    "CostRule.per_call": "Price of each call.",
    "CostRule.per_1k_input_tokens": "Price per 1000 input tokens.",
    "CostRule.per_1k_output_tokens": "Price per 1000 output tokens.",
    "MetricsOptions.enabled": "Serve Prometheus metrics at `/metrics`.",
    "OpenAPIUpstreamConfig.include": "Keep only these operations.",
    "OpenAPIUpstreamConfig.exclude": "Drop these operations.",
    "OpenAPIUpstreamConfig.auth": "The API's credential, which the gateway adds to calls.",
    "OperationSelector.operations": "operationIds (or generated tool names).",
    "OperationSelector.tags": "Operation tags.",
    "OperationSelector.paths": "Path globs, optionally after a method: `GET /pets/*`; `*` is one segment, `**` any.",
    "ApiKeyAuth.type": "An API key.",
    "ApiKeyAuth.in": "Where it goes: `header`, `query` or `cookie` (default: from the document).",
    "ApiKeyAuth.name": "Header, parameter or cookie name (default: from the document).",
    "ApiKeyAuth.value": "The key (better: `value_env` or `value_file`).",
    "ApiKeyAuth.value_env": "Environment variable holding the key.",
    "ApiKeyAuth.value_file": "File holding the key (relative to the config file).",
    "BearerAuth.type": "A static bearer token.",
    "BearerAuth.scheme": "securitySchemes entry of the document to match.",
    "BearerAuth.token": "The token (better: `token_env` or `token_file`).",
    "BearerAuth.token_env": "Environment variable holding the token.",
    "BearerAuth.token_file": "File holding the token.",
    "BasicAuth.type": "HTTP Basic authentication.",
    "BasicAuth.scheme": "securitySchemes entry of the document to match.",
    "BasicAuth.username": "User name.",
    "BasicAuth.password": "Password (better: `password_env` or `password_file`).",
    "BasicAuth.password_env": "Environment variable holding the password.",
    "BasicAuth.password_file": "File holding the password.",
    "OAuth2ClientCredentialsAuth.type": "OAuth 2.0 client credentials grant.",
    "OAuth2ClientCredentialsAuth.scheme": "securitySchemes entry of the document to match.",
    "OAuth2ClientCredentialsAuth.token_url": "Token endpoint (default: from the document's oauth2 scheme).",
    "OAuth2ClientCredentialsAuth.client_id": "Client id.",
    "OAuth2ClientCredentialsAuth.client_secret": "Client secret (better: `client_secret_env` or `client_secret_file`).",
    "OAuth2ClientCredentialsAuth.client_secret_env": "Environment variable holding the client secret.",
    "OAuth2ClientCredentialsAuth.client_secret_file": "File holding the client secret.",
    "OAuth2ClientCredentialsAuth.scopes": "Scopes asked for.",
}


@dataclass
class Section:
    """One table of keys: a heading (key path), the model, and how to reach it."""

    path: str
    model: type[BaseModel] | None  # None: an overview without a table
    intro: str = ""
    skip: set[str] = field(default_factory=set)
    extra: list[tuple[str, type[BaseModel]]] = field(default_factory=list)  # (heading, model) of merged-in keys


CREDENTIAL_MODELS = [auth_models.InjectCredentialConfig, auth_models.PassthroughCredentialConfig,
                     auth_models.ExchangeCredentialConfig, auth_models.ClientCredentialsConfig]
OPENAPI_AUTH_MODELS = [openapi_models.ApiKeyAuth, openapi_models.BearerAuth, openapi_models.BasicAuth,
                       openapi_models.OAuth2ClientCredentialsAuth]

# dict-typed keys whose values another model validates: (model, field) -> what to link to.
LINKS: dict[tuple[type[BaseModel], str], str] = {
    (gateway_models.GatewayConfig, "auth"): "[auth](#auth)",
    (gateway_models.GatewayConfig, "admin"): "[admin](#admin)",
    (gateway_models.GatewayConfig, "openapi"): "map of name to [openapi entry](#openapi-name)",
    (gateway_models.GatewayConfig, "upstreams"): "map of name to [stdio](#upstreams-name-stdio), "
    "[sse](#upstreams-name-sse) or [streamable-http](#upstreams-name-streamable-http) upstream",
    (gateway_models.StdioUpstreamConfig, "credentials"): "[credentials](#upstreams-name-credentials)",
    (gateway_models.SseUpstreamConfig, "credentials"): "[credentials](#upstreams-name-credentials)",
    (gateway_models.StreamableHttpUpstreamConfig, "credentials"): "[credentials](#upstreams-name-credentials)",
}


def sections() -> list[Section]:
    g, a, p, o = gateway_models, auth_models, policy_models, openapi_models
    top = Section("Top level", g.GatewayConfig, skip={"policy"}, extra=[("policy", p.PolicyConfig)])
    out = [
        top,
        Section("listen", g.ListenConfig),
        Section("upstreams.<name> (stdio)", g.StdioUpstreamConfig),
        Section("upstreams.<name> (sse)", g.SseUpstreamConfig),
        Section("upstreams.<name> (streamable-http)", g.StreamableHttpUpstreamConfig),
        Section("upstreams.<name>.credentials", None,
                "One of four `mode`s, sent as a request header to an HTTP upstream. `inject` and `client_credentials` "
                "are the gateway's own, the same for every caller. Caller-owned credentials (`passthrough`, `exchange`) make the gateway "
                "keep one upstream session per consumer, so they need an HTTP upstream (`sse` or "
                "`streamable-http`); a stdio upstream refuses them at start. `mcp-hub check` reads `value_env` and "
                "`value_file` as `serve` does: an unset variable or unreadable file is a config error."),
        *[Section(f"upstreams.<name>.credentials (mode: {m.model_fields['mode'].annotation.__args__[0]})", m)
          for m in CREDENTIAL_MODELS],
        Section("servers[]", g.ServerRoute),
        Section("openapi.<name>", o.OpenAPIUpstreamConfig),
        Section("openapi.<name>.include / exclude", o.OperationSelector),
        *[Section(f"openapi.<name>.auth (type: {m.model_fields['type'].annotation.__args__[0]})", m)
          for m in OPENAPI_AUTH_MODELS],
        Section("auth", a.AuthConfig),
        Section("auth.api_keys[]", a.ApiKeyConfig),
        Section("auth.introspection", a.IntrospectionConfig),
        Section("groups.<name>", p.GroupPolicy),
        Section("groups.<name>.tools / resources / prompts", p.AccessRules),
        Section("budgets[]", p.BudgetRule, "In `budgets`, `groups.<name>.budgets` and `consumers.<name>.budgets`."),
        Section("rate_limits[]", p.RateLimitRule,
                "In `rate_limits`, `groups.<name>.rate_limits` and `consumers.<name>.rate_limits`."),
        Section("consumers.<name>", p.ConsumerPolicy),
        Section("costs.<glob>", p.CostRule),
        Section("metrics", p.MetricsOptions),
        Section("admin", admin_models.AdminConfig),
        Section("admin.keys[]", admin_models.AdminKey),
        Section("tracing", tracing_models.TracingConfig),
        Section("catalog", catalog_models.CatalogConfig,
                "At the top level (every route), in a `servers:` entry (that route) and in `groups.<name>` (that "
                "group's callers); docs/catalog.md says how the levels combine."),
        Section("catalog.meta_tools", catalog_models.MetaToolNames),
    ]
    return out


def _html(text: str) -> str:
    # `<name>` would be read as an HTML tag and vanish from headings and link text.
    return text.replace("<", "&lt;").replace(">", "&gt;")


def anchor(heading: str) -> str:
    """A stable anchor for a heading: `upstreams.<name> (sse)` -> `upstreams-name-sse`."""
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


# --- descriptions -----------------------------------------------------------------------------


def _comment_above(model: type[BaseModel], name: str) -> str:
    for cls in model.__mro__:
        if name not in getattr(cls, "__annotations__", {}):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(cls))
        except (OSError, TypeError):
            return ""
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name:
                comments: list[str] = []
                i = node.lineno - 2
                while i >= 0 and lines[i].strip().startswith("#"):
                    comments.insert(0, lines[i].strip().lstrip("#").strip())
                    i -= 1
                return " ".join(comments)
        return ""
    return ""


def describe(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    key = f"{model.__name__}.{info.alias or name}"
    text = info.description or _comment_above(model, name) or NOTES.get(key, "")
    return text.strip()


# --- types and defaults -----------------------------------------------------------------------

SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", SecretStr: "secret",
           Any: "any", type(None): "null"}


def render_type(annotation: Any, metadata: Iterable[Any] = ()) -> str:
    """Words for a type: `list of string`, `one of `a`, `b``, links for models."""
    for item in metadata:
        if isinstance(item, BeforeValidator):
            if getattr(item.func, "__name__", "") == "parse_window":
                return "duration (`10 seconds`, `1 hour`, or seconds)"
            if typing.get_origin(annotation) is list:
                return "glob or list of globs"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return render_type(args[0], args[1:])
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        if all(inspect.isclass(a) and issubclass(a, BaseModel) for a in parts) and len(parts) > 1:
            return "one of " + ", ".join(render_type(a) for a in parts)
        return " or ".join(render_type(a) for a in parts)
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args) if len(args) > 1 else f"`{args[0]}`"
    if origin is list:
        return f"list of {render_type(args[0]) if args else 'any'}"
    if origin is dict:
        key = "name" if typing.get_origin(args[0]) is typing.Annotated else render_type(args[0])
        return f"map of {key} to {render_type(args[1])}"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{MODEL_ANCHORS.get(annotation, anchor(annotation.__name__))})"
    return SCALARS.get(annotation, getattr(annotation, "__name__", str(annotation)))


def render_default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "defaults below"
    else:
        value = info.default
    if value is None or value is PydanticUndefined:
        return "—"
    return f"`{json.dumps(value, default=str)}`"


MODEL_ANCHORS: dict[type[BaseModel], str] = {}


def _prose(text: str) -> str:
    """Escape `<` and `>` outside code spans (`time__<tool>` must not become an HTML tag)."""
    parts = text.split("`")
    return "`".join(_html(part) if i % 2 == 0 else part for i, part in enumerate(parts))


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, kind, default, text in rows:
        cells = [f"`{key}`", kind, default, _prose(text)]
        out.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return out


def rows_of(model: type[BaseModel], skip: set[str], missing: list[str]) -> list[tuple[str, str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        if name in skip or info.exclude:
            continue
        kind = LINKS.get((model, name)) or render_type(info.annotation, info.metadata)
        text = describe(model, name, info)
        if not text:
            missing.append(f"{model.__name__}.{info.alias or name}")
        rows.append((info.alias or name, kind, render_default(info), text))
    return rows


def _docstring(model: type[BaseModel]) -> str:
    doc = inspect.cleandoc(model.__dict__.get("__doc__") or "")  # its own docstring, not BaseModel's
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def connectors() -> list[str]:
    out = ["| Name | What it is |", "|---|---|"]
    for path in sorted(CONNECTORS.glob("*.yaml")):
        first: list[str] = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if not text:
                break
            first.append(text)
        out.append(f"| `{path.stem}` | {_prose(' '.join(first)).replace('|', '/')} |")
    return out


def generate() -> tuple[str, list[str]]:
    """The whole reference, and keys that have no description anywhere."""
    plan = sections()
    for section in plan:
        if section.model is not None:
            MODEL_ANCHORS.setdefault(section.model, anchor(section.path))
    missing: list[str] = []
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen_config_reference.py from the config models; do not edit by hand. -->",
        "",
        "Generated from the pydantic models that validate the config (`python scripts/gen_config_reference.py`;",
        "a test fails when this file is out of date). A config is one YAML file; `${VAR}` and",
        "`${VAR:-default}` in any string are taken from the environment. Unknown keys are errors that name",
        "the key path and suggest the closest known key; a key given twice in one mapping is an error too (YAML",
        "would keep the second silently). No error shows the value it refused, so a secret under a misspelt key",
        "is never printed. Policy keys (`default_acl`, `groups`, `budgets`, ...) sit at the top level.",
        "See [policy.md](policy.md) for how ACLs and budgets decide.",
        "",
        *[f"- [{_html(s.path)}](#{anchor(s.path)})" for s in plan],
        "- [connectors](#connectors)",
        "",
    ]
    for section in plan:
        lines += [f'<a id="{anchor(section.path)}"></a>', "", f"## {_html(section.path)}", ""]
        intro = section.intro or (_docstring(section.model) if section.model else "")
        if intro:
            lines += [_prose(intro), ""]
        if section.model is None:
            continue
        rows = rows_of(section.model, section.skip, missing)
        for _, model in section.extra:
            rows += rows_of(model, set(), missing)
        lines += [*table(rows), ""]
    lines += ['<a id="connectors"></a>', "", "## Connectors", "",
              "Ready-made upstream definitions shipped inside the package (`src/mcp_hub/connectors/`, also",
              "`connectors/` in a checkout), so `include: [name, ...]` works from any install; the config's own",
              "entries win over an included one of the same name. A name ending in `.yaml` is a file instead,",
              "relative to the config's folder.", "", *connectors(), ""]
    return "\n".join(lines), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/configuration.md is out of date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text, missing = generate()
    for key in missing:
        print(f"note: {key} has no description (add one to the model, or to NOTES)", file=sys.stderr)
    unused = sorted(set(NOTES) - _all_keys())
    for key in unused:
        print(f"note: NOTES[{key!r}] matches no config key", file=sys.stderr)
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date: run python scripts/gen_config_reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _all_keys() -> set[str]:
    keys: set[str] = set()
    for section in sections():
        for model in [section.model, *(m for _, m in section.extra)]:
            if model is None:
                continue
            keys |= {f"{model.__name__}.{i.alias or n}" for n, i in model.model_fields.items()}
    return keys


if __name__ == "__main__":
    sys.exit(main())
