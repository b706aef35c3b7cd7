"""ASGI middleware: serves deployments, announces the current one, injects the client.

Pure ASGI 3 (no framework dependency)::

    from deploysync.asgi import DeploySync
    app = DeploySync(app, store="/srv/deploysync")

Only moves bytes: every decision comes from :mod:`deploysync.core`. Scopes other than
``http`` (``websocket``, ``lifespan``) pass through untouched.

Options (the same in :mod:`deploysync.wsgi`):

* ``store``: a directory path, a ``redis://`` URL or a :class:`~deploysync.store.Store`.
* ``static_url``: the prefix assets are served under; it must be the one the current
  deployment was built for (a different one raises at construction).
* ``routing`` (``server``, ``client``, ``external``) and ``check_interval`` (seconds, 0:
  none; the page is still checked when its tab becomes visible) are handed to the
  browser client through the injected tag.
* ``deployment`` (or ``DEPLOYSYNC_DEPLOYMENT``): pin the id this server renders and
  announces; assets of every retained deployment stay servable.
* ``strict``: :meth:`DeploySync.url` raises on an unknown path instead of returning the
  unhashed URL.
* ``nonce``: a CSP nonce for the injected script: a ``callable(scope) -> str`` or a key
  looked up in the scope, then in ``scope["state"]`` (``"csp_nonce"``).
* ``poll_interval``: seconds between store change probes (a switch is seen within about
  twice this).
* ``cache_dir``: the local cache folder of a Redis store given by its URL (default
  ``$DEPLOYSYNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/deploysync``, else
  ``~/.cache/deploysync``).

A response can opt out of everything the middleware does to it by carrying the header
``X-Deploysync: off``; the header is removed before the response is sent. Before the
first deployment exists, pages pass through without injection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, BinaryIO, TypeVar

from . import core
from .inject import Injector, inject_whole
from .serving import Middleware, mount_prefix, open_files, resolve_nonce, tell_compressed

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_CHUNK = 256 * 1024
PATHSEND = "http.response.pathsend"
ZEROCOPYSEND = "http.response.zerocopysend"


class DeploySync(Middleware[ASGIApp]):
    """Wrap an ASGI *app* with deployment serving and synchronization."""

    def head_tags(self, scope: Scope | None = None) -> str:
        """The ``<head>`` tags for a template that places them itself."""
        if scope is None:
            return self.runtime.head_tags()
        prefix = self.runtime.prefix(scope.get("root_path", ""))
        return self.runtime.head_tags(prefix, resolve_nonce(self.nonce, scope))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        snapshot = runtime.snapshot if runtime._watching else runtime.current()
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        # ASGI servers differ on whether "path" includes "root_path"; strip it when it does.
        if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
            path = path[len(root) :] or "/"
        raw = scope.get("raw_path")
        request = core.make_request(scope["method"], path, scope["headers"], raw)
        plan = core.decide(request, snapshot, self._static_path)
        if plan is not None and plan.status == 404:
            fresh, wait = runtime.catch_up_now(snapshot)
            if fresh is None and wait:  # the store may be read: off the event loop
                fresh = await _off_loop(runtime.catch_up, snapshot)
            if fresh is not None:
                snapshot = fresh
                plan = core.decide(request, snapshot, self._static_path)
        if plan is not None:
            await send_plan(plan, scope, send)
            return
        conditional = None
        if (
            request.if_none_match is not None
            or request.if_modified_since
            or request.if_match is not None
        ):
            conditional = core.request_conditional(request, snapshot.current_id)
            if conditional is not None:
                headers = core.conditional_headers(scope["headers"], conditional)
                scope = {**scope, "headers": headers}
        # Read now: a Mount further in changes root_path in the scope it shares.
        prefix = mount_prefix(root) if root else ""
        responder = _Responder(self, scope, send, snapshot, conditional, prefix)
        if request.navigate:
            host, router = None, False
            for name, value in scope["headers"]:
                if name == b"host":
                    host = host or value
                elif name == b"x-deploysync-router":
                    router = True
            responder.navigation = core.own_router_origin(
                scope.get("scheme", "http"), host, scope.get("server"), router
            )
        token = self._request_state.set((snapshot, prefix))
        try:
            await self.app(scope, receive, responder.send)
        finally:
            self._request_state.reset(token)
        await responder.close()


class _Responder:
    """Per-request state: holds ``http.response.start`` until the body decides.

    Written flat (few calls per response): it runs for every response of the app.
    """

    __slots__ = (
        "conditional",
        "edit",
        "injector",
        "mw",
        "navigation",
        "passthrough",
        "prefix",
        "scope",
        "snapshot",
        "start",
        "upstream",
    )

    def __init__(
        self,
        mw: DeploySync,
        scope: Scope,
        send: Send,
        snapshot: core.Snapshot,
        conditional: core.Conditional | None = None,
        prefix: str = "",
    ) -> None:
        self.mw = mw
        self.prefix = prefix
        self.conditional = conditional
        self.scope = scope
        self.upstream = send
        self.snapshot = snapshot
        self.passthrough = False
        self.edit: core.ResponseEdit | None = None
        self.injector: Injector | None = None
        self.start: Message | None = None
        self.navigation: bytes | None = None  # the origin of a navigation fetch

    async def send(self, message: Message) -> None:
        if self.passthrough:
            await self.upstream(message)
            return
        kind = message["type"]
        if kind == "http.response.start":
            snapshot = self.snapshot
            edit = core.edit_response(
                self.scope["method"],
                message["status"],
                message.get("headers") or (),
                snapshot.current_id,
                snapshot.id_header,
                self.conditional,
                self.navigation,
            )
            if edit is None:
                self.passthrough = True
                await self.upstream(message)
            elif not edit.inject:
                tell_compressed(edit)
                self.passthrough = True
                await self.upstream({**message, "headers": edit.headers})
            else:
                self.edit = edit
                self.start = message
            return
        start = self.start
        if start is None:
            # Released already (or a body with no start: not ours to fix).
            await self.upstream(message)
            return
        injector = self.injector
        if kind == PATHSEND and injector is None:
            # The server would send the file itself (granian offers this): read it, so
            # the page gets its tags like any other.
            message = {"type": "http.response.body", "body": await _read_file(message["path"])}
            kind = "http.response.body"
        if kind == "http.response.body":
            more = message.get("more_body", False)
            if injector is None:
                snippet = self._snippet()
                if not more:
                    # The whole body in one message: decide in one go.
                    out, injected = inject_whole(message.get("body", b""), snippet)
                    await self._release(start, len(snippet) if injected else 0)
                    await self.upstream({"type": "http.response.body", "body": out})
                    return
                injector = self.injector = Injector(snippet)
            out = injector.feed(message.get("body", b""))
            if not more:
                out += injector.finish()
            if injector.decided:
                await self._release(start, injector.added)
                await self.upstream({"type": "http.response.body", "body": out, "more_body": more})
            return
        # Anything else (pathsend, trailers, ...) while the start is held: stop
        # injecting, send what is held unchanged and forward the message.
        pending = injector.abandon() if injector is not None else b""
        await self._release(start, 0)
        if pending:
            await self.upstream({"type": "http.response.body", "body": pending, "more_body": True})
        self.passthrough = True
        await self.upstream(message)

    def _snippet(self) -> bytes:
        mw = self.mw
        scope = self.scope
        nonce = resolve_nonce(mw.nonce, scope) if mw.nonce is not None else None
        return mw.runtime.snippet(self.snapshot, self.prefix, nonce)

    async def _release(self, start: Message, added: int) -> None:
        """Send the held start with the final headers (Content-Length exact)."""
        self.start = None
        edit = self.edit
        assert edit is not None  # set together with start
        await self.upstream({**start, "headers": core.finish_headers(edit, added)})

    async def close(self) -> None:
        """The app returned: flush a start still held (an app that sent no final body)."""
        start = self.start
        if start is None:
            return
        if self.injector is None:
            self.injector = Injector(self._snippet())
        out = self.injector.finish()
        await self._release(start, self.injector.added)
        await self.upstream({"type": "http.response.body", "body": out, "more_body": False})


async def send_plan(plan: core.Plan, scope: Scope, send: Send) -> None:
    """Send a core plan, using the server's file extensions when it offers them."""
    body = plan.body
    files: dict[str, BinaryIO] = {}
    if not all(isinstance(part, bytes) for part in body):
        opened = await _open_off_loop(body)
        if opened is None:  # a prune removed the blob after this snapshot was built
            plan = core.NOT_FOUND
        else:
            files = opened
    try:
        await _send_body(plan, files, scope, send)
    finally:
        for fh in files.values():
            fh.close()


async def _send_body(plan: core.Plan, files: dict[str, BinaryIO], scope: Scope, send: Send) -> None:
    body = plan.body
    # A list, not the plan's tuple: middleware outside this one may edit it in place.
    start = {"type": "http.response.start", "status": plan.status, "headers": list(plan.headers)}
    await send(start)
    if not body or scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    if len(body) == 1 and isinstance(body[0], bytes):
        await send({"type": "http.response.body", "body": body[0]})
        return
    extensions = scope.get("extensions") or {}
    last = len(body) - 1
    for index, part in enumerate(body):
        more = index < last
        if isinstance(part, bytes):
            await send({"type": "http.response.body", "body": part, "more_body": more})
        elif part.whole and not more and index == 0 and PATHSEND in extensions:
            # ASGI pathsend extension: the server sends the file itself (sendfile).
            await send({"type": PATHSEND, "path": part.path})
        elif ZEROCOPYSEND in extensions:
            message = {
                "type": ZEROCOPYSEND,
                "file": files[part.path],
                "offset": part.offset,
                "count": part.length,
                "more_body": more,
            }
            await send(message)
        else:
            await _send_chunks(part, files[part.path], more, send)


_T = TypeVar("_T")


async def _off_loop(work: Callable[..., _T], *args: Any) -> _T:
    """``work(*args)`` in asyncio's thread pool; inline under another event loop (trio),
    where it is local file work."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return work(*args)
    return await loop.run_in_executor(None, work, *args)


async def _open_off_loop(body: tuple[core.BodyPart, ...]) -> dict[str, BinaryIO] | None:
    """:func:`open_files` in asyncio's thread pool; what it opened for a request
    cancelled meanwhile (a client gone) is closed when it is done."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return open_files(body)
    future = loop.run_in_executor(None, open_files, body)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_opened)
        raise


def _close_opened(future: asyncio.Future[dict[str, BinaryIO] | None]) -> None:
    if not future.cancelled() and future.exception() is None:
        for fh in (future.result() or {}).values():
            fh.close()


async def _read_file(path: str) -> bytes:
    return await _off_loop(_read_bytes, path)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


async def _send_chunks(part: core.FileRange, fh: BinaryIO, more: bool, send: Send) -> None:
    fh.seek(part.offset)  # no I/O: the reads below wait on the disk
    left = part.length
    while left > 0:
        size = min(READ_CHUNK, left)
        chunk = await _off_loop(fh.read, size)
        if not chunk:
            raise OSError(f"{part.path} is shorter than expected")
        left -= len(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": more or left > 0})
