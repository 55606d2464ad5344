"""Building HTTP requests from tool arguments, and results from responses (pure functions)."""

from __future__ import annotations

import base64
import json
from urllib.parse import unquote

import mcp_types as types
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_hub.upstreams.openapi.convert import BodyBinding, OperationBinding, ParameterBinding, PartEncoding
from mcp_hub.upstreams.openapi.credentials import redact
from mcp_hub.upstreams.openapi.request import ArgumentError, build_request, response_to_result


def binding(*params: ParameterBinding, path: str = "/x", body: BodyBinding | None = None,
            output: bool = False) -> OperationBinding:
    return OperationBinding("t", "GET", path, None, tuple(params), body, has_output_schema=output)


def query(name: str, style: str = "form", explode: bool = True, **kw: object) -> ParameterBinding:
    return ParameterBinding(name, name, "query", style, explode, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("param", "value", "expected"), [
    (query("a"), ["x", "y z"], ["a=x", "a=y%20z"]),
    (query("a", explode=False), ["x", "y,z"], ["a=x,y%2Cz"]),
    (query("a", "spaceDelimited", False), [1, 2], ["a=1%202"]),
    (query("a", "pipeDelimited", False), [1, 2], ["a=1|2"]),
    (query("a", "deepObject"), {"k": "v", "n": {"m": 1}}, ["a[k]=v", "a[n][m]=1"]),
    (query("a"), {"k": "v", "j": True}, ["k=v", "j=true"]),
    (query("a", explode=False), {"k": "v", "j": 2}, ["a=k,v,j,2"]),
    (query("a"), "x&y=z", ["a=x%26y%3Dz"]),
    (query("a", allow_reserved=True), "x/y:z", ["a=x/y:z"]),
    (query("a", content_type="application/json"), {"k": [1]}, ['a=%7B%22k%22%3A%5B1%5D%7D']),
    (query("$top"), 5, ["%24top=5"]),
])
def test_query_styles(param: ParameterBinding, value: object, expected: list[str]) -> None:
    assert build_request(binding(param), {param.arg: value}, "http://h").query == expected


@pytest.mark.parametrize(("style", "explode", "value", "expected"), [
    ("simple", False, "a b", "/x/a%20b"),
    ("simple", False, [1, 2], "/x/1,2"),
    ("simple", True, {"a": 1, "b": 2}, "/x/a=1,b=2"),
    ("simple", False, {"a": 1, "b": 2}, "/x/a,1,b,2"),
    ("label", False, [1, 2], "/x/.1,2"),
    ("label", True, [1, 2], "/x/.1.2"),
    ("matrix", False, 5, "/x/;p=5"),
    ("matrix", True, [1, 2], "/x/;p=1;p=2"),
    ("matrix", True, {"a": 1}, "/x/;a=1"),
])
def test_path_styles(style: str, explode: bool, value: object, expected: str) -> None:
    param = ParameterBinding("p", "p", "path", style, explode, True)
    spec = build_request(binding(param, path="/x/{p}"), {"p": value}, "http://h/base/")
    assert spec.url == "http://h/base" + expected


def test_dot_segments_and_empty_values_cannot_move_the_path() -> None:
    param = ParameterBinding("p", "p", "path", "simple", False, True)
    label = ParameterBinding("p", "p", "path", "label", False, True)
    assert build_request(binding(param, path="/x/{p}/y"), {"p": ".."}, "http://h").url == "http://h/x/%2E%2E/y"
    assert build_request(binding(label, path="/x/{p}"), {"p": "."}, "http://h").url == "http://h/x/%2E%2E"
    with pytest.raises(ArgumentError, match="cannot be empty"):
        build_request(binding(param, path="/x/{p}"), {"p": ""}, "http://h")
    with pytest.raises(ArgumentError, match="missing required argument 'p'"):
        build_request(binding(param, path="/x/{p}"), {}, "http://h")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1))
def test_any_path_value_stays_one_segment(value: str) -> None:
    param = ParameterBinding("p", "p", "path", "simple", False, True)
    url = build_request(binding(param, path="/files/{p}/meta"), {"p": value}, "http://h/api").url
    path = url[len("http://h"):]
    segments = path.split("/")
    assert segments[:3] == ["", "api", "files"] and segments[4:] == ["meta"] and len(segments) == 5
    assert unquote(segments[3]) == value
    assert segments[3] not in (".", "..") and "?" not in path and "#" not in path


def test_headers_and_cookies() -> None:
    params = (ParameterBinding("h", "X-H", "header", "simple", False),
              ParameterBinding("o", "X-O", "header", "simple", True),
              ParameterBinding("c", "sid", "cookie", "form", True),
              ParameterBinding("d", "list", "cookie", "form", False))
    spec = build_request(binding(*params), {"h": [1, 2], "o": {"a": 1}, "c": "a;b", "d": ["x", "y"]}, "http://h")
    assert spec.headers == {"X-H": "1,2", "X-O": "a=1"}
    assert spec.cookie_header() == "sid=a%3Bb; list=x,y"
    with pytest.raises(ArgumentError, match="line breaks"):
        build_request(binding(params[0]), {"h": "a\r\nInjected: 1"}, "http://h")


def test_fixed_query_and_fragment_in_path_keys() -> None:
    spec = build_request(binding(query("b"), path="/search?kind=user#v2"), {"b": 1}, "http://h")
    assert spec.full_url() == "http://h/search?kind=user&b=1"


def test_bodies() -> None:
    flat = BodyBinding("application/vnd.api+json", "json", True, fields={"n": "name"})
    spec = build_request(binding(body=flat), {"n": "x"}, "http://h")
    assert spec.content == b'{"name":"x"}' and spec.headers["Content-Type"] == "application/vnd.api+json"
    optional = BodyBinding("application/json", "json", False, fields={"n": "name"})
    assert build_request(binding(body=optional), {}, "http://h").content is None
    form = BodyBinding("application/x-www-form-urlencoded", "form", True, fields={"a": "a", "l": "l", "o": "o"},
                       encoding={"o": PartEncoding(style="deepObject", explode=True, declared_style=True)})
    spec = build_request(binding(body=form), {"a": "x y&", "l": [1, 2], "o": {"k": "v"}}, "http://h")
    assert spec.content == b"a=x+y%26&l=1&l=2&o%5Bk%5D=v"
    multi = BodyBinding("multipart/form-data", "multipart", True, arg="body", binary_fields=frozenset({"f"}),
                        encoding={"s": PartEncoding(style="form", explode=False, declared_style=True)})
    spec = build_request(binding(body=multi), {"body": {"f": base64.b64encode(b"\x00").decode(), "j": {"a": 1},
                                                        "s": ["a", "b"], "t": 3}}, "http://h")
    assert spec.files == [("f", ("f", b"\x00", "application/octet-stream")), ("j", (None, b'{"a":1}', "application/json")),
                          ("s", (None, b"a,b", None)), ("t", (None, b"3", None))]
    raw = BodyBinding("image/*", "binary", True, arg="body", binary_fields=frozenset({"body"}))
    spec = build_request(binding(body=raw), {"body": base64.b64encode(b"img").decode()}, "http://h")
    assert spec.content == b"img" and spec.headers["Content-Type"] == "application/octet-stream"


def test_results() -> None:
    plain = binding(output=False)
    with_output = binding(output=True)
    ok = response_to_result(with_output, 200, "OK", "application/json", b'{"a":1}', None, "http://h/x")
    assert ok.structured_content == {"a": 1} and json.loads(ok.content[0].text) == {"a": 1}  # type: ignore[union-attr]
    listed = response_to_result(plain, 200, "OK", "application/json; charset=utf-8", b"[1]", None, "u")
    assert listed.structured_content is None and "structured_content" not in listed.model_fields_set
    error = response_to_result(plain, 500, "Internal Server Error", "text/plain", b"x" * 5000, None, "u")
    assert error.is_error and error.content[0].text.startswith("HTTP 500 Internal Server Error from GET /x: xxx")  # type: ignore[union-attr]
    assert len(error.content[0].text) < 2100  # type: ignore[union-attr]
    empty = response_to_result(with_output, 204, "No Content", "", b"", None, "u")
    assert empty.structured_content == {} and not empty.is_error
    pdf = response_to_result(plain, 200, "OK", "application/pdf", b"%PDF", None, "http://h/doc")
    assert isinstance(pdf.content[0], types.EmbeddedResource)
    assert pdf.content[0].resource.uri == "http://h/doc"


def test_redact() -> None:
    assert redact("token abc123 and abc123", ["abc123", ""]) == "token *** and ***"
