"""Every serving behaviour, through both adapters (one fixture, ``params=["asgi", "wsgi"]``)."""

from __future__ import annotations

import asyncio
import gc
import gzip
import json
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import brotli
import pytest

from deploysync.manifest import Deployment, DeploySyncError
from deploysync.serving import UnknownAsset
from deploysync.store import FileStore, Store
from serving_fixtures import AppSpec, Client, Response, make_client, publish

CSS = b"body { color: rebeccapurple }\n" * 40
JS = b"export const answer = 42;\n" * 10
BIG = os.urandom(300 * 1024)  # above the in-memory limit: served from disk
FILES = {"css/app.css": CSS, "js/app.js": JS, "big.bin": BIG}


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def deployed(store: FileStore) -> Deployment:
    return publish(store, FILES)


@pytest.fixture(params=["asgi", "wsgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeClient = Callable[..., Client]


def _factories(kind: str, store: FileStore) -> Iterator[MakeClient]:
    clients: list[Client] = []

    def factory(spec: AppSpec | None = None, **options: Any) -> Client:
        options.setdefault("store", store)
        client = make_client(kind, spec or AppSpec(), **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def make(kind: str, store: FileStore) -> Iterator[MakeClient]:
    """Clients of the adapter under test: every behaviour runs through both."""
    yield from _factories(kind, store)


@pytest.fixture
def make_asgi(store: FileStore) -> Iterator[MakeClient]:
    """For what only one protocol has (server extensions, scope types)."""
    yield from _factories("asgi", store)


@pytest.fixture
def make_wsgi(store: FileStore) -> Iterator[MakeClient]:
    yield from _factories("wsgi", store)


@pytest.fixture
def client(make: MakeClient, deployed: Deployment) -> Client:
    return make()


def asset_url(deployment: Deployment, path: str) -> str:
    return deployment.url(path)


# -- HTML documents ---------------------------------------------------------------------------


def test_html_gets_the_tags_and_headers(client: Client, deployed: Deployment) -> None:
    response = client.get("/")
    assert response.status == 200
    head = re.search(rb"<head>(.*?)<title>", response.body)
    assert head is not None
    tags = head.group(1).decode()
    assert f'<meta name="deployment-id" content="{deployed.id}">' in tags
    script = re.search(r'<script type="module" src="([^"]+)" data-deploysync[^>]*></script>', tags)
    assert script is not None
    assert re.fullmatch(r"/_deploysync/client-[0-9a-f]{12}\.js", script.group(1))
    assert 'data-routing="server"' in tags
    assert 'data-check-interval="0"' in tags
    assert 'data-version-url="/_deploysync/version"' in tags
    assert 'data-static-url="/static/"' in tags  # the client tells a failed asset by it
    assert response.header("x-deployment-id") == deployed.id
    assert response.header("cache-control") == "no-cache"
    assert response.header("content-length") == str(len(response.body))
    assert client.spec.calls == 1


def test_a_pinned_server_holds_its_deployment_against_prune(
    make: MakeClient, store: FileStore, deployed: Deployment
) -> None:
    newer = publish(store, {"css/app.css": b"newer"})
    store.activate(newer.id)
    make(deployment=deployed.id)
    assert store.held() == {deployed.id}
    assert store.prune(keep=1).deployments == ()
    assert deployed.id in store.ids()


def test_the_store_defaults_to_the_environment(
    make: MakeClient, store: FileStore, deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYSYNC_STORE", str(store.root))
    response = make(store=None).get("/")
    assert response.header("x-deployment-id") == deployed.id
    # Neither: said as a server's setting (store=), not the command line's --store.
    monkeypatch.delenv("DEPLOYSYNC_STORE")
    refused = r"^No store given: pass store=\.\.\. or set DEPLOYSYNC_STORE$"
    with pytest.raises(DeploySyncError, match=refused):
        make(store=None)


def test_routing_and_interval_reach_the_tag(make: MakeClient, deployed: Deployment) -> None:
    response = make(routing="client", check_interval=60).get("/")
    assert b'data-routing="client" data-check-interval="60"' in response.body


def test_bad_options_fail_at_construction(make: MakeClient, deployed: Deployment) -> None:
    with pytest.raises(DeploySyncError, match="routing"):
        make(routing="spa")
    with pytest.raises(DeploySyncError, match="check_interval"):
        make(check_interval=-1)
    # Values read from the environment are strings: said, not compared and crashed on.
    with pytest.raises(DeploySyncError, match="poll_interval must be a number"):
        make(poll_interval="1")
    with pytest.raises(DeploySyncError, match="strict must be True or False"):
        make(strict="false")
    with pytest.raises(DeploySyncError, match="nonce must be"):
        make(nonce=5)
    with pytest.raises(DeploySyncError, match="nonce must be"):
        make(nonce="")


def test_app_cache_control_is_kept(make: MakeClient, deployed: Deployment) -> None:
    spec = AppSpec(headers=[("Content-Type", "text/html"), ("Cache-Control", "private, max-age=5")])
    response = make(spec).get("/")
    assert response.all("cache-control") == ["private, max-age=5"]


def test_streamed_chunks_split_inside_head(make: MakeClient, deployed: Deployment) -> None:
    page = (
        b'<!DOCTYPE html>\n<HTML lang="en"><HeAd data-a="x>y">\n'
        b"<title>t</title></head><body>b</body>"
    )
    spec = AppSpec(chunks=[page[i : i + 3] for i in range(0, len(page), 3)])
    response = make(spec).get("/")
    assert response.body.count(b'name="deployment-id"') == 1
    assert response.body.startswith(b'<!DOCTYPE html>\n<HTML lang="en"><HeAd data-a="x>y"><meta ')
    assert response.header("content-length") == str(len(response.body))


def test_without_content_length_none_is_invented(make: MakeClient, deployed: Deployment) -> None:
    spec = AppSpec(content_length=False, chunks=[b"<html><head>", b"</head><body>x</body></html>"])
    response = make(spec).get("/")
    assert response.header("content-length") is None
    assert b'<head><meta name="deployment-id"' in response.body


def test_page_with_tags_already_is_left_alone(make: MakeClient, deployed: Deployment) -> None:
    page = f'<html><head><meta name="deployment-id" content="{deployed.id}"></head>'.encode()
    response = make(AppSpec(chunks=[page])).get("/")
    assert response.body == page
    assert response.header("content-length") == str(len(page))
    assert response.header("x-deployment-id") == deployed.id


@pytest.mark.parametrize(
    ("status", "headers", "method"),
    [
        (200, [("Content-Type", "application/json")], "GET"),
        (200, [("Content-Type", "text/html"), ("Content-Encoding", "gzip")], "GET"),
        (204, [("Content-Type", "text/html")], "GET"),
        (304, [("Content-Type", "text/html")], "GET"),
    ],
)
def test_bodies_that_are_not_rewritten(
    make: MakeClient, deployed: Deployment, status: int, headers: list[tuple[str, str]], method: str
) -> None:
    body = b"<html><head></head></html>"
    spec = AppSpec(status=status, headers=headers, chunks=[body] if status == 200 else [])
    response = make(spec).request(method, "/")
    assert response.status == status
    assert b"deployment-id" not in response.body
    if method == "GET" and status == 200:
        assert response.body == body
    length = response.header("content-length")
    if length is not None:
        assert int(length) == sum(len(c) for c in spec.chunks)


def test_non_html_passes_untouched(make: MakeClient, deployed: Deployment) -> None:
    spec = AppSpec(
        headers=[("Content-Type", "application/json"), ("X-Custom", "1")], chunks=[b"{}"]
    )
    response = make(spec).get("/api")
    assert [(k.lower(), v) for k, v in response.headers] == [
        ("content-type", "application/json"),
        ("x-custom", "1"),
        ("content-length", "2"),
    ]
    assert response.body == b"{}"


def test_response_opt_out(make: MakeClient, deployed: Deployment) -> None:
    spec = AppSpec(headers=[("Content-Type", "text/html"), ("X-Deploysync", "off")])
    response = make(spec).get("/")
    assert response.header("x-deploysync") is None
    assert response.header("x-deployment-id") is None
    assert b"deployment-id" not in response.body
    assert response.body == spec.chunks[0]


def test_response_opt_out_keeps_the_apps_own_deployment_id(
    make: MakeClient, deployed: Deployment
) -> None:
    # "Left alone" is whole: a header the app set itself stays, as the app set it.
    spec = AppSpec(
        headers=[
            ("Content-Type", "text/html"),
            ("X-Deploysync", "off"),
            ("X-Deployment-Id", "apps-own"),
        ]
    )
    response = make(spec).get("/")
    assert response.header("x-deploysync") is None
    assert response.header("x-deployment-id") == "apps-own"
    assert response.body == spec.chunks[0]


def test_nonce_from_a_callable(make: MakeClient, deployed: Deployment) -> None:
    response = make(nonce=lambda holder: "r4nd0m").get("/")
    assert b' nonce="r4nd0m"></script>' in response.body


def test_nonce_from_a_key(make: MakeClient, deployed: Deployment, kind: str) -> None:
    client = make(nonce="csp_nonce")
    extra: dict[str, Any] = (
        {"state": {"csp_nonce": "k3y"}} if kind == "asgi" else {"csp_nonce": "k3y"}
    )
    response = client.get("/", extra=extra)
    assert b' nonce="k3y"></script>' in response.body
    assert b"nonce" not in client.get("/").body


def test_root_path_prefixes_the_client_urls(client: Client, deployed: Deployment) -> None:
    response = client.get("/", root_path="/app")
    assert b'src="/app/_deploysync/client-' in response.body
    assert b'data-version-url="/app/_deploysync/version"' in response.body
    version = client.get("/_deploysync/version", root_path="/app")
    assert json.loads(version.body)["id"] == deployed.id
    css = client.get(deployed.url("css/app.css"), root_path="/app")
    assert css.body == CSS


def test_no_deployment_yet_the_app_still_works(make: MakeClient, store: FileStore) -> None:
    client = make()
    response = client.get("/")
    assert response.status == 200
    assert response.body == client.spec.chunks[0]
    assert response.header("x-deployment-id") is None
    version = client.get("/_deploysync/version")
    assert json.loads(version.body) == {"id": None, "static_url": "/static/", "seq": None}
    assert client.get("/static/css/app.css").status == 404
    assert client.mw.url("css/app.css") == "/static/css/app.css"


# -- assets ---------------------------------------------------------------------------------------


def test_asset_is_served_immutable(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("css/app.css"))
    assert response.status == 200
    assert response.body == CSS
    assert response.header("cache-control") == "public, max-age=31536000, immutable"
    assert response.header("content-type") == "text/css; charset=utf-8"
    assert response.header("content-length") == str(len(CSS))
    assert response.header("x-content-type-options") == "nosniff"
    assert response.header("vary") == "Accept-Encoding"
    etag = response.header("etag")
    assert etag is not None
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong, from the digest
    assert deployed.assets["css/app.css"].digest.startswith(etag.strip('"'))
    assert client.spec.calls == 0


@pytest.mark.parametrize("extra", [[], [("Range", "bytes=0-3")], [("Accept-Encoding", "gzip")]])
def test_an_asset_may_be_read_by_a_page_of_another_origin(
    client: Client, deployed: Deployment, extra: list[tuple[str, str]]
) -> None:
    """Module scripts and fonts are fetched in CORS mode: from a CDN's origin, each answer
    (whole, a part, a variant) must let the page read it."""
    response = client.get(deployed.url("css/app.css"), [("Origin", "https://example.com"), *extra])
    assert response.status in (200, 206)
    assert response.header("access-control-allow-origin") == "*"


def test_etag_is_the_same_on_every_server(make: MakeClient, deployed: Deployment) -> None:
    url = deployed.url("css/app.css")
    assert make().get(url).header("etag") == make().get(url).header("etag")


def test_head(client: Client, deployed: Deployment) -> None:
    response = client.request("HEAD", deployed.url("css/app.css"))
    assert response.status == 200
    assert response.body == b""
    assert response.header("content-length") == str(len(CSS))


@pytest.mark.parametrize(
    "value",
    ["{etag}", "W/{etag}", '"nope", {etag}', "*"],
)
def test_not_modified(client: Client, deployed: Deployment, value: str) -> None:
    url = deployed.url("css/app.css")
    etag = client.get(url).header("etag")
    assert etag is not None
    response = client.get(url, [("If-None-Match", value.format(etag=etag))])
    assert response.status == 304
    assert response.body == b""
    assert response.header("etag") == etag
    assert response.header("cache-control") == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    ("accept", "encoding"),
    [
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("br;q=0, gzip", "gzip"),
        ("gzip;q=0.2, br;q=0.1", "gzip"),
        ("identity", None),
        ("identity;q=0", None),
        ("", None),
    ],
)
def test_encoding_negotiation(
    client: Client, deployed: Deployment, accept: str, encoding: str | None
) -> None:
    response = client.get(deployed.url("css/app.css"), [("Accept-Encoding", accept)])
    assert response.status == 200
    assert response.header("content-encoding") == encoding
    assert response.header("vary") == "Accept-Encoding"
    assert response.header("content-length") == str(len(response.body))
    decoded = {
        None: lambda b: b,
        "gzip": gzip.decompress,
        "br": brotli.decompress,
    }[encoding](response.body)
    assert decoded == CSS


def test_single_range(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("css/app.css"), [("Range", "bytes=10-19")])
    assert response.status == 206
    assert response.body == CSS[10:20]
    assert response.header("content-range") == f"bytes 10-19/{len(CSS)}"
    assert response.header("content-length") == "10"


def test_range_on_a_large_file(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("big.bin"), [("Range", "bytes=-1000")])
    assert response.status == 206
    assert response.body == BIG[-1000:]


def test_multi_range(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("big.bin"), [("Range", "bytes=0-9, 200000-200009")])
    assert response.status == 206
    content_type = response.header("content-type")
    assert content_type is not None
    match = re.fullmatch(r"multipart/byteranges; boundary=(\S+)", content_type)
    assert match is not None
    mark = match.group(1).encode()
    assert response.header("content-length") == str(len(response.body))
    parts = response.body.split(b"--" + mark)
    assert parts[0] == b""
    assert parts[-1] == b"--\r\n"
    size = len(BIG)
    for part, (start, stop) in zip(parts[1:-1], [(0, 9), (200000, 200009)], strict=True):
        head, _, data = part.partition(b"\r\n\r\n")
        assert f"content-range: bytes {start}-{stop}/{size}".encode() in head
        assert data.removesuffix(b"\r\n") == BIG[start : stop + 1]


def test_unsatisfiable_range(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("css/app.css"), [("Range", "bytes=99999-")])
    assert response.status == 416
    assert response.header("content-range") == f"bytes */{len(CSS)}"


def test_if_range(client: Client, deployed: Deployment) -> None:
    url = deployed.url("css/app.css")
    etag = client.get(url).header("etag")
    assert etag is not None
    assert client.get(url, [("Range", "bytes=0-0"), ("If-Range", etag)]).status == 206
    assert client.get(url, [("Range", "bytes=0-0"), ("If-Range", '"stale"')]).status == 200


def test_if_match(client: Client, deployed: Deployment) -> None:
    # RFC 9110 §13.1.1: evaluated first, compared strongly; false: 412, nothing sent.
    url = deployed.url("css/app.css")
    etag = client.get(url).header("etag")
    assert etag is not None
    for value in (etag, "*", f'"other", {etag}'):
        assert client.get(url, [("If-Match", value)]).status == 200
    for extra in ([], [("Range", "bytes=0-0")], [("If-None-Match", etag)]):
        for value in ('"other"', f"W/{etag}", "garbage"):
            response = client.get(url, [("If-Match", value), *extra])
            assert (response.status, response.body) == (412, b"")
            assert response.header("cache-control") == "no-store"


def test_a_range_is_validated_against_the_identity_it_is_of(
    client: Client, deployed: Deployment
) -> None:
    # Ranges are of the identity bytes: If-None-Match is compared with that tag, not
    # with the br one the client would get without Range (RFC 9110 §13.2.2).
    url = deployed.url("css/app.css")
    plain = client.get(url).header("etag")
    br = client.get(url, [("Accept-Encoding", "br")]).header("etag")
    assert plain is not None and br is not None and plain != br
    asked = [("Accept-Encoding", "br"), ("Range", "bytes=0-9")]
    response = client.get(url, [*asked, ("If-None-Match", plain)])
    assert (response.status, response.header("etag")) == (304, plain)
    response = client.get(url, [*asked, ("If-None-Match", br)])
    assert (response.status, response.body) == (206, CSS[:10])


@pytest.mark.parametrize(
    "ignored", [[("Range", "bytes=abc")], [("Range", "bytes=0-1"), ("If-Range", '"zz"')]]
)
def test_an_ignored_range_keeps_the_negotiated_coding(
    client: Client, deployed: Deployment, ignored: list[tuple[str, str]]
) -> None:
    # The Range ignored (§14.2, §13.1.5): the answer is the one without it.
    response = client.get(deployed.url("css/app.css"), [("Accept-Encoding", "br"), *ignored])
    assert (response.status, response.header("content-encoding")) == (200, "br")
    assert brotli.decompress(response.body) == CSS


def test_multi_range_parts_come_in_the_order_asked(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("big.bin"), [("Range", "bytes=200000-200009, 0-9")])
    assert response.status == 206
    first = response.body.index(b"content-range: bytes 200000-200009/")
    assert first < response.body.index(b"content-range: bytes 0-9/")


def test_large_file_is_streamed_from_disk(client: Client, deployed: Deployment) -> None:
    response = client.get(deployed.url("big.bin"))
    assert response.status == 200
    assert response.body == BIG


def test_pathsend_when_the_server_offers_it(make_asgi: MakeClient, deployed: Deployment) -> None:
    client = make_asgi()
    response = client.get(deployed.url("big.bin"), extensions={"http.response.pathsend": {}})
    kinds = [m["type"] for m in response.messages]
    assert kinds == ["http.response.start", "http.response.pathsend"]
    assert response.body == BIG
    assert response.messages[1]["path"].startswith(str(client.mw.runtime.store.root))


def test_zerocopysend_when_the_server_offers_it(
    make_asgi: MakeClient, deployed: Deployment
) -> None:
    client = make_asgi()
    extensions: dict[str, Any] = {"http.response.zerocopysend": {}}
    response = client.get(deployed.url("big.bin"), extensions=extensions)
    zero = [m for m in response.messages if m["type"] == "http.response.zerocopysend"]
    assert len(zero) == 1
    assert zero[0]["count"] == len(BIG)
    assert response.body == BIG
    ranged = client.get(deployed.url("big.bin"), [("Range", "bytes=5-9")], extensions=extensions)
    assert ranged.body == BIG[5:10]


def test_wsgi_file_wrapper(make_wsgi: MakeClient, deployed: Deployment) -> None:
    wrapped: list[Any] = []

    class Wrapper:
        def __init__(self, fh: Any, size: int) -> None:
            self.fh = fh
            wrapped.append(self)

        def __iter__(self) -> Iterator[bytes]:
            return iter(lambda: self.fh.read(65536), b"")

        def close(self) -> None:
            self.fh.close()

    response = make_wsgi().get(deployed.url("big.bin"), extra={"wsgi.file_wrapper": Wrapper})
    assert response.body == BIG
    assert len(wrapped) == 1


def test_old_deployments_stay_servable(
    client: Client, store: FileStore, deployed: Deployment
) -> None:
    newer = publish(store, {"css/app.css": b"body{}", "js/app.js": JS})
    assert client.mw.runtime.refresh()
    assert client.get("/").header("x-deployment-id") == newer.id
    assert client.get(deployed.url("css/app.css")).body == CSS
    assert client.get(newer.url("css/app.css")).body == b"body{}"
    assert client.mw.url("css/app.css") == newer.url("css/app.css")


def test_version_endpoint(client: Client, deployed: Deployment) -> None:
    response = client.get("/_deploysync/version")
    assert response.status == 200
    assert response.header("cache-control") == "no-store"
    assert response.header("content-type") == "application/json"
    assert json.loads(response.body) == {"id": deployed.id, "static_url": "/static/", "seq": 1}
    head = client.request("HEAD", "/_deploysync/version")
    assert head.status == 200
    assert head.body == b""
    assert client.request("POST", "/_deploysync/version").status == 405


def test_client_script(client: Client, deployed: Deployment) -> None:
    page = client.get("/").body
    match = re.search(rb'src="(/_deploysync/client-([0-9a-f]{12})\.js)"', page)
    assert match is not None
    response = client.get(match.group(1).decode())
    assert response.status == 200
    assert response.header("cache-control") == "public, max-age=31536000, immutable"
    assert response.header("content-type") == "text/javascript; charset=utf-8"
    import hashlib

    assert hashlib.sha256(response.body).hexdigest()[:12] == match.group(2).decode()
    zipped = client.get(match.group(1).decode(), [("Accept-Encoding", "gzip")])
    if zipped.header("content-encoding") == "gzip":
        assert gzip.decompress(zipped.body) == response.body
    assert client.get("/_deploysync/client-000000000000.js").status == 404


# -- stale navigation -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE"])
def test_stale_navigation_is_409_and_the_app_is_not_called(
    client: Client, store: FileStore, deployed: Deployment, method: str
) -> None:
    newer = publish(store, {"css/app.css": b"new"})
    client.mw.runtime.refresh()
    response = client.request(
        method, "/form", [("X-Deploysync", "navigate"), ("X-Deployment-Id", deployed.id)]
    )
    assert response.status == 409
    assert response.header("x-deploysync") == "reload"
    assert response.header("x-deployment-id") == newer.id
    assert response.header("cache-control") == "no-store"
    assert response.header("content-length") == "0"
    assert response.body == b""
    assert client.spec.calls == 0


def test_current_navigation_reaches_the_app(client: Client, deployed: Deployment) -> None:
    response = client.get("/", [("X-Deploysync", "navigate"), ("X-Deployment-Id", deployed.id)])
    assert response.status == 200
    assert client.spec.calls == 1


def test_plain_fetch_is_never_409(client: Client, deployed: Deployment) -> None:
    response = client.get("/api", [("X-Deployment-Id", "0ld")])
    assert response.status == 200
    assert client.spec.calls == 1


def test_newer_page_never_goes_back(client: Client, store: FileStore, deployed: Deployment) -> None:
    newer = publish(store, {"css/app.css": b"new"}, activate=False)
    store.activate(newer.id)
    store.activate(deployed.id)  # a rollback: deployed is now the newest activation
    client.mw.runtime.refresh()
    stale = client.get("/", [("X-Deploysync", "navigate"), ("X-Deployment-Id", newer.id)])
    assert stale.status == 409
    assert stale.header("x-deployment-id") == deployed.id


@pytest.mark.parametrize(
    "value",
    ["bad id", "a" * 65, "abc\r\nSet-Cookie: x=1", "", "a,b", "é"],
)
def test_invalid_ids_count_as_absent_and_are_never_echoed(
    client: Client, deployed: Deployment, value: str
) -> None:
    try:
        header = value.encode("latin-1").decode("latin-1")
    except UnicodeEncodeError:
        header = value.encode().decode("latin-1")
    response = client.get("/", [("X-Deploysync", "navigate"), ("X-Deployment-Id", header)])
    assert response.status == 200
    assert client.spec.calls == 1
    for _, v in response.headers:
        assert value not in v or not value


def test_pinned_deployment(make: MakeClient, store: FileStore, deployed: Deployment) -> None:
    newer = publish(store, {"css/app.css": b"new"})
    client = make(deployment=deployed.id)
    assert client.get("/").header("x-deployment-id") == deployed.id
    assert client.get(newer.url("css/app.css")).body == b"new"  # every retained one
    assert client.mw.url("css/app.css") == deployed.url("css/app.css")


def test_pinned_by_environment(
    make: MakeClient,
    deployed: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("DEPLOYSYNC_DEPLOYMENT", "notbuiltyet")
    with caplog.at_level(logging.WARNING, logger="deploysync"):
        client = make()
        assert client.get("/").header("x-deployment-id") == "notbuiltyet"
        client.mw.runtime.refresh()
    # Said once (a typo would otherwise go unnoticed).
    told = [r.getMessage() for r in caplog.records if "notbuiltyet" in r.getMessage()]
    assert len(told) == 1 and "(pinned) is not in" in told[0], told
    # A server pinned to a newer, not yet activated deployment moves old pages to it.
    response = client.get("/", [("X-Deploysync", "navigate"), ("X-Deployment-Id", deployed.id)])
    assert response.status == 409


# -- url() ---------------------------------------------------------------------------------------


def test_url(client: Client, deployed: Deployment) -> None:
    assert client.mw.url("css/app.css") == deployed.url("css/app.css")
    assert client.mw.url("/css/app.css") == deployed.url("css/app.css")
    assert client.mw.url("css/missing.css") == "/static/css/missing.css"


def test_url_strict(make: MakeClient, deployed: Deployment) -> None:
    client = make(strict=True)
    with pytest.raises(UnknownAsset, match=r"css/missing\.css"):
        client.mw.url("css/missing.css")


def test_static_url_mismatch_fails_at_construction(make: MakeClient, deployed: Deployment) -> None:
    with pytest.raises(DeploySyncError, match=r"'/static/'.*'/assets/'"):
        make(static_url="/assets/")


def test_other_static_url(make: MakeClient, store: FileStore) -> None:
    deployment = publish(store, {"a.css": b"a"}, static_url="/assets/")
    client = make(static_url="assets")
    assert client.get(deployment.url("a.css")).body == b"a"
    assert client.get("/static/" + deployment.assets["a.css"].name).status == 200  # the app


# -- safety ---------------------------------------------------------------------------------------


TRAVERSALS = [
    ("/static/../../etc/passwd", None),
    ("/static/..%2f..%2fetc/passwd", b"/static/..%2f..%2fetc/passwd"),
    ("/static/%2e%2e/%2e%2e/etc/passwd", b"/static/%252e%252e/%252e%252e/etc/passwd"),
    ("/static/css/../css/app.css", None),
    ("/static/..\\..\\etc\\passwd", b"/static/..%5c..%5cetc%5cpasswd"),
    ("/static//etc/passwd", None),
    ("/static/css/app.css\0.png", b"/static/css/app.css%00.png"),
    ("/static/" + "a" * 5000, None),
    ("/static/\u2025/etc/passwd", None),
]


@pytest.mark.parametrize(("path", "raw"), TRAVERSALS)
def test_traversal_is_404(
    client: Client, deployed: Deployment, path: str, raw: bytes | None
) -> None:
    response = client.get(path, raw_path=raw)
    assert response.status == 404
    assert response.header("cache-control") == "no-store"
    assert b"root:" not in response.body


def test_encoded_slash_does_not_reach_a_real_file(client: Client, deployed: Deployment) -> None:
    url = deployed.url("css/app.css")
    assert client.get(url).status == 200
    raw = url.replace("css/app", "css%2Fapp").encode()
    assert client.get(url, raw_path=raw).status == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405(client: Client, deployed: Deployment, method: str) -> None:
    response = client.request(method, deployed.url("css/app.css"))
    assert response.status == 405
    assert response.header("allow") == "GET, HEAD"
    assert client.spec.calls == 0


def test_unknown_asset_is_404_no_store(client: Client, deployed: Deployment) -> None:
    response = client.get("/static/css/app.000000000000.css")
    assert response.status == 404
    assert response.header("cache-control") == "no-store"


def test_symlink_in_the_store_pointing_out(
    make: MakeClient, store: FileStore, tmp_path: Path
) -> None:
    deployment = publish(store, {"a.txt": b"inside", "b.bin": os.urandom(300 * 1024)})
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0")
    big_secret = tmp_path / "big-secret"
    big_secret.write_bytes(b"s" * (300 * 1024))
    for path, target in (("a.txt", secret), ("b.bin", big_secret)):
        blob = Path(store.blob_path(deployment.assets[path].digest))
        blob.unlink()
        blob.symlink_to(target)
    client = make()
    for path in ("a.txt", "b.bin"):
        response = client.get(deployment.url(path))
        assert response.status == 404
        assert b"root:" not in response.body
        assert b"sss" not in response.body


MALFORMED = [
    ("Range", "bytes=" + "9" * 100 + "-"),
    ("Range", "bytes=0-1," * 1000),
    ("Range", "bytes=\x7f-"),
    ("Range", "bytes=-" + "1" * 30),
    ("If-None-Match", '"' * 10000),
    ("If-None-Match", "W/"),
    ("If-Range", "\x00\x01"),
    ("Accept-Encoding", "gzip;q=" + "9" * 1000),
    ("Accept-Encoding", ";;;,,,===" * 200),
    ("X-Deployment-Id", "\r\n\r\n"),
    ("Accept-Encoding", "\xff\xfe"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED)
def test_malformed_headers_never_fail(
    client: Client, deployed: Deployment, name: str, value: str
) -> None:
    for path in (deployed.url("css/app.css"), deployed.url("big.bin"), "/"):
        response = client.get(path, [(name, value), ("X-Deploysync", "navigate")])
        assert response.status in (200, 206, 304, 416)
        for _, v in response.headers:
            assert value not in v


# -- the store at runtime -------------------------------------------------------------------------


def test_store_disappearing_keeps_the_last_good_snapshot(
    client: Client, store: FileStore, deployed: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    url = deployed.url("css/app.css")
    shutil.rmtree(store.root)
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        assert not client.mw.runtime.refresh()
        assert not client.mw.runtime.refresh()
    assert len([r for r in caplog.records if r.name == "deploysync"]) == 1
    assert client.get(url).body == CSS
    assert client.get("/").header("x-deployment-id") == deployed.id


def test_a_server_cut_off_from_its_store_sends_no_page_back(
    client: Client, store: FileStore, deployed: Deployment, tmp_path: Path
) -> None:
    """While the store cannot be read, an id this server does not know may be one
    activated since (by servers that can read it): its pages are answered, not 409'd, and
    the version check does not call them outdated. Once readable again, the rule holds."""
    navigate = [("X-Deploysync", "navigate")]
    moved = tmp_path / "moved"
    store.root.rename(moved)
    assert not client.mw.runtime.refresh()
    elsewhere = FileStore(moved)
    newer = publish(elsewhere, {"css/app.css": b"new"})  # activated where it can be read
    answer = client.get("/", [*navigate, ("X-Deployment-Id", newer.id)])
    assert answer.status == 200 and answer.header("x-deployment-id") == deployed.id
    version = client.get("/_deploysync/version", [("X-Deployment-Id", newer.id)])
    assert json.loads(version.body)["outdated"] is False
    older = client.get("/", [*navigate, ("X-Deployment-Id", "0ld")])
    assert older.status == 200  # unknown too: pruned, or newer, it cannot tell
    assert client.spec.calls == 2

    moved.rename(store.root)
    assert client.mw.runtime.refresh()
    assert client.get("/").header("x-deployment-id") == newer.id
    assert client.get("/", [*navigate, ("X-Deployment-Id", "0ld")]).status == 409
    version = client.get("/_deploysync/version", [("X-Deployment-Id", deployed.id)])
    assert json.loads(version.body)["outdated"] is True


def test_a_server_stays_cut_off_while_its_store_folder_is_gone(
    make: MakeClient, store: FileStore, deployed: Deployment, tmp_path: Path
) -> None:
    # The watcher's probe answers for a folder that is gone (no files, no token): it is
    # the failing reads that say the server is behind, poll after poll.
    client = make(poll_interval=0.02)
    navigate = [("X-Deploysync", "navigate"), ("X-Deployment-Id", "feedbeef0000")]
    assert client.get("/", navigate).status == 409  # the watcher runs; the id is unknown
    store.root.rename(tmp_path / "gone")
    runtime = client.mw.runtime
    deadline = time.monotonic() + 5
    while not runtime.snapshot.behind:
        assert time.monotonic() < deadline, "the failed reads did not mark the server behind"
        time.sleep(0.01)
    seen = set()
    for _ in range(60):  # about 1 s: many polls, and a rescan
        seen.add(runtime.snapshot.behind)
        time.sleep(0.02)
    assert seen == {True}
    assert client.get("/", navigate).status == 200
    (tmp_path / "gone").rename(store.root)
    deadline = time.monotonic() + 5
    while runtime.snapshot.behind:
        assert time.monotonic() < deadline, "the server never read its store again"
        time.sleep(0.01)
    assert client.get("/", navigate).status == 409


def test_a_file_of_a_deployment_not_read_yet_is_served_at_once(
    make: MakeClient, store: FileStore, deployed: Deployment
) -> None:
    """Another worker of this server switched first and rendered a page of the new
    deployment: its files are asked for here before this process's next poll. A miss
    looks whether the store changed (at most every CATCH_UP_GAP) and reads it then,
    instead of answering 404."""
    client = make(poll_interval=3600)  # no poll during the test
    assert client.get("/").header("x-deployment-id") == deployed.id  # watcher started
    newer = publish(store, {"css/app.css": b"newer"})
    answer = client.get(newer.url("css/app.css"))
    assert answer.status == 200 and answer.body == b"newer"
    assert client.get("/").header("x-deployment-id") == newer.id
    reads = 0
    runtime = client.mw.runtime
    original = runtime.refresh

    def counted() -> bool:
        nonlocal reads
        reads += 1
        return original()

    runtime.refresh = counted  # type: ignore[method-assign]
    for _ in range(20):  # a flood of requests for files that are nowhere
        assert client.get("/static/css/missing.0123456789ab.css").status == 404
    assert reads == 0, "a miss read a store that had not changed"


def test_a_miss_during_the_watchers_read_of_a_deployment_waits_for_it(
    store: FileStore, deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher has begun reading a new deployment (slowly: many files); a miss for one
    of its files, asked meanwhile, waits for that read rather than answer 404."""
    from deploysync import serving

    runtime = serving.Runtime(store, poll_interval=3600)
    try:
        load = serving.Runtime._load_file
        monkeypatch.setattr(
            serving.Runtime, "_load_file", lambda self, a: (time.sleep(0.05), load(self, a))[1]
        )
        old = runtime.snapshot
        newer = publish(store, {"css/app.css": b"newer", "js/a.js": b"a", "js/b.js": b"b"})
        watcher = threading.Thread(target=runtime.refresh)
        watcher.start()
        time.sleep(0.02)  # the read is under way, its probe done
        fresh, wait = runtime.catch_up_now(old)
        if fresh is None and wait:
            fresh = runtime.catch_up(old)
        watcher.join()
        assert fresh is not None and fresh.current_id == newer.id
        assert newer.assets["css/app.css"].name in fresh.files
    finally:
        runtime.close()


def test_misses_wait_for_a_look_that_only_probes_a_short_while(
    store: FileStore, deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Redis that starts to hang holds a probe for its socket timeout: the look's own
    # request waits for it, the misses behind it give up after PROBE_WAIT (a 404).
    from deploysync import serving

    runtime = serving.Runtime(store, poll_interval=3600)
    try:
        probe = runtime.store.probe
        monkeypatch.setattr(runtime.store, "probe", lambda: (time.sleep(1.0), probe())[1])
        old = runtime.snapshot
        first = threading.Thread(target=runtime.catch_up, args=(old,))
        first.start()
        time.sleep(0.05)  # the first look is probing
        assert runtime.catch_up_now(old) == (None, True)
        assert runtime.catch_up(old) is None
        assert first.is_alive(), "the miss waited for the end of the other's probe"
        first.join()
    finally:
        runtime.close()


def test_a_new_deployments_file_is_found_while_an_old_one_cannot_be_read(
    make: MakeClient, store: FileStore, deployed: Deployment
) -> None:
    # A snapshot that misses an asset (a damaged blob of a retained deployment) is read
    # again at each poll; a deploy meanwhile must not wait for that poll either.
    asset = deployed.assets["css/app.css"]
    with open(store.blob_path(asset.digest), "ab") as blob:
        blob.write(b"damage")
    client = make(poll_interval=3600)
    assert client.get(deployed.url("css/app.css")).status == 404
    time.sleep(0.02)  # misses look at the store at most every CATCH_UP_GAP
    newer = publish(store, {"js/new.js": b"export const n = 1"})
    assert client.get(newer.url("js/new.js")).status == 200


def test_a_store_that_reads_as_empty_keeps_the_last_good_snapshot(
    client: Client, store: FileStore, deployed: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The activation record never shrinks to nothing: an empty store was lost (a Redis
    # restarted without its data), and serving nothing would break every open page.
    (store.root / "current.json").unlink()
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        assert not client.mw.runtime.refresh()
    assert "reads as empty" in caplog.text
    assert client.get("/").header("x-deployment-id") == deployed.id
    assert client.get(deployed.url("css/app.css")).body == CSS


def test_corrupt_manifest_keeps_the_last_good_snapshot(
    client: Client, store: FileStore, deployed: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    newer = publish(store, {"css/app.css": b"new"})
    manifest = store.root / "deployments" / f"{newer.id}.json"
    manifest.write_bytes(b"{not json")
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        assert not client.mw.runtime.refresh()
    assert any("Cannot load deployment" in r.getMessage() for r in caplog.records)
    response = client.get("/")
    assert response.status == 200
    assert response.header("x-deployment-id") == deployed.id
    assert client.get(deployed.url("css/app.css")).body == CSS


def test_an_activated_deployment_whose_manifest_is_gone_keeps_the_last_good_snapshot(
    client: Client, store: FileStore, deployed: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The activation record names it, the store lost it (a Redis key evicted): pages
    # must not announce an id whose assets no server has.
    newer = publish(store, {"css/app.css": b"new"})
    (store.root / "deployments" / f"{newer.id}.json").unlink()
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        assert not client.mw.runtime.refresh()
    told = [r.getMessage() for r in caplog.records if newer.id in r.getMessage()]
    assert len(told) == 1 and "is missing from" in told[0] and "pinned" not in told[0], told
    assert client.get("/").header("x-deployment-id") == deployed.id
    assert client.mw.url("css/app.css") == deployed.url("css/app.css")


def test_switch_to_another_static_url_is_refused_at_runtime(
    client: Client, store: FileStore, deployed: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    publish(store, {"x.css": b"x"}, static_url="/elsewhere/")
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        assert not client.mw.runtime.refresh()
    assert "/elsewhere/" in caplog.text
    assert client.get("/").header("x-deployment-id") == deployed.id


def test_the_watcher_picks_up_an_activation(
    make: MakeClient, store: FileStore, deployed: Deployment
) -> None:
    client = make(poll_interval=0.05)
    assert client.get("/").header("x-deployment-id") == deployed.id  # starts the watcher
    newer = publish(store, {"css/app.css": b"new"})
    seen: Response | None = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = client.get("/")
        if seen.header("x-deployment-id") == newer.id:
            break
        time.sleep(0.02)
    assert seen is not None
    assert seen.header("x-deployment-id") == newer.id
    assert f'content="{newer.id}"'.encode() in seen.body


def test_asgi_passes_other_scopes_through(store: FileStore, deployed: Deployment) -> None:
    import asyncio

    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    from deploysync.asgi import DeploySync

    mw = DeploySync(app, store=store)
    try:
        for scope_type in ("lifespan", "websocket"):
            asyncio.run(mw({"type": scope_type, "path": "/static/x"}, None, None))  # type: ignore[arg-type]
    finally:
        mw.close()
    assert seen == ["lifespan", "websocket"]


def test_wsgi_closes_the_app_iterable(client: Client, deployed: Deployment) -> None:
    client.get("/")
    assert client.spec.closed == 1


# -- WSGI specifics -------------------------------------------------------------------------------


def _wsgi(store: FileStore, app: Any) -> Any:
    from deploysync.wsgi import DeploySync

    return DeploySync(app, store=store)


def _call(mw: Any, path: str = "/") -> tuple[str, list[tuple[str, str]], bytes]:
    import io

    seen: dict[str, Any] = {}
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and "status" in seen:
            raise exc_info[1].with_traceback(exc_info[2])
        seen["status"], seen["headers"] = status, headers
        return written.append

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    result = mw(environ, start_response)
    try:
        body = b"".join(written) + b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen["status"], seen["headers"], body


def _run_wsgi(store: FileStore, app: Any) -> tuple[str, list[tuple[str, str]], bytes]:
    """*app* behind a WSGI middleware of its own, asked for ``/`` once."""
    mw = _wsgi(store, app)
    try:
        return _call(mw)
    finally:
        mw.close()


def test_wsgi_generator_app_calling_start_response_late(
    store: FileStore, deployed: Deployment
) -> None:
    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        yield b"<html><he"
        yield b"ad></head></html>"

    status, headers, body = _run_wsgi(store, app)
    assert status == "200 OK"
    assert body.count(b'name="deployment-id"') == 1
    assert ("x-deployment-id", deployed.id) in headers


def test_wsgi_legacy_write_is_passed_through(store: FileStore, deployed: Deployment) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/html")])
        write(b"<html><head>")
        return [b"</head></html>"]

    _status, headers, body = _run_wsgi(store, app)
    assert body == b"<html><head></head></html>"
    assert ("x-deployment-id", deployed.id) in headers


def test_wsgi_legacy_write_on_a_server_without_it_fails_as_without_the_middleware(
    store: FileStore, deployed: Deployment
) -> None:
    import io

    # granian's start_response returns None: the app's write() call must fail (a 500 from
    # the server), not have its page dropped under a 200 with an empty body.
    def app(environ: Any, start_response: Any) -> list[bytes]:
        write = start_response("200 OK", [("Content-Type", "text/html")])
        write(b"<html><head></head></html>")
        return []

    mw = _wsgi(store, app)
    try:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO()}
        with pytest.raises(TypeError, match="write"):
            b"".join(mw(environ, lambda status, headers, exc_info=None: None))
    finally:
        mw.close()


def test_wsgi_error_page_replaces_held_headers(store: FileStore, deployed: Deployment) -> None:
    import sys

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        return [b"error"]

    status, _headers, body = _run_wsgi(store, app)
    assert status.startswith("500")
    assert body == b"error"


def test_wsgi_error_page_made_first_is_not_read_ahead(
    store: FileStore, deployed: Deployment
) -> None:
    # A first start_response with exc_info (Bottle's error pages): a response like any
    # other, whose body the middleware does not read before the server asks for it.
    import sys

    made: list[int] = []

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        try:
            raise ValueError("boom")
        except ValueError:
            start_response(
                "500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info()
            )
        for i in range(1000):
            made.append(i)
            yield b"x" * 1024

    mw = _wsgi(store, app)
    try:
        result = mw(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda status, headers, exc=None: None
        )
        assert len(made) < 100, "the middleware read the body ahead"
        assert len(b"".join(result)) == 1000 * 1024
    finally:
        mw.close()


def test_wsgi_header_that_is_not_latin1_passes_through(
    store: FileStore, deployed: Deployment
) -> None:
    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json"), ("X-Name", "café ☃")])
        return [b"{}"]

    status, headers, body = _run_wsgi(store, app)
    assert (status, body) == ("200 OK", b"{}")
    assert ("X-Name", "café ☃") in headers


def test_asgi_app_without_final_body_is_flushed(store: FileStore, deployed: Deployment) -> None:
    import asyncio

    from deploysync.asgi import DeploySync

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"<html><head>", "more_body": True})

    messages: list[Any] = []

    async def send(message: Any) -> None:
        messages.append(message)

    mw = DeploySync(app, store=store)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "root_path": ""}
    try:
        asyncio.run(mw(scope, None, send))  # type: ignore[arg-type]
    finally:
        mw.close()
    assert messages[0]["type"] == "http.response.start"
    assert messages[-1]["more_body"] is False
    body = b"".join(m.get("body", b"") for m in messages[1:])
    assert body.startswith(b'<html><head><meta name="deployment-id"')


def test_a_pruned_blob_is_404_not_500(
    client: Client, store: FileStore, deployed: Deployment
) -> None:
    Path(store.blob_path(deployed.assets["big.bin"].digest)).unlink()
    response = client.get(deployed.url("big.bin"))
    assert response.status == 404
    assert response.header("cache-control") == "no-store"


@pytest.mark.parametrize(
    ("ranges", "status"), [("bytes=0-9,100-109", 206), ("bytes=10-", 206), (None, 200)]
)
def test_a_blob_pruned_while_it_is_sent_is_sent_to_the_end(
    client: Client, store: FileStore, deployed: Deployment, ranges: str | None, status: int
) -> None:
    # A prune unlinks the file after the first part is out: what was opened stays readable.
    blob = Path(store.blob_path(deployed.assets["big.bin"].digest))
    response = client.request(
        "GET",
        deployed.url("big.bin"),
        [("Range", ranges)] if ranges else [],
        on_body=lambda: blob.unlink(missing_ok=True),
    )
    assert not blob.exists()
    assert response.status == status
    if ranges == "bytes=0-9,100-109":
        assert BIG[0:10] in response.body and BIG[100:110] in response.body
        assert response.body.lower().count(b"content-range: bytes ") == 2
    else:
        assert response.body == BIG[10:] if ranges else BIG
    assert len(response.body) == int(response.header("content-length") or 0)


def test_a_request_cancelled_while_its_file_is_opened_leaks_nothing(
    make_asgi: MakeClient, deployed: Deployment
) -> None:
    # A client gone while the file is being opened (the server cancels the request).
    mw = make_asgi().mw
    scope = {"type": "http", "method": "GET", "path": deployed.url("big.bin"), "headers": []}
    scope |= {"root_path": "", "query_string": b""}

    async def send(message: Any) -> None:
        pass

    async def cancelled() -> None:
        task = asyncio.ensure_future(mw(scope, None, send))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # the opening thread is done

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            asyncio.run(cancelled())
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_every_store_backend_serves_and_switches(kind: str, any_store: Store) -> None:
    """The same serving over the filesystem and the Redis store (blobs from its cache)."""
    import time

    first = publish(any_store, {"css/app.css": CSS, "big.bin": BIG})
    client = make_client(kind, AppSpec(), store=any_store, poll_interval=0.05)
    try:
        assert client.get(first.url("css/app.css")).body == CSS
        assert client.get(first.url("big.bin")).body == BIG
        assert client.get("/").header("x-deployment-id") == first.id
        second = publish(any_store, {"css/app.css": b"second"})
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if client.get("/").header("x-deployment-id") == second.id:
                break
            time.sleep(0.02)
        assert client.get("/").header("x-deployment-id") == second.id
        assert client.get(first.url("css/app.css")).body == CSS  # still retained
    finally:
        client.close()


# -- ordering across servers ---------------------------------------------------------------------


def test_version_judges_a_page_that_sends_its_id(
    client: Client, store: FileStore, deployed: Deployment
) -> None:
    newer = publish(store, {"css/app.css": b"new"}, activate=False)
    older = publish(store, {"css/app.css": b"old"}, activate=False)
    store.activate(older.id)
    store.activate(deployed.id)
    store.activate(newer.id)
    store.activate(deployed.id)  # a rollback: deployed is the newest activation
    client.mw.runtime.refresh()

    def judged(page: str) -> Any:
        return json.loads(client.get("/_deploysync/version", [("X-Deployment-Id", page)]).body)

    assert judged(deployed.id)["outdated"] is False
    assert judged(newer.id)["outdated"] is True  # activated before the rollback
    assert judged("never-seen")["outdated"] is True
    assert judged(deployed.id)["id"] == deployed.id
    # Without the page's id (or with an invalid one) the answer is the plain one.
    assert "outdated" not in json.loads(client.get("/_deploysync/version").body)
    plain = client.get("/_deploysync/version", [("X-Deployment-Id", "bad id")])
    assert "outdated" not in json.loads(plain.body)
    head = client.request("HEAD", "/_deploysync/version", [("X-Deployment-Id", newer.id)])
    assert head.status == 200 and head.body == b""
    # The page's id alone never makes a 409: only a navigation does.
    assert client.get("/", [("X-Deployment-Id", newer.id)]).status == 200


def test_a_straggler_does_not_judge_a_newer_page_outdated(
    client: Client, store: FileStore, deployed: Deployment
) -> None:
    # This server is still on `deployed`; `newer` was activated on the others, and this
    # server has not seen it yet: its order is the one it read.
    runtime = client.mw.runtime
    snapshot = runtime.snapshot
    newer = publish(store, {"css/app.css": b"new"}, activate=False)
    order = {**snapshot.order, newer.id: max(snapshot.order.values()) + 1}
    runtime.snapshot = replace(snapshot, order=MappingProxyType(order))
    body = json.loads(client.get("/_deploysync/version", [("X-Deployment-Id", newer.id)]).body)
    assert body == {"id": deployed.id, "static_url": "/static/", "seq": 1, "outdated": False}


def test_a_page_of_a_deployment_rolling_in_is_not_sent_back(
    make: MakeClient, store: FileStore, deployed: Deployment
) -> None:
    # Pinned containers render `rolling` before it is activated; the servers still on
    # `deployed` must not answer its pages with a 409 to the older frontend.
    rolling = publish(store, {"css/app.css": b"rolling"}, activate=False)
    client = make()
    navigate = [("X-Deploysync", "navigate"), ("X-Deployment-Id", rolling.id)]
    response = client.get("/", navigate)
    assert response.status == 200
    assert response.header("x-deployment-id") == deployed.id
    # A deployment built before the current one and never activated is just old.
    store.activate(rolling.id)
    store.activate(deployed.id)
    client.mw.runtime.refresh()
    assert client.get("/", navigate).status == 409


def test_the_first_request_of_a_process_reads_the_store_again(
    make: MakeClient, store: FileStore, deployed: Deployment
) -> None:
    # A gunicorn worker forked from a --preload parent, or a server whose first request
    # comes long after start-up: the snapshot read then is not what it answers with.
    client = make(poll_interval=0.05)
    newer = publish(store, {"css/app.css": b"new"})
    time.sleep(0.1)
    response = client.get("/")  # the first request: starts the watcher
    assert response.header("x-deployment-id") == newer.id


# -- a Redis store's local copies and outages ------------------------------------------------
def _wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.redis
def test_a_server_started_while_redis_is_down_serves_the_last_known_deployment(
    kind: str, redis_server: Any, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import time

    from deploysync.store.redis import RedisStore

    cache = tmp_path / "cache"
    writer = RedisStore(redis_url, cache_dir=tmp_path / "writer")
    deployment = publish(writer, FILES)
    writer.close()
    first = make_client(
        kind, AppSpec(), store=RedisStore(redis_url, cache_dir=cache), poll_interval=0.05
    )
    try:
        assert first.get("/").header("x-deployment-id") == deployment.id  # starts the watcher
        state = first.mw.runtime.store.cache_dir / "state.json"
        _wait_until(state.is_file)
    finally:
        first.close()

    redis_server.stop()
    try:
        caplog.set_level(logging.INFO, logger="deploysync")
        # A worker recycled (or a server restarted) during the outage.
        second = make_client(
            kind, AppSpec(), store=RedisStore(redis_url, cache_dir=cache), poll_interval=0.05
        )
        try:
            assert caplog.records == []  # said by the watcher, not by whoever builds one
            page = second.get("/")
            assert page.status == 200
            assert page.header("x-deployment-id") == deployment.id
            assert b'<meta name="deployment-id"' in page.body
            for path, data in FILES.items():
                response = second.get(deployment.url(path))
                assert (response.status, response.body) == (200, data), path
            assert json.loads(second.get("/_deploysync/version").body)["id"] == deployment.id
            time.sleep(0.5)  # ten polls of the watcher, each failing to reach Redis
        finally:
            second.close()
    finally:
        redis_server.start()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1, lines
    assert "unreachable" in lines[0] and "serving what was last read" in lines[0]


@pytest.mark.redis
def test_a_command_that_builds_the_middleware_during_an_outage_logs_nothing(
    kind: str, redis_server: Any, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``flask deploysync list`` builds the app, and so the middleware: with Redis down it
    must print the command's one-line error only, nothing a server would say."""
    from deploysync.store.redis import RedisStore

    caplog.set_level(logging.INFO, logger="deploysync")
    redis_server.stop()
    try:
        client = make_client(
            kind, AppSpec(), store=RedisStore(redis_url, cache_dir=tmp_path / "cache")
        )
        client.close()
    finally:
        redis_server.start()
    assert caplog.records == []


@pytest.mark.redis
def test_a_cached_variant_of_other_bytes_is_fetched_again(
    kind: str, redis_url: str, tmp_path: Path
) -> None:
    """Redis lost its data and the same files were built again with another brotli
    quality: a server must not send its old compressed copy under the new length."""
    import random

    from deploysync.build import build
    from deploysync.store.redis import RedisStore

    rng = random.Random(6)
    words = ["deploy", "sync", "redis", "cache", "brotli", "variant", "server", "asset"]
    big = " ".join(rng.choice(words) + str(rng.randrange(9999)) for _ in range(240_000)).encode()
    files = {"big.txt": big, "small.txt": big[:60_000]}
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / name).write_bytes(data)
    sent: dict[tuple[str, int], bytes] = {}
    for quality in (1, 11):
        store = RedisStore(redis_url, cache_dir=tmp_path / "cache")
        store._redis.flushdb()
        result = build(src, store, activate=True, brotli_quality=quality, cache=False)
        deployment = result.deployment
        client = make_client(kind, AppSpec(), store=store)
        try:
            for name, data in files.items():
                size = deployment.assets[name].encodings["br"]
                assert (size > 256 * 1024) == (name == "big.txt")  # on disk / in memory
                response = client.get(deployment.url(name), [("accept-encoding", "br")])
                assert response.status == 200
                assert response.header("content-encoding") == "br"
                assert int(response.header("content-length") or -1) == len(response.body) == size
                assert brotli.decompress(response.body) == data
                sent[name, quality] = response.body
        finally:
            client.close()
    assert sent["big.txt", 1] != sent["big.txt", 11]


@pytest.mark.redis
def test_a_vanished_local_copy_is_fetched_again(
    kind: str, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    from deploysync.store.redis import RedisStore

    store = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    deployment = publish(store, FILES)
    client = make_client(kind, AppSpec(), store=store, poll_interval=0.05)
    url = deployment.url("big.bin")
    copy = store.cache_dir / deployment.assets["big.bin"].digest[:2]
    try:
        assert client.get(url).body == BIG
        caplog.set_level(logging.INFO, logger="deploysync")
        # A cache cleaner empties the folder: the next requests fetch the copies again.
        shutil.rmtree(store.cache_dir, ignore_errors=True)  # the watcher may write in it
        assert not copy.exists()
        for _ in range(3):
            response = client.get(url)
            assert (response.status, response.body) == (200, BIG)
            response = client.get(url, [("accept-encoding", "br")])
            assert response.status == 200 and brotli.decompress(response.body) == BIG
        assert copy.is_dir()
        vanished = [r.getMessage() for r in caplog.records if "vanished" in r.getMessage()]
        assert len(vanished) == 1, caplog.records
        # The next snapshot (a new deployment) fetches what vanished, before any request.
        shutil.rmtree(store.cache_dir, ignore_errors=True)
        assert not copy.exists()
        second = publish(store, {"css/app.css": b"second"})
        runtime = client.mw.runtime
        runtime.refresh()  # unless the watcher was first
        _wait_until(lambda: second.id in runtime.snapshot.loaded)
        assert copy.is_dir()
        assert client.get(url).body == BIG
    finally:
        client.close()


@pytest.mark.redis
def test_an_unusable_cache_folder_serves_from_memory(
    kind: str,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from deploysync.store.redis import RedisStore

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a folder other users can write: never used for the copies
    monkeypatch.delenv("DEPLOYSYNC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    caplog.set_level(logging.INFO, logger="deploysync")
    store = RedisStore(redis_url)
    deployment = publish(store, FILES)
    client = make_client(kind, AppSpec(), store=store)
    try:
        for path, data in FILES.items():
            response = client.get(deployment.url(path))
            assert (response.status, response.body) == (200, data), path
        response = client.get(deployment.url("big.bin"), [("accept-encoding", "gzip")])
        assert gzip.decompress(response.body) == BIG
    finally:
        client.close()
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "not private" in lines[0] and "from memory" in lines[0], lines
    assert not list(shared.rglob("*" + deployment.assets["big.bin"].digest + "*"))


@pytest.mark.redis
def test_the_cache_dir_option_reaches_the_store(kind: str, redis_url: str, tmp_path: Path) -> None:
    flask = pytest.importorskip("flask")
    from deploysync.contrib.flask import DeploySync as FlaskDeploySync

    client = make_client(kind, AppSpec(), store=redis_url, cache_dir=tmp_path / "mw")
    try:
        assert client.mw.runtime.store.cache_dir.parent == tmp_path / "mw"
    finally:
        client.close()
    app = flask.Flask(__name__)
    app.config.update(DEPLOYSYNC_STORE=redis_url, DEPLOYSYNC_CACHE_DIR=str(tmp_path / "flask"))
    FlaskDeploySync(app)
    middleware = FlaskDeploySync.middleware(app)
    try:
        assert middleware.runtime.store.cache_dir.parent == tmp_path / "flask"  # type: ignore[attr-defined]
    finally:
        middleware.close()


def test_a_middleware_nobody_uses_any_more_stops_its_watcher(
    store: FileStore, deployed: Deployment
) -> None:
    # An app factory in a test suite makes a middleware per test: each one's watcher
    # thread ends once the middleware is gone, without a close().
    import gc
    import threading
    import time

    from deploysync.wsgi import DeploySync

    def watchers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "deploysync-watcher"}

    # Only the watchers started here count: those of earlier tests end when they will.
    before = watchers()
    kept = []
    for _ in range(5):
        mw = DeploySync(lambda environ, start_response: [], store=store, poll_interval=0.05)
        mw.runtime.current()  # starts its watcher
        kept.append(mw)
    started = watchers() - before
    assert len(started) == 5
    del mw, kept
    gc.collect()
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in started)
