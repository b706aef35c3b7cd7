"""The Django middleware: serves the assets, answers stale navigations, injects the tags.

Put it high in ``MIDDLEWARE``, directly after ``SecurityMiddleware`` (as whitenoise's)::

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "deploysync.contrib.django.middleware.DeploySyncMiddleware",
        ...
    ]

It is both sync- and async-capable, so it runs natively under WSGI (``runserver``,
gunicorn) and ASGI (uvicorn, daphne) without a thread hop. Every decision is made by
:mod:`deploysync.core`; this module only converts between Django's request/response
objects and the core's plans.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, BinaryIO

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    StreamingHttpResponse,
)

from ...core import (
    NOT_FOUND,
    Conditional,
    FileRange,
    Plan,
    Snapshot,
    conditional_environ,
    decide,
    edit_response,
    environ_headers,
    environ_origin,
    finish_headers,
    make_request,
    request_conditional,
)
from ...inject import Injector
from ...serving import OpenedBody, open_files, tell_compressed
from .conf import Config, get_config, get_runtime, request_nonce, script_prefix

__all__ = ["DeploySyncMiddleware"]

CHUNK_SIZE = 64 * 1024
SyncGetResponse = Callable[[HttpRequest], HttpResponseBase]
AsyncGetResponse = Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class DeploySyncMiddleware:
    """deploysync for Django (see the module docstring)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: SyncGetResponse | AsyncGetResponse) -> None:
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)
        # Configuration errors surface at start-up, not at the first request.
        get_config()
        get_runtime()

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        snapshot, config, plan, conditional, navigation = self._decide(request)
        if plan is not None:
            return plan_response(plan, async_body=False, request=request)
        # The view renders in the request's state (see Runtime.request_state).
        state = (snapshot, script_prefix())
        var = get_runtime().request_state
        token = var.set(state)
        try:
            response = self.get_response(request)
        finally:
            var.reset(token)
        assert isinstance(response, HttpResponseBase)  # the sync chain returns responses
        return self._edit(request, response, state, config, conditional, navigation)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        snapshot, config, plan, conditional, navigation = self._decide(request, catch_up=False)
        if plan is not None and plan.status == 404:
            # A missing static file may wait for the store off the event loop.
            runtime = get_runtime()
            fresh, wait = runtime.catch_up_now(snapshot)
            if fresh is None and wait:
                fresh = await asyncio.to_thread(runtime.catch_up, snapshot)
            if fresh is not None:
                snapshot, config, plan, conditional, navigation = self._decide(
                    request, catch_up=False
                )
        if plan is not None:
            if all(isinstance(part, bytes) for part in plan.body):
                return plan_response(plan, async_body=True, request=request)
            # Files are opened (a Redis store's local copy fetched again) off the loop.
            return await asyncio.to_thread(plan_response, plan, async_body=True, request=request)
        state = (snapshot, script_prefix())
        var = get_runtime().request_state
        token = var.set(state)
        try:
            response = await self.get_response(request)
        finally:
            var.reset(token)
        return self._edit(request, response, state, config, conditional, navigation)

    # -- request ---------------------------------------------------------------------------
    def _decide(
        self, request: HttpRequest, *, catch_up: bool = True
    ) -> tuple[Snapshot, Config, Plan | None, Conditional | None, bytes | None]:
        """The request's snapshot, the configuration, the middleware's own answer (or
        ``None``: the view's), how validators reach the view, and the origin of a
        navigation fetch (for :func:`~deploysync.core.edit_response`). *catch_up*: a
        static file the snapshot lacks reads the store again (Runtime.catch_up)."""
        config = get_config()
        runtime = get_runtime()
        # One snapshot per request: the decision, the headers and the injected tags all
        # name the same deployment even if another is activated meanwhile.
        snapshot = runtime.current()
        headers = environ_headers(request.META)
        core_request = make_request(
            request.method or "GET", request.path_info, headers, raw_path(request)
        )
        plan = decide(core_request, snapshot, runtime.static_path)
        if catch_up and plan is not None and plan.status == 404:
            fresh = runtime.catch_up(snapshot)
            if fresh is not None:
                snapshot = fresh
                plan = decide(core_request, snapshot, runtime.static_path)
        conditional = None
        if plan is None and (
            core_request.if_none_match or core_request.if_modified_since or core_request.if_match
        ):
            # The views (and ConditionalGetMiddleware) compare the page's own tag.
            conditional = request_conditional(core_request, snapshot.current_id)
            if conditional is not None:
                conditional_environ(request.META, conditional)
        navigation = None
        if plan is None and core_request.navigate:
            # Scheme and host as Django reads them (SECURE_PROXY_SSL_HEADER,
            # USE_X_FORWARDED_HOST): as it writes the site's own absolute URLs.
            try:
                host = request.get_host()
            except DisallowedHost:
                host = None
            if host is not None:
                meta = {**request.META, "wsgi.url_scheme": request.scheme}
                navigation = environ_origin(meta, host)
        return snapshot, config, plan, conditional, navigation

    # -- response --------------------------------------------------------------------------
    def _edit(
        self,
        request: HttpRequest,
        response: HttpResponseBase,
        state: tuple[Snapshot, str],
        config: Config,
        conditional: Conditional | None,
        navigation: bytes | None = None,
    ) -> HttpResponseBase:
        """*response* edited as the core says; *state*: the request's snapshot and the
        URL prefix of the site."""
        snapshot, prefix = state
        current = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in response.headers.items()
        ]
        edit = edit_response(
            request.method or "GET",
            response.status_code,
            current,
            snapshot.current_id,
            snapshot.id_header,
            conditional,
            navigation,
        )
        if config.inject:  # (templates that place the tags lose nothing to compression)
            tell_compressed(edit)
        if response.streaming and not isinstance(response, FileResponse):
            # A streamed template renders as it is iterated, after the view returned: in
            # the request's state too, so its asset URLs name the announced deployment.
            _in_state(response, state)
        if edit is None:
            return response
        snippet = b""
        if edit.inject and config.inject:
            nonce = request_nonce(request, config)
            snippet = get_runtime().snippet(snapshot, prefix, nonce)
        if not snippet:
            set_headers(response, finish_headers(edit, 0))
            return response
        if response.streaming:
            # The added length is known only once the injector decided: a streamed body
            # goes without Content-Length (chunked).
            edit.content_length = None
            set_headers(response, finish_headers(edit, 0))
            streaming: Any = response
            if streaming.is_async:
                streaming.streaming_content = inject_async(streaming.streaming_content, snippet)
            else:
                streaming.streaming_content = inject_sync(streaming.streaming_content, snippet)
            return response
        assert isinstance(response, HttpResponse)
        injector = Injector(snippet)
        body = injector.feed(response.content) + injector.finish()
        response.content = body
        added = len(snippet) if injector.injected else 0
        if edit.content_length is not None:
            edit.content_length = len(body) - added  # exact, whatever the app claimed
        set_headers(response, finish_headers(edit, added))
        return response


def raw_path(request: HttpRequest) -> bytes | None:
    """The still-encoded path, when the server tells it (ASGI ``raw_path``, gunicorn's
    ``RAW_URI``, ``REQUEST_URI``); the core uses it only to refuse encoded separators."""
    scope = getattr(request, "scope", None)
    if isinstance(scope, dict) and isinstance(scope.get("raw_path"), bytes):
        raw: bytes = scope["raw_path"]
        return raw
    uri = request.META.get("RAW_URI") or request.META.get("REQUEST_URI")
    if isinstance(uri, str):
        return uri.split("?", 1)[0].encode("latin-1", "replace")
    return None


def set_headers(response: HttpResponseBase, headers: list[tuple[bytes, bytes]]) -> None:
    """Replace the response's headers with *headers* (cookies are kept apart by Django)."""
    for name in list(response.headers):
        del response.headers[name]
    for name, value in headers:
        response.headers[name.decode("latin-1")] = value.decode("latin-1")


def plan_response(
    plan: Plan, *, async_body: bool, request: HttpRequest | None = None
) -> HttpResponseBase:
    """A Django response carrying the core's *plan* exactly (status, headers, body).

    The answer is final: a compressing middleware above (GZipMiddleware, where HTML
    injection needs it) must not encode it again. Django's compresses a 206 part, an
    image, a file already smaller than its gzip variant, and weakens the ETag; so the
    *request*'s ``Accept-Encoding``, which the plan has used already, is hidden from it.
    """
    if request is not None:
        request.META.pop("HTTP_ACCEPT_ENCODING", None)
    parts = plan.body
    files: dict[str, BinaryIO] = {}
    if not all(isinstance(part, bytes) for part in parts):
        opened = open_files(parts)
        if opened is None:  # a prune removed the blob after this snapshot was built
            plan = NOT_FOUND
            parts = plan.body
        else:
            files = opened
    response: HttpResponseBase
    if all(isinstance(part, bytes) for part in parts):
        response = HttpResponse(b"".join(part for part in parts if isinstance(part, bytes)))
    elif not async_body and len(parts) == 1 and isinstance(parts[0], FileRange) and parts[0].whole:
        # A whole file: FileResponse lets the WSGI server use wsgi.file_wrapper/sendfile.
        response = FileResponse(files[parts[0].path])  # closed by Django
        response.block_size = CHUNK_SIZE
    elif async_body:
        response = StreamingHttpResponse(_AsyncParts(OpenedBody(parts, files, CHUNK_SIZE)))
    else:
        response = StreamingHttpResponse(OpenedBody(parts, files, CHUNK_SIZE))
    response.status_code = plan.status
    set_headers(response, list(plan.headers))
    if plan.status == 409:
        # The protocol's answer to a stale navigation, not an error: django.request
        # would log every one as a warning ("Conflict: /path").
        response._has_been_logged = True
    return response


class _AsyncParts:
    """An :class:`OpenedBody` read off the event loop."""

    def __init__(self, body: OpenedBody) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = iter(self.body)
        while True:
            data = await asyncio.to_thread(next, chunks, None)
            if data is None:
                return
            yield data

    def close(self) -> None:
        self.body.close()


def _in_state(response: Any, state: tuple[Snapshot, str]) -> None:
    """Make *response*'s streamed chunks in the request *state* (see
    :attr:`~deploysync.serving.Runtime.request_state`), each set and reset around the
    step that makes it."""
    var = get_runtime().request_state
    if response.is_async:
        chunks: AsyncIterator[bytes] = aiter(response.streaming_content)

        async def made_async() -> AsyncIterator[bytes]:
            while True:
                token = var.set(state)
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                finally:
                    var.reset(token)
                yield chunk

        response.streaming_content = made_async()
    else:
        items: Iterator[bytes] = iter(response.streaming_content)

        def made() -> Iterator[bytes]:
            while True:
                token = var.set(state)
                try:
                    chunk = next(items, None)
                finally:
                    var.reset(token)
                if chunk is None:
                    return
                yield chunk

        response.streaming_content = made()


def inject_sync(chunks: Iterator[bytes], snippet: bytes) -> Iterator[bytes]:
    injector = Injector(snippet)
    for chunk in chunks:
        out = injector.feed(bytes(chunk))
        if out:
            yield out
    tail = injector.finish()
    if tail:
        yield tail


async def inject_async(chunks: AsyncIterator[bytes], snippet: bytes) -> AsyncIterator[bytes]:
    injector = Injector(snippet)
    async for chunk in chunks:
        out = injector.feed(bytes(chunk))
        if out:
            yield out
    tail = injector.finish()
    if tail:
        yield tail
