"""`OpenAPIUpstream`: a REST API described by an OpenAPI document, served as MCP tools."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskStatus

from mcp_hub.catalog.schemas import first_error
from mcp_hub.config.openapi import ConfigError, OpenAPIUpstreamConfig
from mcp_hub.upstreams.base import CallContext, Upstream, UpstreamCatalog, UpstreamState, UpstreamUnavailable
from mcp_hub.upstreams.openapi.convert import (
    ConvertedDocument,
    OperationBinding,
    SkippedOperation,
    convert_document,
)
from mcp_hub.upstreams.openapi.credentials import Credential, CredentialError, build_credential, redact
from mcp_hub.upstreams.openapi.http import shared_ssl_context
from mcp_hub.upstreams.openapi.refs import (
    DocumentError,
    RefResolver,
    document_name,
    fetch_url_sync,
    is_url,
    load_sync,
    parse_document,
    source_uri,
)
from mcp_hub.upstreams.openapi.request import ArgumentError, build_request, response_to_result

RETRY_INITIAL = 1.0
RETRY_MAX = 60.0


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def prefix_allows(prefix: str, url: str) -> bool:
    """Whether `url` lies under `prefix` (same scheme, host and port; path at a segment boundary)."""
    p, u = urlsplit(prefix), urlsplit(url)

    def origin(parts: Any) -> tuple[str, str, int | None]:
        scheme = parts.scheme.lower()
        return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)

    if origin(p) != origin(u):
        return False
    base = p.path.rstrip("/")
    return u.path == base or u.path.startswith(base + "/") or not base


def check_allowed(url: str, allowed: list[str] | None, what: str) -> None:
    """Refuse `url` unless it is under one of the `allowed` prefixes (no list: everything allowed)."""
    if allowed is None:
        return
    if not any(prefix_allows(prefix, url) for prefix in allowed):
        raise ConfigError(f"{what} {url!r} is not under any allowed base URL")


def inspect_document(
    spec: str | Path | dict[str, Any],
    *,
    base_dir: Path | None = None,
    config: OpenAPIUpstreamConfig | None = None,
) -> tuple[list[types.Tool], list[SkippedOperation]]:
    """The tools a document yields and the operations it skips (with reasons); no upstream needed.

    `spec` is a path, an http(s) URL, or an already parsed document (relative `$ref`s then resolve
    against `base_dir`). `config` supplies include/exclude. Raises `DocumentError` for a document
    that cannot be loaded or is not OpenAPI.
    """
    converted = convert_source(spec, base_dir=base_dir, config=config)
    return converted.tools, converted.skipped


def convert_source(
    spec: str | Path | dict[str, Any],
    *,
    base_dir: Path | None = None,
    config: OpenAPIUpstreamConfig | None = None,
) -> ConvertedDocument:
    """Load (synchronously) and convert a document; the full result, bindings included."""
    if not isinstance(spec, str | Path):  # already parsed
        uri = ((base_dir or Path.cwd()) / "document.json").resolve().as_uri()
        doc: Any = spec
    else:
        uri = source_uri(spec, base_dir)
        doc = load_sync(uri)
    resolver = RefResolver(doc, uri, fetch=fetch_url_sync)
    return convert_document(
        doc, resolver, include=config.include if config else None, exclude=config.exclude if config else None
    )


class OpenAPIUpstream(Upstream):
    """Tools generated from an OpenAPI document; each call is one HTTP request to the API.

    `allowed_base_urls`, when given, lists URL prefixes the API (and a token URL taken from the
    document) must lie under: runtime registrations cannot point the gateway anywhere else.
    """

    kind = "openapi"

    def __init__(
        self,
        name: str,
        config: OpenAPIUpstreamConfig,
        *,
        base_dir: Path | None = None,
        allowed_base_urls: list[str] | None = None,
        document_guard: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name)
        self.config = config
        # For documents registered at run time: which other documents `$ref`s may reach (raises
        # DocumentError), and no redirects followed. None: the operator's own config, trusted.
        self.document_guard = document_guard
        # The gateway applies prefixes; None lets it use its own default for this upstream.
        self.prefix: str | None = config.prefix
        self.base_dir = base_dir
        self.allowed_base_urls = allowed_base_urls
        self.skipped: list[SkippedOperation] = []
        self.document: ConvertedDocument | None = None
        self.base_url: str | None = None
        self._bindings: dict[str, OperationBinding] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._credential: Credential | None = None
        self._client: httpx2.AsyncClient | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def spec_uri(self) -> str:
        """Where the document comes from, as an absolute URI."""
        return source_uri(self.config.spec, self.base_dir)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load and convert the document, retrying with backoff until it works; then serve calls."""
        started = False
        delay = RETRY_INITIAL
        # One client for the upstream's lifetime: building one costs an SSL context (~24 ms CPU).
        async with httpx2.AsyncClient(
            timeout=self.config.timeout, follow_redirects=False, verify=shared_ssl_context()
        ) as client:
            self._client = client
            try:
                while True:
                    self._set_state(UpstreamState.CONNECTING, self.last_error)
                    try:
                        await self._load(client)
                    except (DocumentError, ConfigError, OSError) as exc:
                        self._set_state(UpstreamState.DOWN, self._describe(str(exc)))
                    except Exception as exc:  # noqa: BLE001 - any failure keeps the gateway up
                        self._set_state(UpstreamState.DOWN, self._describe(f"{type(exc).__name__}: {exc}"))
                    else:
                        self._set_state(UpstreamState.UP)
                    if not started:
                        started = True
                        task_status.started()
                    if self.state == UpstreamState.UP:
                        await anyio.sleep_forever()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX)
            finally:
                self._client = None
                self._set_state(UpstreamState.STOPPED, self.last_error)

    def _describe(self, problem: str) -> str:
        """`last_error` text: the document named once, then the problem."""
        uri = self.spec_uri
        for name in (document_name(uri), uri, self.config.spec):
            if problem.startswith(f"{name}: "):
                problem = problem[len(name) + 2:]
        return f"OpenAPI document {document_name(uri)}: {problem}"

    async def _load(self, client: httpx2.AsyncClient) -> None:
        uri = self.spec_uri
        if is_url(uri):
            raw = await self._fetch(client, uri)
            # Parsing and conversion of a large document take CPU: keep the event loop free.
            converted = await anyio.to_thread.run_sync(self._convert_raw, raw, uri)
        else:
            converted = await anyio.to_thread.run_sync(self._convert_file, uri)
        base_url = self.config.base_url or (converted.servers[0] if converted.servers else None)
        if base_url is None or not base_url.startswith(("http://", "https://")):
            found = f" (the document's server is {base_url!r})" if base_url else ""
            raise ConfigError(f"no absolute base URL: set base_url{found}")
        check_allowed(base_url, self.allowed_base_urls, "base URL")
        for binding in converted.bindings.values():
            if binding.server_url and binding.server_url.startswith(("http://", "https://")):
                check_allowed(binding.server_url, self.allowed_base_urls, f"server of {binding.tool_name}")
        credential = build_credential(self.config.auth, converted.security_schemes, base_url=base_url,
                                      base_dir=self.base_dir, timeout=self.config.timeout, http=client)
        token_url = getattr(credential, "token_url", None)
        if token_url and not getattr(self.config.auth, "token_url", None):
            check_allowed(token_url, self.allowed_base_urls, "token URL from the document")
        self.document = converted
        self.skipped = converted.skipped
        self.base_url = base_url
        self._credential = credential
        self._bindings = converted.bindings
        self._schemas = {tool.name: tool.input_schema for tool in converted.tools}
        self._set_catalog(UpstreamCatalog(tools=list(converted.tools)))

    async def _fetch(self, client: httpx2.AsyncClient, url: str) -> bytes:
        # A guarded (runtime-registered) document is fetched where it was allowed, not where a redirect points.
        follow = self.document_guard is None
        try:
            response = await client.get(url, follow_redirects=follow)
        except httpx2.HTTPError as exc:
            raise DocumentError(f"cannot fetch ({type(exc).__name__}: {exc})") from None
        if response.is_redirect and not follow:
            raise DocumentError(f"fetch answered a redirect (HTTP {response.status_code}), which is not followed")
        if response.status_code != 200:
            raise DocumentError(f"fetch answered HTTP {response.status_code}")
        return response.content

    def _convert_raw(self, raw: bytes, uri: str) -> ConvertedDocument:
        doc = parse_document(raw, uri)
        return self._convert(doc, uri)

    def _convert_file(self, uri: str) -> ConvertedDocument:
        return self._convert(load_sync(uri), uri)

    def _convert(self, doc: Any, uri: str) -> ConvertedDocument:
        follow = self.document_guard is None
        resolver = RefResolver(
            doc, uri, fetch=lambda url: fetch_url_sync(url, self.config.timeout, follow_redirects=follow),
            guard=self.document_guard,
        )
        return convert_document(doc, resolver, include=self.config.include, exclude=self.config.exclude,
                                name=self.config.spec)

    # -- calls -------------------------------------------------------------------------------

    @property
    def http_client(self) -> httpx2.AsyncClient | None:
        """The upstream's HTTP client while it runs (e.g. to add event hooks for metrics)."""
        return self._client

    def binding(self, name: str) -> OperationBinding | None:
        """What tool `name` calls (method, path, parameters), if it exists."""
        return self._bindings.get(name)

    def _validate(self, name: str, arguments: dict[str, Any]) -> str | None:
        problem = first_error(self._schemas[name], arguments)
        return f"invalid arguments for {name}: {problem}" if problem is not None else None

    @property
    def call_timeout(self) -> float:  # type: ignore[override]
        return self.config.timeout

    async def call(self, name: str, arguments: dict[str, Any] | None, ctx: CallContext) -> dict[str, Any]:
        result = await self.call_tool(name, arguments, ctx)
        return result.model_dump(by_alias=True, mode="json", exclude_none=True)

    async def call_tool(self, name: str, arguments: dict[str, Any] | None, ctx: CallContext) -> types.CallToolResult:
        """Make the HTTP request for tool `name` and turn the response into a tool result."""
        client = self._client
        if client is None or self.state != UpstreamState.UP or self.base_url is None:
            raise UpstreamUnavailable(f"upstream {self.name!r} is {self.state.value}: {self.last_error or 'not ready'}")
        binding = self._bindings.get(name)
        if binding is None:
            return _error(f"unknown tool {name!r}")
        args = dict(arguments or {})
        problem = self._validate(name, args)
        if problem is not None:
            return _error(problem)
        timeout = ctx.timeout or self.config.timeout
        secrets: tuple[str, ...] = self._credential.secrets() if self._credential else ()
        if ctx.caller_token:
            secrets += (ctx.caller_token,)
        try:
            with anyio.fail_after(timeout):
                response = await self._send(client, binding, args, ctx)
                if response.status_code == 401 and self._credential is not None and not ctx.caller_token:
                    # A cached token may have been revoked early: fetch a fresh one and try once more.
                    self._credential.invalidate()
                    response = await self._send(client, binding, args, ctx)
        except ArgumentError as exc:
            return _error(str(exc))
        except TimeoutError:
            return _error(f"{binding.method} {binding.path}: no answer from {self.name!r} within {timeout:g}s")
        except CredentialError as exc:
            return _error(redact(f"{binding.method} {binding.path}: upstream credential failed: {exc}", secrets))
        except httpx2.HTTPError as exc:
            reason = redact(f"{type(exc).__name__}: {exc}", secrets)
            return _error(f"{binding.method} {binding.path}: request to {self.name!r} failed ({reason})")
        url = response.request.url
        resource_uri = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"  # without the query: it may hold a key
        return response_to_result(
            binding, response.status_code, response.reason_phrase, response.headers.get("content-type", ""),
            response.content, response.headers.get("location"), resource_uri,
        )

    async def _send(
        self, client: httpx2.AsyncClient, binding: OperationBinding, args: dict[str, Any], ctx: CallContext
    ) -> httpx2.Response:
        assert self.base_url is not None
        spec = build_request(binding, args, binding.server_url or self.base_url)
        headers = dict(self.config.headers)
        headers.update(spec.headers)
        spec.headers = headers
        if ctx.caller_token:
            # Pass-through: the caller's own credential replaces the gateway's.
            spec.headers["Authorization"] = f"Bearer {ctx.caller_token}"
        elif self._credential is not None and binding.needs_auth:
            await self._credential.apply(spec, client)
        spec.headers.update(ctx.headers)
        cookie = spec.cookie_header()
        if cookie:
            spec.headers["Cookie"] = cookie
        timeout = ctx.timeout or self.config.timeout
        request = client.build_request(
            spec.method, spec.full_url(), headers=spec.headers, content=spec.content, files=spec.files,
            timeout=timeout if math.isfinite(timeout) else None,
        )
        return await client.send(request)


def build_openapi_upstream(
    name: str,
    config: OpenAPIUpstreamConfig | dict[str, Any],
    *,
    base_dir: Path | None = None,
    allowed_base_urls: list[str] | None = None,
) -> OpenAPIUpstream:
    """An (unstarted) `OpenAPIUpstream` from a config entry, validated if given as a mapping."""
    if not isinstance(config, OpenAPIUpstreamConfig):
        config = OpenAPIUpstreamConfig.model_validate(config)
    return OpenAPIUpstream(name, config, base_dir=base_dir, allowed_base_urls=allowed_base_urls)
