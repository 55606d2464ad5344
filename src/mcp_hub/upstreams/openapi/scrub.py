"""Removing the secrets an upstream holds from everything it hands on: tool results, error texts, logs.

A secret can come back from an API in many spellings: as sent, percent-encoded (either hex case,
`+` for space, twice), JSON-escaped (`\\/`, `\\u0041`), HTML-escaped, or inside base64 (HTTP Basic
is `base64(user:password)`; a JSON body may embed a base64 blob). `Scrubber` replaces every one of
them; percent-encodings it has no spelling for are caught by decoding each URL-like token and
looking again, and JSON is checked after parsing, so `\\uXXXX` escapes hide nothing.

`KNOWN_SECRETS` is the process-wide registry the upstreams add the secrets they hold to; the log
redaction processor (`metering.observability`) scrubs every log line with it.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus

import mcp_types as types

REDACTED = "***"
MIN_SECRET = 3  # shorter values would blank ordinary text
MIN_BASE64_CORE = 8
_HEX = re.compile(r"%[0-9A-F]{2}")
# A token that may be a URL or a form / query string (maximal runs: matching is linear in the text).
_TOKEN = re.compile(r"[^\s\"'<>()\[\]{},`]+")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _base64_cores(raw: bytes) -> set[str]:
    """The base64 characters that depend on `raw` alone, at each of the three alignments `raw` can
    have inside a longer encoded value, in both alphabets: present in any base64 text holding it."""
    out: set[str] = set()
    n = len(raw)
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw + b"\0\0").decode("ascii")
        start, end = -(-8 * offset // 6), (8 * offset + 8 * n) // 6
        core = encoded[start:end]
        if len(core) >= MIN_BASE64_CORE:
            out |= {core, core.replace("+", "-").replace("/", "_")}
    return out


def encodings(secret: str) -> set[str]:
    """The spellings of `secret` looked for in text."""
    forms = {secret}
    for encoded in (quote(secret, safe=""), quote(secret), quote_plus(secret), quote(quote(secret, safe=""), safe="")):
        forms |= {encoded, _HEX.sub(lambda m: m.group(0).lower(), encoded)}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    forms |= {html.escape(secret), html.escape(secret, quote=False)}
    # Inside base64 as it is, and form-encoded first (OAuth client_secret_basic, RFC 6749 section 2.3.1).
    for raw in {secret, quote(secret, safe=""), quote_plus(secret)}:
        forms |= _base64_cores(raw.encode("utf-8"))
    return {f for f in forms if len(f) >= MIN_SECRET}


class Scrubber:
    """Replaces every spelling of a set of secrets (see the module's docstring)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET},
                                    key=len, reverse=True))
        forms: set[str] = set()
        for secret in self.secrets:
            forms |= encodings(secret)
        self._pattern = (
            re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))) if forms else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def _hidden_in(self, token: str) -> bool:
        """Whether `token` holds a secret percent-encoded in a spelling `encodings` does not list."""
        seen = token
        for _ in range(3):  # percent-encoded once, twice, three times
            views = [unquote(seen, errors="replace")]
            if "+" in seen:
                views.append(unquote_plus(seen, errors="replace"))
            if any(secret in view for view in views for secret in self.secrets):
                return True
            if views[0] == seen or not _ESCAPE.search(views[0]):
                return False
            seen = views[0]
        return False

    def text(self, text: str, marker: str = REDACTED) -> str:
        """`text` with every secret spelling replaced by `marker`."""
        if self._pattern is None or not text:
            return text
        text = self._pattern.sub(marker, text)
        if "%" not in text:
            return text
        parts, last = [], 0
        for match in _TOKEN.finditer(text):
            token = match.group(0)
            if "%" in token and _ESCAPE.search(token) and self._hidden_in(token):
                parts += [text[last:match.start()], marker]
                last = match.end()
        return "".join([*parts, text[last:]]) if parts else text

    def value(self, value: Any, marker: str = REDACTED) -> Any:
        """A JSON value with every string (keys too) scrubbed."""
        if isinstance(value, str):
            return self.text(value, marker)
        if isinstance(value, dict):
            return {self.text(k, marker) if isinstance(k, str) else k: self.value(v, marker) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v, marker) for v in value]
        return value

    def json_text(self, text: str) -> str:
        """Scrubbed text; a JSON document is also checked after parsing (escapes hide nothing) and
        written out again if a secret was in it."""
        text = self.text(text)
        # Every other JSON escape of a secret is one of `encodings`; only `\\uXXXX` needs a parse.
        if self._pattern is None or "\\u" not in text or text.lstrip()[:1] not in ("{", "["):
            return text
        try:
            parsed = json.loads(text)
        except ValueError:
            return text
        cleaned = self.value(parsed)
        return text if cleaned == parsed else json.dumps(cleaned, ensure_ascii=False)

    def body(self, body: bytes) -> bytes:
        """A response body with every secret spelling removed (text, JSON or binary)."""
        if self._pattern is None or not body:
            return body
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            # Binary: latin-1 maps bytes to characters one to one, so only matched bytes change.
            cleaned = self.text(body.decode("latin-1"))
            return cleaned.encode("latin-1", errors="replace")
        cleaned = self.json_text(text)
        return body if cleaned == text else cleaned.encode("utf-8")

    def result(self, result: types.CallToolResult) -> types.CallToolResult:
        """A tool result with its texts, structured content and resource URIs scrubbed."""
        if self._pattern is None:
            return result
        blocks: list[types.ContentBlock] = []
        for block in result.content:
            if isinstance(block, types.TextContent):
                block = block.model_copy(update={"text": self.json_text(block.text)})
            elif isinstance(block, types.EmbeddedResource):
                resource = block.resource
                update: dict[str, Any] = {"uri": self.text(str(resource.uri))}
                if isinstance(resource, types.TextResourceContents):
                    update["text"] = self.json_text(resource.text)
                block = block.model_copy(update={"resource": resource.model_copy(update=update)})
            blocks.append(block)
        update = {"content": blocks}
        if result.structured_content is not None:
            update["structured_content"] = self.value(result.structured_content)
        return result.model_copy(update=update)


class SecretRegistry:
    """The secrets this process holds for its upstreams, so that every log line can be scrubbed.

    Static secrets (API keys, passwords, client secrets) stay for the life of the process; rotating
    ones (access tokens) are kept for the last `rotating_limit` values.
    """

    def __init__(self, rotating_limit: int = 32) -> None:
        self._lock = threading.Lock()
        self._static: dict[str, None] = {}
        self._rotating: OrderedDict[str, None] = OrderedDict()
        self.rotating_limit = rotating_limit
        self.version = 0
        self._scrubber = Scrubber(())

    def add(self, *secrets: str | None, rotating: bool = False) -> None:
        """Remember secret values (too short or empty values are ignored)."""
        fresh = [s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET]
        with self._lock:
            changed = False
            for secret in fresh:
                if secret in self._static:
                    continue
                if rotating:
                    if secret in self._rotating:
                        self._rotating.move_to_end(secret)
                        continue
                    self._rotating[secret] = None
                    while len(self._rotating) > self.rotating_limit:
                        self._rotating.popitem(last=False)
                else:
                    self._rotating.pop(secret, None)
                    self._static[secret] = None
                changed = True
            if changed:
                self._scrubber = Scrubber([*self._static, *self._rotating])
                self.version += 1

    def scrubber(self) -> Scrubber:
        """A scrubber for every remembered secret (replaced, not changed, when one is added)."""
        return self._scrubber

    def scrub(self, text: str, marker: str = REDACTED) -> str:
        """`text` without any remembered secret, in any spelling."""
        return self._scrubber.text(text, marker)

    def clear(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._static.clear()
            self._rotating.clear()
            self._scrubber = Scrubber(())
            self.version += 1


KNOWN_SECRETS = SecretRegistry()

# Header names that carry a credential; not identity claims a gateway forwards (X-Auth-User, X-Session-Id).
_SECRET_HEADER = re.compile(
    r"^(proxy-)?authorization$|^cookie$|token|secret|passw|api-?key|(^|[-_])key$|signature|credential", re.IGNORECASE
)


def secret_header_values(headers: dict[str, str]) -> tuple[str, ...]:
    """Values of headers whose names say they carry a credential (static and per-call headers)."""
    return tuple(value for name, value in headers.items() if _SECRET_HEADER.search(name) and value)
