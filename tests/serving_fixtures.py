"""Helpers for the serving tests: deployments made by hand, and in-process drivers that
run the same request through the ASGI and the WSGI middleware."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import brotli

from deploysync.asgi import DeploySync as AsgiDeploySync
from deploysync.manifest import Asset, Deployment, derive_id
from deploysync.store import Store
from deploysync.wsgi import DeploySync as WsgiDeploySync


def hashed(path: str, digest: str) -> str:
    folder, _, base = path.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    name = f"{stem}.{digest[:12]}" + (f".{ext}" if ext else "")
    return f"{folder}/{name}" if folder else name


CONTENT_TYPES = {
    "css": "text/css; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "png": "image/png",
    "txt": "text/plain; charset=utf-8",
    "bin": "application/octet-stream",
}


def publish(
    store: Store,
    files: dict[str, bytes],
    *,
    static_url: str = "/static/",
    compress: bool = True,
    activate: bool = True,
    tag: str = "",
) -> Deployment:
    """A deployment of *files* published (and activated) in *store*, without build.py.

    ``compress`` stores gzip and br variants, so negotiation can be tested.
    """
    assets = []
    for path, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        variants = (
            {"gzip": gzip.compress(data, mtime=0), "br": brotli.compress(data, quality=4)}
            if compress
            else {}
        )
        store.ensure_writable()
        with store.lock():
            store.put_blob(digest, data, variants)
        ext = path.rpartition(".")[2]
        assets.append(
            Asset(
                path=path,
                name=hashed(path, digest),
                digest=digest,
                size=len(data),
                content_type=CONTENT_TYPES.get(ext, "application/octet-stream"),
                integrity="sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode(),
                encodings=MappingProxyType({k: len(v) for k, v in variants.items()}),
            )
        )
    extra = {"tag": tag} if tag else None
    deployment = Deployment(
        id=derive_id(static_url, assets, extra),
        static_url=static_url,
        assets=MappingProxyType({a.path: a for a in assets}),
        created=time.time(),
        extra=MappingProxyType(dict(extra or {})),
    )
    store.publish(deployment)
    if activate:
        store.activate(deployment.id)
    return deployment


# -- the app behind the middleware --------------------------------------------------------


@dataclass
class AppSpec:
    """What the wrapped app answers; the same spec drives an ASGI and a WSGI app."""

    status: int = 200
    headers: list[tuple[str, str]] = field(
        default_factory=lambda: [("Content-Type", "text/html; charset=utf-8")]
    )
    chunks: Sequence[bytes] = (
        b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>",
    )
    content_length: bool = True
    calls: int = 0
    closed: int = 0

    def all_headers(self) -> list[tuple[str, str]]:
        headers = list(self.headers)
        if self.content_length:
            headers.append(("Content-Length", str(sum(len(c) for c in self.chunks))))
        return headers


def asgi_app(spec: AppSpec) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        spec.calls += 1
        await send(
            {
                "type": "http.response.start",
                "status": spec.status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in spec.all_headers()],
            }
        )
        chunks = list(spec.chunks) or [b""]
        for index, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": index < len(chunks) - 1}
            )
        spec.closed += 1

    return app


class _Iterable:
    def __init__(self, spec: AppSpec) -> None:
        self.spec = spec

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.spec.chunks)

    def close(self) -> None:
        self.spec.closed += 1


def wsgi_app(spec: AppSpec) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        spec.calls += 1
        phrase = {200: "OK", 204: "No Content", 304: "Not Modified", 404: "Not Found"}
        start_response(f"{spec.status} {phrase.get(spec.status, 'X')}", spec.all_headers())
        return _Iterable(spec)

    return app


# -- drivers -----------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        found = [v for k, v in self.headers if k.lower() == name.lower()]
        return found[0] if found else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


class Client:
    """Runs requests through one middleware in-process."""

    kind = ""

    def __init__(self, middleware: Any, spec: AppSpec) -> None:
        self.mw = middleware
        self.spec = spec

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        raw_path: bytes | None = None,
        root_path: str = "",
        extensions: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        on_body: Callable[[], object] | None = None,
    ) -> Response:
        raise NotImplementedError

    def get(self, path: str, headers: Sequence[tuple[str, str]] = (), **kw: Any) -> Response:
        return self.request("GET", path, headers, **kw)

    def close(self) -> None:
        self.mw.close()


class AsgiClient(Client):
    kind = "asgi"

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        raw_path: bytes | None = None,
        root_path: str = "",
        extensions: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        on_body: Callable[[], object] | None = None,
    ) -> Response:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": root_path + path,
            "raw_path": raw_path if raw_path is not None else (root_path + path).encode(),
            "query_string": b"",
            "root_path": root_path,
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "extensions": extensions or {},
            **(extra or {}),
        }
        messages: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.zerocopysend":
                # Like a server: the file is sent before send() returns.
                fh = message["file"]
                fh.seek(message.get("offset") or 0)
                message = {**message, "data": fh.read(message["count"])}
            messages.append(message)
            if on_body is not None and message["type"] != "http.response.start":
                on_body()

        asyncio.run(self.mw(scope, receive, send))
        start = messages[0]
        assert start["type"] == "http.response.start", messages
        body = b""
        for message in messages[1:]:
            if message["type"] == "http.response.body":
                body += message.get("body", b"")
            elif message["type"] == "http.response.pathsend":
                with open(message["path"], "rb") as fh:
                    body += fh.read()
            elif message["type"] == "http.response.zerocopysend":
                body += message["data"]
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
        return Response(start["status"], headers, body, messages)


class WsgiClient(Client):
    kind = "wsgi"

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        raw_path: bytes | None = None,
        root_path: str = "",
        extensions: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        on_body: Callable[[], object] | None = None,
    ) -> Response:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": root_path,
            "PATH_INFO": path.encode("utf-8").decode("latin-1"),
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": io.StringIO(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            **(extra or {}),
        }
        if raw_path is not None:
            environ["RAW_URI"] = (root_path.encode() + raw_path).decode("latin-1")
        for name, value in headers:
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = environ[key] + ", " + value if key in environ else value
        captured: dict[str, Any] = {}

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            captured["status"] = status
            captured["headers"] = headers
            return lambda data: None

        result = self.mw(environ, start_response)
        try:
            body = b""
            for chunk in result:
                body += chunk
                if on_body is not None:
                    on_body()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Response(int(captured["status"][:3]), list(captured["headers"]), body)


def make_client(kind: str, spec: AppSpec, **options: Any) -> Client:
    if kind == "asgi":
        return AsgiClient(AsgiDeploySync(asgi_app(spec), **options), spec)
    return WsgiClient(WsgiDeploySync(wsgi_app(spec), **options), spec)
