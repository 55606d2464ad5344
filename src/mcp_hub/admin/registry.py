"""Runtime OpenAPI registrations: what `POST /admin/openapi` added, kept so it survives restarts.

One small interface, `RegistrationStore`, with storages picked by a URI (as budgets pick theirs):

- a file path (the default: `<config>.registrations.json` beside the config file), JSON, written
  atomically under a lock so two processes sharing it do not lose each other's writes;
- `memory://`: nothing persists (the embedded default, tests);
- `redis://host:port/db` (also `rediss://`, `redis+unix://`): one Redis hash, shared by replicas.

`OpenAPIRegistry` holds the registrations a gateway serves and turns each into an upstream.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

import anyio
import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mcp_hub.config import NAME_PATTERN
from mcp_hub.core.reload import ConfigSourceError
from mcp_hub.upstreams.base import Upstream
from mcp_hub.upstreams.openapi import OpenAPIUpstream, OpenAPIUpstreamConfig
from mcp_hub.upstreams.openapi.urls import URLRefused, check_url

logger = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis://", "rediss://", "redis+unix://")
DEFAULT_REDIS_KEY = "mcp-hub:openapi-registrations"


class RegistryError(ConfigSourceError):
    """A registration store that cannot be read or written (the message never holds a password)."""


class Registration(BaseModel):
    """One OpenAPI document registered at run time: where it is, where calls go, how tools are named."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="upstream name; tools are exposed as <prefix>__<tool>")
    spec: str | None = Field(default=None, description="URL of the document, or a path on the gateway host")
    document: dict[str, Any] | None = Field(default=None, description="the document itself (JSON object)")
    base_url: str | None = Field(default=None, description="where calls go; default: the document's servers")
    prefix: str | None = Field(default=None, description="tool name prefix; default: the name")
    include: dict[str, Any] | None = Field(default=None, description="operations to keep (operations, tags, paths)")
    exclude: dict[str, Any] | None = Field(default=None, description="operations to drop (operations, tags, paths)")
    routes: list[str] = Field(default_factory=list, description="virtual servers besides /mcp that expose it")
    created_at: float = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _one_source(self) -> Registration:
        if (self.spec is None) == (self.document is None):
            raise ValueError("give exactly one of `spec` (a URL or path) or `document` (the document itself)")
        return self

    def upstream_config(self, spec: str) -> dict[str, Any]:
        """The `openapi:` config entry this registration stands for, with `spec` as its document."""
        entry: dict[str, Any] = {"spec": spec}
        for key in ("base_url", "prefix", "include", "exclude"):
            value = getattr(self, key)
            if value is not None:
                entry[key] = value
        return entry


def redact_uri(uri: str) -> str:
    """A storage URI with any password hidden (redis://:secret@host -> redis://:***@host)."""
    return re.sub(r"(://[^/@]*?:)[^/@]*@", r"\1***@", uri)


class RegistrationStore(ABC):
    """Where registrations persist."""

    @abstractmethod
    async def load(self) -> list[Registration]:
        """Every stored registration (unreadable entries are logged and skipped)."""

    @abstractmethod
    async def save(self, registration: Registration) -> None:
        """Store (or replace) one registration."""

    @abstractmethod
    async def delete(self, name: str) -> bool:
        """Forget one registration; False when there was none."""

    @abstractmethod
    def describe(self) -> str:
        """Where the store keeps its data, safe to log."""


def _parse_entries(entries: dict[str, Any], where: str) -> list[Registration]:
    out = []
    for name, raw in entries.items():
        try:
            data = json.loads(raw) if isinstance(raw, str | bytes) else raw
            out.append(Registration.model_validate(data))
        except (ValueError, ValidationError) as exc:
            # One bad entry must not keep the gateway from starting with the others.
            logger.error("skipping unreadable OpenAPI registration %r in %s: %s", name, where, exc)
    return sorted(out, key=lambda r: (r.created_at, r.name))


class MemoryStore(RegistrationStore):
    """Keeps registrations for the life of the process only."""

    def __init__(self) -> None:
        self._items: dict[str, Registration] = {}

    async def load(self) -> list[Registration]:
        return sorted(self._items.values(), key=lambda r: (r.created_at, r.name))

    async def save(self, registration: Registration) -> None:
        self._items[registration.name] = registration

    async def delete(self, name: str) -> bool:
        return self._items.pop(name, None) is not None

    def describe(self) -> str:
        return "memory://"


class FileStore(RegistrationStore):
    """A JSON file `{"registrations": {name: registration}}`, replaced atomically on every write."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # A lock file beside the data: processes sharing the file serialise read-modify-write.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise RegistryError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{self.path} is not valid JSON: {exc}") from None
        entries = data.get("registrations", {}) if isinstance(data, dict) else None
        if not isinstance(entries, dict):
            raise RegistryError(f"{self.path}: expected {{\"registrations\": {{...}}}}")
        return entries

    def _write(self, entries: dict[str, Any]) -> None:
        body = json.dumps({"registrations": entries}, indent=2, sort_keys=True) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RegistryError(f"cannot write {self.path}: {exc.strerror}") from None

    def _load_sync(self) -> list[Registration]:
        if not self.path.exists():
            return []  # nothing registered yet: do not create the lock file beside a read-only config
        with self._locked():
            return _parse_entries(self._read(), str(self.path))

    def _save_sync(self, registration: Registration) -> None:
        with self._locked():
            entries = self._read()
            entries[registration.name] = registration.model_dump(mode="json")
            self._write(entries)

    def _delete_sync(self, name: str) -> bool:
        with self._locked():
            entries = self._read()
            if entries.pop(name, None) is None:
                return False
            self._write(entries)
            return True

    # File locks block: the waiting happens in a worker thread, not on the event loop.
    async def load(self) -> list[Registration]:
        return await anyio.to_thread.run_sync(self._load_sync)

    async def save(self, registration: Registration) -> None:
        await anyio.to_thread.run_sync(self._save_sync, registration)

    async def delete(self, name: str) -> bool:
        return await anyio.to_thread.run_sync(self._delete_sync, name)

    def describe(self) -> str:
        return str(self.path)


class RedisStore(RegistrationStore):
    """One Redis hash, field = registration name, value = its JSON; replicas sharing it see the same set.

    A client is opened per operation: admin writes are rare, and this keeps the store usable from any
    event loop (the CLI loads registrations before the server's loop exists).
    """

    def __init__(self, url: str, key: str = DEFAULT_REDIS_KEY, timeout: float = 5.0) -> None:
        self.url = url
        self.key = key
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def _client(self) -> Any:
        import coredis  # the Redis client `limits` already depends on

        client = coredis.Redis.from_url(
            self.url, decode_responses=True, connect_timeout=self.timeout, stream_timeout=self.timeout
        )
        try:
            yield client
        except (coredis.exceptions.RedisError, OSError) as exc:
            raise RegistryError(f"Redis at {self.describe()} failed: {type(exc).__name__}: {exc}") from None
        finally:
            client.connection_pool.disconnect()

    async def load(self) -> list[Registration]:
        async with self._client() as client:
            entries = await client.hgetall(self.key)
        return _parse_entries(dict(entries), self.describe())

    async def save(self, registration: Registration) -> None:
        async with self._client() as client:
            await client.hset(self.key, {registration.name: registration.model_dump_json()})

    async def delete(self, name: str) -> bool:
        async with self._client() as client:
            return bool(await client.hdel(self.key, [name]))

    def describe(self) -> str:
        return f"{redact_uri(self.url)} (hash {self.key})"


class AnnouncingStore(RegistrationStore):
    """A store that tells the other replicas (sessions shared: `sessions:`) after each change it saved,
    so each of them reads the store again and serves the same registrations within a second."""

    def __init__(self, inner: RegistrationStore, announce: Callable[[str], Awaitable[Any]]) -> None:
        self.inner = inner
        self._announce = announce

    async def load(self) -> list[Registration]:
        return await self.inner.load()

    async def save(self, registration: Registration) -> None:
        await self.inner.save(registration)
        await self._announce("registry")

    async def delete(self, name: str) -> bool:
        deleted = await self.inner.delete(name)
        if deleted:
            await self._announce("registry")
        return deleted

    def describe(self) -> str:
        return self.inner.describe()


def default_store_location(config_path: str | Path | None) -> str:
    """`<config stem>.registrations.json` beside the config file; memory:// without a config file."""
    if config_path is None:
        return "memory://"
    path = Path(config_path)
    return str(path.with_name(f"{path.stem}.registrations.json"))


def open_store(location: str | None, *, config_path: str | Path | None = None) -> RegistrationStore:
    """The store a location names: a file path (relative to the config's folder), memory:// or redis://."""
    location = location or default_store_location(config_path)
    if location == "memory://":
        return MemoryStore()
    if location.startswith(REDIS_SCHEMES):
        return RedisStore(location)
    if "://" in location:
        raise RegistryError(f"registry {redact_uri(location)!r}: use a file path, memory:// or redis://host:port")
    path = Path(location).expanduser()
    if not path.is_absolute() and config_path is not None:
        path = Path(config_path).parent / path
    return FileStore(path)


class OpenAPIRegistry:
    """The registrations one gateway serves, and how each becomes an `OpenAPIUpstream`.

    `allowed_base_urls` is handed to every upstream it builds, so a registration persisted before
    the allow-list was narrowed is refused when it is loaded again.
    """

    def __init__(
        self,
        store: RegistrationStore,
        *,
        allowed_base_urls: list[str] | None = None,
        allowed_spec_urls: list[str] | None = None,
        spec_dirs: list[Path] | None = None,
    ) -> None:
        self.store = store
        self.allowed_base_urls = list(allowed_base_urls or [])
        # Where a registered document's `$ref`s may lead: URL prefixes and folders on this host.
        self.allowed_spec_urls = list(allowed_spec_urls if allowed_spec_urls is not None else self.allowed_base_urls)
        self.spec_dirs = [Path(d).resolve() for d in spec_dirs or []]
        self.registrations: dict[str, Registration] = {}
        self._spec_dir: Path | None = None

    async def load(self) -> list[Registration]:
        """Read every registration from the store (replaces what is held)."""
        loaded = await self.store.load()
        self.registrations = {r.name: r for r in loaded}
        if loaded:
            logger.info("loaded %d OpenAPI registration(s) from %s", len(loaded), self.store.describe())
        return loaded

    def _document_path(self, registration: Registration) -> Path:
        # Inline documents become files, so the upstream loads them like any other document.
        if self._spec_dir is None:
            self._spec_dir = Path(tempfile.mkdtemp(prefix="mcp-hub-openapi-"))
            atexit.register(shutil.rmtree, self._spec_dir, True)
        path = self._spec_dir / f"{registration.name}.json"
        body = json.dumps(registration.document)
        if not path.exists() or path.read_text() != body:
            path.write_text(body)
        return path

    def build(self, registration: Registration) -> Upstream:
        """An (unstarted) upstream for one registration."""
        spec = str(self._document_path(registration)) if registration.document is not None else registration.spec
        assert spec is not None
        config = OpenAPIUpstreamConfig.model_validate(registration.upstream_config(spec))
        upstream = OpenAPIUpstream(
            registration.name, config, allowed_base_urls=self.allowed_base_urls, document_guard=self.ref_guard
        )
        if not hasattr(type(upstream), "prefix"):
            # The gateway reads an upstream's own prefix first; runtime upstreams are not in the config.
            upstream.prefix = registration.prefix if registration.prefix is not None else registration.name  # type: ignore[attr-defined]
        return upstream

    def configure(self, admin: Any, config_path: str | Path | None) -> None:
        """Take the URL and folder allow-lists of an `AdminConfig` (at start, on reload, on registration)."""
        base = Path(config_path).parent if config_path else Path.cwd()
        self.allowed_base_urls = list(admin.allowed_base_urls)
        self.allowed_spec_urls = list(admin.spec_url_prefixes())
        self.spec_dirs = [(base / d).resolve() for d in admin.spec_dirs]

    def ref_guard(self, uri: str, what: str = "$ref") -> str:
        """Refuse (`URLRefused`) a document a registered document is, or refers to, unless it is under
        an allowed URL prefix or in an allowed folder: a registration must not make the gateway read
        internal URLs or files. Returns the URI to read (a URL in its normalized form).

        The refusal names the key and the reason only: the URI may come from the document."""
        if uri.startswith("file:"):
            path = Path(url2pathname(urlsplit(uri).path)).resolve()
            if self._spec_dir is not None and path.is_relative_to(self._spec_dir.resolve()):
                return uri  # another inline document of this registry
            if any(path.is_relative_to(d) for d in self.spec_dirs):
                return uri
            raise URLRefused(what, "a file on the gateway host outside admin.spec_dirs", listed="admin.spec_dirs",
                             prefix=False)
        return check_url(uri, self.allowed_spec_urls, what, listed="admin.allowed_spec_urls")

    def upstreams(self, taken: set[str]) -> dict[str, Upstream]:
        """Upstreams for every registration whose name the config does not use itself."""
        out: dict[str, Upstream] = {}
        for name, registration in self.registrations.items():
            if name in taken:
                logger.warning("OpenAPI registration %r is shadowed by the config's upstream of that name", name)
                continue
            out[name] = self.build(registration)
        return out
