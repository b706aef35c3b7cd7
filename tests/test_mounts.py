"""Apps mounted under a path: every URL deploysync writes into a page carries the mount.

The mount is the one the middleware is at when the request reaches it: a sub-app
mounted further in (Starlette ``Mount``, werkzeug's ``DispatcherMiddleware``) changes
``root_path`` / ``SCRIPT_NAME`` in the scope or environ it shares, and must not move
the client script, the version URL or the asset URLs under its own path.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import jinja2
import pytest
from flask import Flask, render_template_string
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.templating import Jinja2Templates
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client as WerkzeugClient

from deploysync import asgi, wsgi
from deploysync.build import build
from deploysync.contrib.flask import DeploySync as FlaskDeploySync
from deploysync.contrib.starlette import DeploySync as StarletteDeploySync
from deploysync.contrib.starlette import install_templates
from deploysync.manifest import Deployment
from deploysync.serving import mount_prefix

PAGE = "<!doctype html><html><head><title>t</title></head><body>{}</body></html>"
TEMPLATE = (
    "<!doctype html><html><head>{{ deploysync_head() }}</head><body>"
    "<link href=\"{{ asset_url('css/app.css') }}\"></body></html>"
)


@pytest.fixture
def deployed(tmp_path: Path) -> tuple[Path, Deployment]:
    src = tmp_path / "src"
    (src / "css").mkdir(parents=True)
    (src / "css" / "app.css").write_text("p { margin: 0 }\n")
    store = tmp_path / "store"
    return store, build(src, store, activate=True).deployment


def tag_urls(html: str) -> dict[str, str]:
    """The URLs the deployment tags and asset links of *html* name."""
    found = {
        "script": re.search(r'<script type="module" src="([^"]+)"', html),
        "version": re.search(r'data-version-url="([^"]+)"', html),
        "static": re.search(r'data-static-url="([^"]+)"', html),
        "asset": re.search(r'<link href="([^"]+)"', html),
    }
    return {key: match.group(1) for key, match in found.items() if match}


# -- ASGI --------------------------------------------------------------------------------


def asgi_get(app: Any, path: str, root_path: str = "") -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, root_path=root_path)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.get(path)

    return asyncio.run(send())


def starlette_site(store: Path) -> asgi.DeploySync:
    env = jinja2.Environment(loader=jinja2.DictLoader({"t.html": TEMPLATE}), autoescape=True)
    templates = Jinja2Templates(env=env)
    install_templates(templates)

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.format("admin"))

    async def templated(request: Request) -> Response:
        return templates.TemplateResponse(request, "t.html")

    admin = Starlette(routes=[Route("/", page), Route("/t", templated)])
    site = Starlette(routes=[Mount("/admin", admin)])
    return StarletteDeploySync(site, store=store)


@pytest.mark.parametrize("root", ["", "/app"])
def test_asgi_sub_app_pages_name_the_middleware_mount(
    deployed: tuple[Path, Deployment], root: str
) -> None:
    store, deployment = deployed
    app = starlette_site(store)
    try:
        page = asgi_get(app, root + "/admin/", root_path=root)
        assert page.status_code == 200
        urls = tag_urls(page.text)
        assert urls["script"].startswith(root + "/_deploysync/client-")
        assert urls["version"] == root + "/_deploysync/version"
        assert urls["static"] == root + "/static/"
        # ... and each of them is served at that URL.
        assert asgi_get(app, urls["script"], root_path=root).status_code == 200
        assert asgi_get(app, urls["version"], root_path=root).status_code == 200
        # Template helpers in the sub-app: the same mount.
        templated = tag_urls(asgi_get(app, root + "/admin/t", root_path=root).text)
        assert templated["script"] == urls["script"]
        assert templated["asset"] == root + deployment.url("css/app.css")
        assert asgi_get(app, templated["asset"], root_path=root).status_code == 200
    finally:
        app.close()


def test_asgi_url_and_head_tags_during_a_request_carry_the_root(
    deployed: tuple[Path, Deployment],
) -> None:
    store, deployment = deployed
    seen: dict[str, str] = {}

    async def page(request: Request) -> Response:
        seen["url"] = app.url("css/app.css")
        seen["tags"] = app.head_tags(request.scope)
        return Response("ok")

    app = asgi.DeploySync(Starlette(routes=[Route("/", page)]), store=store)
    try:
        asgi_get(app, "/app/", root_path="/app")
        assert seen["url"] == "/app" + deployment.url("css/app.css")
        assert 'src="/app/_deploysync/client-' in seen["tags"]
        # Outside a request: no mount to speak of.
        assert app.url("css/app.css") == deployment.url("css/app.css")
    finally:
        app.close()


# -- WSGI --------------------------------------------------------------------------------


def test_wsgi_dispatched_app_pages_name_the_middleware_mount(
    deployed: tuple[Path, Deployment],
) -> None:
    store, _ = deployed

    def main(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [PAGE.format("main").encode()]

    def sub(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [PAGE.format(environ["SCRIPT_NAME"]).encode()]

    app = wsgi.DeploySync(DispatcherMiddleware(main, {"/sub": sub}), store=store)
    try:
        client = WerkzeugClient(app)
        for base in ("http://localhost/", "http://localhost/app/"):
            root = base[len("http://localhost") :].rstrip("/")
            page = client.get("/sub/", base_url=base)
            assert f"<body>{root}/sub</body>" in page.text  # the dispatcher did move it
            urls = tag_urls(page.text)
            assert urls["script"].startswith(root + "/_deploysync/client-")
            assert urls["version"] == root + "/_deploysync/version"
            assert client.get(urls["script"][len(root) :], base_url=base).status_code == 200
    finally:
        app.close()


def _page_under(store: Path, script_name: str) -> tuple[str, dict[str, str]]:
    """An HTML page of a WSGI app under *script_name*: its text and its tags' URLs."""

    def page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [PAGE.format("x").encode()]

    app = wsgi.DeploySync(page, store=store)
    try:
        body = WerkzeugClient(app).get("/", environ_overrides={"SCRIPT_NAME": script_name})
        return body.text, tag_urls(body.text)
    finally:
        app.close()


def test_wsgi_non_ascii_script_name_is_percent_encoded(
    deployed: tuple[Path, Deployment],
) -> None:
    # PEP 3333: "/café" in UTF-8, each byte one latin-1 character.
    _, urls = _page_under(deployed[0], "/café".encode().decode("latin-1"))
    assert urls["script"].startswith("/caf%C3%A9/_deploysync/client-")
    assert urls["version"] == "/caf%C3%A9/_deploysync/version"


def test_mount_prefix() -> None:
    assert mount_prefix("") == ""
    assert mount_prefix("/") == ""
    assert mount_prefix("/app/") == "/app"
    assert mount_prefix("/a b/c#d?") == "/a%20b/c%23d%3F"
    assert mount_prefix("/café") == "/caf%C3%A9"
    assert mount_prefix("/café".encode().decode("latin-1"), wsgi=True) == "/caf%C3%A9"
    assert mount_prefix("/50%") == "/50%25"
    # Escapes already there stay: gunicorn passes SCRIPT_NAME still encoded.
    assert mount_prefix("/caf%C3%A9", wsgi=True) == "/caf%C3%A9"
    assert mount_prefix("/my%20app/x%zz", wsgi=True) == "/my%20app/x%25zz"
    assert mount_prefix("/100%41") == "/100%2541"  # ASGI: decoded, "%" is a character
    # Never another site's URL ("//host"), nor one relative to the page.
    for wsgi_root in (False, True):
        assert mount_prefix("//evil.example", wsgi=wsgi_root) == "/evil.example"
        assert mount_prefix("///evil.example/app/", wsgi=wsgi_root) == "/evil.example/app"
        assert mount_prefix("app", wsgi=wsgi_root) == "/app"


@pytest.mark.parametrize("script_name", ["//evil.example", "///evil.example/app"])
def test_a_script_name_of_another_host_stays_a_path_of_this_site(
    deployed: tuple[Path, Deployment], script_name: str
) -> None:
    # gunicorn takes SCRIPT_NAME from a request header of a trusted address.
    text, urls = _page_under(deployed[0], script_name)
    assert urls["script"].startswith("/evil.example")
    assert not any(url.startswith("//") for url in urls.values())
    assert "//evil" not in text


def test_flask_helpers_under_a_script_name(deployed: tuple[Path, Deployment]) -> None:
    store, deployment = deployed
    flask_app = Flask(__name__)
    flask_app.config["DEPLOYSYNC_STORE"] = str(store)
    ext = FlaskDeploySync(flask_app)

    @flask_app.get("/")
    def index() -> str:
        return render_template_string(TEMPLATE)

    try:
        html = WerkzeugClient(flask_app).get("/", base_url="http://localhost/app/").text
        urls = tag_urls(html)
        assert urls["asset"] == "/app" + deployment.url("css/app.css")
        assert urls["script"].startswith("/app/_deploysync/client-")
        # Manual placement: the middleware sees the tags and adds no second copy.
        assert html.count("data-deploysync") == 1
    finally:
        ext.middleware(flask_app).close()


def test_flask_streamed_template_under_a_script_name(deployed: tuple[Path, Deployment]) -> None:
    from flask import stream_template_string

    store, deployment = deployed
    flask_app = Flask(__name__)
    flask_app.config["DEPLOYSYNC_STORE"] = str(store)
    ext = FlaskDeploySync(flask_app)

    @flask_app.get("/")
    def index() -> Any:
        # Rendered while the server iterates, after the app (and the middleware) returned.
        return stream_template_string(TEMPLATE)

    try:
        html = WerkzeugClient(flask_app).get("/", base_url="http://localhost/app/").text
        urls = tag_urls(html)
        assert urls["asset"] == "/app" + deployment.url("css/app.css")
        assert urls["script"].startswith("/app/_deploysync/client-")
    finally:
        ext.middleware(flask_app).close()
