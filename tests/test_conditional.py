"""Conditional requests for pages: an injected page is revalidated per deployment.

The app's validators describe its page without the tags. Kept as they are, a browser
would revalidate the page after a deploy, get the app's 304, and keep showing the page
that names the old deployment. So the ``ETag`` of an injected page names the
deployment (``"v1.ds-<id>"``), the app sees its own tag back while that deployment is
current, and a tag of another deployment's page never reaches it.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from deploysync import core
from deploysync.asgi import DeploySync as AsgiDeploySync
from deploysync.manifest import Deployment
from deploysync.store import FileStore
from deploysync.wsgi import DeploySync as WsgiDeploySync
from serving_fixtures import AppSpec, AsgiClient, Client, WsgiClient, make_client, publish

PAGE = b"<!doctype html><html><head><title>t</title></head><body>hello</body></html>"
DATE = "Wed, 21 Oct 2026 07:28:00 GMT"


@dataclass
class Conditional:
    """An app that answers conditional requests itself, like Flask's ``make_conditional``
    or Django's ``ConditionalGetMiddleware``, and records what it was asked."""

    etag: str | None = '"v1"'
    last_modified: str | None = DATE
    seen: list[tuple[str | None, str | None]] = field(default_factory=list)
    if_match: list[str | None] = field(default_factory=list)

    def answer(
        self, if_none_match: str | None, if_modified_since: str | None, if_match: str | None = None
    ) -> int:
        self.seen.append((if_none_match, if_modified_since))
        self.if_match.append(if_match)
        if if_match is not None and if_match.strip() not in ("*", self.etag):
            return 412
        if if_none_match is not None:
            tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
            hit = self.etag is not None and ("*" in tags or self.etag.removeprefix("W/") in tags)
            return 304 if hit else 200
        if if_modified_since is not None and if_modified_since == self.last_modified:
            return 304
        return 200

    def headers(self) -> list[tuple[str, str]]:
        out = [("Content-Type", "text/html; charset=utf-8"), ("Accept-Ranges", "bytes")]
        if self.etag is not None:
            out.append(("ETag", self.etag))
        if self.last_modified is not None:
            out.append(("Last-Modified", self.last_modified))
        return out

    def asgi(self) -> Callable[..., Any]:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            headers = {k.decode(): v.decode() for k, v in scope["headers"]}
            status = self.answer(
                headers.get("if-none-match"),
                headers.get("if-modified-since"),
                headers.get("if-match"),
            )
            body = PAGE if status == 200 else b""
            extra = [("Content-Length", str(len(body)))] if status == 200 else []
            start = [(k.lower().encode(), v.encode()) for k, v in self.headers() + extra]
            if status == 304:
                start = [h for h in start if h[0] in (b"etag", b"last-modified")]
            await send({"type": "http.response.start", "status": status, "headers": start})
            await send({"type": "http.response.body", "body": body})

        return app

    def wsgi(self) -> Callable[..., Any]:
        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            status = self.answer(
                environ.get("HTTP_IF_NONE_MATCH"),
                environ.get("HTTP_IF_MODIFIED_SINCE"),
                environ.get("HTTP_IF_MATCH"),
            )
            headers = self.headers()
            if status == 412:
                start_response("412 Precondition Failed", [("Content-Length", "0")])
                return []
            if status == 304:
                start_response("304 Not Modified", [h for h in headers if h[0] != "Content-Type"])
                return []
            start_response("200 OK", [*headers, ("Content-Length", str(len(PAGE)))])
            return [PAGE]

        return app


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def first(store: FileStore) -> Deployment:
    return publish(store, {"app.css": b"body{color:red}"})


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clients(kind: str, store: FileStore) -> Iterator[Callable[[Conditional], Client]]:
    made: list[Client] = []

    def make(app: Conditional) -> Client:
        client: Client
        if kind == "asgi":
            client = AsgiClient(AsgiDeploySync(app.asgi(), store=store), AppSpec())
        else:
            client = WsgiClient(WsgiDeploySync(app.wsgi(), store=store), AppSpec())
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def _deploy(client: Client, store: FileStore) -> Deployment:
    second = publish(store, {"app.css": b"body{color:blue}"})
    client.mw.runtime.refresh()
    return second


# -- the header values -------------------------------------------------------------------


def test_the_tag_of_a_page_names_its_deployment() -> None:
    assert core.document_etag(b'"abc"', "d1") == b'"abc.ds-d1"'
    assert core.document_etag(b'W/"abc"', "d1") == b'W/"abc.ds-d1"'
    assert core.document_etag(b'  "x" ', "d1") == b'"x.ds-d1"'
    assert core.document_etag(b"garbage", "d1") == b"garbage"  # left as the app wrote it


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # The current deployment's page: the app sees its own tag.
        (b'"abc.ds-d2"', (b'"abc"', True, False)),
        (b'W/"abc.ds-d2"', (b'W/"abc"', True, False)),
        # Another deployment's page: the tag goes, and the date with it.
        (b'"abc.ds-d1"', (None, False, True)),
        (b'"abc.ds-d1", "x"', (b'"x"', False, True)),
        (b'"a.ds-d1", "b.ds-d2"', (b'"b"', True, True)),
        # A tag with ".ds-" inside, not at the end, is the app's own.
        (b'"a.ds-d1.x", "b.ds-d2"', (b'"a.ds-d1.x", "b"', True, False)),
    ],
)
def test_if_none_match_as_the_app_sees_it(
    value: bytes, expected: tuple[bytes | None, bool, bool]
) -> None:
    found = core.app_conditional(value, "d2")
    assert found is not None
    assert (found.if_none_match, found.current, found.stale) == expected


@pytest.mark.parametrize("value", [b'"abc"', b"*", b'W/"x", "y"', b"not a list .ds-d1", b""])
def test_other_values_reach_the_app_unchanged(value: bytes) -> None:
    assert core.app_conditional(value, "d2") is None


# -- through the adapters ------------------------------------------------------------------


def test_a_page_is_revalidated_until_a_deploy(
    clients: Callable[[Conditional], Client], store: FileStore, first: Deployment
) -> None:
    app = Conditional()
    client = clients(app)
    page = client.get("/")
    assert page.status == 200
    assert page.header("etag") == f'"v1.ds-{first.id}"'
    assert page.header("last-modified") == DATE  # kept: the tag decides

    again = client.get("/", [("If-None-Match", page.header("etag") or "")])
    assert again.status == 304
    assert app.seen[-1][0] == '"v1"'  # the app compared its own tag
    assert again.header("etag") == f'"v1.ds-{first.id}"'

    second = _deploy(client, store)
    after = client.get(
        "/", [("If-None-Match", page.header("etag") or ""), ("If-Modified-Since", DATE)]
    )
    assert app.seen[-1] == (None, None)  # nothing left to answer 304 with
    assert after.status == 200
    assert f'content="{second.id}"'.encode() in after.body
    assert after.header("etag") == f'"v1.ds-{second.id}"'


def test_if_match_with_the_pages_tag_reaches_the_app_as_its_own(
    clients: Callable[[Conditional], Client], store: FileStore, first: Deployment
) -> None:
    # A client that read the page sends its tag back (a PUT to it, say): the app
    # compares its own; once another deployment is current the tag is not the page's.
    app = Conditional()
    client = clients(app)
    tag = client.get("/").header("etag") or ""
    assert tag == f'"v1.ds-{first.id}"'
    assert client.get("/", [("If-Match", tag)]).status == 200
    assert app.if_match[-1] == '"v1"'
    assert client.get("/", [("If-Match", '"other"')]).status == 412
    _deploy(client, store)
    assert client.get("/", [("If-Match", tag)]).status == 412
    assert app.if_match[-1] == tag


@pytest.mark.parametrize(
    "validators",
    [[("If-None-Match", '"v1"')], [("If-Modified-Since", DATE)]],
    ids=["etag", "date"],
)
def test_a_page_cached_before_it_carried_the_tags_is_sent_again(
    clients: Callable[[Conditional], Client], first: Deployment, validators: list[tuple[str, str]]
) -> None:
    # The browser kept the app's page from before deploysync: its validators name no
    # deployment. A page load gets the page (with the client); other requests (an API
    # fetch of the same URL) keep their 304.
    app = Conditional()
    client = clients(app)
    load = client.get("/", [*validators, ("Sec-Fetch-Dest", "document")])
    assert app.seen[-1] == (None, None)
    assert load.status == 200
    assert f'content="{first.id}"'.encode() in load.body
    navigation = client.get("/", [*validators, ("X-Deploysync", "navigate")])
    assert navigation.status == 200
    fetch = client.get("/", [*validators, ("Sec-Fetch-Dest", "empty")])
    assert fetch.status == 304
    assert app.seen[-1] != (None, None)


def test_without_a_tag_a_date_cannot_keep_an_old_page(
    clients: Callable[[Conditional], Client], store: FileStore, first: Deployment
) -> None:
    app = Conditional(etag=None)
    client = clients(app)
    page = client.get("/")
    assert page.status == 200
    assert page.header("last-modified") is None
    assert page.header("etag") is None


def test_tags_of_other_responses_are_left_alone(
    make_any: Callable[..., Client], first: Deployment
) -> None:
    spec = AppSpec(headers=[("Content-Type", "application/json"), ("ETag", '"j"')], chunks=[b"{}"])
    response = make_any(spec).get("/api")
    assert response.header("etag") == '"j"'


@pytest.fixture
def make_any(kind: str, store: FileStore) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(spec: AppSpec) -> Client:
        client = make_client(kind, spec, store=store)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def test_an_injected_page_does_not_offer_ranges(
    make_any: Callable[..., Client], first: Deployment
) -> None:
    spec = AppSpec(headers=[("Content-Type", "text/html"), ("Accept-Ranges", "bytes")])
    response = make_any(spec).get("/")
    assert b'name="deployment-id"' in response.body
    assert response.header("accept-ranges") is None


def test_a_part_of_a_page_is_left_as_the_app_sent_it(
    make_any: Callable[..., Client], first: Deployment
) -> None:
    part = PAGE[:40]  # "<head>" included: an injector would act on it
    spec = AppSpec(
        status=206,
        headers=[("Content-Type", "text/html"), ("Content-Range", f"bytes 0-39/{len(PAGE)}")],
        chunks=[part],
    )
    response = make_any(spec).get("/", [("Range", "bytes=0-39")])
    assert response.status == 206
    assert response.body == part
    assert response.header("content-length") == "40"
    assert response.header("content-range") == f"bytes 0-39/{len(PAGE)}"


def test_head_of_a_page_claims_no_length_it_would_not_have(
    make_any: Callable[..., Client], first: Deployment
) -> None:
    page = b"<!doctype html><html><head><title>t</title></head><body>b</body></html>"
    headers = [("Content-Type", "text/html"), ("ETag", '"h"'), ("Content-Length", "71")]
    client = make_any(AppSpec(headers=headers, chunks=[page]))
    get = client.get("/")
    head = client.request("HEAD", "/")
    assert get.header("content-length") == str(len(get.body)) != "71"
    # The app sent its body for HEAD too: it takes the tags, the length is the page's.
    assert head.header("content-length") == get.header("content-length")
    assert head.header("etag") == get.header("etag") == f'"h.ds-{first.id}"'
    assert head.header("x-deployment-id") == first.id
    # An app that sends no body for HEAD: the page's length is not known, the app's
    # (without the tags) would be wrong: none (RFC 9110 §9.3.2).
    bodiless = make_any(AppSpec(headers=headers, chunks=[]))
    assert bodiless.request("HEAD", "/").header("content-length") is None


# -- server specifics ------------------------------------------------------------------------


def test_a_page_sent_by_pathsend_gets_its_tags(
    store: FileStore, first: Deployment, tmp_path: Path
) -> None:
    page = tmp_path / "index.html"
    page.write_bytes(PAGE)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        # What Starlette's FileResponse does under a server offering pathsend (granian).
        assert "http.response.pathsend" in scope["extensions"]
        headers = [(b"content-type", b"text/html"), (b"content-length", b"%d" % len(PAGE))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.pathsend", "path": str(page)})

    client = AsgiClient(AsgiDeploySync(app, store=store), AppSpec())
    try:
        response = client.get("/", extensions={"http.response.pathsend": {}})
    finally:
        client.close()
    assert response.body.startswith(b'<!doctype html><html><head><meta name="deployment-id"')
    assert response.header("content-length") == str(len(response.body))
    assert [m["type"] for m in response.messages][1:] == ["http.response.body"]


def test_a_static_path_that_is_not_utf8_is_our_404(store: FileStore, first: Deployment) -> None:
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("404 Not Found", [("Content-Type", "text/html")])
        return [b"<html><head></head>app's 404</html>"]

    middleware = WsgiDeploySync(app, store=store)
    try:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            captured.update(status=status, headers={k.lower(): v for k, v in headers})

        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/static/\xff.css",  # the byte 0xff, decoded as latin-1 (PEP 3333)
            "wsgi.input": io.BytesIO(),
        }
        body = b"".join(middleware(environ, start_response))
    finally:
        middleware.close()
    assert calls == []
    assert captured["status"].startswith("404")
    assert captured["headers"]["cache-control"] == "no-store"
    assert b"app's" not in body


def test_asset_names_with_reserved_characters_have_working_urls(
    kind: str, store: FileStore
) -> None:
    files = {"a b#c%d?.css": b"body{}", "ü/x.css": b"p{}"}
    deployment = publish(store, files)
    client = make_client(kind, AppSpec(), store=store)
    try:
        for path, data in files.items():
            url = client.mw.url(path)
            assert " " not in url and "#" not in url and "?" not in url
            assert url.isascii()
            assert url == deployment.url(path)
            # What a server decodes from that URL names the asset.
            raw = url.encode()
            response = client.get(unquote(url), raw_path=raw)
            assert response.status == 200, (url, response.status)
            assert response.body == data
    finally:
        client.close()


def test_asgi_runs_in_other_event_loops_too() -> None:
    # _read_file falls back to an inline read without asyncio (trio, curio).
    from deploysync.asgi import _read_file

    coroutine = _read_file(__file__)
    try:
        coroutine.send(None)
    except StopIteration as done:
        assert done.value.startswith(b'"""Conditional requests')
    else:  # pragma: no cover - it must complete without awaiting anything
        raise AssertionError("an inline read awaited")
    assert asyncio.iscoroutinefunction(_read_file)
