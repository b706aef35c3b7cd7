"""Django: middleware (sync and async), staticfiles storage, template tags, system checks.

Django is configured once for this module (``settings.configure``) with a neutral base;
each test applies its own store and options through ``override_settings``, whose
``setting_changed`` signal makes deploysync forget its runtime, so nothing leaks from one
test to the next.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.core import checks  # noqa: E402
from django.core.management import call_command, get_commands  # noqa: E402
from django.http import (  # noqa: E402
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import render  # noqa: E402
from django.templatetags.static import static  # noqa: E402
from django.test import AsyncClient, Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402

from deploysync.build import build  # noqa: E402
from deploysync.contrib.django.conf import get_runtime  # noqa: E402
from deploysync.manifest import Deployment, DeploySyncError  # noqa: E402
from deploysync.store import FileStore  # noqa: E402

MIDDLEWARE_PATH = "deploysync.contrib.django.middleware.DeploySyncMiddleware"
SECURITY = "django.middleware.security.SecurityMiddleware"

TEMPLATES = {
    "page.html": "{% load static %}<!doctype html><html><head><title>t</title>"
    '<link rel="stylesheet" href="{% static \'css/app.css\' %}"></head>'
    "<body>page</body></html>",
    # A body long enough that GZipMiddleware's output (up to 100 random bytes added
    # against BREACH) is always the smaller: it then always compresses.
    "manual.html": "{% load deploysync %}<!doctype html><html><head>{% deploysync_head %}"
    "</head><body>" + "<p>placed by the template</p>" * 40 + "</body></html>",
    "vite.html": '{% load deploysync %}<!doctype html><html><head>{% vite_tags "src/main.ts" %}'
    "</head><body></body></html>",
    "missing.html": "{% load static %}{% static 'nope.css' %}",
    "switch.html": "{% load static deploysync %}<!doctype html><html><head></head><body>"
    "{% static 'css/app.css' %} {% deploysync_id %}</body></html>",
}

CALLS: list[str] = []
# Called by the views below in the middle of rendering (another deployment activated).
MIDWAY: list[Callable[[], None]] = []


def page(request: HttpRequest) -> HttpResponse:
    return render(request, "page.html")


async def async_page(request: HttpRequest) -> HttpResponse:
    return HttpResponse("<!DOCTYPE html><html><head><title>a</title></head><body>a</body></html>")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        # <head> split across chunks.
        yield b"<!doctype html><html><he"
        yield b"ad><title>s</title></head><body>"
        yield b"streamed</body></html>"

    return StreamingHttpResponse(chunks(), content_type="text/html; charset=utf-8")


async def async_stream(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"<!doctype html><html><HEAD lang=en>"
        yield b"<title>s</title></head><body>streamed</body></html>"

    return StreamingHttpResponse(chunks(), content_type="text/html")


@csrf_exempt
def submit(request: HttpRequest) -> HttpResponse:
    CALLS.append(request.method or "")
    return HttpResponse("<!doctype html><p>saved</p>")


def pay(request: HttpRequest) -> HttpResponse:
    CALLS.append(request.method or "")
    return HttpResponseRedirect(request.GET.get("to", "https://pay.example.com/checkout"))


def api(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def manual(request: HttpRequest) -> HttpResponse:
    request.csp_nonce = "n0nce"  # type: ignore[attr-defined]  # as django-csp does
    return render(request, "manual.html")


def vite(request: HttpRequest) -> HttpResponse:
    return render(request, "vite.html")


def missing(request: HttpRequest) -> HttpResponse:
    return render(request, "missing.html")


def switch(request: HttpRequest) -> HttpResponse:
    for step in MIDWAY:
        step()
    return render(request, "switch.html")


async def async_switch(request: HttpRequest) -> HttpResponse:
    for step in MIDWAY:
        step()
    return render(request, "switch.html")


def stream_switch(request: HttpRequest) -> StreamingHttpResponse:
    from django.template.loader import get_template

    def chunks() -> Iterator[str]:
        # Rendered as the server iterates, after the view (and the middleware) returned.
        for step in MIDWAY:
            step()
        yield get_template("switch.html").render({}, request)

    return StreamingHttpResponse(chunks(), content_type="text/html")


async def async_stream_switch(request: HttpRequest) -> StreamingHttpResponse:
    from django.template.loader import get_template

    async def chunks() -> AsyncIterator[str]:
        for step in MIDWAY:
            step()
        yield get_template("switch.html").render({}, request)

    return StreamingHttpResponse(chunks(), content_type="text/html")


urlpatterns = [
    path("", page),
    path("switch", switch),
    path("asswitch", async_stream_switch),
    path("aswitch", async_switch),
    path("sswitch", stream_switch),
    path("async", async_page),
    path("stream", stream),
    path("astream", async_stream),
    path("submit", submit),
    path("pay", pay),
    path("api", api),
    path("manual", manual),
    path("vite", vite),
    path("missing", missing),
]


@pytest.fixture(scope="module", autouse=True)
def django_setup() -> None:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="deploysync-tests",
            ALLOWED_HOSTS=["testserver"],
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=["deploysync.contrib.django", "django.contrib.staticfiles"],
            MIDDLEWARE=[SECURITY, MIDDLEWARE_PATH],
            STATIC_URL="/static/",
            USE_TZ=True,
            TEMPLATES=[
                {
                    "BACKEND": "django.template.backends.django.DjangoTemplates",
                    "OPTIONS": {
                        "loaders": [("django.template.loaders.locmem.Loader", TEMPLATES)],
                        "context_processors": ["django.template.context_processors.request"],
                    },
                }
            ],
            STORAGES={
                "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
                "staticfiles": {"BACKEND": "deploysync.contrib.django.storage.DeploySyncStorage"},
            },
        )
        django.setup()
    elif __name__ != settings.ROOT_URLCONF:
        pytest.skip("Django was configured by another test module")


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def configure(tmp_path: Path, store: FileStore) -> Iterator[Callable[..., None]]:
    """``configure(**DEPLOYSYNC options, django_settings={...})`` for the current test."""
    overrides: list[Any] = []
    CALLS.clear()

    def apply(django_settings: dict[str, Any] | None = None, **options: Any) -> None:
        while overrides:
            overrides.pop().disable()
        values: dict[str, Any] = {
            "STATIC_ROOT": str(tmp_path / "static_root"),
            "DEPLOYSYNC": {"STORE": str(store.root), **options},
            **(django_settings or {}),
        }
        override = override_settings(**values)
        override.enable()
        overrides.append(override)

    apply()
    yield apply
    while overrides:
        overrides.pop().disable()


@pytest.fixture
def deployed(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> Deployment:
    return build(site_src("v1"), store, activate=True).deployment


def in_own_loop(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine on a fresh event loop in a worker thread: works even while another
    library (Playwright's sync API, say) keeps a loop running in this thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=60)


def aget(url: str, **kwargs: Any) -> Any:
    async def go() -> Any:
        return await AsyncClient().get(url, **kwargs)

    return in_own_loop(go)


# -- the middleware ----------------------------------------------------------------------------


def test_page_is_injected_and_announced(deployed: Deployment) -> None:
    response = Client().get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert response["X-Deployment-Id"] == deployed.id
    assert response["Cache-Control"] == "no-cache"
    assert html.startswith(
        f'<!doctype html><html><head><meta name="deployment-id" content="{deployed.id}">'
    )
    assert re.search(r'src="/_deploysync/client-[0-9a-f]+\.js" data-deploysync', html)


def test_async_view_under_asgi(deployed: Deployment) -> None:
    response = aget("/async")
    assert response.status_code == 200
    assert response["X-Deployment-Id"] == deployed.id
    assert f'content="{deployed.id}"' in response.content.decode()


def test_middleware_runs_natively_async(configure: Callable[..., None]) -> None:
    from asgiref.sync import iscoroutinefunction

    from deploysync.contrib.django.middleware import DeploySyncMiddleware

    assert DeploySyncMiddleware.sync_capable and DeploySyncMiddleware.async_capable

    async def get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    def sync_get_response(request: HttpRequest) -> HttpResponse:
        return HttpResponse()

    assert iscoroutinefunction(DeploySyncMiddleware(get_response))
    assert not iscoroutinefunction(DeploySyncMiddleware(sync_get_response))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_streaming_html_is_injected(deployed: Deployment, mode: str) -> None:
    url = "/stream" if mode == "sync" else "/astream"
    response = Client().get(url) if mode == "sync" else aget(url)
    body = b"".join(response.streaming_content) if mode == "sync" else None
    if body is None:

        async def collect() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        body = in_own_loop(collect)
    assert response["X-Deployment-Id"] == deployed.id
    assert not response.has_header("Content-Length")
    text = body.decode()
    assert text.count('name="deployment-id"') == 1
    assert re.search(r"<head[^>]*><meta name=\"deployment-id\"", text, re.I)
    assert text.endswith("streamed</body></html>")


@pytest.mark.parametrize("url", ["/switch", "/aswitch", "/sswitch", "/asswitch"])
def test_a_page_rendered_during_an_activation_names_one_deployment(
    deployed: Deployment, site_src: Callable[..., Path], store: FileStore, url: str
) -> None:
    """The header, the injected tags, {% static %} and {% deploysync_id %} all name the
    deployment the request started with, though another became current meanwhile."""
    second = build(site_src("v2"), store).deployment
    runtime = get_runtime()

    def activate() -> None:
        store.activate(second.id)
        assert runtime.refresh()

    async def get_async() -> tuple[Any, bytes]:
        response = await AsyncClient().get(url)
        if not response.streaming:
            return response, response.content
        return response, b"".join([chunk async for chunk in response.streaming_content])

    MIDWAY[:] = [activate]
    try:
        if url.startswith("/a"):
            response, data = in_own_loop(get_async)
        else:
            response = Client().get(url)
            data = b"".join(response.streaming_content) if response.streaming else response.content
    finally:
        MIDWAY.clear()
    body = data.decode()
    assert response["X-Deployment-Id"] == deployed.id
    assert f'content="{deployed.id}"' in body
    text = body.split("<body>", 1)[1]
    assert text == f"{deployed.url('css/app.css')} {deployed.id}</body></html>"
    assert deployed.url("css/app.css") != second.url("css/app.css")
    # The next request is answered with the deployment now current.
    assert Client().get("/switch")["X-Deployment-Id"] == second.id


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_assets_are_served(deployed: Deployment, mode: str) -> None:
    url = deployed.url("css/app.css")
    response = Client().get(url) if mode == "sync" else aget(url)
    assert response.status_code == 200
    assert response["Cache-Control"] == "public, max-age=31536000, immutable"
    assert response["Content-Type"].startswith("text/css")
    assert "X-Deployment-Id" not in response
    gone = Client().get("/static/css/app.000000000000.css")
    assert gone.status_code == 404 and gone["Cache-Control"] == "no-store"


def test_if_none_match_gives_304(deployed: Deployment) -> None:
    url = deployed.url("js/app.js")
    etag = Client().get(url)["ETag"]
    assert Client().get(url, headers={"If-None-Match": etag}).status_code == 304


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_conditional_get_middleware_cannot_keep_an_old_page(
    deployed: Deployment,
    configure: Callable[..., None],
    site_src: Callable[..., Path],
    store: FileStore,
    mode: str,
) -> None:
    # ConditionalGetMiddleware at the end of MIDDLEWARE tags the page before the tags are
    # injected and answers 304 itself: after a deploy it would keep the old page.
    inner = "django.middleware.http.ConditionalGetMiddleware"
    configure(django_settings={"MIDDLEWARE": [SECURITY, MIDDLEWARE_PATH, inner]})

    def get(headers: dict[str, str] | None = None) -> Any:
        if mode == "async":
            return aget("/async", headers=headers)
        return Client().get("/", headers=headers)

    first = get()
    etag = first["ETag"]
    assert etag.endswith(f'.ds-{deployed.id}"')
    assert get({"If-None-Match": etag}).status_code == 304
    second = build(site_src("v2"), store, activate=True).deployment
    get_runtime().refresh()
    after = get({"If-None-Match": etag})
    assert after.status_code == 200
    assert f'content="{second.id}"'.encode() in after.content
    assert after["ETag"].endswith(f'.ds-{second.id}"')


def test_stale_navigation_409_without_calling_the_view(
    deployed: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {"X-Deploysync": "navigate", "X-Deployment-Id": "older-page"}
    with caplog.at_level(logging.WARNING, logger="django.request"):
        response = Client().post("/submit", headers=headers)
    # The protocol's answer, not an error: django.request does not log a "Conflict".
    assert [r for r in caplog.records if r.name == "django.request"] == []
    assert response.status_code == 409
    assert response["X-Deploysync"] == "reload"
    assert response["X-Deployment-Id"] == deployed.id
    assert response["Cache-Control"] == "no-store"
    assert response.content == b""
    assert CALLS == []
    fresh = {"X-Deploysync": "navigate", "X-Deployment-Id": deployed.id}
    assert Client().post("/submit", headers=fresh).status_code == 200
    assert CALLS == ["POST"]


@pytest.mark.parametrize(
    ("to", "renamed"),
    [
        ("https://pay.example.com/checkout", True),
        ("//pay.example.com/checkout", True),
        ("http://testserver/done", False),
        ("/done", False),
    ],
)
def test_a_navigation_redirected_to_another_origin_tells_the_client_where(
    deployed: Deployment, to: str, renamed: bool
) -> None:
    # A fetch cannot follow it (CORS): the client loads it, the POST is not sent again.
    navigate = {
        "X-Deploysync": "navigate",
        "X-Deployment-Id": deployed.id,
        "X-Deploysync-Router": "1",
    }
    response = Client().post("/pay?to=" + quote(to), headers=navigate)
    assert response.status_code == 302 and CALLS == ["POST"]
    if renamed:
        assert response["X-Deploysync-Location"] == to and "Location" not in response
    else:
        assert response["Location"] == to and "X-Deploysync-Location" not in response
    # Other requests (a plain form post, a fetch of the app's) keep their redirect.
    assert Client().post("/pay?to=" + quote(to))["Location"] == to


def test_a_redirect_to_the_site_behind_a_proxy_is_left_to_fetch(deployed: Deployment) -> None:
    # With USE_X_FORWARDED_HOST Django writes the site's own URLs with the proxy's host.
    navigate = {
        "X-Deploysync": "navigate",
        "X-Deployment-Id": deployed.id,
        "X-Deploysync-Router": "1",
        "X-Forwarded-Host": "shop.example.com",
    }
    with override_settings(USE_X_FORWARDED_HOST=True, ALLOWED_HOSTS=["shop.example.com"]):
        response = Client().post("/pay?to=http://shop.example.com/done", headers=navigate)
    assert response["Location"] == "http://shop.example.com/done"
    # htmx's and Turbo's navigations keep their redirects: they follow them their way.
    headers = {"X-Deploysync": "navigate", "X-Deployment-Id": deployed.id, "HX-Request": "true"}
    response = Client().post("/pay", headers=headers)
    assert response["Location"] == "https://pay.example.com/checkout"


def test_stale_navigation_async(deployed: Deployment) -> None:
    headers = {"X-Deploysync": "navigate", "X-Deployment-Id": "older-page"}
    response = aget("/async", headers=headers)
    assert response.status_code == 409


def test_json_passes_through(deployed: Deployment) -> None:
    response = Client().get("/api")
    assert json.loads(response.content) == {"ok": True}
    assert "X-Deployment-Id" not in response


def test_version_endpoint(deployed: Deployment) -> None:
    response = Client().get("/_deploysync/version")
    assert json.loads(response.content)["id"] == deployed.id
    assert response["Cache-Control"] == "no-store"


def test_before_any_deployment_pages_pass(configure: Callable[..., None]) -> None:
    response = Client().get("/")
    assert response.status_code == 200
    assert b"deployment-id" not in response.content
    assert b'href="/static/css/app.css"' in response.content


# -- template tags -------------------------------------------------------------------------------


def test_deploysync_head_with_nonce_when_injection_is_off(
    deployed: Deployment, configure: Callable[..., None]
) -> None:
    configure(INJECT=False, NONCE="csp_nonce")
    html = Client().get("/manual").content.decode()
    assert html.count('name="deployment-id"') == 1
    assert re.search(r"data-deploysync[^>]* nonce=\"n0nce\"></script>", html)
    plain = Client().get("/").content.decode()
    assert "deployment-id" not in plain  # INJECT False: only where the tag is placed


def test_deploysync_head_is_not_doubled_by_injection(deployed: Deployment) -> None:
    html = Client().get("/manual").content.decode()
    assert html.count('name="deployment-id"') == 1


def test_nonce_callable(deployed: Deployment, configure: Callable[..., None]) -> None:
    configure(NONCE=lambda request: "from-callable")
    html = Client().get("/").content.decode()
    assert 'nonce="from-callable"' in html


def test_vite_tags_tag(tmp_path: Path, store: FileStore, configure: Callable[..., None]) -> None:
    dist = tmp_path / "dist"
    (dist / ".vite").mkdir(parents=True)
    (dist / "assets").mkdir()
    (dist / "assets" / "main-Ab12Cd34.js").write_text("console.log(1)\n")
    (dist / "assets" / "main-Ef56Gh78.css").write_text("p{}\n")
    manifest = {
        "src/main.ts": {
            "file": "assets/main-Ab12Cd34.js",
            "isEntry": True,
            "css": ["assets/main-Ef56Gh78.css"],
        }
    }
    (dist / ".vite" / "manifest.json").write_text(json.dumps(manifest))
    build(dist, store, activate=True)
    html = Client().get("/vite").content.decode()
    assert '<script type="module" src="/static/assets/main-Ab12Cd34.js"></script>' in html
    assert '<link rel="stylesheet" href="/static/assets/main-Ef56Gh78.css">' in html


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_file_of_a_deployment_not_read_yet_is_served_at_once(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None], mode: str
) -> None:
    # Another worker switched first and rendered a page naming this file (Runtime.catch_up).
    configure(POLL_INTERVAL=3600)
    build(site_src("v1"), store, activate=True)
    assert Client().get("/").status_code == 200  # the runtime has read v1
    newer = build(site_src("v2"), store, activate=True).deployment
    url = newer.url("css/app.css")
    response = Client().get(url) if mode == "sync" else aget(url)
    assert response.status_code == 200


# -- staticfiles storage -----------------------------------------------------------------------


def test_collectstatic_builds_and_activates(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    configure(django_settings={"STATICFILES_DIRS": [str(site_src("v1"))]})
    call_command("collectstatic", interactive=False, verbosity=0)
    current = store.current()
    assert current is not None
    deployment = store.load(current)
    assert "css/app.css" in deployment.assets
    html = Client().get("/").content.decode()
    assert f'href="{deployment.url("css/app.css")}"' in html
    assert Client().get(deployment.url("css/app.css")).status_code == 200


def test_collectstatic_with_links_builds_the_files_they_lead_to(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    # collectstatic --link fills STATIC_ROOT with links to the apps' files, all outside it.
    source = site_src("v1")
    configure(django_settings={"STATICFILES_DIRS": [str(source)]})
    call_command("collectstatic", interactive=False, verbosity=0, link=True)
    current = store.current()
    assert current is not None
    deployment = store.load(current)
    css = Client().get(deployment.url("css/base.css"))
    assert css.status_code == 200
    body = b"".join(css.streaming_content) if css.streaming else css.content
    assert body == (source / "css" / "base.css").read_bytes()


def test_collectstatic_without_activation(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    configure(
        ACTIVATE_ON_COLLECTSTATIC=False,
        django_settings={"STATICFILES_DIRS": [str(site_src("v1"))]},
    )
    call_command("collectstatic", interactive=False, verbosity=0)
    assert store.current() is None and len(store.ids()) == 1


def test_collectstatic_names_the_deployment_and_says_its_warnings(
    site_src: Callable[..., Path],
    store: FileStore,
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The id is the next step's argument (``deploysync activate ID``); a reference to a
    missing file is a warning even with STRICT off, as `deploysync build` says it."""
    source = site_src("v1")
    with (source / "css" / "app.css").open("a") as css:
        css.write("p { background: url(../img/missing.png) }\n")
    configure(
        STRICT=False,
        ACTIVATE_ON_COLLECTSTATIC=False,
        django_settings={"STATICFILES_DIRS": [str(source)]},
    )
    capsys.readouterr()
    call_command("collectstatic", interactive=False, verbosity=1)
    out, err = capsys.readouterr()
    (ident,) = store.ids()
    assert f"deploysync: deployment {ident} built (not activated" in out
    assert "deploysync: warning: css/app.css:" in err and "missing.png" in err


def test_collectstatic_says_its_lines_where_the_command_says_its_own(
    site_src: Callable[..., Path],
    store: FileStore,
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``call_command(stdout=..., stderr=...)`` gets them, and ``-v 0`` silences all but
    the warnings, as for collectstatic's own lines (its errors are said at -v 0 too)."""
    source = site_src("v1")
    with (source / "css" / "app.css").open("a") as css:
        css.write("p { background: url(../img/missing.png) }\n")
    configure(STRICT=False, django_settings={"STATICFILES_DIRS": [str(source)]})
    out, err = io.StringIO(), io.StringIO()
    capsys.readouterr()
    call_command("collectstatic", interactive=False, stdout=out, stderr=err)
    assert capsys.readouterr() == ("", "")
    assert f"deploysync: deployment {store.current()} activated\n" in out.getvalue()
    assert "deploysync: warning: css/app.css:" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    call_command("collectstatic", interactive=False, verbosity=0, stdout=out, stderr=err)
    assert out.getvalue() == ""
    assert err.getvalue().startswith("deploysync: warning: css/app.css:")  # still said
    assert capsys.readouterr() == ("", "")


def test_missing_static_entry_never_500s_in_production(deployed: Deployment) -> None:
    response = Client().get("/missing")
    assert response.status_code == 200
    assert response.content == b"/static/nope.css"


def test_missing_static_entry_raises_in_debug(
    deployed: Deployment, configure: Callable[..., None]
) -> None:
    configure(django_settings={"DEBUG": True})
    with pytest.raises(ValueError, match=r"Missing static file 'nope\.css' in deployment"):
        Client().get("/missing")


def test_a_folder_gives_its_plain_url_even_in_debug(
    deployed: Deployment, configure: Callable[..., None]
) -> None:
    """``{% static "admin/" %}`` (a base for URLs made in JavaScript) names no file: no
    error in DEBUG, while a missing file still raises."""
    configure(django_settings={"DEBUG": True})
    assert static("css/") == "/static/css/"
    with pytest.raises(ValueError, match="Missing static file"):
        static("css/nope.css")


# -- system checks -------------------------------------------------------------------------------


def check_ids() -> list[str]:
    return sorted(m.id for m in checks.run_checks() if (m.id or "").startswith("deploysync."))


def test_checks_pass_on_a_good_setup(deployed: Deployment) -> None:
    assert check_ids() == []


def test_e001_no_store(configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYSYNC_STORE", raising=False)
    configure(django_settings={"DEPLOYSYNC": {}})
    assert check_ids() == ["deploysync.E001"]


def test_e001_store_unreadable(configure: Callable[..., None], tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "current.json").write_text("{not json")
    configure(STORE=str(tmp_path / "store"))
    assert check_ids() == ["deploysync.E001"]


@pytest.mark.redis
def test_w007_redis_unreachable_is_a_warning(configure: Callable[..., None]) -> None:
    # An outage during a deploy must not make `manage.py migrate` fail (checks run).
    from support import free_port

    configure(STORE=f"redis://127.0.0.1:{free_port()}/0")
    assert check_ids() == ["deploysync.W007"]


@pytest.mark.redis
def test_e001_redis_refusing_the_credentials_is_an_error(
    configure: Callable[..., None], redis_url: str
) -> None:
    # Reachable but not for these settings: a mistake to fix, not an outage to wait out.
    configure(STORE=redis_url.replace("redis://", "redis://nobody:wrong@", 1))
    assert check_ids() == ["deploysync.E001"]


def test_w005_store_not_created_yet(configure: Callable[..., None], tmp_path: Path) -> None:
    # A fresh checkout: runserver starts (and serves the unhashed URLs) before a build.
    configure(STORE=str(tmp_path / "nowhere"))
    assert check_ids() == ["deploysync.W005"]
    (message,) = [m for m in checks.run_checks() if m.id == "deploysync.W005"]
    assert "does not exist yet" in message.msg and "collectstatic" in (message.hint or "")


def test_e002_static_url_mismatch(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    build(site_src("v1"), store, static_url="/assets/", activate=True)
    assert check_ids() == ["deploysync.E002"]
    with pytest.raises(DeploySyncError, match="/assets/"):
        Client().get("/")  # the middleware refuses to start with broken URLs


def test_e003_bad_value(deployed: Deployment, configure: Callable[..., None]) -> None:
    configure(ROUTING="spa")
    assert check_ids() == ["deploysync.E003"]


@pytest.mark.parametrize("value", [0, -1, "1"])
def test_e003_poll_interval_must_be_positive(
    deployed: Deployment, configure: Callable[..., None], value: object
) -> None:
    configure(POLL_INTERVAL=value)
    assert check_ids() == ["deploysync.E003"]


@pytest.mark.parametrize(("where", "value"), [("django", "/a?b/"), ("deploysync", "/x/../y/")])
def test_e003_static_url_no_asset_could_be_served_under(
    deployed: Deployment, configure: Callable[..., None], where: str, value: str
) -> None:
    if where == "django":
        configure(django_settings={"STATIC_URL": value})
    else:
        configure(STATIC_URL=value)
    assert check_ids() == ["deploysync.E003"]


@pytest.mark.parametrize("value", ["bad id!", "x" * 65, 42])
def test_e003_a_pinned_deployment_that_is_no_id_says_so(
    deployed: Deployment, configure: Callable[..., None], value: object
) -> None:
    configure(DEPLOYMENT=value)
    errors = [m for m in checks.run_checks() if (m.id or "").startswith("deploysync.")]
    assert [m.id for m in errors] == ["deploysync.E003"]
    assert "expected a deployment id" in errors[0].msg


def test_e003_unknown_key(deployed: Deployment, configure: Callable[..., None]) -> None:
    configure(STOER="typo")
    assert check_ids() == ["deploysync.E003"]


def test_w001_middleware_missing(deployed: Deployment, configure: Callable[..., None]) -> None:
    configure(django_settings={"MIDDLEWARE": [SECURITY]})
    assert check_ids() == ["deploysync.W001"]


def test_w002_too_low_and_w003_gzip_below(
    deployed: Deployment, configure: Callable[..., None]
) -> None:
    configure(
        django_settings={
            "MIDDLEWARE": [
                SECURITY,
                "django.middleware.common.CommonMiddleware",
                MIDDLEWARE_PATH,
                "django.middleware.gzip.GZipMiddleware",
            ]
        }
    )
    assert check_ids() == ["deploysync.W002", "deploysync.W003"]


def test_w004_app_after_staticfiles_in_debug(
    deployed: Deployment, configure: Callable[..., None]
) -> None:
    configure(
        django_settings={
            "DEBUG": True,
            "INSTALLED_APPS": ["django.contrib.staticfiles", "deploysync.contrib.django"],
        }
    )
    assert check_ids() == ["deploysync.W004"]


@pytest.mark.parametrize(
    "backend",
    [
        "django.contrib.staticfiles.storage.ManifestStaticFilesStorage",
        "django.contrib.staticfiles.storage.StaticFilesStorage",
    ],
)
def test_w006_another_staticfiles_storage(
    deployed: Deployment, configure: Callable[..., None], backend: str
) -> None:
    # {% static %} would give names the middleware does not serve: every asset a 404.
    storages = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": backend},
    }
    configure(django_settings={"STORAGES": storages})
    assert check_ids() == ["deploysync.W006"]


def test_w005_nothing_activated_yet(configure: Callable[..., None], store: FileStore) -> None:
    store.ensure_writable()  # an empty store
    assert check_ids() == ["deploysync.W005"]


# -- runserver -----------------------------------------------------------------------------------


def test_runserver_leaves_static_to_the_middleware(configure: Callable[..., None]) -> None:
    from deploysync.contrib.django.management.commands.runserver import Command

    assert get_commands()["runserver"] == "deploysync.contrib.django"
    parser = Command().create_parser("manage.py", "runserver")
    assert parser.parse_args([]).use_static_handler is False
    assert parser.parse_args(["--static"]).use_static_handler is True


def test_runserver_static_serves_the_files_as_edited(
    deployed: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``runserver --static`` the finders answer /static/ from the apps' folders:
    ``{% static %}`` gives the plain names they know (edits show without collectstatic)."""
    from django.contrib.staticfiles.management.commands import runserver as staticfiles

    from deploysync.contrib.django import storage
    from deploysync.contrib.django.management.commands.runserver import Command

    served: list[dict[str, Any]] = []
    monkeypatch.setattr(staticfiles.Command, "handle", lambda self, **o: served.append(o))
    monkeypatch.setattr(storage, "_plain_names", False)
    Command().run_from_argv(["manage.py", "runserver"])
    assert f'href="{deployed.url("css/app.css")}"' in Client().get("/").content.decode()
    # Without DEBUG, staticfiles serves nothing unless --insecure: the hashed names stay.
    Command().run_from_argv(["manage.py", "runserver", "--static"])
    assert f'href="{deployed.url("css/app.css")}"' in Client().get("/").content.decode()
    Command().run_from_argv(["manage.py", "runserver", "--static", "--insecure"])
    assert [o["use_static_handler"] for o in served] == [False, True, True]
    assert 'href="/static/css/app.css"' in Client().get("/").content.decode()


# -- large files (sent from disk, not memory) ----------------------------------------------------


@pytest.fixture
def big(
    tmp_path: Path, store: FileStore, configure: Callable[..., None]
) -> tuple[Deployment, bytes]:
    src = tmp_path / "big-src"
    src.mkdir()
    data = bytes(range(256)) * 1500  # 384 000 bytes: above the in-memory limit
    (src / "video.bin").write_bytes(data)
    return build(src, store, activate=True, compress=False).deployment, data


def read_body(response: Any) -> bytes:
    if not response.streaming:
        return bytes(response.content)
    if response.is_async:

        async def collect() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        return bytes(in_own_loop(collect))
    return b"".join(response.streaming_content)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_large_file_is_streamed_whole_and_by_range(
    big: tuple[Deployment, bytes], mode: str
) -> None:
    deployment, data = big
    url = deployment.url("video.bin")
    response = Client().get(url) if mode == "sync" else aget(url)
    assert response.status_code == 200
    assert int(response["Content-Length"]) == len(data)
    assert read_body(response) == data
    headers = {"Range": "bytes=1000-1999"}
    part = Client().get(url, headers=headers) if mode == "sync" else aget(url, headers=headers)
    assert part.status_code == 206
    assert part["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    assert read_body(part) == data[1000:2000]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_blob_pruned_while_its_ranges_are_sent_is_sent_to_the_end(
    big: tuple[Deployment, bytes], store: FileStore, mode: str
) -> None:
    deployment, data = big
    url = deployment.url("video.bin")
    headers = {"Range": "bytes=0-9,1000-1009"}
    response = Client().get(url, headers=headers) if mode == "sync" else aget(url, headers=headers)
    assert response.status_code == 206
    # The answer started: a prune unlinks the blob before the parts are read.
    Path(store.blob_path(deployment.assets["video.bin"].digest)).unlink()
    body = read_body(response)
    response.close()
    assert data[0:10] in body and data[1000:1010] in body
    assert len(body) == int(response["Content-Length"])


def test_static_url_with_query_and_fragment(deployed: Deployment) -> None:

    assert static("css/app.css?v=1#top") == deployed.url("css/app.css") + "?v=1#top"


# -- failures: one line, never a 500 -------------------------------------------------------------


def _collectstatic(capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``manage.py collectstatic --noinput`` as the command line does; its stderr."""
    from django.contrib.staticfiles.management.commands.collectstatic import Command

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "collectstatic", "--noinput", "-v", "0"])
    assert exited.value.code == 1
    return capsys.readouterr().err


def test_collectstatic_over_another_storage_says_to_clear_once(
    site_src: Callable[..., Path],
    store: FileStore,
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Moving from ManifestStaticFilesStorage or whitenoise: their copies stay in
    STATIC_ROOT and would be built in, unless collectstatic --clear runs once."""
    configure(django_settings={"STATICFILES_DIRS": [str(site_src("v1"))]})
    call_command("collectstatic", interactive=False, verbosity=0)
    assert "staticfiles.json" not in capsys.readouterr().err
    root = Path(settings.STATIC_ROOT)
    (root / "staticfiles.json").write_text('{"paths": {}, "version": "1.1"}')
    call_command("collectstatic", interactive=False, verbosity=0)
    err = capsys.readouterr().err
    assert "deploysync: warning: STATIC_ROOT holds staticfiles.json" in err
    assert "collectstatic --clear" in err
    call_command("collectstatic", interactive=False, verbosity=0, clear=True)
    assert "staticfiles.json" not in capsys.readouterr().err


def test_collectstatic_with_a_bad_setting_fails_with_one_line(
    site_src: Callable[..., Path],
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure(DEPLOYMENT="bad id!", django_settings={"STATICFILES_DIRS": [str(site_src("v1"))]})
    err = _collectstatic(capsys)
    assert err.startswith("CommandError: DEPLOYSYNC['DEPLOYMENT'] is 'bad id!'")
    assert err.count("\n") == 1


def test_collectstatic_with_redis_down_fails_with_one_line(
    site_src: Callable[..., Path],
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from support import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"
    configure(STORE=dead, django_settings={"STATICFILES_DIRS": [str(site_src("v1"))]})
    caplog.set_level(logging.INFO, logger="deploysync")
    err = _collectstatic(capsys)
    assert err == f"CommandError: Cannot reach Redis at {dead}: Connection refused\n"
    assert caplog.records == []  # nothing a server would say


@pytest.mark.parametrize("value", [None, ""])
def test_collectstatic_without_a_store_fails_with_one_line(
    site_src: Callable[..., Path],
    configure: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    value: str | None,
) -> None:
    monkeypatch.delenv("DEPLOYSYNC_STORE", raising=False)
    configure(STORE=value, django_settings={"STATICFILES_DIRS": [str(site_src("v1"))]})
    err = _collectstatic(capsys)
    assert err == (
        "CommandError: collectstatic cannot build a deployment: DEPLOYSYNC['STORE'] is not set\n"
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_pruned_blob_is_404_not_500(
    big: tuple[Deployment, bytes], store: FileStore, mode: str
) -> None:
    deployment, _ = big
    url = deployment.url("video.bin")
    served = Client().get(url)
    served.close()
    assert served.status_code == 200  # in the snapshot: a prune removes it now
    Path(store.blob_path(deployment.assets["video.bin"].digest)).unlink()
    response = Client().get(url) if mode == "sync" else aget(url)
    assert response.status_code == 404
    assert response["Cache-Control"] == "no-store"


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_vanished_local_copy_of_a_redis_store_is_fetched_again(
    redis_url: str, tmp_path: Path, configure: Callable[..., None], mode: str
) -> None:
    import shutil

    from deploysync.store.redis import RedisStore

    src = tmp_path / "big-src"
    src.mkdir()
    data = bytes(range(256)) * 1500  # above the in-memory limit: sent from its local copy
    (src / "video.bin").write_bytes(data)
    writer = RedisStore(redis_url, cache_dir=tmp_path / "writer")
    deployment = build(src, writer, activate=True, compress=False).deployment
    writer.close()
    configure(STORE=redis_url, CACHE_DIR=str(tmp_path / "cache"))
    store = get_runtime().store
    assert store.cache_dir.parent == tmp_path / "cache"  # type: ignore[attr-defined]
    url = deployment.url("video.bin")
    get = Client().get if mode == "sync" else aget
    assert read_body(get(url)) == data
    shutil.rmtree(store.cache_dir, ignore_errors=True)  # type: ignore[attr-defined]
    response = get(url)
    assert response.status_code == 200
    assert read_body(response) == data


def test_cache_dir_setting_must_be_a_path(configure: Callable[..., None]) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from deploysync.contrib.django.conf import read_config

    configure(CACHE_DIR=3)
    with pytest.raises(ImproperlyConfigured, match=r"DEPLOYSYNC\['CACHE_DIR'\] is 3"):
        read_config()


# -- a site under a script prefix, compression above the middleware --------------------------


def test_relative_static_url_is_recorded_below_the_script_prefix(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    from django.urls import get_script_prefix, set_script_prefix

    from deploysync.contrib.django.conf import get_config

    configure(django_settings={"STATIC_URL": "static/", "FORCE_SCRIPT_NAME": "/app"})
    before = get_script_prefix()
    set_script_prefix("/app/")  # as manage.py sets it (collectstatic builds there)
    try:
        assert get_config().static_url == "/static/"
    finally:
        set_script_prefix(before)
    deployment = build(site_src("v1"), store, activate=True).deployment
    assert check_ids() == []
    # A server sets each request's prefix (here FORCE_SCRIPT_NAME's) as WSGIHandler
    # does (the test client does not): it goes before every URL of the page.
    set_script_prefix("/app/")
    try:
        html = Client().get("/").content.decode()
    finally:
        set_script_prefix(before)
    css = re.search(r'href="([^"]+\.css)"', html)
    assert css is not None and css.group(1) == "/app" + deployment.url("css/app.css")
    assert 'src="/app/_deploysync/client-' in html
    assert 'data-static-url="/app/static/"' in html
    # The proxy strips the prefix: the middleware serves the asset below it.
    assert Client().get(deployment.url("css/app.css")).status_code == 200


def test_absolute_static_url_under_force_script_name(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    from deploysync.contrib.django.conf import get_config

    configure(django_settings={"STATIC_URL": "/app/static/", "FORCE_SCRIPT_NAME": "/app/"})
    assert get_config().static_url == "/static/"
    configure(django_settings={"STATIC_URL": "https://cdn.example.com/s/"})
    assert get_config().static_url == "https://cdn.example.com/s/"


def test_compression_above_the_middleware_leaves_assets_alone(
    site_src: Callable[..., Path], store: FileStore, configure: Callable[..., None]
) -> None:
    gzip = "django.middleware.gzip.GZipMiddleware"
    configure(django_settings={"MIDDLEWARE": [SECURITY, gzip, MIDDLEWARE_PATH]})
    src = site_src("v1")
    image = bytes(range(256)) * 40  # compresses well, but is an image: no variant
    (src / "img" / "logo.png").write_bytes(image)
    deployment = build(src, store, activate=True).deployment
    assert check_ids() == []
    url = deployment.url("img/logo.png")
    whole = Client().get(url, headers={"Accept-Encoding": "gzip"})
    assert whole.status_code == 200
    assert "Content-Encoding" not in whole
    assert whole["ETag"].startswith('"')  # strong, as the contract says
    assert read_body(whole) == image
    part = Client().get(url, headers={"Accept-Encoding": "gzip", "Range": "bytes=100-199"})
    assert part.status_code == 206
    assert "Content-Encoding" not in part
    assert read_body(part) == image[100:200]
    # Pages still get compressed above, after the injection.
    page = Client().get("/", headers={"Accept-Encoding": "gzip"})
    assert page["Content-Encoding"] == "gzip"
    import gzip as gzip_module

    assert b"data-deploysync" in gzip_module.decompress(page.content)


def test_other_compressing_middleware_is_placed_like_gzip(
    deployed: Deployment, configure: Callable[..., None]
) -> None:
    compression = "compression_middleware.middleware.CompressionMiddleware"
    configure(django_settings={"MIDDLEWARE": [SECURITY, compression, MIDDLEWARE_PATH]})
    assert check_ids() == []
    configure(django_settings={"MIDDLEWARE": [SECURITY, MIDDLEWARE_PATH, compression]})
    assert check_ids() == ["deploysync.W003"]


def test_templates_placing_the_tags_need_no_compression_order(
    deployed: Deployment, configure: Callable[..., None], caplog: pytest.LogCaptureFixture
) -> None:
    from deploysync import serving

    gzip = "django.middleware.gzip.GZipMiddleware"
    configure(INJECT=False, django_settings={"MIDDLEWARE": [SECURITY, MIDDLEWARE_PATH, gzip]})
    assert check_ids() == []
    serving._told_compressed = False
    with caplog.at_level(logging.WARNING, logger="deploysync"):
        page = Client().get("/manual", headers={"Accept-Encoding": "gzip"})
    assert page["Content-Encoding"] == "gzip"
    assert not [r for r in caplog.records if "compressed" in r.getMessage()]
    configure(django_settings={"MIDDLEWARE": [SECURITY, MIDDLEWARE_PATH, gzip]})
    assert check_ids() == ["deploysync.W003"]
