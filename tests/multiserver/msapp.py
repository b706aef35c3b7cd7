"""The app every server of the multi-server tests runs: a few pages and a POST form.

uvicorn imports ``msapp:make_app`` (``--factory``). Configuration comes from the
environment, as in a container:

- ``MS_STORE``: the shared store (a ``redis://`` URL or a folder);
- ``MS_CACHE``: this server's local blob cache (Redis store), one per server as on
  separate machines;
- ``MS_NAME``: the server's name, shown on every page;
- ``MS_POSTS``: a file both servers append processed POSTs to, one token a line, so a
  test can check that each submission was processed exactly once whichever server got it;
- ``MS_POLL``: the middleware's ``poll_interval``;
- ``DEPLOYSYNC_DEPLOYMENT`` (read by the middleware): the pinned deployment, if any.

Every page references its assets through ``mw.url()``, so pages of different
deployments ask for different asset URLs.
"""

from __future__ import annotations

import html
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote

from deploysync.asgi import DeploySync
from deploysync.store import Store, open_store

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Asset sources of a deployment: logical path -> content template ({v}: the version).
ASSETS = {
    "app.css": "body { font-family: sans-serif; } /* {v} */\n",
    "app.js": "// app {v}\nwindow.__app = '{v}';\n",
    "logo.svg": (
        '<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
        '<rect width="8" height="8" fill="#123"/><!-- {v} --></svg>\n'
    ),
}
TITLES = {"/": "Home", "/a": "A", "/b": "B", "/form": "Form", "/result": "Result"}
NAV = (
    '<nav><a id="to-home" href="/">Home</a> <a id="to-a" href="/a">A</a>'
    ' <a id="to-b" href="/b">B</a> <a id="to-form" href="/form">Form</a></nav>'
)


def open_shared_store() -> Store:
    spec = os.environ["MS_STORE"]
    cache = os.environ.get("MS_CACHE")
    if spec.startswith("redis://") and cache:
        from deploysync.store.redis import RedisStore

        return RedisStore(spec, cache_dir=cache)
    return open_store(spec)


class App:
    """The bare application; ``mw`` is the middleware wrapping it (for ``mw.url``)."""

    def __init__(self, name: str, posts: str | None) -> None:
        self.name = name
        self.posts = posts
        self.mw: DeploySync | None = None

    def url(self, path: str) -> str:
        return self.mw.url(path) if self.mw is not None else "/static/" + path

    def page(self, path: str, body: str) -> bytes:
        title = TITLES[path]
        return (
            "<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'>"
            f"<title>{title}</title>"
            f'<link rel="stylesheet" href="{self.url("app.css")}">'
            f'<script type="module" src="{self.url("app.js")}"></script></head>'
            f'<body><h1 id="title">{title}</h1>{NAV}'
            f'<img id="logo" alt="" src="{self.url("logo.svg")}">'
            f'<p id="server">{self.name}</p>{body}</body></html>'
        ).encode()

    def record(self, token: str) -> None:
        if self.posts is None:
            return
        # One write() on an O_APPEND file: lines of both servers never interleave.
        fd = os.open(self.posts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{token}\n".encode())
        finally:
            os.close(fd)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
        status, headers, content = 404, [(b"content-type", b"text/plain")], b"not found"
        if path == "/form" and scope["method"] == "POST":
            token = parse_qs(body.decode()).get("token", [""])[-1]
            self.record(token)
            status, content = 303, b""
            headers = [(b"location", f"/result?token={quote(token)}".encode())]
        elif path in TITLES:
            extra = ""
            if path == "/form":
                extra = (
                    '<form method="post" action="/form"><input id="token" name="token">'
                    '<button id="send">Send</button></form>'
                )
            elif path == "/result":
                extra = f'<p id="received">{html.escape(query.get("token", ""))}</p>'
            status, content = 200, self.page(path, extra)
            headers = [(b"content-type", b"text/html; charset=utf-8")]
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def make_app() -> DeploySync:
    app = App(os.environ.get("MS_NAME", "server"), os.environ.get("MS_POSTS"))
    mw = DeploySync(
        app,
        store=open_shared_store(),
        routing="client",
        poll_interval=float(os.environ.get("MS_POLL", "0.5")),
    )
    app.mw = mw
    return mw
