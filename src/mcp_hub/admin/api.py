"""The admin API: upstream states, what a group sees, why a tool is allowed, runtime OpenAPI
registrations and config reloads, under `admin.path` (default `/admin`).

    GET    /admin/upstreams                       states of every upstream
    GET    /admin/catalog?group=G                 tools, prompts, resources a consumer sees, per route
    GET    /admin/catalog?consumer=C&groups=G1,G2
    GET    /admin/explain?tool=NAME&groups=G      the ACL decision and the rule that made it
    GET    /admin/openapi                         runtime registrations
    POST   /admin/openapi                         register a REST API from an OpenAPI document
    DELETE /admin/openapi/{name}                  drop a registration
    POST   /admin/reload                          reload the config file (and the registrations)

Every request needs `Authorization: Bearer <credential>`: an admin key (`admin.keys`, stored as
SHA-256 digests like API keys), or a credential the gateway's own auth accepts whose consumer is in
one of `admin.groups`. No credential or an unknown one: 401; a valid caller who is not an admin: 403.
The catalog and explain answers are computed by the same functions the CLI uses offline.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from pathlib import Path
from typing import Any

import anyio
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, Router
from starlette.types import Receive, Scope, Send

from mcp_hub.admin.credentials import bearer_credential, matching_key
from mcp_hub.admin.registry import OpenAPIRegistry, Registration, RegistryError
from mcp_hub.auth.identity import Consumer
from mcp_hub.config import AdminConfig, ConfigError, OpenAPIUpstreamConfig, format_validation_error
from mcp_hub.core.hub import ALL_ROUTE, CONSUMER_SCOPE_KEY, Gateway
from mcp_hub.core.reload import reload_checked
from mcp_hub.policy.limits import limits_for
from mcp_hub.upstreams.openapi.urls import URLRefused, check_host
from mcp_hub.upstreams.openapi.urls import check_url as allowed_url

logger = logging.getLogger(__name__)

ADMIN_SCOPE_KEY = "mcp_hub.admin"
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
KINDS = ("tool", "prompt", "resource")


class AdminError(Exception):
    """An admin request that cannot be served: an HTTP status, a short code and a clear message."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "message": self.message, **self.extra}, status_code=self.status)


# --- what a consumer sees, and why (shared with the CLI) ----------------------------------------


def consumer_for(gateway: Gateway, name: str | None, groups: list[str]) -> Consumer:
    """The consumer a query stands for: the gateway's default (unauthenticated) consumer when neither a
    name nor groups are given; `static_groups` configured for the name are merged in, as for a real caller."""
    if name is None and not groups:
        return gateway.default_consumer
    static: list[str] = []
    if name is not None:
        static = list(gateway.config.auth.static_groups.get(name, ()))
    merged = tuple(dict.fromkeys([*groups, *static]))
    return Consumer(name=name or "anonymous", groups=merged)


def split_groups(*values: str | None) -> list[str]:
    """Groups from `G1,G2` strings (empty parts dropped)."""
    out: list[str] = []
    for value in values:
        out += [g.strip() for g in (value or "").split(",") if g.strip()]
    return out


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def catalog_for(gateway: Gateway, consumer: Consumer, route: str | None = None) -> dict[str, Any]:
    """The tools, prompts and resources `consumer` sees on each route (or on `route`), with totals."""
    paths = [route] if route else list(gateway.routes)
    out: dict[str, Any] = {
        "consumer": {"name": consumer.name, "groups": list(consumer.groups)},
        "routes": {},
        "upstreams": {name: up.state.value for name, up in gateway.upstreams.items()},
    }
    for path in paths:
        found = gateway.routes.get(path)
        if found is None:
            raise AdminError(404, "unknown_route", f"no route {path!r}; routes: {', '.join(gateway.routes)}")
        view = found.view
        tools = gateway.visible_tools(view, consumer)
        prompts = gateway.visible_prompts(view, consumer)
        resources = gateway.visible_resources(view, consumer)
        # What the catalog costs these callers (core/economy.py): per tool, in all, and what tools/list gives them.
        economy = gateway.service.economy.report(found, consumer)
        per_tool = economy.pop("tool_tokens")
        out["routes"][path] = {
            "tools": [
                {"name": t.name, "upstream": view.tools[t.name][1].upstream, "original": view.tools[t.name][1].original,
                 "description": _first_line(t.description), "tokens": per_tool.get(t.name, 0)}
                for t in tools
            ],
            "catalog": economy,
            "prompts": [
                {"name": p.name, "upstream": view.prompts[p.name][1].upstream, "description": _first_line(p.description)}
                for p in prompts
            ],
            "resources": [
                {"uri": str(r.uri), "name": r.name, "upstream": view.resources[str(r.uri)][1].upstream}
                for r in resources
            ],
            "totals": {"tools": len(view.tool_list), "prompts": len(view.prompt_list),
                       "resources": len(view.resource_list)},
        }
    return out


def explain_for(gateway: Gateway, consumer: Consumer, kind: str, name: str, route: str | None = None) -> dict[str, Any]:
    """Whether `consumer` may see and use the tool (prompt, resource) `name` on `route`, why, and which
    limits would count its calls. A name that does not exist is reported as such, with close matches."""
    if kind not in KINDS:
        raise AdminError(400, "bad_request", f"kind must be one of {', '.join(KINDS)}")
    path = route or "/mcp"
    found = gateway.routes.get(path)
    if found is None:
        raise AdminError(404, "unknown_route", f"no route {path!r}; routes: {', '.join(gateway.routes)}")
    view = found.view
    entries = {"tool": view.tools, "prompt": view.prompts, "resource": view.resources}[kind]
    resolve = {"tool": view.resolve_tool, "prompt": view.resolve_prompt, "resource": view.resolve_uri}[kind]
    target = resolve(name)
    out: dict[str, Any] = {
        "kind": kind, "name": name, "route": path,
        "consumer": {"name": consumer.name, "groups": list(consumer.groups)},
        "exists": target is not None,
    }
    if target is None:
        similar = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(similar)}?" if similar else ""
        out.update(allowed=False, upstream=None, rule=None,
                   reason=f"no {kind} named {name!r} on {path} ({len(entries)} {kind}s there){hint}",
                   similar=similar)
        return out
    # The same decision the request service takes for a request of this target.
    decision = gateway.access.decide(consumer, target.acl_kind, target.name, target.upstream)
    out.update(upstream=target.upstream, original=target.original, allowed=decision.allowed,
               reason=decision.reason, rule=decision.rule)
    if kind == "tool":
        out["limits"] = limits_for(gateway.config.policy, consumer, name, target.upstream)
    return out


def upstreams_report(gateway: Gateway) -> dict[str, Any]:
    """Each upstream's health, where it was defined, and the routes that expose it."""
    health = gateway.health()
    registry = registry_of(gateway)
    registered = set(registry.registrations) if registry is not None else set()
    for name, entry in health["upstreams"].items():
        entry["source"] = "registered" if name in registered and name not in _config_names(gateway) else "config"
        entry["routes"] = [path for path, route in gateway.routes.items() if name in route.upstreams]
    return health


def _config_names(gateway: Gateway) -> set[str]:
    return set(gateway.config.upstreams) | set(gateway.config.openapi)


def registry_of(gateway: Gateway) -> OpenAPIRegistry | None:
    """The runtime OpenAPI registry `runtime.build_gateway` attached, if any."""
    return getattr(gateway, "openapi_registry", None)


# --- runtime OpenAPI registration ----------------------------------------------------------------


def refusal(exc: URLRefused) -> AdminError:
    """The admin API's answer to a URL the allow-list rule refused: the key and the reason, no URL."""
    return AdminError(exc.status, exc.code, str(exc))


async def check_url(url: str, prefixes: list[str], what: str) -> str:
    """`url` in normalized form (the one to store and request) if the allow-list rule puts it under one
    of `prefixes` (see `upstreams.openapi.urls`); a host name that resolves to a loopback or link-local
    address is refused unless the URL or the matching prefix names such a host literally."""
    listed = "admin.allowed_spec_urls" if what == "spec" else "admin.allowed_base_urls"
    try:
        checked = allowed_url(url, prefixes, what, listed=listed)
        await check_host(checked, prefixes, what, listed=listed)
    except URLRefused as exc:
        raise refusal(exc) from None
    return checked


def _check_spec_path(spec: str, config: AdminConfig, config_path: str | None) -> None:
    base = Path(config_path).parent if config_path else Path.cwd()
    dirs = [(base / d).resolve() for d in config.spec_dirs]
    if not dirs:
        raise AdminError(403, "path_not_allowed",
                         "documents on the gateway host are refused unless admin.spec_dirs lists their folder; "
                         "send a URL or the document itself")
    target = (base / spec).resolve()
    if not any(target.is_relative_to(d) for d in dirs):
        raise AdminError(403, "path_not_allowed", "the document is not in any of admin.spec_dirs")
    if not target.is_file():
        raise AdminError(422, "no_such_document", "the document does not exist in admin.spec_dirs")


def _validation_error(exc: ValidationError) -> AdminError:
    return AdminError(422, "invalid_registration", "; ".join(format_validation_error(exc)))


def _exposed_tools(gateway: Gateway, name: str) -> list[str]:
    view = gateway.routes["/mcp"].view if "/mcp" in gateway.routes else next(iter(gateway.routes.values())).view
    return [tool for tool, (_, source) in view.tools.items() if source.upstream == name]


class AdminAPI:
    """The admin API as one ASGI app: authenticate, then route."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._lock = anyio.Lock()  # registrations and reloads change shared state one at a time
        self.router = Router(routes=[
            Route("/upstreams", self.upstreams, methods=["GET"]),
            Route("/catalog", self.catalog, methods=["GET"]),
            Route("/explain", self.explain, methods=["GET"]),
            Route("/openapi", self.list_openapi, methods=["GET"]),
            Route("/openapi", self.register_openapi, methods=["POST"]),
            Route("/openapi/{name}", self.remove_openapi, methods=["DELETE"]),
            Route("/reload", self.reload, methods=["POST"]),
        ])
        auth = getattr(gateway, "auth", None)
        # The gateway's own auth gate authenticates non-key callers; a 401 there points at /mcp's metadata.
        self._gate = auth.protect(self._group_check, ALL_ROUTE) if auth is not None else None

    @property
    def config(self) -> AdminConfig:
        """The admin section of the gateway's current config (keys and groups follow a reload)."""
        return self.gateway.config.admin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.router(scope, receive, send)
            return
        credential = bearer_credential(Request(scope).headers)
        if credential is None:
            await self._refuse(scope, receive, send, 401, "unauthorized",
                               "admin API: send `Authorization: Bearer <admin key>`")
            return
        config = self.config
        key = matching_key(credential, config.keys)
        if key is not None:
            scope[ADMIN_SCOPE_KEY] = f"key:{key.name}"
            await self.router(scope, receive, send)
            return
        if self._gate is not None and config.groups:
            await self._gate(scope, receive, send)
            return
        await self._refuse(scope, receive, send, 401, "unauthorized", "admin API: unknown admin key")

    async def _group_check(self, scope: Scope, receive: Receive, send: Send) -> None:
        consumer = scope.get(CONSUMER_SCOPE_KEY)
        admin_groups = set(self.config.groups)
        if not isinstance(consumer, Consumer) or not admin_groups & set(consumer.groups):
            await self._refuse(scope, receive, send, 403, "forbidden",
                               "admin API: this caller is not in any of admin.groups")
            return
        scope[ADMIN_SCOPE_KEY] = f"consumer:{consumer.name}"
        await self.router(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str) -> None:
        headers = {"WWW-Authenticate": 'Bearer realm="mcp-hub-admin"'} if status == 401 else {}
        response = JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
        await response(scope, receive, send)

    # -- handlers ---------------------------------------------------------------------------------

    @staticmethod
    def _who(request: Request) -> str:
        return str(request.scope.get(ADMIN_SCOPE_KEY, "?"))

    def _consumer(self, request: Request) -> Consumer:
        q = request.query_params
        groups = split_groups(*q.getlist("group"), *q.getlist("groups"))
        return consumer_for(self.gateway, q.get("consumer"), groups)

    async def upstreams(self, request: Request) -> Response:
        return JSONResponse(upstreams_report(self.gateway))

    async def catalog(self, request: Request) -> Response:
        try:
            return JSONResponse(catalog_for(self.gateway, self._consumer(request), request.query_params.get("route")))
        except AdminError as exc:
            return exc.response()

    async def explain(self, request: Request) -> Response:
        q = request.query_params
        asked = [(kind, q[kind]) for kind in KINDS if q.get(kind)]
        if len(asked) != 1:
            return AdminError(400, "bad_request", "give exactly one of tool=, prompt= or resource=").response()
        kind, name = asked[0]
        try:
            return JSONResponse(explain_for(self.gateway, self._consumer(request), kind, name, q.get("route")))
        except AdminError as exc:
            return exc.response()

    async def list_openapi(self, request: Request) -> Response:
        registry = registry_of(self.gateway)
        if registry is None:
            return JSONResponse({"registrations": [], "store": None})
        items = []
        for reg in registry.registrations.values():
            upstream = self.gateway.upstreams.get(reg.name)
            items.append({
                **reg.model_dump(mode="json", exclude={"document"}),
                "document": "inline" if reg.document is not None else None,
                "state": upstream.state.value if upstream is not None else "not running",
                "tools": len(upstream.catalog.tools) if upstream is not None else 0,
            })
        return JSONResponse({"registrations": items, "store": registry.store.describe()})

    async def register_openapi(self, request: Request) -> Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return AdminError(400, "bad_request", "the body must be a JSON object").response()
        if not isinstance(body, dict):
            return AdminError(400, "bad_request", "the body must be a JSON object").response()
        async with self._lock:
            try:
                result = await self._register(body)
            except AdminError as exc:
                return exc.response()
        logger.info("admin %s registered OpenAPI upstream %r (%d tools)", self._who(request), result["name"],
                    len(result["tools"]))
        return JSONResponse(result, status_code=201)

    async def _register(self, body: dict[str, Any]) -> dict[str, Any]:
        gateway, config = self.gateway, self.config
        registry = registry_of(gateway)
        if registry is None:
            raise AdminError(503, "unavailable", "this gateway has no registration store")
        if not config.allowed_base_urls:
            raise AdminError(403, "registration_off",
                             "runtime OpenAPI registration is off: list the API's URL prefix under "
                             "admin.allowed_base_urls in the config")
        body = {k: v for k, v in body.items() if k != "created_at"}
        try:
            registration = Registration.model_validate(body)
        except ValidationError as exc:
            raise _validation_error(exc) from None
        # The URLs first, by the allow-list rule; what is kept (and requested) is their normalized form.
        if registration.spec is not None and _URL_LIKE.match(registration.spec):  # any scheme: only http(s) passes
            spec = await check_url(registration.spec, config.spec_url_prefixes(), "spec")
            registration = registration.model_copy(update={"spec": spec})
        if registration.base_url is not None:
            base_url = await check_url(registration.base_url, config.allowed_base_urls, "base_url")
            registration = registration.model_copy(update={"base_url": base_url})
        try:
            OpenAPIUpstreamConfig.model_validate(registration.upstream_config("document.json"))
        except ValidationError as exc:
            raise _validation_error(exc) from None
        name = registration.name
        if name in gateway.upstreams or name in registry.registrations or name in _config_names(gateway):
            raise AdminError(409, "name_taken", f"an upstream named {name!r} exists already")
        unknown = [r for r in registration.routes if r not in gateway.routes]
        if unknown:
            raise AdminError(422, "unknown_route", f"no route {unknown[0]!r}; routes: {', '.join(gateway.routes)}")
        if registration.spec is not None and not _URL_LIKE.match(registration.spec):
            _check_spec_path(registration.spec, config, gateway.config_path)
            base = Path(gateway.config_path).parent if gateway.config_path else Path.cwd()
            registration = registration.model_copy(update={"spec": str((base / registration.spec).resolve())})
        registry.configure(config, gateway.config_path)
        upstream = registry.build(registration)
        registry.registrations[name] = registration  # before starting: a reload meanwhile must keep it
        try:
            await gateway.add_upstream(upstream, routes=registration.routes or None)
        except Exception:
            registry.registrations.pop(name, None)
            raise
        if upstream.state.value != "up":
            refused = getattr(upstream, "refusal", None)
            reason = upstream.last_error or upstream.state.value
            self._drop(name)
            if isinstance(refused, URLRefused):
                # A URL of the document (servers, a $ref, a paths key) is outside the allow-lists.
                raise refusal(refused)
            # A registered upstream's error names the kind of problem, never the document's text.
            raise AdminError(422, "upstream_failed", f"the API could not be loaded: {reason}")
        try:
            await registry.store.save(registration)
        except RegistryError as exc:
            self._drop(name)
            raise AdminError(503, "store_failed", f"the registration could not be saved: {exc}") from None
        skipped = getattr(upstream, "skipped", [])
        return {
            "name": name,
            "state": upstream.state.value,
            "tools": _exposed_tools(gateway, name),
            "skipped": [{"method": s.method, "path": s.path, "reason": s.reason} for s in skipped],
            "store": registry.store.describe(),
        }

    def _drop(self, name: str) -> None:
        registry = registry_of(self.gateway)
        if registry is not None:
            registry.registrations.pop(name, None)
        if name in self.gateway.upstreams:
            self.gateway.remove_upstream(name)

    async def remove_openapi(self, request: Request) -> Response:
        name = request.path_params["name"]
        registry = registry_of(self.gateway)
        async with self._lock:
            if registry is None or name not in registry.registrations:
                if name in self.gateway.upstreams:
                    return AdminError(409, "not_registered",
                                      f"{name!r} is defined in the config file; edit the file to remove it").response()
                return AdminError(404, "not_found", f"no registration named {name!r}").response()
            try:
                await registry.store.delete(name)
            except RegistryError as exc:
                return AdminError(503, "store_failed", f"the registration could not be removed: {exc}").response()
            self._drop(name)
        logger.info("admin %s removed OpenAPI upstream %r", self._who(request), name)
        return JSONResponse({"removed": name})

    async def reload(self, request: Request) -> Response:
        path = self.gateway.config_path
        if not path:
            return AdminError(409, "no_config_file", "this gateway was started without a config file").response()
        async with self._lock:
            try:
                summary = await reload_checked(self.gateway, path)
            except ConfigError as exc:
                return AdminError(422, "invalid_config", "the config was refused; the old one keeps serving",
                                  problems=exc.problems).response()
            except (ValueError, RegistryError) as exc:
                return AdminError(422, "reload_failed", f"the reload was refused: {exc}").response()
        logger.info("admin %s reloaded the config", self._who(request))
        return JSONResponse({"reloaded": path, **summary})


def admin_routes(gateway: Gateway) -> list[BaseRoute]:
    """The admin API's routes (none when `admin:` configures no keys and no groups)."""
    config = gateway.config.admin
    if not config.enabled:
        return []
    if config.groups and getattr(gateway, "auth", None) is None and not config.keys:
        logger.warning("admin.groups is set but auth is off: nobody can use the admin API")
    return [Mount(config.path, app=AdminAPI(gateway))]
