"""deploysync for Starlette and FastAPI.

The middleware, in Starlette's declarative form::

    from starlette.middleware import Middleware
    from deploysync.contrib.starlette import DeploySync, install_templates

    app = Starlette(routes=..., middleware=[Middleware(DeploySync, store=".deploysync")])
    templates = Jinja2Templates("templates")
    install_templates(templates)

or, with FastAPI, ``app.add_middleware(DeploySync, store=".deploysync")``.

:class:`DeploySync` is :class:`deploysync.asgi.DeploySync`, which also makes itself known
to each request (``request.scope["deploysync"]``): Starlette builds its middleware
instances itself, so templates find the middleware through the request they render.
:func:`install_templates` registers the Jinja globals ``asset_url(path)``,
``vite_tags(entry)`` and ``deploysync_head()``, and makes Starlette's
``url_for('static', path=...)`` give the hashed URL of an asset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup

from .. import asgi
from ..manifest import DeploySyncError, url_path
from ..serving import Runtime, resolve_nonce
from ..vite import vite_tags as render_vite_tags

__all__ = ["SCOPE_KEY", "DeploySync", "install_templates", "middleware_of"]

#: Where :class:`DeploySync` puts itself in the request scope.
SCOPE_KEY = "deploysync"


class DeploySync(asgi.DeploySync):
    """The ASGI middleware, discoverable from the request (``scope["deploysync"]``).

    Starlette builds its middleware when the app first runs, inside the lifespan, where
    uvicorn's default (``--lifespan auto``) would take a configuration error for "lifespan
    unsupported" and serve anyway, every request failing. So such an error fails the
    start-up instead (``lifespan.startup.failed``, with the one-line reason), and any
    request that reaches a server regardless raises it.
    """

    def __init__(self, app: asgi.ASGIApp, **options: Any) -> None:
        self._error: DeploySyncError | None = None
        try:
            super().__init__(app, **options)
        except DeploySyncError as exc:
            self.app = app
            self._error = exc
        except TypeError as exc:  # an unknown option (a typo)
            self.app = app
            self._error = DeploySyncError(f"DeploySync: {exc}")

    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if self._error is not None:
            await _refuse(self._error, scope, receive, send)
            return
        if scope["type"] in ("http", "websocket"):  # (templates rendered in a handler)
            scope[SCOPE_KEY] = self
        await super().__call__(scope, receive, send)


async def _refuse(
    error: DeploySyncError, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send
) -> None:
    if scope["type"] != "lifespan":
        raise error
    message = await receive()
    if message["type"] == "lifespan.startup":
        await send({"type": "lifespan.startup.failed", "message": str(error)})


Source = asgi.DeploySync | Runtime


def middleware_of(scope: asgi.Scope) -> asgi.DeploySync:
    """The :class:`DeploySync` that handled this request; a clear error when none did."""
    found = scope.get(SCOPE_KEY)
    if not isinstance(found, asgi.DeploySync):
        raise LookupError(
            "No deploysync middleware saw this request: add "
            "Middleware(deploysync.contrib.starlette.DeploySync, store=...) to the app "
            "(or pass the middleware or runtime to install_templates)"
        )
    return found


def install_templates(templates: Any, source: Source | None = None) -> None:
    """Register ``asset_url``, ``vite_tags`` and ``deploysync_head`` on *templates*, and
    make its ``url_for`` give a hashed URL for a file of the static prefix.

    *templates* is a ``starlette.templating.Jinja2Templates`` (or a ``jinja2.Environment``).
    Without *source*, each render uses the middleware that handled its ``request``
    (Starlette's ``TemplateResponse`` puts ``request`` in the context); pass a middleware
    or a :class:`~deploysync.serving.Runtime` to render outside a request.
    """
    env = getattr(templates, "env", templates)

    def resolve(context: Context) -> tuple[Runtime, asgi.Scope | None, asgi.DeploySync | None]:
        request = context.get("request")
        scope = getattr(request, "scope", None)
        if isinstance(source, Runtime):
            return source, scope, None
        mw = source if source is not None else middleware_of(scope or {})
        return mw.runtime, scope, mw

    def nonce_for(
        scope: asgi.Scope | None, mw: asgi.DeploySync | None, given: str | None
    ) -> str | None:
        if given is not None or scope is None or mw is None or mw.nonce is None:
            return given
        return resolve_nonce(mw.nonce, scope)

    @pass_context
    def asset_url(context: Context, path: str) -> str:
        runtime, _, _ = resolve(context)
        return runtime.url(path)

    @pass_context
    def vite_tags(context: Context, entry: str, nonce: str | None = None) -> Markup:
        runtime, scope, mw = resolve(context)
        deployment = runtime.deployment
        if deployment is None:
            if runtime.strict:
                raise LookupError(f"vite_tags({entry!r}): the store has no current deployment")
            return Markup("")
        html = render_vite_tags(
            entry,
            deployment,
            nonce=nonce_for(scope, mw, nonce),
            strict=runtime.strict,
            prefix=runtime.prefix(scope.get("root_path", "") if scope else ""),
        )
        return Markup(html)  # built from escaped attribute values

    @pass_context
    def deploysync_head(context: Context, nonce: str | None = None) -> Markup:
        runtime, scope, mw = resolve(context)
        prefix = runtime.prefix(scope.get("root_path", "") if scope else "")
        return Markup(runtime.head_tags(prefix, nonce_for(scope, mw, nonce)))

    functions: dict[str, Callable[..., Any]] = {
        "asset_url": asset_url,
        "vite_tags": vite_tags,
        "deploysync_head": deploysync_head,
    }
    original = env.globals.get("url_for")
    if not callable(original):
        # Installed before Jinja2Templates(env=env), which adds its url_for only where
        # none is: this one does what it would.
        @pass_context
        def original(context: Context, name: str, /, **path_params: Any) -> Any:
            return context["request"].url_for(name, **path_params)

    if not getattr(original, "_deploysync", False):

        @pass_context
        def url_for(context: Context, name: str, /, **path_params: Any) -> Any:
            """Starlette's ``url_for``; a file of a ``StaticFiles`` mount at the static
            prefix (``url_for('static', path='css/site.css')``) gets its hashed name,
            since the middleware serves only those there."""
            url = original(context, name, **path_params)
            path = path_params.get("path")
            if not isinstance(path, str):
                return url
            try:
                runtime, scope, _ = resolve(context)
            except LookupError:
                return url
            logical = path.lstrip("/")
            hashed = runtime.name(logical)
            # Only a route at the static prefix itself (where the middleware serves).
            base = runtime.prefix(scope.get("root_path", "") if scope else "")
            base += runtime.static_path
            if hashed is None or getattr(url, "path", None) not in (
                base + logical,
                base + url_path(logical),
            ):
                return url
            if "://" in runtime.static_url:  # served from a CDN: its URL, not this host's
                return type(url)(runtime.url(logical))
            return original(context, name, **{**path_params, "path": hashed})

        url_for._deploysync = True  # type: ignore[attr-defined]  # installed once
        functions["url_for"] = url_for
    env.globals.update(functions)
