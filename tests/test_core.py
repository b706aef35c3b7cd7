"""The sans-I/O decisions, as tables (no file, no socket, no clock)."""

from __future__ import annotations

import logging
from types import MappingProxyType

import pytest

from deploysync import core
from deploysync.core import (
    MAX_HEADER_VALUE,
    Request,
    Snapshot,
    StaticFile,
    choose_variant,
    decide,
    edit_response,
    if_none_match_hits,
    if_range_allows,
    is_outdated,
    make_request,
    parse_accept_encoding,
    parse_range,
)
from deploysync.manifest import is_safe_name

ETAG = b'"0123456789abcdef0123456789abcdef"'
DATA = bytes(range(256)) * 4  # 1024 bytes


def _file(
    encodings: tuple[str, ...] = ("gzip", "br"), sizes: dict[str, int] | None = None
) -> StaticFile:
    vary = bool(encodings)
    identity = core.make_variant(
        None, etag=ETAG, content_type=b"text/css", size=len(DATA), data=DATA, path=None, vary=vary
    )
    variants = {
        enc: core.make_variant(
            enc,
            etag=ETAG[:-1] + b"-" + enc.encode() + b'"',
            content_type=b"text/css",
            size=(sizes or {}).get(enc, 10),
            data=b"x" * (sizes or {}).get(enc, 10),
            path=None,
            vary=True,
        )
        for enc in encodings
    }
    return StaticFile(b"text/css", identity, variants.get("gzip"), variants.get("br"), vary)


FILE = _file()


def _snapshot(current: str | None = "bbbb", order: dict[str, int] | None = None) -> Snapshot:
    version, version_head = core.version_plans(current, "/static/", 2)
    return Snapshot(
        current_id=current,
        seq=2,
        order=MappingProxyType(order if order is not None else {"aaaa": 1, "bbbb": 2}),
        files=MappingProxyType({"css/app.0123456789ab.css": FILE}),
        urls=MappingProxyType({}),
        routes=MappingProxyType({}),
        static_url="/static/",
        version=version,
        version_head=version_head,
    )


# -- ordering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "current", "order", "outdated"),
    [
        ("a", "a", {"a": 1}, False),
        ("a", "b", {"a": 1, "b": 2}, True),  # older page -> newer current
        ("b", "a", {"a": 3, "b": 2}, True),  # rollback: a re-activated is newest
        ("b", "a", {"a": 1, "b": 2}, False),  # a newer page never goes back
        ("x", "a", {"a": 1}, True),  # unknown / pruned page id
        ("a", "pin", {"a": 1}, True),  # pinned to a not-yet-activated deployment
    ],
)
def test_is_outdated(page: str, current: str, order: dict[str, int], outdated: bool) -> None:
    assert is_outdated(page, current, order) is outdated


def test_a_server_behind_its_store_does_not_move_pages_it_does_not_know() -> None:
    # Cut off from the store, the server cannot tell a pruned id from one activated
    # since: only what it knows to be older moves.
    order = {"a": 1, "b": 2}
    assert is_outdated("x", "b", order, behind=True) is False
    assert is_outdated("a", "b", order, behind=True) is True
    assert is_outdated("b", "a", {"a": 3, "b": 2}, behind=True) is True


# -- request normalisation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "navigate", "page_id"),
    [
        ([(b"x-deploysync", b"navigate"), (b"x-deployment-id", b"abc_-1")], True, "abc_-1"),
        ([(b"x-deploysync", b"NAVIGATE "), (b"x-deployment-id", b" abc ")], True, "abc"),
        # No marker: the id is read (the version endpoint judges it), never a 409.
        ([(b"x-deployment-id", b"abc")], False, "abc"),
        ([(b"x-deploysync", b"navigate"), (b"x-deployment-id", b"ab\r\ncd")], True, None),
        ([(b"x-deploysync", b"navigate"), (b"x-deployment-id", b"a" * 65)], True, None),
        ([(b"x-deploysync", b"navigate"), (b"x-deployment-id", b"\xff\xfe")], True, None),
        ([(b"x-deploysync", b"navigate"), (b"x-deployment-id", b"a,b")], True, None),
        (
            [
                (b"x-deploysync", b"navigate"),
                (b"x-deployment-id", b"a"),
                (b"x-deployment-id", b"b"),
            ],
            True,
            None,
        ),
        ([(b"x-deploysync", b"navigate")], True, None),
    ],
)
def test_make_request_ids(
    headers: list[tuple[bytes, bytes]], navigate: bool, page_id: str | None
) -> None:
    request = make_request("GET", "/", headers)
    assert request.navigate is navigate
    assert request.page_id == page_id


def test_make_request_joins_repeated_headers() -> None:
    request = make_request("GET", "/", [(b"accept-encoding", b"gzip"), (b"accept-encoding", b"br")])
    assert request.accept_encoding == b"gzip, br"


def test_thousands_of_repeated_headers_stop_being_joined_past_the_limit() -> None:
    # A server without a header-count limit (uvicorn's httptools) passes them all on:
    # joining each to the growing value would cost quadratic time.
    headers = [(b"accept-encoding", b"gzip")] * 100_000
    request = make_request("GET", "/static/x", headers)
    assert request.accept_encoding is not None
    assert MAX_HEADER_VALUE < len(request.accept_encoding) <= MAX_HEADER_VALUE + len(b", gzip")
    assert parse_accept_encoding(request.accept_encoding) is None  # ignored, as garbage


# -- stale navigation -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
def test_stale_navigation_is_409_for_every_method(method: str) -> None:
    request = Request(method, "/page", navigate=True, page_id="aaaa")
    plan = decide(request, _snapshot(), "/static/")
    assert plan is not None
    assert plan.status == 409
    headers = dict(plan.headers)
    assert headers[b"x-deploysync"] == b"reload"
    assert headers[b"x-deployment-id"] == b"bbbb"
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-length"] == b"0"
    assert plan.body == ()


@pytest.mark.parametrize(
    ("page_id", "navigate", "current", "answered"),
    [
        ("bbbb", True, "bbbb", False),  # same deployment
        ("aaaa", False, "bbbb", False),  # plain fetch
        (None, True, "bbbb", False),  # id absent or invalid
        ("aaaa", True, None, False),  # no deployment yet
        ("cccc", True, "bbbb", True),  # unknown id
    ],
)
def test_stale_navigation_cases(
    page_id: str | None, navigate: bool, current: str | None, answered: bool
) -> None:
    request = Request("GET", "/page", navigate=navigate, page_id=page_id)
    plan = decide(request, _snapshot(current), "/static/")
    assert (plan is not None and plan.status == 409) is answered


# -- routing of static requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "raw", "status"),
    [
        ("/static/css/app.0123456789ab.css", None, 200),
        ("/static/css/app.0123456789ab.css", b"/static/css/app.0123456789ab.css", 200),
        ("/static/css/app.0123456789ab.css", b"/static/css%2Fapp.0123456789ab.css", 404),
        ("/static/css/app.0123456789ab.css", b"/static/css%2fapp.0123456789ab.css", 404),
        ("/static/css\\app.0123456789ab.css", b"/static/css%5Capp.0123456789ab.css", 404),
        ("/static/../static/css/app.0123456789ab.css", None, 404),
        ("/static/css/../css/app.0123456789ab.css", None, 404),
        ("/static/./css/app.0123456789ab.css", None, 404),
        ("/static//css/app.0123456789ab.css", None, 404),
        ("/static/%2e%2e/secret", b"/static/%252e%252e/secret", 404),
        ("/static/css/app.0123456789ab.css\0", b"/static/css/app.0123456789ab.css%00", 404),
        ("/static//etc/passwd", None, 404),
        ("/static/C:\\windows\\win.ini", None, 404),
        ("/static/", None, 404),
        ("/static/nope.css", None, 404),
        ("/_deploysync/nope", None, 404),
        ("/_deploysync/version", None, 200),
    ],
)
def test_static_paths(path: str, raw: bytes | None, status: int) -> None:
    plan = decide(Request("GET", path, raw_path=raw), _snapshot(), "/static/")
    assert plan is not None
    assert plan.status == status
    if status == 404:
        assert dict(plan.headers)[b"cache-control"] == b"no-store"


def test_app_paths_go_to_the_app() -> None:
    assert decide(Request("GET", "/"), _snapshot(), "/static/") is None
    assert decide(Request("POST", "/form"), _snapshot(), "/static/") is None
    assert decide(Request("GET", "/staticfoo"), _snapshot(), "/static/") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"])
def test_other_methods_under_the_prefix_are_405(method: str) -> None:
    plan = decide(Request(method, "/static/css/app.0123456789ab.css"), _snapshot(), "/static/")
    assert plan is not None
    assert plan.status == 405
    assert dict(plan.headers)[b"allow"] == b"GET, HEAD"


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("css/app.0123456789ab.css", True),
        ("a.b.c", True),
        ("../x", False),
        ("a/../x", False),
        ("./x", False),
        ("/x", False),
        ("a//b", False),
        ("a\\b", False),
        ("a%2fb", True),  # a name with "%" in it: looked up, never decoded again
        ("50% off#1?.css", True),
        ("a\0b", False),
        ("a\nb", False),
        ("C:x", False),
        ("", False),
        ("a/", False),
        ("a/.", False),
        ("a/..", False),
        ("..", False),
        ("/", False),
        ("x" * 1025, False),
        ("...", True),
        (".hidden/a..b/c.", True),
    ],
)
def test_is_safe_name(name: str, safe: bool) -> None:
    assert is_safe_name(name) is safe


# -- conditional requests (RFC 9110 §13) ------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hit"),
    [
        (ETAG, True),
        (b"W/" + ETAG, True),  # §13.1.2: weak comparison
        (b'"other", ' + ETAG, True),
        (b'"other" , W/' + ETAG + b' , "x"', True),
        (b"*", True),
        (b" * ", True),
        (b'"other"', False),
        (ETAG[1:-1], False),  # unquoted: malformed
        (b"garbage" + ETAG, False),
        (b'"unterminated', False),
        (b"", False),
        (b",,," + ETAG, False),
        (ETAG + b"x" * 10000, False),  # oversized: ignored
    ],
)
def test_if_none_match(value: bytes, hit: bool) -> None:
    assert if_none_match_hits(value, ETAG) is hit


@pytest.mark.parametrize(
    ("value", "allows"),
    [
        (ETAG, True),
        (b" " + ETAG + b" ", True),
        (b"W/" + ETAG, False),  # §13.1.5: strong comparison only
        (b'"other"', False),
        (b"Sat, 29 Oct 1994 19:43:31 GMT", False),  # no Last-Modified is sent
    ],
)
def test_if_range(value: bytes, allows: bool) -> None:
    assert if_range_allows(value, ETAG) is allows


# -- ranges (RFC 9110 §14) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        (b"bytes=0-99", 1000, [(0, 99)]),
        (b"bytes=0-0", 1000, [(0, 0)]),
        (b"bytes=500-", 1000, [(500, 999)]),
        (b"bytes=-100", 1000, [(900, 999)]),
        (b"bytes=-5000", 1000, [(0, 999)]),  # suffix longer than the file: all of it
        (b"bytes=900-5000", 1000, [(900, 999)]),  # last-pos clamped
        (b"BYTES = 0-1", 1000, [(0, 1)]),
        (b"bytes=0-1,5-6", 1000, [(0, 1), (5, 6)]),
        (b"bytes=5-6, 0-1", 1000, [(5, 6), (0, 1)]),  # the order asked (RFC 9110 §15.3.7.2)
        (b"bytes=5-6,0-1,3-5", 1000, [(0, 1), (3, 6)]),  # coalesced: in order
        (b"bytes=0-10,5-20", 1000, [(0, 20)]),  # overlapping: coalesced
        (b"bytes=0-1,2-3", 1000, [(0, 3)]),
        (b"bytes=0-1, ,2-3,", 1000, [(0, 3)]),  # empty list elements
        (b"bytes=1000-", 1000, []),  # unsatisfiable
        (b"bytes=5000-6000", 1000, []),
        (b"bytes=-0", 1000, []),
        (b"bytes=0-1,2000-3000", 1000, [(0, 1)]),  # unsatisfiable parts dropped
        (b"bytes=0-", 0, []),
        (b"bytes=-10", 0, None),  # an empty file's one satisfiable form: ignored (200)
        (b"bytes=-0", 0, []),
        (b"bytes=5-1", 1000, None),  # invalid: the header is ignored
        (b"bytes=abc", 1000, None),
        (b"bytes=-", 1000, None),
        (b"bytes=1-2-3", 1000, None),
        (b"bytes=", 1000, None),
        (b"items=0-1", 1000, None),
        (b"0-1", 1000, None),
        (b"bytes=0x10-20", 1000, None),
        (b"bytes=" + b"9" * 30 + b"-", 1000, None),  # oversized number
        (b"bytes=" + b",".join(b"%d-%d" % (i, i) for i in range(0, 40, 2)), 1000, None),
        (b"bytes=0-1" + b" " * 9000, 1000, None),
    ],
)
def test_parse_range(value: bytes, size: int, expected: list[tuple[int, int]] | None) -> None:
    assert parse_range(value, size) == expected


def _serve(**kw: bytes) -> core.Plan:
    request = Request("GET", "/static/css/app.0123456789ab.css", **kw)  # type: ignore[arg-type]
    plan = decide(request, _snapshot(), "/static/")
    assert plan is not None
    return plan


def test_single_range() -> None:
    plan = _serve(range=b"bytes=10-19")
    assert plan.status == 206
    headers = dict(plan.headers)
    assert headers[b"content-range"] == b"bytes 10-19/1024"
    assert headers[b"content-length"] == b"10"
    assert b"".join(p for p in plan.body if isinstance(p, bytes)) == DATA[10:20]


def test_multi_range_is_multipart_byteranges() -> None:
    plan = decide(
        Request("GET", "/static/css/app.0123456789ab.css", range=b"bytes=0-1,-2"),
        _snapshot(),
        "/static/",
        boundary="XYZ",
    )
    assert plan is not None
    assert plan.status == 206
    headers = dict(plan.headers)
    assert headers[b"content-type"] == b"multipart/byteranges; boundary=XYZ"
    body = b"".join(p for p in plan.body if isinstance(p, bytes))
    assert int(headers[b"content-length"]) == len(body)
    assert body == (
        b"--XYZ\r\ncontent-type: text/css\r\ncontent-range: bytes 0-1/1024\r\n\r\n"
        + DATA[0:2]
        + b"\r\n--XYZ\r\ncontent-type: text/css\r\ncontent-range: bytes 1022-1023/1024\r\n\r\n"
        + DATA[1022:]
        + b"\r\n--XYZ--\r\n"
    )
    assert b"content-range" not in headers


def test_unsatisfiable_range_is_416() -> None:
    plan = _serve(range=b"bytes=2000-")
    assert plan.status == 416
    assert dict(plan.headers)[b"content-range"] == b"bytes */1024"


@pytest.mark.parametrize("value", [b"bytes=5-1", b"garbage", b"bytes=\r\n", b"\xff" * 100])
def test_malformed_range_is_200(value: bytes) -> None:
    assert _serve(range=value).status == 200


def test_if_range_mismatch_sends_everything() -> None:
    assert _serve(range=b"bytes=0-1", if_range=b'"old"').status == 200
    assert _serve(range=b"bytes=0-1", if_range=ETAG).status == 206


def test_if_none_match_precedes_range() -> None:
    plan = _serve(range=b"bytes=0-1", if_none_match=ETAG)
    assert plan.status == 304
    headers = dict(plan.headers)
    assert headers[b"etag"] == ETAG
    assert b"content-length" not in headers
    assert plan.body == ()


def test_head_ignores_range() -> None:
    plan = decide(
        Request("HEAD", "/static/css/app.0123456789ab.css", range=b"bytes=0-1"),
        _snapshot(),
        "/static/",
    )
    assert plan is not None
    assert plan.status == 200
    assert plan.body == ()
    assert dict(plan.headers)[b"content-length"] == b"1024"


# -- content negotiation (RFC 9110 §12.5.3) ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "chosen"),
    [
        (None, None),
        (b"", None),
        (b"gzip", "gzip"),
        (b"br", "br"),
        (b"gzip, br", "br"),
        (b"br, gzip", "br"),
        (b"gzip, deflate, br, zstd", "br"),
        (b"gzip;q=1.0, br;q=0.5", "gzip"),
        (b"br;q=0, gzip", "gzip"),
        (b"br;q=0, gzip;q=0", None),
        (b"*", "br"),
        (b"*;q=0.5, br;q=0", "gzip"),
        (b"identity", None),
        (b"identity;q=0", None),  # nothing acceptable: identity is still sent
        (b"identity;q=0, gzip", "gzip"),
        (b"*;q=0, gzip;q=0.1", "gzip"),
        (b"gzip;q=0.5, identity;q=1", None),
        (b"x-gzip", "gzip"),
        (b"GZIP", "gzip"),
        (b"gzip;q=2", None),  # invalid qvalue: element skipped
        (b"gzip;q=abc, br", "br"),
        (b"br;level=5", "br"),
        (b",,,", None),
        (b"\xff\xfe", None),
        (b"gzip" + b", a" * 100, None),  # too many elements: ignored
        (b"br;q=0.001", "br"),
    ],
)
def test_choose_variant(value: bytes | None, chosen: str | None) -> None:
    assert choose_variant(FILE, value).encoding == chosen


def test_choose_variant_only_gzip_stored() -> None:
    only_gzip = _file(("gzip",))
    assert choose_variant(only_gzip, b"br, gzip").encoding == "gzip"
    assert choose_variant(only_gzip, b"br").encoding is None
    assert choose_variant(_file(()), b"br, gzip").encoding is None


def test_choose_variant_prefers_the_smaller_coding_of_equal_preference() -> None:
    # A low brotli quality (--brotli-quality 1) can give a br variant larger than gzip.
    larger_br = _file(sizes={"gzip": 10, "br": 12})
    assert choose_variant(larger_br, b"gzip, br").encoding == "gzip"
    assert choose_variant(larger_br, b"br, gzip").encoding == "gzip"
    assert choose_variant(larger_br, b"*").encoding == "gzip"
    assert choose_variant(larger_br, b"br, gzip;q=0.9").encoding == "br"
    assert choose_variant(larger_br, b"br").encoding == "br"
    assert choose_variant(_file(sizes={"gzip": 10, "br": 10}), b"gzip, br").encoding == "br"


def test_parse_accept_encoding() -> None:
    assert parse_accept_encoding(b"gzip;q=0.8, br , identity;q=0") == {
        b"gzip": 0.8,
        b"br": 1.0,
        b"identity": 0.0,
    }


def test_encoded_response_headers() -> None:
    plan = _serve(accept_encoding=b"gzip")
    headers = dict(plan.headers)
    assert headers[b"content-encoding"] == b"gzip"
    assert headers[b"vary"] == b"Accept-Encoding"
    assert headers[b"etag"] != ETAG  # another representation, another strong tag
    assert headers[b"content-length"] == b"10"


# -- the app's responses ----------------------------------------------------------------------


def _edit(
    headers: list[tuple[bytes, bytes]], method: str = "GET", status: int = 200
) -> core.ResponseEdit | None:
    return edit_response(method, status, headers, "bbbb")


HTML = (b"content-type", b"text/html; charset=utf-8")


@pytest.mark.parametrize(
    ("headers", "method", "status", "inject"),
    [
        ([HTML], "GET", 200, True),
        ([(b"Content-Type", b"TEXT/HTML")], "GET", 200, True),
        ([HTML], "POST", 404, True),
        ([HTML], "HEAD", 200, True),
        ([HTML], "GET", 204, False),
        ([HTML], "GET", 304, False),
        ([HTML, (b"content-encoding", b"gzip")], "GET", 200, False),
        ([HTML, (b"content-encoding", b"identity")], "GET", 200, True),
        ([HTML, (b"content-disposition", b'inline; filename="page.html"')], "GET", 200, True),
    ],
)
def test_edit_response_injects(
    headers: list[tuple[bytes, bytes]], method: str, status: int, inject: bool
) -> None:
    edit = _edit(headers, method, status)
    assert edit is not None
    assert edit.inject is inject
    assert (b"x-deployment-id", b"bbbb") in edit.headers


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-type", b"application/json")],
        [(b"content-type", b"text/html-sandboxed")],
        [],
    ],
)
def test_edit_response_leaves_other_content_alone(headers: list[tuple[bytes, bytes]]) -> None:
    assert _edit(headers) is None


@pytest.mark.parametrize("disposition", [b'attachment; filename="export.html"', b" ATTACHMENT"])
def test_an_html_download_is_a_file_not_a_page(disposition: bytes) -> None:
    headers = [HTML, (b"Content-Disposition", disposition)]
    edit = _edit(headers)
    assert edit is not None and not edit.inject
    # Untouched but for the one header that keeps the router's answer apart in caches.
    assert edit.headers == [*headers, (b"vary", b"X-Deploysync-Router")]


def test_edit_response_cache_control() -> None:
    edit = _edit([HTML])
    assert edit is not None
    assert (b"cache-control", b"no-cache") in edit.headers
    edit = _edit([HTML, (b"Cache-Control", b"private, max-age=60")])
    assert edit is not None
    assert [v for k, v in edit.headers if k.lower() == b"cache-control"] == [b"private, max-age=60"]


def test_edit_response_opt_out() -> None:
    edit = _edit([HTML, (b"X-Deploysync", b"off"), (b"content-length", b"5")])
    assert edit is not None
    assert not edit.inject
    assert edit.headers == [HTML, (b"content-length", b"5")]


def test_edit_response_replaces_an_app_deployment_id() -> None:
    edit = _edit([HTML, (b"x-deployment-id", b"forged")])
    assert edit is not None
    assert [v for k, v in edit.headers if k == b"x-deployment-id"] == [b"bbbb"]


def test_finish_headers_adjusts_length() -> None:
    edit = _edit([HTML, (b"content-length", b"100")])
    assert edit is not None
    assert edit.content_length == 100
    assert (b"content-length", b"130") in core.finish_headers(edit, 30)
    edit = _edit([HTML])
    assert edit is not None
    assert not [h for h in core.finish_headers(edit, 30) if h[0] == b"content-length"]


ORIGIN = b"https://shop.example.com"


@pytest.mark.parametrize(
    "location",
    [
        b"https://pay.example.com/checkout",
        b"//pay.example.com/x",
        b"/\\pay.example.com/x",  # a backslash reads as a slash in a browser
        b" /\t/pay.example.com",  # so do surrounding spaces and inner tabs
        b"http://shop.example.com/",  # another scheme: another origin
        b"https://shop.example.com:8443/",
        b"https://shop.example.com.evil.example/",
        b"HTTPS:pay.example.com",
        b"mailto:sales@example.com",  # no page, yet no fetch can follow it either
        b"zoommtg://zoom.us/join?confno=1",  # an app's own scheme
    ],
)
def test_a_navigation_redirected_elsewhere_is_told_to_the_client(location: bytes) -> None:
    headers = [(b"Location", location), (b"Content-Type", b"text/html")]
    edit = edit_response("POST", 303, headers, "bbbb", (), None, ORIGIN)
    assert edit is not None and not edit.inject
    assert (b"x-deploysync-location", location) in edit.headers
    assert not [name for name, _ in edit.headers if name.lower() == b"location"]
    # No longer a redirect: no cache keeps it for a page load (a 301 would stay fresh).
    assert (b"cache-control", b"no-store") in edit.headers
    assert (b"vary", b"X-Deploysync-Router") in edit.headers


@pytest.mark.parametrize(
    "location",
    [
        b"/done",
        b"done?x=1",
        b"?page=2",
        b"https://SHOP.example.com/done",
        b"https://shop.example.com",
        b"javascript:alert(1)",  # never handed to the client to load (nor followed)
        b" Data:text/html,x",
    ],
)
def test_a_redirect_on_the_same_origin_is_left_to_fetch(location: bytes) -> None:
    headers = [(b"Location", location)]
    edit = edit_response("POST", 302, headers, "bbbb", (), None, ORIGIN)
    assert edit is None or (b"Location", location) in edit.headers
    assert edit is None or not [n for n, _ in edit.headers if n == b"x-deploysync-location"]


def test_only_a_navigation_redirect_is_renamed() -> None:
    away = [(b"Location", b"https://pay.example.com/")]
    plain = edit_response("POST", 303, away, "bbbb")  # not the router's fetch
    assert plain is not None and (b"Location", b"https://pay.example.com/") in plain.headers
    # It varies on the router's marker: no cache hands it to the router's fetch.
    assert (b"vary", b"X-Deploysync-Router") in plain.headers
    assert edit_response("GET", 302, [(b"Location", b"/next")], "bbbb") is None
    edit = edit_response("POST", 200, [*away, HTML], "bbbb", (), None, ORIGIN)
    assert edit is not None and (b"Location", b"https://pay.example.com/") in edit.headers


def test_the_origin_of_a_request() -> None:
    assert core.origin_of("https", b"Shop.Example.com") == ORIGIN
    assert core.origin_of("https", b"shop.example.com:443") == ORIGIN  # the default port
    assert core.origin_of("http", None, ("testserver", 80)) == b"http://testserver"
    assert core.origin_of("http", None, ("localhost", 8000)) == b"http://localhost:8000"
    assert core.origin_of("http", None, ("::1", 8000)) == b"http://[::1]:8000"
    assert core.origin_of("http", None) is None
    environ = {
        "wsgi.url_scheme": "https",
        "SERVER_NAME": "a.example",
        "SERVER_PORT": "443",
        "HTTP_X_DEPLOYSYNC_ROUTER": "1",
    }
    assert core.environ_origin(environ) == b"https://a.example"
    assert core.environ_origin({**environ, "HTTP_HOST": "b.example:81"}) == b"https://b.example:81"


def test_only_the_client_routers_fetches_have_their_redirects_told() -> None:
    # htmx and Turbo send the navigate header too, and follow redirects their own way.
    assert core.own_router_origin("https", "shop.example.com", None, True) == ORIGIN
    assert core.own_router_origin("https", "shop.example.com", None, False) is None
    assert core.environ_origin({"HTTP_HOST": "shop.example.com"}) is None
    routed = {"HTTP_HOST": "shop.example.com", "HTTP_X_DEPLOYSYNC_ROUTER": "1"}
    assert core.environ_origin(routed) == b"http://shop.example.com"


@pytest.mark.parametrize(
    ("disposition", "name"),
    [
        (b'attachment; filename="report.csv"', "report.csv"),
        (b"attachment; filename*=utf-8''my%20r%C3%A9port.csv", "my r\u00e9port.csv"),
        (b"attachment; filename=\"plain.csv\"; filename*=UTF-8''na%C3%AFve.csv", "na\u00efve.csv"),
        (b'attachment; filename="a;b.csv"', "a;b.csv"),
        (b"ATTACHMENT; FILENAME=up.csv", "up.csv"),
        (b"attachment", ""),
        (b"inline; filename=x.pdf", None),
        (b"attachment; filename*=x-unknown''a%FFb", "a\u00ffb"),  # read as Latin-1
        ('attachment; filename="r\u00e9sum\u00e9.txt"'.encode(), "r\u00e9sum\u00e9.txt"),  # UTF-8
    ],
)
def test_the_name_an_attachment_is_saved_under(disposition: bytes, name: str | None) -> None:
    assert core.attachment_name(disposition) == name


def test_a_download_answering_the_router_names_its_file() -> None:
    headers = [
        (b"Content-Type", b"text/csv"),
        (b"Content-Disposition", b"attachment; filename*=utf-8''my%20r%C3%A9port.csv"),
    ]
    edit = edit_response("POST", 200, headers, "bbbb", (), None, ORIGIN)
    assert edit is not None and not edit.inject
    assert (b"x-deploysync-download", b"my%20r%C3%A9port.csv") in edit.headers
    plain = edit_response("POST", 200, headers, "bbbb")  # not the router's fetch
    assert plain is not None and (b"vary", b"X-Deploysync-Router") in plain.headers
    assert not [n for n, _ in plain.headers if n == b"x-deploysync-download"]


def test_no_deployment_means_no_edit() -> None:
    assert edit_response("GET", 200, [HTML], None) is None


def test_a_compressed_page_is_told_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploysync import serving

    monkeypatch.setattr(serving, "_told_compressed", False)
    headers = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"br")]
    with caplog.at_level(logging.WARNING, logger="deploysync"):
        for _ in range(3):
            edit = core.edit_response("GET", 200, headers, "abc")
            assert edit is not None and not edit.inject and edit.compressed == b"br"
            serving.tell_compressed(edit)
        css = core.edit_response("GET", 200, [(b"Content-Type", b"text/css"), *headers[1:]], "abc")
        assert css is None
        serving.tell_compressed(css)
    told = [r.getMessage() for r in caplog.records]
    assert len(told) == 1
    assert "already compressed (Content-Encoding: br)" in told[0]
