"""``deploysync demo``: a small site that shows a deployment reaching people mid-visit.

It builds v1 of a multi-page site into a store (a temporary folder unless ``--store``),
serves it through :class:`deploysync.wsgi.DeploySync` in ``client`` routing mode with
the standard library's WSGI server (no third-party package needed), and builds and
activates a visibly different version whenever it is asked: Enter in the terminal, the
button of ``/_demo/operator``, or every ``--every`` seconds.

Run it with ``deploysync demo`` or ``python -m deploysync.demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import html
import json
import math
import os
import select
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from importlib import resources
from pathlib import Path
from string import Template
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO, cast
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from .build import build
from .manifest import DeploySyncError
from .store import Store, open_store
from .wsgi import DeploySync, Environ, StartResponse

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# The exit status of a malformed command line, as for every deploysync command.
USAGE_ERROR = 2
OPERATOR_PATH = "/_demo/operator"
CSS = "css/site.css"
JS = "js/app.js"
ICON = "img/icon.svg"
# How often open pages ask the server whether a new version is live, in seconds. Short,
# so that the banner shows a moment after a deploy; a real site would use a minute or so.
CHECK_INTERVAL = 2.0
MAX_BODY = 64 * 1024
MAX_ENTRIES = 200
HTML_TYPE = "text/html; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Theme:
    """The colours of one version: each deploy takes the next one."""

    name: str
    accent: str
    dark: str
    soft: str


PALETTE: tuple[Theme, ...] = (
    Theme("Indigo", "#4f46e5", "#3730a3", "#e0e7ff"),
    Theme("Teal", "#0d9488", "#115e59", "#ccfbf1"),
    Theme("Rose", "#e11d48", "#9f1239", "#ffe4e6"),
    Theme("Amber", "#d97706", "#92400e", "#fef3c7"),
    Theme("Violet", "#7c3aed", "#5b21b6", "#ede9fe"),
    Theme("Sky", "#0284c7", "#075985", "#e0f2fe"),
    Theme("Emerald", "#059669", "#065f46", "#d1fae5"),
    Theme("Fuchsia", "#c026d3", "#86198f", "#fae8ff"),
)


def theme_for(version: int) -> Theme:
    return PALETTE[(version - 1) % len(PALETTE)]


@dataclass(frozen=True, slots=True)
class Version:
    """A version of the demo site the demo built, and the deployment it became."""

    number: int
    id: str
    theme: Theme
    css_url: str
    deployed_at: float
    trigger: str


@dataclass(frozen=True, slots=True)
class Entry:
    """A guestbook entry, kept in memory."""

    name: str
    message: str
    version: int
    at: float


# -- the source folder of a version ------------------------------------------------------


def _resource(name: str) -> str:
    return (
        resources.files("deploysync")
        .joinpath("demo_site")
        .joinpath(name)
        .read_text(encoding="utf-8")
    )


def write_source(folder: Path, version: int) -> Path:
    """Write the frontend of *version* (CSS, JS, icon) into *folder*, ready to build."""
    theme = theme_for(version)
    files = {
        CSS: (
            f"/* deploysync demo, v{version}: {theme.name} */\n"
            f":root {{ --accent: {theme.accent}; --accent-dark: {theme.dark}; "
            f"--accent-soft: {theme.soft}; }}\n" + _resource("site.css")
        ),
        JS: (
            f"const DEMO_VERSION = {version};\n"
            f"const DEMO_THEME = {json.dumps(theme.name)};\n" + _resource("app.js")
        ),
        ICON: (
            '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
            f'<rect width="32" height="32" rx="7" fill="{theme.accent}"/>'
            '<text x="16" y="22" font-family="Arial, sans-serif" font-size="15" '
            f'font-weight="700" fill="#fff" text-anchor="middle">{version % 100}</text></svg>\n'
        ),
    }
    for path, text in files.items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return folder


# -- state: versions and guestbook ---------------------------------------------------------


class DemoSite:
    """The demo's state: the versions it built into *store*, and the guestbook."""

    def __init__(self, store: Store, workdir: Path, *, say: Callable[[str], None]) -> None:
        self.store = store
        self.workdir = workdir
        self.say = say
        #: Called after each activation; the middleware re-reads the store at once.
        self.refresh: Callable[[], object] = lambda: None
        self._lock = threading.Lock()
        self._versions: list[Version] = []
        self._by_css_url: dict[str, Version] = {}
        self._entries: list[Entry] = [
            Entry(
                "deploysync",
                "Welcome! Sign the guestbook before and after a deploy: "
                "each message is recorded once.",
                1,
                time.time(),
            )
        ]

    @property
    def versions(self) -> list[Version]:
        with self._lock:
            return list(self._versions)

    @property
    def latest(self) -> Version | None:
        with self._lock:
            return self._versions[-1] if self._versions else None

    def version_for(self, css_url: str) -> Version | None:
        """The version whose stylesheet has this hashed URL."""
        with self._lock:
            return self._by_css_url.get(css_url)

    def deploy(self, trigger: str) -> Version:
        """Build the next version and make it current; print a line about it."""
        with self._lock:
            number = len(self._versions) + 1
            source = write_source(self.workdir / f"v{number}", number)
            try:
                # No build cache: each version's folder is temporary.
                deployment = build(source, self.store, activate=True, cache=False).deployment
            finally:
                shutil.rmtree(source, ignore_errors=True)
            version = Version(
                number=number,
                id=deployment.id,
                theme=theme_for(number),
                css_url=deployment.url(CSS),
                deployed_at=time.time(),
                trigger=trigger,
            )
            self._versions.append(version)
            self._by_css_url[version.css_url] = version
        # Running servers notice an activation within a second by themselves; the demo's
        # own server need not wait.
        self.refresh()
        self.say(f"v{number} deployed: {version.id} ({version.theme.name}, {trigger})")
        return version

    @property
    def entries(self) -> list[Entry]:
        with self._lock:
            return list(self._entries)

    def sign(self, name: str, message: str, version: int) -> None:
        with self._lock:
            self._entries.append(Entry(name, message, version, time.time()))
            del self._entries[:-MAX_ENTRIES]


# -- the WSGI application ------------------------------------------------------------------

NAV = (("/", "Home"), ("/guestbook", "Guestbook"), ("/about", "About"), (OPERATOR_PATH, "Operator"))


@dataclass(frozen=True, slots=True)
class Response:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


def _html(body: str, status: str = "200 OK") -> Response:
    return Response(status, [("Content-Type", HTML_TYPE)], body.encode())


def _redirect(location: str) -> Response:
    return Response("303 See Other", [("Location", location), ("Content-Type", HTML_TYPE)], b"")


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def read_form(environ: Environ) -> dict[str, str]:
    """The fields of a posted form, url-encoded or multipart (as ``fetch(FormData)`` sends)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    body = environ["wsgi.input"].read(min(max(length, 0), MAX_BODY)) if length > 0 else b""
    content_type = environ.get("CONTENT_TYPE", "")
    if content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes) and not part.get_filename():
                fields.setdefault(name, payload.decode("utf-8", "replace"))
        return fields
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in parsed.items()}


class DemoApp:
    """The demo site as a plain WSGI application (deploysync wraps it in :func:`make_app`).

    *asset_url* maps a logical asset path to the hashed URL of the current deployment;
    pages are rendered against it, so what a page shows matches what it loads.
    """

    def __init__(self, site: DemoSite, asset_url: Callable[[str], str] | None = None) -> None:
        self.site = site
        self.asset_url = asset_url or self._latest_url
        self._layout = Template(_resource("layout.html"))
        self._pages = {
            name: Template(_resource(f"{name}.html"))
            for name in ("home", "about", "guestbook", "operator")
        }

    def _latest_url(self, path: str) -> str:
        latest = self.site.latest
        if latest is None:
            raise LookupError("Nothing is deployed yet")
        return self.site.store.load(latest.id).url(path)

    def current(self) -> Version:
        """The version pages are rendered with right now."""
        with contextlib.suppress(LookupError):
            found = self.site.version_for(self.asset_url(CSS))
            if found is not None:
                return found
        latest = self.site.latest
        if latest is None:
            raise LookupError("Nothing is deployed yet")
        return latest

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        try:
            response = self.respond(method, environ.get("PATH_INFO") or "/", environ)
        except DeploySyncError as exc:
            response = Response(
                "500 Internal Server Error",
                [("Content-Type", "text/plain; charset=utf-8")],
                f"deploysync demo: {exc}\n".encode(),
            )
        headers = [*response.headers, ("Content-Length", str(len(response.body)))]
        start_response(response.status, headers)
        return [b""] if method == "HEAD" else [response.body]

    def respond(self, method: str, path: str, environ: Environ) -> Response:
        read = method in ("GET", "HEAD")
        if path in ("/", "/about"):
            if not read:
                return self._not_allowed("GET, HEAD")
            name = "home" if path == "/" else "about"
            return self.page(path, "Home" if path == "/" else "About", self._pages[name], {})
        if path == "/guestbook":
            if read:
                return self.guestbook()
            if method == "POST":
                return self.sign(read_form(environ))
            return self._not_allowed("GET, HEAD, POST")
        if path == OPERATOR_PATH:
            if read:
                deployed = parse_qs(environ.get("QUERY_STRING", "")).get("deployed", [""])[0]
                return self.operator(deployed=int(deployed) if deployed.isdigit() else None)
            if method == "POST":
                return self.deploy(environ)
            return self._not_allowed("GET, HEAD, POST")
        if path == "/favicon.ico":
            return Response("204 No Content", [], b"")
        return self.page(
            path,
            "Not found",
            Template(
                '<h1>Not found</h1><p>Nothing at <code>$path</code>. <a href="/">Home</a></p>'
            ),
            {"path": html.escape(path)},
            status="404 Not Found",
        )

    @staticmethod
    def _not_allowed(allow: str) -> Response:
        return Response(
            "405 Method Not Allowed",
            [("Allow", allow), ("Content-Type", "text/plain; charset=utf-8")],
            b"Method not allowed\n",
        )

    def page(
        self,
        path: str,
        title: str,
        content: Template,
        values: dict[str, str],
        status: str = "200 OK",
    ) -> Response:
        version = self.current()
        css_url = self.asset_url(CSS)
        common = {
            "version": str(version.number),
            "theme": version.theme.name,
            "deployment": version.id,
            "css_url": html.escape(css_url),
        }
        nav = "".join(
            f'<a href="{href}" aria-current="page">{label}</a>'
            if href == path
            else f'<a href="{href}">{label}</a>'
            for href, label in NAV
        )
        body = self._layout.substitute(
            common,
            title=html.escape(title),
            js_url=html.escape(self.asset_url(JS)),
            icon_url=html.escape(self.asset_url(ICON)),
            nav=nav,
            content=content.substitute(common, **values),
            rendered_at=_clock(time.time()),
        )
        return _html(body, status)

    # -- guestbook -------------------------------------------------------------------------
    def guestbook(
        self, *, error: str = "", name: str = "", message: str = "", status: str = "200 OK"
    ) -> Response:
        entries = self.site.entries
        items = "\n".join(
            f'<li id="entry-{index}"><span class="who">{html.escape(entry.name)}</span> '
            f'<span class="when">at {_clock(entry.at)}, while v{entry.version} was live</span>'
            f"<p>{html.escape(entry.message)}</p></li>"
            for index, entry in reversed(list(enumerate(entries, 1)))
        )
        count = f"{len(entries)} message" + ("" if len(entries) == 1 else "s")
        return self.page(
            "/guestbook",
            "Guestbook",
            self._pages["guestbook"],
            {
                "error": f'<p class="form-error" role="alert">{html.escape(error)}</p>'
                if error
                else "",
                "name_value": html.escape(name),
                "message_value": html.escape(message),
                "count": count,
                "entries": items,
            },
            status=status,
        )

    def sign(self, form: dict[str, str]) -> Response:
        name = form.get("name", "").strip()[:60] or "Anonymous"
        message = form.get("message", "").strip()[:500]
        if not message:
            # 422 rather than 200, so client-side routers know the submission failed.
            return self.guestbook(
                error="Please write a message.", name=name, status="422 Unprocessable Content"
            )
        self.site.sign(name, message, self.current().number)
        return _redirect("/guestbook")

    # -- operator --------------------------------------------------------------------------
    def operator(self, deployed: int | None) -> Response:
        versions = self.site.versions
        current = self.current()
        rows = "\n".join(
            f"<tr><td>v{v.number}{' (current)' if v == current else ''}</td>"
            f"<td><code>{v.id}</code></td>"
            f'<td><span class="swatch" style="background:{v.theme.accent}"></span>'
            f"{v.theme.name}</td><td>{_clock(v.deployed_at)}</td>"
            f"<td>{html.escape(v.trigger)}</td></tr>"
            for v in reversed(versions)
        )
        notice = (
            f'<p class="notice" role="status">v{deployed} is live. Pages still open on '
            "an older version show a banner, and their next click lands here.</p>"
            if deployed
            else ""
        )
        return self.page(
            OPERATOR_PATH,
            "Operator",
            self._pages["operator"],
            {
                "current_version": str(current.number),
                "current_id": current.id,
                "next_version": str(len(versions) + 1),
                "notice": notice,
                "rows": rows,
                "store": html.escape(self.site.store.location or "STORE"),
            },
        )

    def deploy(self, environ: Environ) -> Response:
        version = self.site.deploy("operator page")
        if "application/json" in environ.get("HTTP_ACCEPT", ""):
            body = json.dumps({"id": version.id, "version": version.number}).encode()
            return Response("200 OK", [("Content-Type", "application/json")], body)
        # This request renders against the deployment it started with: show the new one
        # on a fresh request (and a reload does not deploy again).
        return _redirect(f"{OPERATOR_PATH}?deployed={version.number}")


def make_app(site: DemoSite) -> DeploySync:
    """The demo app wrapped in deploysync's WSGI middleware (``client`` routing)."""
    app = DemoApp(site)
    middleware = DeploySync(app, store=site.store, routing="client", check_interval=CHECK_INTERVAL)
    app.asset_url = middleware.url
    site.refresh = middleware.runtime.refresh
    return middleware


# -- the server ----------------------------------------------------------------------------


class DemoServer(socketserver.ThreadingMixIn, WSGIServer):
    """The standard library's WSGI server, one thread per connection."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, host: str, port: int) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name with socket.getfqdn, which can hang
        # on a machine without working reverse DNS; the demo does not need it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # a browser closed its connection: nothing to report
        super().handle_error(request, client_address)


class QuietHandler(WSGIRequestHandler):
    """Keeps the terminal for the demo's own messages."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``deploysync demo``."""
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (default: 8000; 0: any)"
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--store", default=None, help="store to deploy into (default: a temporary folder)"
    )
    parser.add_argument(
        "--every",
        type=float,
        default=None,
        metavar="N",
        help="deploy a new version every N seconds",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploysync demo",
        description="Serve a demo site and deploy new versions of it while you browse.",
    )
    add_arguments(parser)
    return parser


class _Console:
    """Prints whole lines from any thread."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError, ValueError):
            print(line, file=self.out, flush=True)


def _error(message: str, status: int = 1) -> int:
    """Report *message* as every deploysync command does, in one line; return *status*."""
    print(f"deploysync: error: {message}", file=sys.stderr, flush=True)
    return status


def _bind(host: str, port: int) -> DemoServer:
    try:
        return DemoServer(host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise DeploySyncError(
                f"port {port} on {host} is already in use; choose another one with --port"
            ) from None
        if isinstance(exc, socket.gaierror):
            raise DeploySyncError(f"cannot listen on host {host!r}: {exc.strerror}") from None
        raise DeploySyncError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _url(server: DemoServer, host: str) -> str:
    port = server.server_address[1]
    if host in ("", "0.0.0.0", "::"):
        host = "localhost"  # listening on every interface: this machine's name for it
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _deploy_safely(site: DemoSite, trigger: str, say: Callable[[str], None]) -> bool:
    try:
        site.deploy(trigger)
    except (DeploySyncError, OSError) as exc:
        say(f"deploysync demo: deploy failed: {exc}")
        return False
    return True


def _every(
    site: DemoSite, seconds: float, stop: threading.Event, say: Callable[[str], None]
) -> None:
    while not stop.wait(seconds):
        if not _deploy_safely(site, f"every {seconds:g} s", say):
            return


def _keyboard(site: DemoSite, fd: int, stop: threading.Event, say: Callable[[str], None]) -> None:
    """One deploy per Enter on the terminal; EOF (Ctrl-D) stops listening.

    It reads the file descriptor, not ``sys.stdin``: a daemon thread blocked inside the
    buffered reader would hold its lock while the interpreter shuts down.
    """
    while not stop.is_set():
        try:
            ready, _, _ = select.select([fd], [], [], 0.25)
            if not ready:
                continue
            data = os.read(fd, 1024)
        except (OSError, ValueError):
            return
        if not data:
            return
        for _ in range(data.count(b"\n")):
            if stop.is_set():
                return
            _deploy_safely(site, "terminal", say)


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """Handle SIGTERM like Ctrl-C, so both stop the demo cleanly."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminal_input() -> int | None:
    """The file descriptor of stdin when it is a terminal (select() needs POSIX)."""
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else -1
        return fd if os.name == "posix" and fd >= 0 and os.isatty(fd) else None
    except (OSError, ValueError):
        return None


def main(args: argparse.Namespace | None = None) -> int:
    """Run the demo until Ctrl-C; the exit status."""
    if args is None:
        args = build_parser().parse_args()
    port = int(args.port)
    host = str(args.host)
    every = None if args.every is None else float(args.every)
    # Values argparse parsed but the demo cannot use: a malformed command line (2).
    if not 0 <= port <= 65535:
        return _error(f"invalid port {port}: use 0 to 65535", USAGE_ERROR)
    if every is not None and not 0 < every < math.inf:
        return _error(f"invalid --every {every:g}: use a number of seconds above 0", USAGE_ERROR)
    if args.store is not None and not str(args.store):
        return _error("No store given: --store is empty (leave it out for a temporary one)")
    say = _Console(sys.stdout)
    try:
        return _run(host, port, args.store, every, say)
    except KeyboardInterrupt:  # Ctrl-C while starting
        say("deploysync demo stopped.")
        return 0


def _run(host: str, port: int, store_spec: str | None, every: float | None, say: _Console) -> int:
    with contextlib.ExitStack() as stack:
        try:
            server = _bind(host, port)
            stack.callback(server.server_close)
            workdir = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="deploysync-demo-"))
            )
            temporary = store_spec is None
            store_location = str(workdir / "store") if store_spec is None else str(store_spec)
            store = open_store(store_location)
            stack.callback(store.close)
            site = DemoSite(store, workdir / "src", say=say)
            site.deploy("start")
            app = make_app(site)
            stack.callback(app.close)
        except DeploySyncError as exc:
            return _error(str(exc))
        # deploysync.wsgi declares a narrower start_response than typeshed's (its exc_info
        # is never the (None, None, None) triple), which is fine at run time.
        server.set_app(cast("WSGIApplication", app))
        url = _url(server, host)
        terminal = _terminal_input()
        say(f"deploysync demo running at {url}")
        say(f"  store: {store_location}" + (" (temporary, removed on exit)" if temporary else ""))
        say("Open it in a browser and type in the notes, then deploy a new version:")
        ways = [f"open {url}{OPERATOR_PATH.lstrip('/')} in another window and press Deploy"]
        if terminal is not None:
            ways.insert(0, "press Enter here")
        if every is None:
            ways.append("start the demo with --every 20 to deploy every 20 seconds")
        else:
            ways.append(f"wait: a new version is deployed every {every:g} seconds")
        for index, way in enumerate(ways):
            say(f"  - {'or ' if index else ''}{way}{'.' if index == len(ways) - 1 else ','}")
        say("Press Ctrl-C to stop.")
        stop = threading.Event()
        workers: list[threading.Thread] = []
        if every is not None:
            workers.append(
                threading.Thread(
                    target=_every, args=(site, every, stop, say), name="demo-every", daemon=True
                )
            )
        if terminal is not None:
            workers.append(
                threading.Thread(
                    target=_keyboard,
                    args=(site, terminal, stop, say),
                    name="demo-keys",
                    daemon=True,
                )
            )
        for worker in workers:
            worker.start()
        with _interrupt_on_sigterm(), contextlib.suppress(KeyboardInterrupt):
            server.serve_forever(poll_interval=0.25)
        # Let a deploy in progress finish before its folder and the store go away.
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
        server.server_close()
        # On a terminal, Ctrl-C left "^C" on the current line.
        say(("\n" if terminal is not None else "") + "deploysync demo stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
