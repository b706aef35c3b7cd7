"""The middleware under real servers: uvicorn (ASGI), gunicorn (WSGI) and granian (ASGI,
with the pathsend extension, and WSGI), on 127.0.0.1.

Streaming injection with chunks cut inside ``<head>``, large files, and the hot switch: an
activation made by another process is seen by the running servers without a restart, and
no response mixes two deployments.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from deploysync.store import FileStore

pytestmark = pytest.mark.slow

BIG = bytes(range(256)) * 1200  # 300 KiB: sent from disk, not memory
FILE_PAGE = b"<!doctype html><html><head><title>f</title></head><body>file</body></html>"

APP = textwrap.dedent(
    """
    import asyncio
    import json
    import os

    from deploysync.asgi import DeploySync as AsgiDeploySync
    from deploysync.wsgi import DeploySync as WsgiDeploySync

    STORE = os.environ["TEST_STORE"]


    def page(link):
        # Cut inside "<head": the injector must find it across chunks.
        return [
            b"<!DOCTYPE html>\\n<!-- c --><html><he",
            b"ad lang=en",
            b"><title>t</ti",
            ('tle><link rel="stylesheet" href="%s"></head><body>x</body></html>' % link).encode(),
        ]


    async def inner(scope, receive, send):
        if scope["path"] == "/extensions":
            body = json.dumps(sorted(scope.get("extensions") or {})).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        if scope["path"] == "/file-page":
            # What Starlette's FileResponse does: pathsend when the server offers it.
            name = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page.html")
            size = str(os.path.getsize(name)).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html"), (b"content-length", size)]})
            if "http.response.pathsend" in (scope.get("extensions") or {}):
                await send({"type": "http.response.pathsend", "path": name})
            else:
                with open(name, "rb") as fh:
                    await send({"type": "http.response.body", "body": fh.read()})
            return
        if scope["path"] == "/sized-page":
            # What Starlette's HTMLResponse does, for HEAD too: its length, its body.
            body = b"<!doctype html><html><head><title>s</title></head><body>s</body></html>"
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/html"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        chunks = page(asgi.url("css/app.css"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


    def winner(environ, start_response):
        chunks = page(wsgi.url("css/app.css"))
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return iter(chunks)


    POLL = float(os.environ.get("TEST_POLL", "0.25"))
    asgi = AsgiDeploySync(inner, store=STORE, poll_interval=POLL)
    wsgi = WsgiDeploySync(winner, store=STORE, poll_interval=POLL)

    SENT = []  # message types of the last response under /static/


    async def spied(scope, receive, send):
        # The middleware, with the message types it sends for assets recorded.
        if scope["type"] != "http" or not scope["path"].startswith(("/static/", "/sent")):
            return await asgi(scope, receive, send)
        if scope["path"] == "/sent":
            body = json.dumps(SENT).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        SENT.clear()

        async def record(message):
            SENT.append(message["type"])
            await send(message)

        await asgi(scope, receive, record)
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "deploysync.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def _build(src: Path, store: Path, css: bytes, activate: bool) -> str:
    (src / "css").mkdir(parents=True, exist_ok=True)
    (src / "css" / "app.css").write_bytes(css)
    (src / "big.bin").write_bytes(BIG)
    args = ["build", str(src), "--store", str(store)]
    if activate:
        args.append("--activate")
    return _cli(*args)


@dataclass
class Servers:
    store: Path
    urls: dict[str, str]  # kind -> base URL
    first: str
    second: str
    src: Path


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            httpx.get(url + "/_deploysync/version", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not start")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    root = tmp_path_factory.mktemp("servers")
    store = root / "store"
    first = _build(root / "src1", store, b"body{color:red}\n", activate=True)
    (root / "app").mkdir()
    (root / "app" / "served_app.py").write_text(APP)
    (root / "app" / "page.html").write_bytes(FILE_PAGE)
    path = os.pathsep.join(filter(None, [str(root / "app"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TEST_STORE": str(store), "PYTHONPATH": path}
    env.pop("DEPLOYSYNC_DEPLOYMENT", None)
    ports = {
        "asgi": _free_port(),
        "wsgi": _free_port(),
        "granian": _free_port(),
        "granian-wsgi": _free_port(),
    }
    commands = {
        "asgi": [
            sys.executable, "-m", "uvicorn", "served_app:asgi",
            "--host", "127.0.0.1", "--port", str(ports["asgi"]),
            "--http", "httptools", "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ],
        "wsgi": [
            sys.executable, "-m", "gunicorn", "served_app:wsgi",
            "--bind", f"127.0.0.1:{ports['wsgi']}", "--workers", "2",
            "--log-level", "warning", "--chdir", str(root / "app"),
        ],
        "granian": [
            sys.executable, "-m", "granian", "--interface", "asgi", "served_app:spied",
            "--host", "127.0.0.1", "--port", str(ports["granian"]), "--workers", "1",
            "--no-ws", "--log-level", "warning",
        ],
        # granian's WSGI side reads the status and headers as soon as the app returns.
        "granian-wsgi": [
            sys.executable, "-m", "granian", "--interface", "wsgi", "served_app:wsgi",
            "--host", "127.0.0.1", "--port", str(ports["granian-wsgi"]), "--workers", "1",
            "--log-level", "warning",
        ],
    }  # fmt: skip
    logs = {kind: open(root / f"{kind}.log", "wb") for kind in commands}  # noqa: SIM115
    procs = {
        kind: subprocess.Popen(
            cmd, env=env, cwd=root / "app", stdout=logs[kind], stderr=subprocess.STDOUT
        )
        for kind, cmd in commands.items()
    }
    urls = {kind: f"http://127.0.0.1:{port}" for kind, port in ports.items()}
    try:
        deadline = time.monotonic() + 30
        for kind, proc in procs.items():
            _wait_until_up(urls[kind], proc, root / f"{kind}.log", deadline)
        yield Servers(store, urls, first, "", root)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for log in logs.values():
            log.close()


KINDS = ["asgi", "wsgi"]
META = re.compile(rb'<meta name="deployment-id" content="([A-Za-z0-9_-]+)">')
LINK = re.compile(rb'<link rel="stylesheet" href="([^"]+)">')


def _ids_and_link(response: httpx.Response) -> tuple[str | None, str | None, str | None]:
    meta = META.findall(response.content)
    link = LINK.search(response.content)
    return (
        response.headers.get("x-deployment-id"),
        meta[0].decode() if len(meta) == 1 else None,
        link.group(1).decode() if link else None,
    )


@pytest.mark.parametrize("kind", [*KINDS, "granian-wsgi"])
def test_streaming_injection(servers: Servers, kind: str) -> None:
    response = httpx.get(servers.urls[kind] + "/", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.content.count(b'name="deployment-id"') == 1
    assert response.content.startswith(
        b'<!DOCTYPE html>\n<!-- c --><html><head lang=en><meta name="deployment-id"'
    )
    header, meta, link = _ids_and_link(response)
    assert header == meta
    deployment = FileStore(servers.store).load(str(header))
    assert link == deployment.url("css/app.css")
    script = re.search(rb'src="(/_deploysync/client-[0-9a-f]{12}\.js)"', response.content)
    assert script is not None
    client = httpx.get(servers.urls[kind] + script.group(1).decode(), timeout=5)
    assert client.status_code == 200
    assert "immutable" in client.headers["cache-control"]


@pytest.mark.parametrize("kind", KINDS)
def test_large_asset_and_ranges(servers: Servers, kind: str) -> None:
    deployment = FileStore(servers.store).load(servers.first)
    url = servers.urls[kind] + deployment.url("big.bin")
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.content == BIG
    ranged = httpx.get(url, headers={"Range": "bytes=1000-1999"}, timeout=5)
    assert ranged.status_code == 206
    assert ranged.content == BIG[1000:2000]


def test_a_large_asset_goes_out_by_pathsend_where_the_server_offers_it(servers: Servers) -> None:
    deployment = FileStore(servers.store).load(servers.first)
    base = servers.urls["granian"]
    response = httpx.get(base + deployment.url("big.bin"), timeout=5)
    assert response.status_code == 200
    assert response.content == BIG
    assert httpx.get(base + "/sent", timeout=5).json() == [
        "http.response.start",
        "http.response.pathsend",
    ]
    # A range is not the whole file: chunked reads, still exact.
    ranged = httpx.get(base + deployment.url("big.bin"), headers={"Range": "bytes=5-9"}, timeout=5)
    assert ranged.status_code == 206
    assert ranged.content == BIG[5:10]
    assert "http.response.pathsend" not in httpx.get(base + "/sent", timeout=5).json()


@dataclass
class Seen:
    at: float
    kind: str
    header: str | None
    meta: str | None
    link: str | None


def _load(base: str, kind: str, stop: threading.Event, out: list[Seen]) -> None:
    with httpx.Client(base_url=base, timeout=5) as client:
        for _ in range(5000):  # bounded in count, and by the stop event in time
            if stop.is_set():
                return
            response = client.get("/")
            out.append(Seen(time.monotonic(), kind, *_ids_and_link(response)))
            time.sleep(0.005)


def _switch(servers: Servers, activate: list[str]) -> tuple[float, list[Seen]]:
    """Run load on both servers while *activate* runs; return when it returned, and
    what every response said."""
    stop = threading.Event()
    seen: list[Seen] = []
    threads = [threading.Thread(target=_load, args=(servers.urls[k], k, stop, seen)) for k in KINDS]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        _cli(*activate)
        returned = time.monotonic()
        new = FileStore(servers.store).current()
        # Keep loading until every server has answered with the new id for a while
        # (bounded: a server that never switches fails the check below).
        deadline = returned + 15
        while time.monotonic() < deadline:
            time.sleep(0.2)
            settled = [
                s for s in list(seen) if s.at > returned + 1.0 and s.at < time.monotonic() - 1.0
            ]
            kinds = {s.kind for s in settled}
            if kinds == set(KINDS) and all(s.header == new for s in settled[-20:]):
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    return returned, seen


def _check(servers: Servers, seen: list[Seen], returned: float, new: str) -> dict[str, float]:
    fs = FileStore(servers.store)
    urls = {
        ident: fs.load(ident).url("css/app.css") for ident in {s.header for s in seen if s.header}
    }
    for item in seen:
        # Never a mix: the header, the injected meta and the rendered asset URL all
        # name the same deployment.
        assert item.header is not None
        assert item.meta == item.header, item
        assert item.link == urls[item.header], item
    latency = {}
    for kind in KINDS:
        mine = [s for s in seen if s.kind == kind]
        assert mine, f"no responses from {kind}"
        # The activation is seen without restart; after it, nothing goes back.
        assert mine[-1].header == new
        last_old = max((s.at for s in mine if s.header != new), default=returned)
        latency[kind] = last_old - returned
    return latency


def test_hot_switch_without_restart(servers: Servers) -> None:
    fs = FileStore(servers.store)
    # A build with --activate in another process, while both servers are under load.
    src = servers.src / "src2"
    (src / "css").mkdir(parents=True)
    (src / "css" / "app.css").write_bytes(b"body{color:blue}\n")
    (src / "big.bin").write_bytes(BIG)
    returned, seen = _switch(
        servers, ["build", str(src), "--store", str(servers.store), "--activate"]
    )
    second = fs.current()
    assert second is not None
    assert second != servers.first
    latency = _check(servers, seen, returned, second)
    # Then a rollback with `deploysync activate`: the same move.
    returned, seen_back = _switch(
        servers, ["activate", servers.first, "--store", str(servers.store)]
    )
    back = _check(servers, seen_back, returned, servers.first)
    print(f"\nswitch seen after (s): {latency}; rollback: {back}")
    # The old page's assets stay servable after the switch.
    old_css = fs.load(servers.first).url("css/app.css")
    new_css = fs.load(second).url("css/app.css")
    for kind in KINDS:
        assert httpx.get(servers.urls[kind] + old_css, timeout=5).status_code == 200
        assert httpx.get(servers.urls[kind] + new_css, timeout=5).status_code == 200


@pytest.mark.parametrize("kind", ["asgi", "granian"])
def test_a_page_sent_as_a_file_gets_its_tags(servers: Servers, kind: str) -> None:
    # granian offers pathsend: the page is then a path, not bytes, until the middleware
    # reads it.
    offered = httpx.get(servers.urls[kind] + "/extensions", timeout=5).json()
    assert ("http.response.pathsend" in offered) == (kind == "granian")
    response = httpx.get(servers.urls[kind] + "/file-page", timeout=5)
    assert response.status_code == 200
    assert response.content.startswith(b'<!doctype html><html><head><meta name="deployment-id"')
    assert response.content.endswith(b"<title>f</title></head><body>file</body></html>")
    assert response.headers["content-length"] == str(len(response.content))
    # HEAD: no length, or the page's (granian counts the body an app sends anyway).
    for path in ("/file-page", "/sized-page"):
        get = httpx.get(servers.urls[kind] + path, timeout=5)
        head = httpx.head(servers.urls[kind] + path, timeout=5)
        assert head.status_code == 200
        assert head.headers.get("content-length", str(len(get.content))) == str(len(get.content))


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_every_worker_serves_a_new_deployments_files_before_its_next_poll(
    tmp_path: Path, server: str
) -> None:
    """One worker of a server switches first and renders pages of the new deployment; the
    browser asks another for their files, all at once, before that one polls the store.
    Here no worker polls (an hour apart): each must find the files when asked for them,
    the requests that come while one looks at the store included."""
    store = tmp_path / "store"
    _build(tmp_path / "src1", store, b"body{color:red}\n", activate=True)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "served_app.py").write_text(APP)
    port = _free_port()
    path = os.pathsep.join(filter(None, [str(tmp_path / "app"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TEST_STORE": str(store), "TEST_POLL": "3600", "PYTHONPATH": path}
    env.pop("DEPLOYSYNC_DEPLOYMENT", None)
    log = tmp_path / "server.log"
    command = {
        "gunicorn": [
            sys.executable, "-m", "gunicorn", "served_app:wsgi", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--threads", "4", "--log-level", "warning",
        ],
        "uvicorn": [
            sys.executable, "-m", "uvicorn", "served_app:asgi", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "2", "--lifespan", "off", "--log-level", "warning",
        ],
    }[server]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, proc, log, time.monotonic() + 30)
        for _ in range(10):  # both workers have read the store at start
            httpx.get(base + "/", timeout=5)
        # Enough files that reading the new deployment takes a while: the burst's other
        # requests come while the first one's look at the store is under way.
        for i in range(600):
            (tmp_path / "src2" / "more").mkdir(parents=True, exist_ok=True)
            (tmp_path / "src2" / "more" / f"f{i}.txt").write_text(f"file {i}\n")
        second = _build(tmp_path / "src2", store, b"body{color:blue}\n", activate=True)
        css = FileStore(store).load(second).url("css/app.css")

        async def burst() -> list[httpx.Response]:
            async def fetch() -> httpx.Response:
                async with httpx.AsyncClient(timeout=10) as client:  # a connection each
                    return await client.get(base + css)

            return await asyncio.gather(*(fetch() for _ in range(12)))

        answers = asyncio.run(burst())
        assert [a.status_code for a in answers] == [200] * 12, log.read_text()[-2000:]
        assert {a.content for a in answers} == {b"body{color:blue}\n"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
