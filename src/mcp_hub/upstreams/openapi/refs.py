"""Loading OpenAPI documents and resolving `$ref` within and across them.

A document is read from a file (`.json`, `.yaml`, `.yml`, optionally gzip-compressed) or an
http(s) URL. `RefResolver` follows `$ref` strings: local (`#/components/schemas/Pet`), relative
files (`common.yaml#/Error`) and URLs, caching every document it loads. A document fetched from
a URL may only refer to other URLs, never to local files.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit
from urllib.request import url2pathname

import yaml

from mcp_hub.upstreams.openapi.http import shared_ssl_context

MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


class DocumentError(Exception):
    """A document that cannot be loaded, parsed or resolved; the message names the document."""


class RefError(DocumentError):
    """A `$ref` that points nowhere."""


class _YamlLoader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """Safe YAML loader that keeps timestamps as strings: schemas need JSON values, not `datetime`."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse_document(raw: bytes, name: str) -> Any:
    """Parse JSON or YAML bytes (gzip-compressed or not); errors name the document."""
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DocumentError(f"{name}: corrupt gzip data ({exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DocumentError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass  # JSON-looking YAML (flow style) still parses below
    try:
        return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DocumentError(f"{name}: not valid JSON or YAML{where}: {problem}") from None


def is_url(source: str) -> bool:
    """Whether `source` is an http(s) URL rather than a file path."""
    return source.startswith(("http://", "https://"))


def source_uri(source: str | Path, base_dir: Path | None = None) -> str:
    """The absolute URI of a document source: the URL itself or a file:// URI."""
    if isinstance(source, str) and is_url(source):
        return source
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    return path.resolve().as_uri()


def read_file_uri(uri: str) -> bytes:
    """Read a file:// URI, with errors that name the file."""
    path = Path(url2pathname(urlsplit(uri).path))
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise DocumentError(f"{path}: document too large ({size} bytes)")
        return path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DocumentError(f"{path}: is a directory, not a document") from None
    except OSError as exc:
        raise DocumentError(f"{path}: cannot read ({exc.strerror})") from None


def fetch_url_sync(url: str, timeout: float = 30.0, *, follow_redirects: bool = True) -> bytes:
    """GET a document over HTTP(S) (used for `$ref`s to remote files and for `inspect_document`)."""
    import httpx2

    try:
        response = httpx2.get(url, timeout=timeout, follow_redirects=follow_redirects, verify=shared_ssl_context())
    except httpx2.HTTPError as exc:
        raise DocumentError(f"{url}: cannot fetch ({type(exc).__name__}: {exc})") from None
    if response.is_redirect and not follow_redirects:
        raise DocumentError(f"{url}: fetch answered a redirect (HTTP {response.status_code}), which is not followed")
    if response.status_code != 200:
        raise DocumentError(f"{url}: fetch answered HTTP {response.status_code}")
    return response.content


def load_sync(uri: str, fetch: Callable[[str], bytes] | None = None) -> Any:
    """Load and parse the document at `uri` (file:// or http(s)://)."""
    if uri.startswith("file:"):
        raw = read_file_uri(uri)
        name = url2pathname(urlsplit(uri).path)
    else:
        raw = (fetch or fetch_url_sync)(uri)
        name = uri
    return parse_document(raw, name)


def _unescape(token: str) -> str:
    return unquote(token).replace("~1", "/").replace("~0", "~")


def pointer_get(document: Any, pointer: str) -> Any:
    """Follow a JSON pointer (`/components/schemas/Pet`, percent-encoded as in a URI fragment)."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise KeyError(f"unsupported fragment {pointer!r} (only JSON pointers are)")
    node = document
    for raw in pointer[1:].split("/"):
        token = _unescape(raw)
        if isinstance(node, dict):
            if token not in node:
                # YAML may have loaded a key such as 200 as an int.
                alt = int(token) if token.isdigit() else None
                if alt is None or alt not in node:
                    raise KeyError(f"no {token!r}")
                token = alt  # type: ignore[assignment]
            node = node[token]
        elif isinstance(node, list):
            try:
                node = node[int(token)]
            except (ValueError, IndexError):
                raise KeyError(f"no item {token!r}") from None
        else:
            raise KeyError(f"cannot descend into a {type(node).__name__} at {token!r}")
    return node


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a `$ref` points to, and where: `uri` is the document holding it (for nested refs)."""

    value: Any
    uri: str
    pointer: str

    @property
    def key(self) -> str:
        """A unique name of the target, the same for every `$ref` spelling that reaches it."""
        return f"{self.uri}#{self.pointer}"


class RefResolver:
    """Resolves `$ref` strings against a root document and the files or URLs it refers to."""

    def __init__(
        self,
        root: Any,
        root_uri: str,
        *,
        fetch: Callable[[str], bytes] | None = None,
        guard: Callable[[str], object] | None = None,
    ) -> None:
        self.root_uri = urldefrag(root_uri).url
        self._documents: dict[str, Any] = {self.root_uri: root}
        self._fetch = fetch
        # Checks every other document a `$ref` reaches before it is read (raises DocumentError, or
        # URLRefused, which is not a DocumentError: a refused $ref fails the whole document).
        self._guard = guard
        self._cache: dict[tuple[str, str], Resolved] = {}

    def with_root(self, root: Any) -> RefResolver:
        """The same resolver (fetcher, guard, loaded files) for a replacement of the root document."""
        clone = RefResolver(root, self.root_uri, fetch=self._fetch, guard=self._guard)
        clone._documents.update({k: v for k, v in self._documents.items() if k != self.root_uri})
        return clone

    def document(self, uri: str) -> Any:
        """The parsed document at `uri`, loaded once."""
        if uri not in self._documents:
            if self._guard is not None:
                self._guard(uri)
            self._documents[uri] = load_sync(uri, self._fetch)
        return self._documents[uri]

    def resolve(self, ref: str, base_uri: str) -> Resolved:
        """Follow one `$ref` written in the document at `base_uri`."""
        cached = self._cache.get((base_uri, ref))
        if cached is None:
            cached = self._cache[(base_uri, ref)] = self._resolve(ref, base_uri)
        return cached

    def _resolve(self, ref: str, base_uri: str) -> Resolved:
        if ref.startswith("#"):
            target, fragment = base_uri, ref[1:]  # local: the common case, no URL parsing needed
        else:
            target, fragment = urldefrag(urljoin(base_uri, ref))
        if not target:
            target = base_uri
        if not base_uri.startswith("file:") and target.startswith("file:"):
            raise RefError(f"$ref {ref!r} in {base_uri}: a remote document may not refer to local files")
        if not target.startswith(("file:", "http://", "https://")):
            raise RefError(f"$ref {ref!r} in {_short(base_uri)}: unsupported location {target!r}")
        try:
            document = self.document(target)
        except DocumentError as exc:
            raise RefError(f"$ref {ref!r} in {_short(base_uri)}: {exc}") from None
        try:
            value = pointer_get(document, fragment)
        except KeyError as exc:
            raise RefError(f"$ref {ref!r} in {_short(base_uri)} does not resolve: {exc.args[0]}") from None
        return Resolved(value, target, fragment)

    def deref(self, node: Any, base_uri: str) -> tuple[Any, str]:
        """Follow `$ref` until a non-reference object (parameters, responses, bodies, path items)."""
        seen: set[str] = set()
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            found = self.resolve(node["$ref"], base_uri)
            if found.key in seen:
                raise RefError(f"$ref {node['$ref']!r} in {_short(base_uri)} is a cycle of references")
            seen.add(found.key)
            node, base_uri = found.value, found.uri
        return node, base_uri


def _short(uri: str) -> str:
    """A readable name for a document URI in messages."""
    if uri.startswith("file:"):
        return url2pathname(urlsplit(uri).path)
    return uri


def document_name(uri: str) -> str:
    """A readable name for a document URI (the file path or the URL)."""
    return _short(uri)
