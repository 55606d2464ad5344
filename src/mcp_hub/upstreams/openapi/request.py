"""Tool arguments to an HTTP request, and an HTTP response to a `CallToolResult`.

Pure functions: no I/O here, so every serialization rule has a plain unit test.

Path parameters are percent-encoded whole (`/` becomes `%2F`) and a value that would form a `.` or
`..` segment is encoded too, so no argument can leave its path segment. Query parameters follow
the OpenAPI style/explode rules (form, spaceDelimited, pipeDelimited, deepObject).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import mcp_types as types

from mcp_hub.upstreams.openapi.convert import BodyBinding, OperationBinding, ParameterBinding

MAX_ERROR_BODY = 2000
# RFC 3986 reserved characters that `allowReserved: true` leaves unencoded in query values.
_RESERVED = ":/?#[]@!$&'()*+,;="
_TEXT_TYPES = re.compile(r"^(text/|application/(.*[+/])?(json|xml|javascript|yaml|x-yaml|x-www-form-urlencoded|csv|graphql)\b)")


class ArgumentError(ValueError):
    """Arguments that cannot be turned into the request (the message says which and why)."""


@dataclass(slots=True)
class RequestSpec:
    """An HTTP request before credentials are added; `query` holds encoded `name=value` strings."""

    method: str
    url: str
    query: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    cookies: list[tuple[str, str]] = field(default_factory=list)
    content: bytes | None = None
    files: list[tuple[str, tuple[str | None, bytes, str | None]]] | None = None

    def full_url(self) -> str:
        """The URL with its query string."""
        return f"{self.url}?{'&'.join(self.query)}" if self.query else self.url

    def cookie_header(self) -> str | None:
        """The `Cookie` header for `cookies`, if any."""
        return "; ".join(f"{name}={value}" for name, value in self.cookies) or None


def scalar(value: Any) -> str:
    """A primitive as OpenAPI serializes it (`true`, `1.5`, text); structures as compact JSON."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return json.dumps(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _enc(value: Any, *, reserved: bool = False) -> str:
    return quote(scalar(value), safe=_RESERVED if reserved else "")


# -- path ------------------------------------------------------------------------------------


def _path_value(binding: ParameterBinding, value: Any) -> str:
    style, explode = binding.style, binding.explode
    if isinstance(value, list):
        items = [_enc(v) for v in value]
        if style == "label":
            return "." + ("." if explode else ",").join(items)
        if style == "matrix":
            if explode:
                return "".join(f";{quote(binding.name, safe='')}={v}" for v in items)
            return f";{quote(binding.name, safe='')}=" + ",".join(items)
        return ",".join(items)
    if isinstance(value, dict):
        if explode:
            pairs = [f"{quote(str(k), safe='')}={_enc(v)}" for k, v in value.items()]
        else:
            pairs = [f"{quote(str(k), safe='')},{_enc(v)}" for k, v in value.items()]
        if style == "label":
            return "." + ("." if explode else ",").join(pairs)
        if style == "matrix":
            if explode:
                return "".join(f";{p}" for p in pairs)
            return f";{quote(binding.name, safe='')}=" + ",".join(pairs)
        return ",".join(pairs)
    text = _enc(value)
    if style == "label":
        return "." + text
    if style == "matrix":
        return f";{quote(binding.name, safe='')}={text}"
    return text


def build_path(template: str, values: dict[str, str]) -> str:
    """Fill a path template; `values` are encoded already. A filled segment is never `.` or `..`."""
    segments = []
    for segment in template.split("/"):
        filled = re.sub(r"{([^{}/]+)}", lambda m: values.get(m.group(1), m.group(0)), segment)
        if filled != segment and filled.strip(".") == "" and filled:
            filled = filled.replace(".", "%2E")  # a dot segment would climb out of the path
        segments.append(filled)
    return "/".join(segments)


# -- query, headers, cookies -------------------------------------------------------------------


def _query_pairs(binding: ParameterBinding, value: Any) -> list[str]:
    name = quote(binding.name, safe="")
    reserved = binding.allow_reserved
    if binding.content_type is not None:
        return [f"{name}={quote(json.dumps(value, separators=(',', ':')), safe='')}"]
    style, explode = binding.style, binding.explode
    if isinstance(value, list):
        items = [_enc(v, reserved=reserved) for v in value]
        if style == "spaceDelimited" and not explode:
            return [f"{name}={'%20'.join(items)}"]
        if style == "pipeDelimited" and not explode:
            return [f"{name}={'|'.join(items)}"]
        if explode:
            return [f"{name}={v}" for v in items]
        return [f"{name}={','.join(items)}"]
    if isinstance(value, dict):
        if style == "deepObject":
            return _deep_object(name, value, reserved)
        if explode:
            return [f"{quote(str(k), safe='')}={_enc(v, reserved=reserved)}" for k, v in value.items()]
        flat = ",".join(f"{quote(str(k), safe='')},{_enc(v, reserved=reserved)}" for k, v in value.items())
        return [f"{name}={flat}"]
    return [f"{name}={_enc(value, reserved=reserved)}"]


def _deep_object(prefix: str, value: dict[str, Any], reserved: bool) -> list[str]:
    out = []
    for key, item in value.items():
        name = f"{prefix}[{quote(str(key), safe='')}]"
        if isinstance(item, dict):
            out.extend(_deep_object(name, item, reserved))
        elif isinstance(item, list):
            out.extend(f"{name}={_enc(v, reserved=reserved)}" for v in item)
        else:
            out.append(f"{name}={_enc(item, reserved=reserved)}")
    return out


def _simple(value: Any, explode: bool) -> str:
    if isinstance(value, list):
        return ",".join(scalar(v) for v in value)
    if isinstance(value, dict):
        sep = "=" if explode else ","
        return ",".join(f"{k}{sep}{scalar(v)}" for k, v in value.items())
    return scalar(value)


def _header_value(binding: ParameterBinding, value: Any) -> str:
    text = json.dumps(value, separators=(",", ":")) if binding.content_type else _simple(value, binding.explode)
    if any(c in text for c in "\r\n\0"):
        raise ArgumentError(f"argument {binding.arg!r}: a header value cannot contain line breaks")
    return text


def _cookie_value(binding: ParameterBinding, value: Any) -> str:
    if binding.content_type:
        return quote(json.dumps(value, separators=(",", ":")), safe="")
    if isinstance(value, list):
        return ",".join(_enc(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{quote(str(k), safe='')},{_enc(v)}" for k, v in value.items())
    return _enc(value)


# -- bodies ----------------------------------------------------------------------------------


def _b64(arg: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise ArgumentError(f"argument {arg!r}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ArgumentError(f"argument {arg!r}: not valid base64") from None


def _body_value(body: BodyBinding, arguments: dict[str, Any]) -> tuple[bool, Any]:
    """Whether a body is sent, and its value."""
    if body.fields is not None:
        value = {wire: arguments[arg] for arg, wire in body.fields.items() if arg in arguments}
        return bool(value) or body.required, value
    assert body.arg is not None
    if body.arg not in arguments:
        return False, None
    return True, arguments[body.arg]


def _form_pairs(body: BodyBinding, value: dict[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        enc = body.encoding.get(key)
        if item is None:
            continue
        if isinstance(item, list) and not (enc and enc.content_type and "json" in enc.content_type):
            if enc is None or enc.explode:
                pairs.extend((key, scalar(v)) for v in item)
            else:
                sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(enc.style, ",")
                pairs.append((key, sep.join(scalar(v) for v in item)))
        elif isinstance(item, dict) and enc is not None and enc.style == "deepObject":
            pairs.extend(_deep_pairs(key, item))
        else:
            pairs.append((key, scalar(item)))
    return pairs


def _deep_pairs(prefix: str, value: dict[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, item in value.items():
        name = f"{prefix}[{key}]"
        if isinstance(item, dict):
            out.extend(_deep_pairs(name, item))
        elif isinstance(item, list):
            out.extend((name, scalar(v)) for v in item)
        else:
            out.append((name, scalar(item)))
    return out


def _multipart(body: BodyBinding, value: dict[str, Any]) -> list[tuple[str, tuple[str | None, bytes, str | None]]]:
    parts: list[tuple[str, tuple[str | None, bytes, str | None]]] = []

    def text(name: str, item: Any, content_type: str | None = None) -> None:
        parts.append((name, (None, scalar(item).encode(), content_type)))

    for key, item in value.items():
        enc = body.encoding.get(key)
        declared = enc.content_type.split(",")[0].strip() if enc and enc.content_type else None
        # OpenAPI 3.1.1 lets `style` apply to multipart too; without one, objects travel as JSON parts.
        styled = enc is not None and enc.declared_style and not (declared and "json" in declared)
        if item is None:
            continue
        if key in body.binary_fields:
            for one in item if isinstance(item, list) else [item]:
                parts.append((key, (key, _b64(key, one), declared or "application/octet-stream")))
        elif styled and isinstance(item, dict):
            assert enc is not None
            if enc.style == "deepObject":
                for name, part in _deep_pairs(key, item):
                    text(name, part)
            elif enc.explode:
                for name, part in item.items():
                    text(str(name), part)
            else:
                text(key, ",".join(f"{k},{scalar(v)}" for k, v in item.items()))
        elif styled and isinstance(item, list):
            assert enc is not None
            if enc.explode and enc.style == "form":
                for one in item:
                    text(key, one)
            else:
                sep = {"spaceDelimited": " ", "pipeDelimited": "|"}.get(enc.style, ",")
                text(key, sep.join(scalar(v) for v in item))
        elif isinstance(item, dict) or (isinstance(item, list) and declared and "json" in declared):
            parts.append((key, (None, json.dumps(item, separators=(",", ":")).encode(), declared or "application/json")))
        elif isinstance(item, list):
            for one in item:
                text(key, one, declared)
        else:
            text(key, item, declared)
    return parts


def _apply_body(spec: RequestSpec, body: BodyBinding, arguments: dict[str, Any]) -> None:
    send, value = _body_value(body, arguments)
    if not send:
        return
    media = body.media_type
    if body.kind == "json":
        spec.content = json.dumps(value if value is not None else {}, separators=(",", ":"), ensure_ascii=False).encode()
        spec.headers["Content-Type"] = media
    elif body.kind == "form":
        if not isinstance(value, dict):
            raise ArgumentError(f"argument {body.arg!r}: a form body must be an object")
        spec.content = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in _form_pairs(body, value)).encode()
        spec.headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body.kind == "multipart":
        if not isinstance(value, dict):
            raise ArgumentError(f"argument {body.arg!r}: a multipart body must be an object")
        spec.files = _multipart(body, value)  # the HTTP client writes the boundary and Content-Type
    elif body.kind == "text":
        spec.content = scalar(value).encode()
        spec.headers["Content-Type"] = media
    else:
        spec.content = _b64(body.arg or "body", value) if body.arg in body.binary_fields else scalar(value).encode()
        spec.headers["Content-Type"] = media if "*" not in media else "application/octet-stream"


# -- the whole request -------------------------------------------------------------------------


def build_request(binding: OperationBinding, arguments: dict[str, Any], base_url: str) -> RequestSpec:
    """The HTTP request for a tool call (without credentials)."""
    path_values: dict[str, str] = {}
    spec = RequestSpec(method=binding.method, url="")
    for param in binding.parameters:
        if param.arg not in arguments or arguments[param.arg] is None:
            if param.required:
                raise ArgumentError(f"missing required argument {param.arg!r}")
            continue
        value = arguments[param.arg]
        if param.location == "path":
            encoded = _path_value(param, value)
            if encoded == "":
                raise ArgumentError(f"argument {param.arg!r}: a path parameter cannot be empty")
            path_values[param.name] = encoded
        elif param.location == "query":
            spec.query.extend(_query_pairs(param, value))
        elif param.location == "header":
            spec.headers[param.name] = _header_value(param, value)
        else:
            spec.cookies.append((param.name, _cookie_value(param, value)))
    if binding.body is not None:
        _apply_body(spec, binding.body, arguments)
    # Some documents write a fixed query ("/search?kind=user") or a disambiguating fragment
    # ("/pets#v2") into a path key: the fragment is never sent, the fixed query is.
    template, _, fixed_query = binding.path.split("#", 1)[0].partition("?")
    if fixed_query:
        spec.query[:0] = [part for part in fixed_query.split("&") if part]
    spec.url = base_url.rstrip("/") + build_path(template if template.startswith("/") else "/" + template, path_values)
    return spec


# -- the response ----------------------------------------------------------------------------


def _trim(text: str, limit: int = MAX_ERROR_BODY) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


def is_text_type(content_type: str) -> bool:
    """Whether a response of this media type is text (JSON, XML, YAML, text/*, ...)."""
    return bool(_TEXT_TYPES.match(content_type.split(";", 1)[0].strip().lower())) or "charset=" in content_type.lower()


def _no_value(binding: OperationBinding) -> dict[str, Any] | None:
    """Structured content for an answer without a JSON value: what the output schema admits."""
    if not binding.has_output_schema:
        return None
    # A wrapped schema requires `result`; output schemas admit null at every level.
    return {"result": None} if binding.output_wrapped else {}


def _result(content: list[types.ContentBlock], structured: dict[str, Any] | None = None) -> types.CallToolResult:
    # structured_content is left unset (not None) when absent: clients treat an explicit null as content.
    if structured is None:
        return types.CallToolResult(content=content)
    return types.CallToolResult(content=content, structured_content=structured)


def response_to_result(
    binding: OperationBinding,
    status: int,
    reason: str,
    content_type: str,
    body: bytes,
    location: str | None,
    resource_uri: str,
) -> types.CallToolResult:
    """A `CallToolResult` for an HTTP response (status, headers and body already read)."""
    label = f"{binding.method} {binding.path}"
    media = content_type.split(";", 1)[0].strip().lower()
    charset = re.search(r"charset=([\w-]+)", content_type, re.I)
    if 300 <= status < 400:
        where = f"; Location: {location}" if location else ""
        return _result([types.TextContent(text=f"HTTP {status} {reason} from {label}{where}")],
                       _no_value(binding))
    if status < 200 or status >= 300:
        text = body.decode(charset.group(1) if charset else "utf-8", errors="replace")
        detail = f": {_trim(text)}" if text.strip() else ""
        return types.CallToolResult(
            content=[types.TextContent(text=f"HTTP {status} {reason} from {label}{detail}")], is_error=True
        )
    if not body:
        structured = _no_value(binding)
        return _result([types.TextContent(text=f"HTTP {status} {reason} (no content)")], structured)
    if "json" in media or (not media and body[:1] in (b"{", b"[")):
        text = body.decode(charset.group(1) if charset else "utf-8", errors="replace")
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        structured = None
        if binding.output_wrapped:
            # A non-object answer travels as `{"result": <answer>}`, as its output schema says.
            structured = {"result": parsed}
        elif binding.has_output_schema:
            # The client validates structured content against the output schema: send an object.
            structured = parsed if isinstance(parsed, dict) else {}
        return _result([types.TextContent(text=text)], structured)
    if is_text_type(content_type) or not media:
        try:
            text = body.decode(charset.group(1) if charset else "utf-8")
        except (UnicodeDecodeError, LookupError):
            text = None
        if text is not None:
            return _result([types.TextContent(text=text)], _no_value(binding))
    data = base64.b64encode(body).decode("ascii")
    media = media or "application/octet-stream"
    if media.startswith("image/"):
        content: list[types.ContentBlock] = [types.ImageContent(data=data, mime_type=media)]
    else:
        content = [types.EmbeddedResource(
            resource=types.BlobResourceContents(uri=resource_uri, mime_type=media, blob=data)
        )]
    return _result(content, _no_value(binding))
