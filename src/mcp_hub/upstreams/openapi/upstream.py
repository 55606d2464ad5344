"""`OpenAPIUpstream`: a REST API described by an OpenAPI document, served as MCP tools."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskStatus

from mcp_hub.catalog.schemas import first_error
from mcp_hub.config.openapi import ConfigError, OpenAPIUpstreamConfig
from mcp_hub.upstreams.base import CallContext, Upstream, UpstreamCatalog, UpstreamState, UpstreamUnavailable
from mcp_hub.upstreams.openapi.convert import (
    ConvertedDocument,
    DocumentFormatError,
    OperationBinding,
    SkippedOperation,
    convert_document,
)
from mcp_hub.upstreams.openapi.credentials import Credential, CredentialError, build_credential
from mcp_hub.upstreams.openapi.http import shared_ssl_context
from mcp_hub.upstreams.openapi.refs import (
    DocumentError,
    RefError,
    RefResolver,
    document_name,
    fetch_url_sync,
    is_url,
    load_sync,
    parse_document,
    source_uri,
)
from mcp_hub.upstreams.openapi.request import ArgumentError, build_request, response_to_result
from mcp_hub.upstreams.openapi.schema import PatternReport
from mcp_hub.upstreams.openapi.scrub import KNOWN_SECRETS, Scrubber, secret_header_values
from mcp_hub.upstreams.openapi.urls import URLRefused, canonical, check_host, check_url, url_allowed

logger = logging.getLogger(__name__)

RETRY_INITIAL = 1.0
RETRY_MAX = 60.0


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], is_error=True)


def prefix_allows(prefix: str, url: str) -> bool:
    """Whether `url` lies under `prefix`, by the one allow-list rule (`urls.check_url`)."""
    return url_allowed(url, [prefix])


def check_allowed(url: str, allowed: list[str] | None, what: str) -> None:
    """Refuse `url` (`ConfigError`, naming `what` and the reason, not the URL) unless the allow-list
    rule puts it under one of the `allowed` prefixes (no list: everything allowed)."""
    if allowed is None:
        return
    try:
        check_url(url, allowed, what)
    except URLRefused as exc:
        raise ConfigError(str(exc)) from None


# Load failures of a guarded upstream are told without the exception's text: it may quote the document.
_GUARDED_PROBLEMS: tuple[tuple[type[BaseException], str], ...] = (
    (DocumentFormatError, "the document is not an OpenAPI 2.0/3.x document"),
    (RefError, "a $ref in the document does not resolve"),
    (DocumentError, "the document could not be read, or is not JSON or YAML"),
    (CredentialError, "the upstream credential failed"),
)
_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_EXCEPTION_REASON = re.compile(r"^[A-Z]\w*(?:Error|Exception|Refused)\b")


class _FetchError(DocumentError):
    """The document could not be fetched; the message holds no text of any document."""


def _skeleton(base_url: str, path: str) -> str:
    """The URL an operation's path makes of `base_url` with every parameter a plain segment (as
    `build_request` joins them), for checking the part of a request URL the document decides."""
    template = path.split("#", 1)[0].partition("?")[0]
    filled = re.sub(r"{[^{}/]*}", "x", template)
    return base_url.rstrip("/") + (filled if filled.startswith("/") else "/" + filled)


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
        document_guard: Callable[..., str | None] | None = None,
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
        # Regular expressions of the document dropped from tool schemas (no Python equivalent).
        self.warnings: list[PatternReport] = []
        self.document: ConvertedDocument | None = None
        self.base_url: str | None = None
        self._bindings: dict[str, OperationBinding] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        self._credential: Credential | None = None
        self._client: httpx2.AsyncClient | None = None
        # Why the allow-list refused the document (a runtime registration's admin API answer names it).
        self.refusal: URLRefused | None = None
        self._scrubbers: dict[tuple[str, ...], Scrubber] = {}
        # URLs the operator's config names itself, exempt from the request guard (see _guard_request).
        self._trusted: set[str] = set()

    @property
    def guarded(self) -> bool:
        """Whether what this upstream requests is limited by allow-lists (a runtime registration)."""
        return self.allowed_base_urls is not None or self.document_guard is not None

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
        hooks = {"request": [self._guard_request]} if self.allowed_base_urls is not None else {}
        async with httpx2.AsyncClient(
            timeout=self.config.timeout, follow_redirects=False, verify=shared_ssl_context(), event_hooks=hooks,
        ) as client:
            self._client = client
            try:
                while True:
                    self._set_state(UpstreamState.CONNECTING, self.last_error)
                    self.refusal = None
                    try:
                        await self._load(client)
                    except URLRefused as exc:
                        self.refusal = exc
                        self._set_state(UpstreamState.DOWN, self._describe(str(exc)))
                    except (DocumentError, ConfigError, OSError) as exc:
                        self._set_state(UpstreamState.DOWN, self._describe(self._problem(exc, str(exc))))
                    except Exception as exc:  # noqa: BLE001 - any failure keeps the gateway up
                        self._set_state(UpstreamState.DOWN,
                                        self._describe(self._problem(exc, f"{type(exc).__name__}: {exc}")))
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

    def _problem(self, exc: BaseException, text: str) -> str:
        """What went wrong; for a guarded upstream without any text of the exception (it may quote
        the document, or a fetched one): only the kind of problem."""
        if not self.guarded or isinstance(exc, _FetchError):
            return text
        for kind, problem in _GUARDED_PROBLEMS:
            if isinstance(exc, kind):
                return problem
        return f"{type(exc).__name__} while loading the document"

    def _describe(self, problem: str) -> str:
        """`last_error` text: the document named once, then the problem."""
        uri = self.spec_uri
        for name in (document_name(uri), uri, self.config.spec):
            if problem.startswith(f"{name}: "):
                problem = problem[len(name) + 2:]
        return f"OpenAPI document {document_name(uri)}: {problem}"

    async def _load(self, client: httpx2.AsyncClient) -> None:
        self._trusted = self._config_urls()
        uri = self.spec_uri
        if is_url(uri):
            uri = self._document_url(uri, "spec")
            raw = await self._fetch(client, uri)
            # Parsing and conversion of a large document take CPU: keep the event loop free.
            converted = await anyio.to_thread.run_sync(self._convert_raw, raw, uri)
        else:
            if self.document_guard is not None:
                self.document_guard(uri)
            converted = await anyio.to_thread.run_sync(self._convert_file, uri)
        if self.guarded:
            converted = self._sanitized(converted)
        key = "base_url" if self.config.base_url else "servers[0].url"
        base_url = self.config.base_url or (converted.servers[0] if converted.servers else None)
        allowed = self.allowed_base_urls
        if allowed is not None and base_url is not None and _HAS_SCHEME.match(base_url):
            base_url = check_url(base_url, allowed, key)  # another scheme is refused with the reason
        if base_url is None or not base_url.lower().startswith(("http://", "https://")):
            found = f" (the document's server is {base_url!r})" if base_url and not self.guarded else ""
            raise ConfigError(f"no absolute base URL: set base_url{found}")
        checked: list[tuple[str, str]] = []
        if allowed is not None:
            base_url = check_url(base_url, allowed, key)
            checked.append((base_url, key))
            bindings = {}
            for index, (name, binding) in enumerate(converted.bindings.items()):
                server = binding.server_url
                if server is not None:
                    what = f"operations[{index}]: a path- or operation-level servers[0].url"
                    server = check_url(server, allowed, what)
                    checked.append((server, what))
                    binding = dataclasses.replace(binding, server_url=server)
                # The URL the operation's path makes of its base, arguments aside: a paths key such as
                # `/../internal` must not lead out of the allowed prefix either.
                check_url(_skeleton(server or base_url, binding.path), allowed, f"operations[{index}]: its paths key")
                bindings[name] = binding
            converted.bindings = bindings
        else:
            for binding in converted.bindings.values():
                if binding.server_url and binding.server_url.startswith(("http://", "https://")):
                    check_allowed(binding.server_url, allowed, f"server of {binding.tool_name}")
        credential = build_credential(self.config.auth, converted.security_schemes, base_url=base_url,
                                      base_dir=self.base_dir, timeout=self.config.timeout, http=client)
        token_url = getattr(credential, "token_url", None)
        if token_url and not getattr(self.config.auth, "token_url", None) and allowed is not None:
            # The grant requests it as written; the request hook checks that request as it is sent.
            checked.append((check_url(token_url, allowed, "token URL from the document"), "token URL from the document"))
        if allowed is not None:
            await self._check_hosts(checked, allowed)
        if credential is not None:
            KNOWN_SECRETS.add(*credential.secrets())
        KNOWN_SECRETS.add(*secret_header_values(self.config.headers))
        self.document = converted
        self.skipped = converted.skipped
        self.warnings = converted.warnings
        if converted.patterns_translated:
            logger.info("openapi upstream %r: %d regular expressions translated to Python's dialect",
                        self.name, len(converted.patterns_translated))
        for warning in converted.warnings:
            logger.warning("openapi upstream %r: %s", self.name, warning.message())
        self.base_url = base_url
        self._credential = credential
        self._bindings = converted.bindings
        self._schemas = {tool.name: tool.input_schema for tool in converted.tools}
        self._set_catalog(UpstreamCatalog(tools=list(converted.tools)))

    async def _check_hosts(self, checked: list[tuple[str, str]], allowed: list[str]) -> None:
        """Refuse hosts that resolve to this machine unless named literally (one lookup per host)."""
        seen: set[tuple[str, int]] = set()
        for url, what in checked:
            parsed = canonical(url, what)
            if (parsed.host, parsed.port) not in seen:
                seen.add((parsed.host, parsed.port))
                await check_host(url, allowed, what)

    def health(self) -> dict[str, Any]:
        out = super().health()
        if self.warnings:
            out["warnings"] = [warning.as_dict() for warning in self.warnings]
        return out

    def _sanitized(self, converted: ConvertedDocument) -> ConvertedDocument:
        """Skipped operations and pattern warnings of a guarded document keep the kind of problem,
        not the document's text."""
        skipped = []
        for item in converted.skipped:
            match = _EXCEPTION_REASON.match(item.reason)
            if match:
                item = dataclasses.replace(item, reason=f"{match.group(0)} (details withheld for a registered document)")
            skipped.append(item)
        converted.skipped = skipped
        for report in converted.warnings:
            report.pattern, report.pointer = "(withheld)", ""
            report.reason = "no Python equivalent (details withheld for a registered document)"
        return converted

    def _config_urls(self) -> set[str]:
        """The document URL (when no guard applies to it) and token URL the operator's config names."""
        urls = []
        if self.document_guard is None and is_url(self.spec_uri):
            urls.append(self.spec_uri)
        token_url = getattr(self.config.auth, "token_url", None)
        if token_url:
            urls.append(token_url)
        out = set()
        for url in urls:
            try:
                out.add(str(canonical(url, data=True)))
            except URLRefused:
                continue
        return out

    def _document_url(self, url: str, what: str = "$ref") -> str:
        """The URL to fetch a document from: allowed by the document guard, in normalized form."""
        if self.document_guard is None:
            return url
        checked = self.document_guard(url, what) if what != "$ref" else self.document_guard(url)
        return checked if isinstance(checked, str) else url

    async def _guard_request(self, request: httpx2.Request) -> None:
        """Every request this upstream's client sends, at the moment it is sent: its URL (as the HTTP
        client will request it) must be under an allowed base URL, or be a document the guard allows,
        or be one the operator's config names itself."""
        url = str(request.url)
        allowed = self.allowed_base_urls
        if allowed is not None and url_allowed(url, allowed, data=True):
            return
        try:
            if str(canonical(url, data=True)) in self._trusted:
                return
        except URLRefused:
            pass
        if self.document_guard is not None and request.method == "GET":
            try:
                self.document_guard(url)
                return
            except (URLRefused, DocumentError):
                pass
        check_url(url, allowed or [], "request URL", data=True)  # refuses, with the reason
        raise URLRefused("request URL", "no prefix matches its normalized scheme, host, port and path")  # not reached

    async def _fetch(self, client: httpx2.AsyncClient, url: str) -> bytes:
        # A guarded (runtime-registered) document is fetched where it was allowed, not where a redirect points.
        follow = not self.guarded
        try:
            response = await client.get(url, follow_redirects=follow)
        except httpx2.HTTPError as exc:
            reason = type(exc).__name__ if self.guarded else f"{type(exc).__name__}: {exc}"
            raise _FetchError(f"cannot fetch ({reason})") from None
        if response.is_redirect and not follow:
            raise _FetchError(f"fetch answered a redirect (HTTP {response.status_code}), which is not followed")
        if response.status_code != 200:
            raise _FetchError(f"fetch answered HTTP {response.status_code}")
        return response.content

    def _convert_raw(self, raw: bytes, uri: str) -> ConvertedDocument:
        doc = parse_document(raw, uri)
        return self._convert(doc, uri)

    def _convert_file(self, uri: str) -> ConvertedDocument:
        return self._convert(load_sync(uri), uri)

    def _convert(self, doc: Any, uri: str) -> ConvertedDocument:
        follow = not self.guarded

        def fetch(url: str) -> bytes:
            # The guard saw `url` already (RefResolver.document); fetch its normalized form.
            return fetch_url_sync(self._document_url(url), self.config.timeout, follow_redirects=follow)

        resolver = RefResolver(doc, uri, fetch=fetch, guard=self.document_guard)
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
        scrub = self._scrubber(ctx)
        try:
            with anyio.fail_after(timeout):
                response = await self._send(client, binding, args, ctx)
                if response.status_code == 401 and self._credential is not None and not ctx.caller_token:
                    # A cached token may have been revoked early: fetch a fresh one and try once more.
                    self._credential.invalidate()
                    response = await self._send(client, binding, args, ctx)
        except ArgumentError as exc:
            return _error(scrub.text(str(exc)))
        except URLRefused as exc:
            return _error(f"{binding.method} {binding.path}: refused: {exc}")
        except TimeoutError:
            return _error(f"{binding.method} {binding.path}: no answer from {self.name!r} within {timeout:g}s")
        except CredentialError as exc:  # scrubbed with the secrets as they are now (a token may be new)
            return _error(self._scrubber(ctx).text(f"{binding.method} {binding.path}: upstream credential failed: {exc}"))
        except httpx2.HTTPError as exc:
            reason = self._scrubber(ctx).text(f"{type(exc).__name__}: {exc}")
            return _error(f"{binding.method} {binding.path}: request to {self.name!r} failed ({reason})")
        # The secrets may have changed during the call (a token fetched or refreshed).
        scrub = self._scrubber(ctx)
        url = response.request.url
        resource_uri = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"  # without the query: it may hold a key
        location = response.headers.get("location")
        result = response_to_result(
            binding, response.status_code, scrub.text(response.reason_phrase),
            response.headers.get("content-type", ""), scrub.body(response.content),
            scrub.text(location) if location is not None else None, scrub.text(resource_uri),
        )
        # Whatever the API echoed (headers, query, body, a redirect's Location), in whatever encoding:
        # no credential the gateway holds reaches the caller.
        return scrub.result(result)

    def _scrubber(self, ctx: CallContext) -> Scrubber:
        """A scrubber for every secret this call involves: the credential's (the current token
        included), secret-looking static and per-call headers, and the caller's own token."""
        secrets: tuple[str, ...] = self._credential.secrets() if self._credential else ()
        secrets += secret_header_values(self.config.headers) + secret_header_values(ctx.headers)
        if ctx.caller_token:
            secrets += (ctx.caller_token,)
        scrubber = self._scrubbers.get(secrets)
        if scrubber is None:
            if len(self._scrubbers) >= 16:
                self._scrubbers.clear()
            scrubber = self._scrubbers[secrets] = Scrubber(secrets)
        return scrubber

    async def _send(
        self, client: httpx2.AsyncClient, binding: OperationBinding, args: dict[str, Any], ctx: CallContext
    ) -> httpx2.Response:
        assert self.base_url is not None
        base_url = binding.server_url or self.base_url
        allowed = self.allowed_base_urls
        if allowed is not None:
            # At request time too: the base URL as it is requested now (server variables substituted).
            base_url = check_url(base_url, allowed, "base URL")
        spec = build_request(binding, args, base_url)
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
        if allowed is not None:
            # The URL as the HTTP client will request it, arguments included (read as leniently as any
            # server might: an argument cannot climb out of the prefix either). The client's request
            # hook checks it once more as it is sent.
            check_url(str(request.url), allowed, "request URL", data=True)
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
