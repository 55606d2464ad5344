"""The one URL allow-list rule for what runtime registrations may make the gateway request.

Every check of a URL against `admin.allowed_base_urls` / `admin.allowed_spec_urls` goes through
`check_url`: the admin API's `base_url` and `spec`, a document's `servers` (document, path and
operation level, after server variables are substituted), `$ref`s to other documents, a token
URL taken from a document, and, at request time, the URL each request is actually sent to.

The rule:

1. Refuse what is ambiguous instead of guessing how a server reads it: a scheme other than
   http/https, `user:password@`, a backslash, spaces, control and non-ASCII characters, malformed
   percent-encoding, a `#fragment`, a host that is not a plain name or IP literal, a bad port; and,
   in a base, server, spec or `$ref` URL, an encoded slash, backslash or percent sign (`%2F`,
   `%5C`, `%25`: double encoding) that survives step 2.
2. Normalize (RFC 3986 section 6): lower-case scheme and host, drop the default port, decode
   percent-encoded unreserved characters (`%2e` / `%2E` become `.`), upper-case the other
   escapes, remove dot segments (RFC 3986 section 5.2.4).
3. Match on path segment boundaries: same scheme, host and port as a prefix, and a path equal to
   the prefix's or below it. Both the normalized path and the path as the most lenient server
   would read it (escapes decoded repeatedly, backslashes as slashes, repeated slashes merged,
   `..;x` as `..`) must be under the prefix.

Refusals name the key and the reason, never the URL: a URL may come from a fetched document.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote

import anyio
import anyio.to_thread

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_LENGTH = 8192
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_REG_NAME = re.compile(r"^[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?$")
# Escapes that must not survive normalization in a base, server, spec or $ref URL: a slash, a
# backslash or a percent sign (double encoding) that a lenient server would decode into a path step.
_DANGEROUS_ESCAPES = ("%2F", "%5C", "%25", "%00")


class URLRefused(Exception):  # noqa: N818 - a refusal, not a malfunction
    """A URL the allow-list rule refuses. The message names the key (`what`) and the reason, never
    the URL. `code` is `invalid_url` (the URL is malformed or ambiguous), `unresolvable_host` or
    `url_not_allowed`."""

    def __init__(self, what: str, reason: str, *, code: str = "url_not_allowed", listed: str = "allowed base URL",
                 prefix: bool = True):
        self.what = what
        self.reason = reason
        self.code = code
        self.listed = listed
        # `prefix`: refused by the allow-list rule; else refused for its host (or, for a file, its folder).
        super().__init__(f"{what} is not under any {listed}: {reason}" if prefix else f"{what} is refused: {reason}")

    @property
    def status(self) -> int:
        """The HTTP status an API answers the refusal with."""
        return 422 if self.code in ("invalid_url", "unresolvable_host") else 403


@dataclass(frozen=True, slots=True)
class CanonicalURL:
    """A URL after normalization; `str()` is the form that is requested."""

    scheme: str
    host: str  # lower-case; an IPv6 literal keeps its brackets
    port: int
    path: str  # normalized: unreserved characters decoded, dot segments removed; never empty
    query: str | None
    lenient_path: str  # the path as the most lenient server would read it

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def __str__(self) -> str:
        port = "" if DEFAULT_PORTS[self.scheme] == self.port else f":{self.port}"
        query = f"?{self.query}" if self.query is not None else ""
        return f"{self.scheme}://{self.host}{port}{self.path}{query}"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, step by step as the RFC writes it."""
    rest, out = path, []
    while rest:
        if rest.startswith("../"):
            rest = rest[3:]
        elif rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("/./"):
            rest = rest[2:]
        elif rest == "/.":
            rest = "/"
        elif rest.startswith("/../") or rest == "/..":
            rest = "/" + rest[4:]
            if out:
                out.pop()
        elif rest in (".", ".."):
            rest = ""
        else:
            cut = rest.find("/", 1)
            cut = len(rest) if cut < 0 else cut
            out.append(rest[:cut])
            rest = rest[cut:]
    return "".join(out) or "/"


def _decode_unreserved(path: str) -> str:
    def one(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _ESCAPE.sub(one, path)


def _lenient(path: str) -> str:
    """The path as a server that decodes too much would read it."""
    for _ in range(4):  # %25252e... : decode until nothing changes (bounded)
        decoded = unquote(path, errors="replace")
        if decoded == path:
            break
        path = decoded
    path = re.sub(r"/{2,}", "/", path.replace("\\", "/"))
    segments = []
    for segment in path.split("/"):
        bare = segment.split(";", 1)[0]  # `..;x` is `..` to servers that strip path parameters
        segments.append(bare if bare in (".", "..") else segment)
    return remove_dot_segments("/".join(segments) if path.startswith("/") else "/" + "/".join(segments))


def _host(raw: str, what: str) -> str:
    if raw.startswith("["):
        if not raw.endswith("]"):
            raise URLRefused(what, "its host is not a valid name or IP address", code="invalid_url")
        try:
            ipaddress.IPv6Address(raw[1:-1])
        except ValueError:
            raise URLRefused(what, "its host is not a valid name or IP address", code="invalid_url") from None
        return "[" + str(ipaddress.IPv6Address(raw[1:-1])) + "]"
    host = raw.lower()
    if not host or not _REG_NAME.match(host) or ".." in host:
        raise URLRefused(what, "its host is not a valid name or IP address", code="invalid_url")
    return host


def canonical(url: str, what: str = "URL", *, data: bool = False) -> CanonicalURL:
    """`url` normalized, or `URLRefused` (code `invalid_url`) when it is malformed or ambiguous.

    `data=True` is for a URL whose path carries request arguments (the URL a request is sent to):
    encoded slashes, backslashes and percent signs are then data, not refused (the lenient reading
    of the path still has to stay under the prefix)."""
    if not isinstance(url, str) or not url:
        raise URLRefused(what, "it is not a URL", code="invalid_url")
    if len(url) > MAX_URL_LENGTH:
        raise URLRefused(what, "it is too long", code="invalid_url")
    if any(not 0x21 <= ord(c) <= 0x7E for c in url):
        raise URLRefused(what, "it contains a space, control or non-ASCII character", code="invalid_url")
    if "\\" in url:
        raise URLRefused(what, "it contains a backslash", code="invalid_url")
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme not in DEFAULT_PORTS:
        raise URLRefused(what, "it is not an http:// or https:// URL", code="invalid_url")
    rest = url[match.end():] if match else url
    if not rest.startswith("//"):
        raise URLRefused(what, "it is not an absolute http:// or https:// URL", code="invalid_url")
    rest = rest[2:]
    if "#" in rest:
        raise URLRefused(what, "it has a #fragment", code="invalid_url")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, rest = rest[:cut], rest[cut:]
    if "@" in authority:
        raise URLRefused(what, "it carries user:password@ (userinfo)", code="invalid_url")
    if "%" in authority:
        raise URLRefused(what, "its host is percent-encoded", code="invalid_url")
    host_part, port_text = authority, ""
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise URLRefused(what, "its host is not a valid name or IP address", code="invalid_url")
        host_part, tail = authority[: end + 1], authority[end + 1:]
        if tail and not tail.startswith(":"):
            raise URLRefused(what, "its host is not a valid name or IP address", code="invalid_url")
        port_text = tail[1:]
    elif ":" in authority:
        host_part, _, port_text = authority.partition(":")
    host = _host(host_part, what)
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise URLRefused(what, "its port is not a number in 1-65535", code="invalid_url")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    path, _, query = rest.partition("?")
    has_query = "?" in rest
    if _BAD_ESCAPE.search(path) or (has_query and _BAD_ESCAPE.search(query)):
        raise URLRefused(what, "it has a malformed percent-encoding", code="invalid_url")
    path = _decode_unreserved(path or "/")
    if not path.startswith("/"):
        path = "/" + path
    if not data and any(escape in path for escape in _DANGEROUS_ESCAPES):
        raise URLRefused(what, "it contains an encoded slash, backslash or percent sign", code="invalid_url")
    if not data and any(seg.split(";", 1)[0] in (".", "..") and ";" in seg for seg in path.split("/")):
        raise URLRefused(what, "it contains a dot segment with parameters (`..;`)", code="invalid_url")
    return CanonicalURL(scheme, host, port, remove_dot_segments(path), query if has_query else None, _lenient(path))


def _path_under(path: str, base: str) -> bool:
    base = base.rstrip("/")
    return not base or path == base or path.startswith(base + "/")


def _prefixes(prefixes: Iterable[str]) -> list[CanonicalURL]:
    out = []
    for prefix in prefixes:
        try:
            out.append(canonical(prefix, "prefix"))
        except URLRefused:
            continue  # a prefix the rule cannot read allows nothing
    return out


def matching_prefixes(url: CanonicalURL, prefixes: Iterable[str]) -> list[CanonicalURL]:
    """The prefixes `url` lies under (origin equal; both readings of its path below the prefix's)."""
    return [
        p for p in _prefixes(prefixes)
        if p.origin == url.origin and _path_under(url.path, p.path) and _path_under(url.lenient_path, p.path)
    ]


def check_url(
    url: str, prefixes: Iterable[str] | None, what: str, *, data: bool = False, listed: str = "allowed base URL"
) -> str:
    """The normalized form of `url` (the one to request) if it lies under one of `prefixes`; else
    `URLRefused`. `prefixes=None` means no allow-list: only the syntax rules apply."""
    try:
        parsed = canonical(url, what, data=data)
    except URLRefused as exc:
        raise URLRefused(what, exc.reason, code=exc.code, listed=listed) from None
    if prefixes is not None and not matching_prefixes(parsed, prefixes):
        raise URLRefused(what, "no prefix matches its normalized scheme, host, port and path", listed=listed)
    return str(parsed)


def url_allowed(url: str, prefixes: Iterable[str], *, data: bool = False) -> bool:
    """Whether `check_url` accepts `url` under `prefixes`."""
    try:
        check_url(url, prefixes, "URL", data=data)
    except URLRefused:
        return False
    return True


# -- hosts that resolve to this machine ----------------------------------------------------------


def _internal_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def literal_internal_host(host: str) -> bool:
    """Whether `host` names a loopback, link-local or unspecified address literally (or `localhost`)."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return _internal_address(host.strip("[]"))
    except ValueError:
        return False


async def check_host(url: str, prefixes: Iterable[str], what: str, *, listed: str = "allowed base URL") -> None:
    """Refuse a URL (already accepted by `check_url`) whose host name resolves to a loopback or
    link-local address, unless the URL or its matching prefix names such a host literally."""
    parsed = canonical(url, what, data=True)
    if literal_internal_host(parsed.host) or any(
        literal_internal_host(p.host) for p in matching_prefixes(parsed, prefixes)
    ):
        return  # named literally by the operator: allowed on purpose
    host = parsed.host.strip("[]")
    try:
        infos = await anyio.to_thread.run_sync(
            lambda: socket.getaddrinfo(host, parsed.port, type=socket.SOCK_STREAM)
        )
    except OSError:
        raise URLRefused(what, "its host does not resolve", code="unresolvable_host", listed=listed,
                         prefix=False) from None
    if any(_internal_address(str(info[4][0])) for info in infos):
        raise URLRefused(what, f"its host resolves to a loopback or link-local address; list such an address "
                         f"literally in {listed} to allow it", listed=listed, prefix=False)
