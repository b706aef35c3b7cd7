"""Starlette and FastAPI: the middleware in ``Middleware(...)`` form and the Jinja helpers."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import jinja2
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from deploysync.build import build
from deploysync.contrib.starlette import DeploySync, install_templates
from deploysync.manifest import Deployment, DeploySyncError
from deploysync.serving import Runtime, UnknownAsset
from deploysync.store import FileStore

T = TypeVar("T")

TEMPLATES = {
    "page.html": """<!doctype html><html><head><title>t</title>
<link rel="stylesheet" href="{{ asset_url('css/app.css') }}">
{{ vite_tags('src/main.ts') }}</head><body>page</body></html>""",
    "manual.html": "<!doctype html><html><head>{{ deploysync_head() }}</head><body></body></html>",
    "missing.html": "{{ asset_url('nope.css') }}",
}


def vite_dist(root: Path) -> Path:
    """A hand-made Vite ``dist`` (the real build is tested in test_vite.py)."""
    files = {
        "assets/main-Ab12Cd34.js": 'import "./shared-Ef56Gh78.js";\n',
        "assets/shared-Ef56Gh78.js": "export const x = 1;\n",
        "assets/main-Ij90Kl12.css": "body { color: red }\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    manifest = {
        "src/main.ts": {
            "file": "assets/main-Ab12Cd34.js",
            "src": "src/main.ts",
            "isEntry": True,
            "imports": ["_shared-Ef56Gh78.js"],
            "css": ["assets/main-Ij90Kl12.css"],
        },
        "_shared-Ef56Gh78.js": {"file": "assets/shared-Ef56Gh78.js"},
    }
    (root / ".vite").mkdir()
    (root / ".vite" / "manifest.json").write_text(json.dumps(manifest))
    (root / "css").mkdir()
    (root / "css" / "app.css").write_text("p { margin: 0 }\n")
    return root


def in_own_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a fresh event loop in a worker thread: works even while another
    library (Playwright's sync API, say) keeps a loop running in this thread."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=60)


class AppClient:
    """A synchronous client over httpx's ASGITransport (in-process, no server).

    Starlette's own AppClient now wants the ``httpx2`` package; this keeps to ``httpx``.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                return await c.request(method, url, **kwargs)

        return in_own_loop(send)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def deployed(tmp_path: Path, store: FileStore) -> Deployment:
    (tmp_path / "dist").mkdir()
    return build(vite_dist(tmp_path / "dist"), store, activate=True).deployment


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True)
    templates = Jinja2Templates(env=env)
    install_templates(templates)
    return templates


@pytest.fixture
def client(store: FileStore, deployed: Deployment) -> AppClient:
    templates = make_templates()
    calls: list[str] = []

    async def page(request: Request) -> Response:
        request.state.csp_nonce = "n0nce"
        return templates.TemplateResponse(request, "page.html")

    async def manual(request: Request) -> Response:
        return templates.TemplateResponse(request, "manual.html")

    async def missing(request: Request) -> Response:
        return templates.TemplateResponse(request, "missing.html")

    async def submit(request: Request) -> Response:
        calls.append("submit")
        return Response("<!doctype html>saved", media_type="text/html")

    async def api(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/", page),
            Route("/manual", manual),
            Route("/missing", missing),
            Route("/submit", submit, methods=["POST"]),
            Route("/api", api),
        ],
        middleware=[
            Middleware(DeploySync, store=str(store.root), routing="external", nonce="csp_nonce")
        ],
    )
    app.state.calls = calls
    return AppClient(app)


def test_url_for_static_gives_the_hashed_url(
    tmp_path: Path, store: FileStore, deployed: Deployment
) -> None:
    """A template written for StaticFiles keeps working once the middleware serves the
    static prefix: ``url_for('static', path=...)`` names the hashed file."""
    env = jinja2.Environment(
        loader=jinja2.DictLoader(
            {
                "t.html": "{{ url_for('static', path='css/app.css') }}"
                " {{ url_for('static', path='nope.css') }}"
                " {{ url_for('files', path='css/app.css') }}"
                " {{ url_for('legacy', path='css/app.css') }}"
                " {{ url_for('home') }}"
            }
        )
    )
    templates = Jinja2Templates(env=env)
    install_templates(templates)
    install_templates(templates)  # twice: wrapped once

    async def home(request: Request) -> Response:
        return templates.TemplateResponse(request, "t.html")

    folder = tmp_path / "dist"
    app = Starlette(
        routes=[
            Route("/", home, name="home"),
            Mount("/static", StaticFiles(directory=folder), name="static"),
            Mount("/files", StaticFiles(directory=folder), name="files"),
            Mount("/legacy/static", StaticFiles(directory=folder), name="legacy"),
        ],
        middleware=[Middleware(DeploySync, store=str(store.root))],
    )
    client = AppClient(app)
    text = client.get("/").text
    hashed = "http://testserver" + deployed.url("css/app.css")
    assert text == (
        f"{hashed} http://testserver/static/nope.css"
        " http://testserver/files/css/app.css http://testserver/legacy/static/css/app.css"
        " http://testserver/"
    )
    assert client.get(hashed).text == "p { margin: 0 }\n"


def test_url_for_is_wrapped_when_installed_before_jinja2templates(
    tmp_path: Path, store: FileStore, deployed: Deployment
) -> None:
    """``install_templates(env)`` first: Starlette then adds its ``url_for`` only where none
    is, so the hashed one must be there already."""
    env = jinja2.Environment(loader=jinja2.DictLoader({"t.html": URL_FOR_STATIC}))
    install_templates(env)
    templates = Jinja2Templates(env=env)
    app = static_mount_app(tmp_path, store, templates)
    assert AppClient(app).get("/").text == "http://testserver" + deployed.url("css/app.css")


def test_url_for_static_gives_the_cdn_url(tmp_path: Path, store: FileStore) -> None:
    """Built for a CDN, an asset's URL is the CDN's, as ``asset_url`` gives it, not this
    host's (which would bypass the CDN)."""
    cdn = "https://cdn.example.com/static/"
    (tmp_path / "dist").mkdir()
    deployment = build(
        vite_dist(tmp_path / "dist"), store, activate=True, static_url=cdn
    ).deployment
    env = jinja2.Environment(
        loader=jinja2.DictLoader({"t.html": URL_FOR_STATIC + " {{ asset_url('css/app.css') }}"})
    )
    templates = Jinja2Templates(env=env)
    install_templates(templates)
    app = static_mount_app(tmp_path, store, templates, static_url=cdn)
    expected = deployment.url("css/app.css")
    assert expected.startswith(cdn)
    assert AppClient(app).get("/").text == f"{expected} {expected}"


URL_FOR_STATIC = "{{ url_for('static', path='css/app.css') }}"


def static_mount_app(
    tmp_path: Path, store: FileStore, templates: Jinja2Templates, **options: Any
) -> Starlette:
    async def home(request: Request) -> Response:
        return templates.TemplateResponse(request, "t.html")

    return Starlette(
        routes=[
            Route("/", home),
            Mount("/static", StaticFiles(directory=tmp_path / "dist"), name="static"),
        ],
        middleware=[Middleware(DeploySync, store=str(store.root), **options)],
    )


def test_templates_render_in_a_websocket_handler(store: FileStore, deployed: Deployment) -> None:
    """A websocket's scope names the middleware too, so a handler can render a template
    (a fragment pushed to the page) with the request-bound helpers."""
    env = jinja2.Environment(autoescape=True)
    install_templates(env)

    async def feed(websocket: WebSocket) -> None:
        await websocket.accept()
        page = env.from_string("{{ asset_url('css/app.css') }}").render(request=websocket)
        await websocket.send_text(page)
        await websocket.close()

    app = Starlette(
        routes=[WebSocketRoute("/feed", feed)],
        middleware=[Middleware(DeploySync, store=str(store.root))],
    )
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": "/feed",
        "raw_path": b"/feed",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 5000),
        "subprotocols": [],
    }
    sent: list[dict[str, Any]] = []

    async def run() -> None:
        incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        incoming.put_nowait({"type": "websocket.connect"})

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "websocket.close":
                incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

        await asyncio.wait_for(app(scope, incoming.get, send), 10)

    in_own_loop(run)
    texts = [message.get("text") for message in sent if message["type"] == "websocket.send"]
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert texts == [deployed.url("css/app.css")]


def test_page_is_injected_and_assets_resolve(client: AppClient, deployed: Deployment) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["x-deployment-id"] == deployed.id
    assert response.headers["cache-control"] == "no-cache"
    html = response.text
    assert f'<meta name="deployment-id" content="{deployed.id}">' in html
    assert 'data-routing="external"' in html
    assert f'href="{deployed.url("css/app.css")}"' in html
    assert int(response.headers["content-length"]) == len(response.content)


def test_vite_tags_in_starlette_templates_carry_the_nonce(client: AppClient) -> None:
    html = client.get("/").text
    nonce = 'nonce="n0nce"'
    assert f'<link rel="stylesheet" href="/static/assets/main-Ij90Kl12.css" {nonce}>' in html
    assert f'<script type="module" src="/static/assets/main-Ab12Cd34.js" {nonce}></script>' in html
    assert f'<link rel="modulepreload" href="/static/assets/shared-Ef56Gh78.js" {nonce}>' in html
    # The injected client script carries the nonce found in scope["state"] too.
    assert re.search(r'data-deploysync[^>]* nonce="n0nce"', html)


def test_manual_head_tags_are_not_doubled(client: AppClient) -> None:
    html = client.get("/manual").text
    assert html.count('name="deployment-id"') == 1


def test_unknown_asset_gives_the_unhashed_url(client: AppClient) -> None:
    assert client.get("/missing").text == "/static/nope.css"


def test_assets_are_served(client: AppClient, deployed: Deployment) -> None:
    response = client.get("/static/assets/main-Ab12Cd34.js")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert client.get("/static/assets/gone-00000000.js").status_code == 404


def test_stale_navigation_is_answered_before_the_app(client: AppClient) -> None:
    headers = {"X-Deploysync": "navigate", "X-Deployment-Id": "an-older-one"}
    response = client.post("/submit", headers=headers)
    assert response.status_code == 409 and response.headers["x-deploysync"] == "reload"
    assert client.app.state.calls == []  # type: ignore[attr-defined]


def test_json_passes_through(client: AppClient) -> None:
    response = client.get("/api")
    assert response.json() == {"ok": True} and "x-deployment-id" not in response.headers


def test_without_middleware_the_helpers_say_what_is_missing(deployed: Deployment) -> None:
    templates = make_templates()

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "missing.html")

    app = Starlette(routes=[Route("/", page)])
    with pytest.raises(LookupError, match="Middleware"):
        AppClient(app).get("/")


def test_explicit_runtime_renders_outside_a_request(store: FileStore, deployed: Deployment) -> None:
    runtime = Runtime(store, strict=True)
    try:
        env = jinja2.Environment(autoescape=True)
        install_templates(env, runtime)
        assert env.from_string("{{ asset_url('css/app.css') }}").render() == deployed.url(
            "css/app.css"
        )
        with pytest.raises(UnknownAsset):
            env.from_string("{{ asset_url('nope.css') }}").render()
    finally:
        runtime.close()


def test_fastapi_add_middleware(store: FileStore, deployed: Deployment) -> None:
    app = FastAPI()
    app.add_middleware(DeploySync, store=str(store.root))
    seen: list[str] = []

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return "<!doctype html><html><head></head><body>hi</body></html>"

    @app.post("/items")
    def create() -> dict[str, bool]:
        seen.append("created")
        return {"created": True}

    test_client = AppClient(app)
    if True:
        response = test_client.get("/")
        assert response.headers["x-deployment-id"] == deployed.id
        assert f'content="{deployed.id}"' in response.text
        stale = test_client.post(
            "/items", headers={"X-Deploysync": "navigate", "X-Deployment-Id": "old"}
        )
        assert stale.status_code == 409 and seen == []
        assert test_client.post("/items").json() == {"created": True}


def test_hot_switch_seen_by_templates(
    client: AppClient, store: FileStore, tmp_path: Path, site_src: Callable[..., Path]
) -> None:
    client.get("/")  # the middleware exists once the stack is built
    v2 = build(site_src("v2"), store, activate=True).deployment
    # The runtime notices within about two poll intervals (0.5 s); bounded wait.
    deadline = time.monotonic() + 5
    while client.get("/manual").headers.get("x-deployment-id") != v2.id:
        if time.monotonic() > deadline:
            pytest.fail("the new deployment was not picked up within 5 s")
        time.sleep(0.1)
    assert f'content="{v2.id}"' in client.get("/manual").text


def test_a_static_url_mismatch_stops_uvicorn_at_start_up(
    tmp_path: Path, store: FileStore, deployed: Deployment
) -> None:
    # Starlette builds its middleware inside the lifespan, where uvicorn's default
    # (--lifespan auto) would take the error for "lifespan unsupported" and serve 500s.
    (tmp_path / "mismatched.py").write_text(
        "from fastapi import FastAPI\n"
        "from deploysync.contrib.starlette import DeploySync\n"
        "app = FastAPI()\n"
        f"app.add_middleware(DeploySync, store={str(store.root)!r}, static_url='/assets/')\n"
    )
    command = [sys.executable, "-m", "uvicorn", "mismatched:app", "--host", "127.0.0.1"]
    done = subprocess.run(
        [*command, "--port", "0"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "was built for the static URL '/static/'" in done.stderr
    assert "Application startup failed" in done.stderr


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"static_url": "/x/"}, "static URL"),
        ({"poll_interval": "1"}, "poll_interval must be a number"),
        ({"stor": "typo"}, "unexpected keyword argument 'stor'"),
    ],
)
def test_a_configuration_error_fails_the_lifespan(
    store: FileStore, deployed: Deployment, options: dict[str, Any], reason: str
) -> None:
    app = Starlette(middleware=[Middleware(DeploySync, store=str(store.root), **options)])
    sent: list[dict[str, Any]] = []

    async def lifespan() -> None:
        messages = iter([{"type": "lifespan.startup"}])

        async def receive() -> dict[str, Any]:
            return next(messages)

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)

    in_own_loop(lifespan)
    assert [m["type"] for m in sent] == ["lifespan.startup.failed"]
    assert reason in sent[0]["message"]

    async def request() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "root_path": ""}
        await app({**scope, "headers": [], "query_string": b""}, receive, send)

    with pytest.raises(DeploySyncError, match=re.escape(reason)):
        in_own_loop(request)
