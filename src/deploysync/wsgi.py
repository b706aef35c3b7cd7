"""WSGI middleware (PEP 3333): the same options and decisions as :mod:`deploysync.asgi`.

::

    from deploysync.wsgi import DeploySync
    application = DeploySync(application, store="/srv/deploysync")

Every decision comes from :mod:`deploysync.core`; this module converts between the
``environ``/``start_response`` world and byte-pair header lists. Large files go out
through ``wsgi.file_wrapper`` when the server offers it. HTML injection streams over the
app's iterable (whose ``close()`` is always called). The CSP ``nonce`` option is a
``callable(environ) -> str`` or an environ key (``"csp_nonce"``). A response carrying
``X-Deploysync: off`` is left alone (the header is removed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol, cast

from . import core
from .inject import Injector
from .serving import (
    Middleware,
    OpenedBody,
    mount_prefix,
    open_files,
    resolve_nonce,
    tell_compressed,
)

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Write = Callable[[bytes], object]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Write: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

READ_CHUNK = 256 * 1024
STATUS_LINES = {s.value: f"{s.value} {s.phrase}" for s in HTTPStatus}


def _status_line(code: int) -> str:
    return STATUS_LINES.get(code) or f"{code} Unknown"


def _str_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]


class DeploySync(Middleware[WSGIApp]):
    """Wrap a WSGI *app* with deployment serving and synchronization."""

    def head_tags(self, environ: Environ | None = None) -> str:
        """The ``<head>`` tags for a template that places them itself."""
        if environ is None:
            return self.runtime.head_tags()
        prefix = self.runtime.prefix(environ.get("SCRIPT_NAME", ""), wsgi=True)
        return self.runtime.head_tags(prefix, resolve_nonce(self.nonce, environ))

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        snapshot = self.runtime.current()
        # PEP 3333: PATH_INFO holds the raw bytes decoded as latin-1. Bytes that are not
        # UTF-8 decode as the build names such files (os.fsdecode): anything else under
        # the prefix is a 404 of ours.
        path = environ.get("PATH_INFO") or "/"
        try:
            path = path.encode("latin-1").decode("utf-8", "surrogateescape")
        except UnicodeError:  # not latin-1: not from a server following PEP 3333
            path = "\0"
        raw_uri = environ.get("RAW_URI") or environ.get("REQUEST_URI")
        raw = raw_uri.split("?", 1)[0].encode("latin-1", "replace") if raw_uri else None
        method = environ.get("REQUEST_METHOD", "GET")
        request = core.make_request(method, path, core.environ_headers(environ), raw)
        plan = core.decide(request, snapshot, self._static_path)
        if plan is not None and plan.status == 404:
            fresh = self.runtime.catch_up(snapshot)
            if fresh is not None:
                snapshot = fresh
                plan = core.decide(request, snapshot, self._static_path)
        if plan is not None:
            return _respond(plan, method, environ, start_response)
        conditional = None
        if (
            request.if_none_match is not None
            or request.if_modified_since
            or request.if_match is not None
        ):
            conditional = core.request_conditional(request, snapshot.current_id)
            if conditional is not None:
                core.conditional_environ(environ, conditional)
        # Read now: a dispatcher further in changes SCRIPT_NAME in the environ it shares.
        script_name = environ.get("SCRIPT_NAME")
        prefix = mount_prefix(script_name, wsgi=True) if script_name else ""
        response = _Response(self, environ, start_response, snapshot, conditional, prefix)
        if request.navigate:
            response.navigation = core.environ_origin(environ)
        token = self._request_state.set((snapshot, prefix))
        try:
            result = self.app(environ, response.start_response)
        finally:
            self._request_state.reset(token)
        if response.passthrough:
            return result  # untouched: a file_wrapper the app returned stays one
        return _Body(response, result, (snapshot, prefix))


def _respond(
    plan: core.Plan, method: str, environ: Environ, start_response: StartResponse
) -> Iterable[bytes]:
    body = plan.body
    if all(isinstance(part, bytes) for part in body):  # in memory: nothing to open
        start_response(_status_line(plan.status), _str_headers(plan.headers))
        return [] if method == "HEAD" else cast("tuple[bytes, ...]", body)
    files = open_files(body)
    if files is None:  # a prune removed the blob after this snapshot was built
        return _respond(core.NOT_FOUND, method, environ, start_response)
    parts = OpenedBody(body, files, READ_CHUNK)
    try:
        start_response(_status_line(plan.status), _str_headers(plan.headers))
    except BaseException:
        parts.close()
        raise
    if method == "HEAD":
        parts.close()
        return []
    (part, *more) = body
    wrapper = environ.get("wsgi.file_wrapper")
    if not more and isinstance(part, core.FileRange) and part.whole and wrapper is not None:
        # The server may turn this into sendfile (PEP 3333 §optional-platform-specific).
        return wrapper(files[part.path], READ_CHUNK)  # type: ignore[no-any-return]
    return parts


class _Response:
    """Per-request state: the app's start_response, held until the body decides."""

    __slots__ = (
        "conditional",
        "edit",
        "environ",
        "held",
        "injector",
        "mw",
        "navigation",
        "passthrough",
        "prefix",
        "sent",
        "snapshot",
        "status",
        "upstream",
        "write",
    )

    def __init__(
        self,
        mw: DeploySync,
        environ: Environ,
        upstream: StartResponse,
        snapshot: core.Snapshot,
        conditional: core.Conditional | None = None,
        prefix: str = "",
    ) -> None:
        self.mw = mw
        self.conditional = conditional
        self.prefix = prefix
        self.environ = environ
        self.upstream = upstream
        self.snapshot = snapshot
        self.passthrough = False
        self.held = False
        self.sent = False  # the server's start_response was called
        self.status = ""
        self.edit: core.ResponseEdit | None = None
        self.injector: Injector | None = None
        self.write: Write | None = None
        self.navigation: bytes | None = None  # the origin of a navigation fetch

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Write:
        if exc_info is not None and self.sent:
            # Headers already went out: the server re-raises (PEP 3333). A first call
            # with exc_info (an error page made before any start_response) is a response
            # like any other.
            return self.upstream(status, headers, exc_info)
        try:
            code = int(status.split(None, 1)[0])
        except (ValueError, IndexError):
            code = 0
        self.held = False
        self.injector = None
        try:
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        except UnicodeEncodeError:
            # Not latin-1 as PEP 3333 wants: the server says what it makes of it.
            return self._pass(status, headers, exc_info)
        snapshot = self.snapshot
        method = self.environ.get("REQUEST_METHOD", "GET")
        edit = core.edit_response(
            method,
            code,
            raw,
            snapshot.current_id,
            snapshot.id_header,
            self.conditional,
            self.navigation,
        )
        if edit is None or not edit.inject:
            tell_compressed(edit)
            out = headers if edit is None else _str_headers(edit.headers)
            return self._pass(status, out, exc_info)
        nonce = resolve_nonce(self.mw.nonce, self.environ) if self.mw.nonce is not None else None
        snippet = self.mw.runtime.snippet(snapshot, self.prefix, nonce)
        self.status = status
        self.edit = edit
        self.injector = Injector(snippet)
        self.held = True
        return self._write

    def _pass(self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None) -> Write:
        """Send *headers* now; the body passes through as the app makes it."""
        self.passthrough = self.sent = True
        self.write = (
            self.upstream(status, headers, exc_info) if exc_info else self.upstream(status, headers)
        )
        return self.write

    def release(self, added: int) -> None:
        """Call the server's start_response with the final headers."""
        if not self.held or self.edit is None:
            return
        self.held = False
        self.sent = True
        headers = _str_headers(core.finish_headers(self.edit, added))
        self.write = self.upstream(self.status, headers)

    def _write(self, data: bytes) -> None:
        # The legacy write() callable (PEP 3333): no injection for such apps; what is
        # held goes out unchanged first.
        if self.held and self.injector is not None:
            pending = self.injector.abandon()
            self.release(0)
            self.passthrough = True
            if pending and self.write is not None:
                self.write(pending)
        if self.write is None:
            # The server offers no write() (granian): the app fails as it would without
            # the middleware, rather than have its body dropped under a 200.
            raise TypeError("this WSGI server provides no write() callable")
        self.write(data)


class _Body:
    """The app's iterable with the injection applied; ``close()`` reaches the app's.

    Made before the middleware returns, it reads the app's body until the headers are
    final: PEP 3333 lets start_response wait for the first iteration, but some servers
    (granian) read the status and headers as soon as the app returns. The lookahead is
    bounded (64 KiB), so at most that much is read ahead.
    """

    __slots__ = ("ahead", "iterator", "response", "result", "state")

    def __init__(
        self, response: _Response, result: Iterable[bytes], state: tuple[core.Snapshot, str]
    ) -> None:
        self.response = response
        self.result = result
        self.state = state
        self.ahead: list[bytes] = []
        self.iterator: Iterator[bytes] | None = iter(result)
        try:
            while not response.sent:
                chunk = self._next()
                if chunk is None:
                    self.iterator = None
                    break
                self._take(chunk)
            injector = response.injector
            if self.iterator is None and response.held and injector is not None:
                out = injector.finish()
                response.release(injector.added)
                if out:
                    self.ahead.append(out)
        except BaseException:
            self.close()
            raise

    def _next(self) -> bytes | None:
        """The app's next chunk (``None`` at the end), made in the request's context: a
        streamed template renders as it is iterated, after the app returned."""
        assert self.iterator is not None
        token = self.response.mw._request_state.set(self.state)
        try:
            return next(self.iterator, None)
        finally:
            self.response.mw._request_state.reset(token)

    def _take(self, chunk: bytes) -> None:
        response = self.response
        injector = response.injector
        if not response.held or injector is None:
            self.ahead.append(chunk)  # (a chunk before start_response: the server says)
            return
        # While undecided nothing goes out: yielding before start_response is final is
        # not allowed by every server.
        out = injector.feed(chunk)
        if injector.decided:
            response.release(injector.added)
            self.ahead.append(out)

    def __iter__(self) -> Iterator[bytes]:
        ahead, self.ahead = self.ahead, []
        yield from ahead
        while self.iterator is not None and (chunk := self._next()) is not None:
            yield chunk

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()
