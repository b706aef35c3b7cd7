"""The small web app the browser tests drive, for ASGI (uvicorn) and WSGI (gunicorn).

No framework: one ``handle()`` that maps a request to a response, and two thin adapters.
Every page references its assets through ``mw.url()``, so each deployment renders
different asset URLs. The app counts what reached it (``/_test/stats``): full page loads
(document requests without the client's navigate marker), client navigations, and
processed POSTs, so a test can check that a form was processed exactly once.
``with_csp()`` puts a nonce-based Content Security Policy, with a fresh nonce per
response, in front of the middleware. Under ASGI a ``delay=<seconds>`` query parameter
holds the answer back (a slow page).

gunicorn imports ``testapp:wsgi_from_env()``; the store, routing mode and check
interval come from ``DEPLOYSYNC_TEST_*`` environment variables.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

from deploysync import asgi, wsgi

# Asset sources of a deployment: logical path -> content template ({v} is the version).
ASSETS = {
    "app.css": "body { font-family: sans-serif; } /* {v} */\nh1 { color: #123; }\n",
    "app.js": (
        "// app {v}\n"
        "window.__app = (window.__app || 0) + 1;\n"
        "document.documentElement.dataset.app = '{v}';\n"
        "document.addEventListener('click', (e) => {\n"
        "  const b = e.target instanceof Element && e.target.closest('#load');\n"
        "  if (b) import(b.dataset.chunk).then((m) => m.run());\n"
        "});\n"
    ),
    "chunk.js": (
        "export function run() {\n  document.querySelector('#lazy').textContent = 'chunk {v}';\n}\n"
    ),
    "spa.js": (
        "// a tiny pushState router {v}\n"
        "const view = () => { const v = document.querySelector('#view');"
        " if (v) v.textContent = 'view ' + location.pathname; };\n"
        "document.addEventListener('click', (e) => {\n"
        "  const a = e.target instanceof Element && e.target.closest('a[data-spa]');\n"
        "  if (!a || e.button || e.metaKey || e.ctrlKey) return;\n"
        "  e.preventDefault();\n"
        "  history.pushState({}, '', a.href);\n"
        "  view();\n"
        "});\n"
        "addEventListener('popstate', view);\n"
        "view();\n"
    ),
    "nav.js": (
        "// a router on the Navigation API {v}\n"
        "const show = () => { const v = document.querySelector('#view');"
        " if (v) v.textContent = 'view ' + location.pathname; };\n"
        "navigation.addEventListener('navigate', (e) => {\n"
        "  const to = new URL(e.destination.url);\n"
        "  if (e.canIntercept && !e.hashChange && !e.formData && e.downloadRequest === null\n"
        "      && to.pathname.startsWith('/nav')) e.intercept({ handler: show });\n"
        "});\n"
        "show();\n"
    ),
}

# no favicon request: every document request the app sees is one the test made
HEAD = "<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'>"
NAV = (
    '<nav><a id="to-home" href="/">Home</a> <a id="to-a" href="/a">A</a>'
    ' <a id="to-b" href="/b">B</a> <a id="to-form" href="/form">Form</a>'
    ' <a id="to-lazy" href="/lazy">Lazy</a> <a id="to-b-hash" href="/b?q=1#end">B end</a>'
    ' <a id="to-redirect" href="/redirect">Redirect</a>'
    ' <a id="to-missing" href="/missing">Missing</a>'
    ' <a id="to-prefetch" href="/a" data-deploysync-prefetch>A prefetched</a>'
    ' <a id="to-a-off" href="/a" data-deploysync="off">A plain</a>'
    ' <a id="to-plain" href="/plain">Plain</a>'
    ' <a id="to-json" href="/_test/stats">JSON</a></nav>'
)


@dataclass
class Stats:
    """What reached the app (the middleware answers 409s without calling it)."""

    full: int = 0
    navigate: int = 0
    posts: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def to_json(self) -> dict[str, Any]:
        return {
            "full": self.full,
            "navigate": self.navigate,
            "posts": self.posts,
            "paths": self.paths,
        }


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class App:
    """The application; ``url`` is the middleware's hashed-URL function, set after wrapping."""

    def __init__(self) -> None:
        self.url: Callable[[str], str] = lambda path: "/static/" + path
        self.stats = Stats()

    def page(self, title: str, body: str = "", head: str = "", status: int = 200) -> Response:
        doc = (
            f"{HEAD}<title>{title}</title>"
            f'<link rel="stylesheet" href="{self.url("app.css")}">'
            f'<script type="module" src="{self.url("app.js")}"></script>{head}</head>'
            f'<body><h1 id="title">{title}</h1>{NAV}{body}</body></html>'
        )
        return Response(status, [("Content-Type", "text/html; charset=utf-8")], doc.encode())

    def handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        nonce: str = "",
    ) -> Response:
        """One request; *nonce* is the response's CSP nonce (its inline scripts carry it)."""
        navigate = headers.get("x-deploysync") == "navigate"
        if path == "/favicon.ico":  # asked for by the browser when it shows the JSON
            return Response(204, [], b"")
        if path.startswith("/_test/"):
            with self.stats.lock:
                data = json.dumps(self.stats.to_json()).encode()
            # never kept by the browser: a back to a page naming one asks for it again
            json_headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
            return Response(200, json_headers, data)
        with self.stats.lock:
            if method == "POST":
                self.stats.posts += 1
            elif navigate:
                self.stats.navigate += 1
            else:
                self.stats.full += 1
            self.stats.paths.append(
                f"{method} {path}{'?' + query if query else ''}{' (client)' if navigate else ''}"
            )
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if path in ("/", "/a", "/b"):
            title = {"/": "Home", "/a": "A", "/b": "B"}[path]
            nonce_attr = f' nonce="{nonce}"' if nonce else ""
            # Under a nonce policy, scripts the response does not trust: never to run.
            forged = (
                '<script nonce="forged">window.__forged = 1</script>'
                "<script>window.__forged = 2</script>"
                if nonce
                else ""
            )
            extra = {
                "/a": f"<script{nonce_attr}>window.__ran = (window.__ran || 0) + 1</script>"
                + forged,
                "/b": '<div style="height:3000px">tall</div><p id="end">end</p>',
            }.get(path, "")
            # a data island in the head, as apps pass a page's data to its scripts
            island = f'<script type="application/json" id="page-data">"{path}"</script>'
            return self.page(title, f'<p id="query">{html.escape(query)}</p>{extra}', island)
        if path == "/type":
            # slow=N: an image that takes N seconds, so the page's load event comes late
            slow = params.get("slow")
            image = f'<img alt="" src="/_test/image?delay={float(slow)}">' if slow else ""
            return self.page(
                "Type",
                '<a id="to-top" href="#">Top</a> <a id="to-end" href="#end">End</a>'
                f'<textarea id="text" rows="4" cols="60"></textarea>{image}'
                '<div style="height:3000px"></div><p id="end">end</p>',
            )
        if path == "/form":
            if method == "POST":
                return self.posted(headers, body)
            enctype = ' enctype="multipart/form-data"' if params.get("multipart") else ""
            return self.page(
                "Form",
                f'<form method="post" action="/form"{enctype}><input id="message" name="message">'
                '<button id="send" name="action" value="send">Send</button>'
                '<button id="other" name="action" value="other">Other</button></form>'
                '<form method="get" action="/a"><input id="q" name="q">'
                '<button id="search">Search</button></form>',
            )
        if path == "/echo":  # a POST answered 200 in place (a form shown again with errors)
            fragment = html.escape(params.get("fragment", ""))
            echoed = parse_form(headers.get("content-type", ""), body).get("message", "")
            return self.page(
                "Echo",
                f'<p id="echoed">{method} {html.escape(echoed)}</p>'
                f'<form method="post" action="/echo{"#" + fragment if fragment else ""}">'
                '<input id="message" name="message"><button id="send">Send</button></form>'
                '<div style="height:3000px"></div><p id="end">end</p>',
            )
        if path == "/plain":  # a page the app leaves to the browser (the admin, say)
            plain = self.page("Plain")
            plain.headers.append(("X-Deploysync", "off"))
            return plain
        if path == "/result":
            return self.page(
                "Result",
                f'<p id="received">{html.escape(params.get("message", ""))}'
                f" via {html.escape(params.get('action', ''))} #{params.get('n', '')}</p>",
            )
        if path == "/lazy":
            return self.page(
                "Lazy",
                f'<button id="load" data-chunk="{self.url("chunk.js")}">Load</button>'
                '<p id="lazy"></p>',
            )
        if path == "/export":  # a POST answered with a file, or with text shown in the tab
            if method == "POST" and params.get("fail"):
                return Response(500, [("Content-Type", "text/plain")], b"export failed")
            if method == "POST":
                disposition = (
                    "attachment; filename*=utf-8''my%20r%C3%A9port.csv"  # as Starlette writes
                    if params.get("extended")
                    else 'attachment; filename="report.csv"'
                )
                headers_out = [("Content-Type", "text/csv"), ("Content-Disposition", disposition)]
                return Response(200, headers_out, b"id,name\n1,deploysync\n")
            return self.page(
                "Export",
                '<form method="post" action="/export"><button id="export">Export</button></form>'
                '<a id="report" href="/report">Report</a>'
                '<form method="post" action="/export?extended=1">'
                '<button id="export-extended">Export</button></form>'
                '<form method="post" action="/export?fail=1">'
                '<button id="fail">Fail</button></form>',
            )
        if path == "/report":  # an HTML file to save, not a page to show
            disposition = 'attachment; filename="report.html"'
            headers_out = [("Content-Type", "text/html"), ("Content-Disposition", disposition)]
            return Response(200, headers_out, b"<!doctype html><h1>report</h1>")
        if path == "/pay":  # a POST answered with a redirect to another origin (a payment)
            if method == "POST":
                port = headers.get("host", "").rpartition(":")[2]
                to = "mailto:sales@example.com" if params.get("mail") else None
                return Response(303, [("Location", to or f"http://localhost:{port}/b")], b"")
            return self.page(
                "Pay",
                '<form method="post" action="/pay"><button id="pay">Pay</button></form>'
                '<form method="post" action="/pay?mail=1"><button id="mail">Mail</button></form>',
            )
        if path == "/redirect":
            return Response(302, [("Location", "/b")], b"")
        if path == "/nothing":  # a navigation that leaves the page where it is
            return Response(204, [], b"")
        if path.startswith("/spa"):
            links = "".join(
                f' <a data-spa id="spa-{n}" href="/spa/{n}">{n}</a>' for n in ("x", "y")
            )
            head = f'<script type="module" src="{self.url("spa.js")}"></script>'
            return self.page("SPA", f'<p id="view"></p>{links}', head)
        if path == "/nav" or path.startswith("/nav/"):
            links = "".join(f' <a id="nav-{n}" href="/nav/{n}">{n}</a>' for n in ("x", "y"))
            head = f'<script type="module" src="{self.url("nav.js")}"></script>'
            return self.page("Navigation API", f'<p id="view"></p>{links}', head)
        for lib in ("htmx", "htmx4", "turbo"):
            if path == f"/{lib}" or path.startswith(f"/{lib}/"):
                return self.library_page(lib, path, method, headers, body)
        return self.page("Not found", "<p>nothing here</p>", status=404)

    def posted(self, headers: dict[str, str], body: bytes, to: str = "/result") -> Response:
        fields = parse_form(headers.get("content-type", ""), body)
        n = self.stats.posts
        message, action = quote(fields.get("message", "")), quote(fields.get("action", ""))
        target = f"{to}?n={n}&message={message}&action={action}"
        return Response(303, [("Location", target)], b"")

    def library_page(
        self, lib: str, path: str, method: str, headers: dict[str, str], body: bytes
    ) -> Response:
        """Pages of an htmx-boosted (htmx 2, htmx 4) or Turbo Drive site."""
        if method == "POST":
            return self.posted(headers, body, to=f"/{lib}/result")
        if path == f"/{lib}/away":  # a redirect to another origin
            port = headers.get("host", "").rpartition(":")[2]
            return Response(302, [("Location", f"http://localhost:{port}/b")], b"")
        if lib == "htmx":
            head = f'<script src="{self.url("vendor/htmx.min.js")}"></script>'
            attrs = ' hx-boost="true"'
        elif lib == "htmx4":
            # htmx 4 inherits attributes only when told to
            head = f'<script src="{self.url("vendor/htmx4.min.js")}"></script>'
            attrs = ' hx-boost:inherited="true"'
        else:
            head = f'<script type="module" src="{self.url("vendor/turbo.es2017-esm.js")}"></script>'
            attrs = ""
        title = f"{lib} {path.rsplit('/', 1)[-1] or 'home'}"
        links = "".join(f' <a id="{lib}-{n}" href="/{lib}/{n}">{n}</a>' for n in ("a", "b"))
        links += f' <a id="{lib}-b-end" href="/{lib}/b#end">b end</a>'
        links += f' <a id="{lib}-away" href="/{lib}/away">away</a>'
        form = (
            f'<form method="post" action="/{lib}/form"><input id="message" name="message">'
            '<button id="send" name="action" value="send">Send</button></form>'
        )
        doc = (
            f"{HEAD}<title>{title}</title>{head}</head>"
            f'<body{attrs}><h1 id="title">{title}</h1><p>{links}</p>{form}'
            '<div style="height:3000px"></div><p id="end">end</p></body></html>'
        )
        return Response(200, [("Content-Type", "text/html; charset=utf-8")], doc.encode())


def parse_form(content_type: str, body: bytes) -> dict[str, str]:
    """urlencoded or multipart/form-data text fields (enough for the test forms)."""
    if content_type.startswith("multipart/form-data"):
        boundary = content_type.split("boundary=", 1)[1].strip('"').encode()
        fields = {}
        for part in body.split(b"--" + boundary):
            head, sep, value = part.partition(b"\r\n\r\n")
            if not sep or b'name="' not in head:
                continue
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            fields[name] = value.rsplit(b"\r\n", 1)[0].decode()
        return fields
    return {k: v[-1] for k, v in parse_qs(body.decode()).items()}


# -- adapters ----------------------------------------------------------------------------


def asgi_app(app: App) -> Callable[..., Any]:
    async def application(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope["query_string"].decode("latin-1")
        delay = parse_qs(query).get("delay")
        if delay:
            await asyncio.sleep(float(delay[-1]))
        res = app.handle(
            scope["method"], scope["path"], query, headers, body, scope.get("csp_nonce", "")
        )
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in res.headers]
        raw.append((b"content-length", str(len(res.body)).encode()))
        await send({"type": "http.response.start", "status": res.status, "headers": raw})
        await send({"type": "http.response.body", "body": res.body})

    return application


def wsgi_app(app: App) -> Callable[..., Iterable[bytes]]:
    def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        headers = {
            key[5:].replace("_", "-").lower(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["content-type"] = environ["CONTENT_TYPE"]
        res = app.handle(
            environ["REQUEST_METHOD"],
            environ.get("PATH_INFO", "/"),
            environ.get("QUERY_STRING", ""),
            headers,
            body,
        )
        reason = {200: "OK", 302: "Found", 303: "See Other", 404: "Not Found"}.get(res.status, "OK")
        start_response(
            f"{res.status} {reason}", [*res.headers, ("Content-Length", str(len(res.body)))]
        )
        return [res.body]

    return application


def with_csp(app: Callable[..., Any]) -> Callable[..., Any]:
    """*app* behind a nonce-based CSP: a fresh nonce per response, in ``scope["csp_nonce"]``
    (the middleware's ``nonce="csp_nonce"`` option reads it), and the policy enforcing it."""

    async def application(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        nonce = secrets.token_urlsafe(12)
        policy = f"script-src 'self' 'nonce-{nonce}'".encode()

        async def send_with_policy(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", policy)]
                message = {**message, "headers": headers}
            await send(message)

        await app({**scope, "csp_nonce": nonce}, receive, send_with_policy)

    return application


def make_asgi(
    store: str, routing: str = "server", check_interval: float = 0, **options: Any
) -> asgi.DeploySync:
    app = App()
    mw = asgi.DeploySync(
        asgi_app(app), store=store, routing=routing, check_interval=check_interval, **options
    )
    app.url = mw.url
    return mw


def make_wsgi(
    store: str, routing: str = "server", check_interval: float = 0, **options: Any
) -> wsgi.DeploySync:
    app = App()
    mw = wsgi.DeploySync(
        wsgi_app(app), store=store, routing=routing, check_interval=check_interval, **options
    )
    app.url = mw.url
    return mw


def wsgi_from_env() -> wsgi.DeploySync:
    """The gunicorn entry point: ``testapp:wsgi_from_env()``."""
    env = os.environ
    return make_wsgi(
        env["DEPLOYSYNC_TEST_STORE"],
        routing=env.get("DEPLOYSYNC_TEST_ROUTING", "server"),
        check_interval=float(env.get("DEPLOYSYNC_TEST_CHECK_INTERVAL", "0")),
    )
