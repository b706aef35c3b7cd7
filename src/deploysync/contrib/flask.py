"""deploysync for Flask: a Flask extension.

::

    from deploysync.contrib.flask import DeploySync

    app = Flask(__name__)
    app.config["DEPLOYSYNC_STORE"] = "/srv/deploysync"
    DeploySync(app)            # or: ds = DeploySync(); ds.init_app(app) in a factory

``init_app`` wraps ``app.wsgi_app`` with :class:`deploysync.wsgi.DeploySync` (assets,
stale navigations, injection), keeps it in ``app.extensions["deploysync"]`` and:

* makes ``url_for("static", filename="css/app.css")`` give the hashed URL of the current
  deployment (a ``url_defaults`` callback rewrites ``filename``), so existing templates
  work unchanged;
* registers the Jinja globals ``asset_url(path)``, ``vite_tags(entry)`` and
  ``deploysync_head()``;
* adds the ``flask deploysync build|activate|list|prune`` commands, which are
  ``deploysync``'s own with ``--store`` (and ``--static-url``) taken from the config.

Configuration (``app.config``; keyword arguments of :class:`DeploySync` give defaults)::

    DEPLOYSYNC_STORE           directory or redis:// URL (else $DEPLOYSYNC_STORE)
    DEPLOYSYNC_STATIC_URL      default: the app's static_url_path + "/" (else /static/)
    DEPLOYSYNC_ROUTING         "server" (default), "client" or "external"
    DEPLOYSYNC_CHECK_INTERVAL  seconds between version checks in the browser (0: none;
                               still checked when the tab becomes visible)
    DEPLOYSYNC_DEPLOYMENT      pin a deployment id
    DEPLOYSYNC_STRICT          default: app.debug; an unknown asset raises
    DEPLOYSYNC_NONCE           CSP nonce: callable(environ), or a name looked up in the
                               environ, then on the request (flask-talisman's csp_nonce)
    DEPLOYSYNC_POLL_INTERVAL   seconds between store change probes (default 0.5)
    DEPLOYSYNC_CACHE_DIR       deploysync's cache folder: a Redis store's local copies
                               and the build cache (else $DEPLOYSYNC_CACHE_DIR, else
                               $XDG_CACHE_HOME/deploysync, else ~/.cache/deploysync)
    DEPLOYSYNC_PLAIN_NAMES     development: plain static URLs, the static folder's files
                               served as edited (default False)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click
from flask import Flask, current_app, request, url_for
from flask.cli import AppGroup, ScriptInfo
from markupsafe import Markup
from werkzeug.security import safe_join

from .. import wsgi
from ..manifest import DEFAULT_STATIC_URL, DeploySyncError
from ..serving import Runtime
from ..store.base import CACHE_ENV
from ..vite import vite_tags as render_vite_tags

__all__ = ["EXTENSION", "DeploySync", "deploysync_cli"]

EXTENSION = "deploysync"
PLAIN_NAMES = "deploysync.plain_names"
OPTIONS = (
    "store",
    "static_url",
    "routing",
    "check_interval",
    "deployment",
    "strict",
    "nonce",
    "poll_interval",
    "cache_dir",
    "plain_names",
)


class DeploySync:
    """The Flask extension: ``DeploySync(app)`` or ``DeploySync()`` + :meth:`init_app`."""

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(f"Unknown deploysync option(s): {', '.join(unknown)}")
        self.options = options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if EXTENSION in app.extensions:
            raise RuntimeError("deploysync is already set up on this app")
        for name in OPTIONS:
            if name in self.options:
                app.config.setdefault(f"DEPLOYSYNC_{name.upper()}", self.options[name])
        config = app.config
        store = config.get("DEPLOYSYNC_STORE") or os.environ.get("DEPLOYSYNC_STORE")
        strict = config.get("DEPLOYSYNC_STRICT")
        # Flask's wsgi_app is typed with typeshed's StartResponse, deploysync.wsgi with its
        # own (equivalent at run time) protocol.
        inner: Any = app.wsgi_app
        wrapped: Any
        try:
            if not store:
                raise DeploySyncError(
                    "deploysync has no store: set app.config['DEPLOYSYNC_STORE'] (a directory"
                    " or a redis:// URL; FLASK_DEPLOYSYNC_STORE with from_prefixed_env) or the"
                    " DEPLOYSYNC_STORE variable"
                )
            wrapped = wsgi.DeploySync(
                inner,
                store=store,
                static_url=_static_url(app),
                routing=config.get("DEPLOYSYNC_ROUTING", "server"),
                check_interval=config.get("DEPLOYSYNC_CHECK_INTERVAL", 0),
                deployment=config.get("DEPLOYSYNC_DEPLOYMENT"),
                strict=bool(app.debug) if strict is None else bool(strict),
                nonce=_nonce_option(config.get("DEPLOYSYNC_NONCE")),
                poll_interval=config.get("DEPLOYSYNC_POLL_INTERVAL", 0.5),
                cache_dir=config.get("DEPLOYSYNC_CACHE_DIR") or None,
            )
        except DeploySyncError as exc:
            if not _loaded_by_flask_command():
                raise  # a server starting: it must not serve broken URLs
            # Loaded by a `flask` command, maybe the one that repairs this (a build for
            # a new static URL, an activation): said now, raised by every request.
            click.echo(f"deploysync: warning: {exc}", err=True)
            wrapped = _Unavailable(exc)
        app.extensions[EXTENSION] = wrapped
        if config.get("DEPLOYSYNC_PLAIN_NAMES") and app.static_folder is not None:
            app.extensions[PLAIN_NAMES] = True
            wrapped = _EditedFilesFirst(app, inner, wrapped)
        app.wsgi_app = wrapped  # type: ignore[method-assign]
        app.url_defaults(_hashed_static_filename)
        app.jinja_env.globals.update(
            asset_url=asset_url, vite_tags=vite_tags, deploysync_head=deploysync_head
        )
        app.cli.add_command(deploysync_cli)

    @staticmethod
    def middleware(app: Flask | None = None) -> wsgi.DeploySync:
        """The WSGI middleware of *app* (default: the current app)."""
        target = app if app is not None else current_app
        try:
            found: wsgi.DeploySync | _Unavailable = target.extensions[EXTENSION]
        except KeyError:
            raise RuntimeError("deploysync is not set up on this app: call init_app(app)") from None
        if isinstance(found, _Unavailable):
            found.fail()
        return found

    def url(self, path: str) -> str:
        """The hashed URL of *path* in the current app's current deployment."""
        return self.middleware().url(path)


class _Unavailable:
    """The app's WSGI callable when deploysync could not be set up while a ``flask``
    command loaded the app: every request raises the reason."""

    def __init__(self, error: DeploySyncError) -> None:
        self.error = error

    def __call__(self, environ: Any, start_response: Any) -> Any:
        self.fail()

    def fail(self) -> NoReturn:
        # A traceback of this call only, not one that grows with every request.
        raise self.error.with_traceback(None)


class _EditedFilesFirst:
    """``DEPLOYSYNC_PLAIN_NAMES``: a file of the app's static folder, asked for by its
    plain name, is served by Flask's own ``static`` view as it is on disk (the
    ``flask run --debug`` loop: edit, reload); everything else, hashed names included,
    goes through the middleware."""

    def __init__(self, app: Flask, inner: Any, middleware: Any) -> None:
        self.folder = app.static_folder
        self.prefix = (app.static_url_path or "") + "/"
        self.inner = inner
        self.middleware = middleware

    def __call__(self, environ: Any, start_response: Any) -> Any:
        # PEP 3333: the path's bytes as latin-1; file names are UTF-8, as Flask reads them.
        path = environ.get("PATH_INFO", "").encode("latin-1", "replace").decode(errors="replace")
        if path.startswith(self.prefix) and _in_folder(self.folder, path[len(self.prefix) :]):
            return self.inner(environ, start_response)
        return self.middleware(environ, start_response)


def _in_folder(folder: str | None, name: str) -> bool:
    """Whether *name* is a file of the static *folder* (never one outside it)."""
    found = safe_join(folder, name) if folder is not None else None
    return found is not None and os.path.isfile(found)


def _plain_name(name: str, runtime: Runtime) -> bool:
    """Whether ``url_for("static")`` gives *name* plainly under ``DEPLOYSYNC_PLAIN_NAMES``:
    a file of the static folder, or of no deployment either (mistyped, or not made yet:
    an error only once it is requested, as Flask has it); else a deployment's file (of a
    Vite build, say), by its hashed URL."""
    app = current_app
    if not app.extensions.get(PLAIN_NAMES):
        return False
    return _in_folder(app.static_folder, name) or runtime.name(name) is None


def _loaded_by_flask_command() -> bool:
    """Whether the ``flask`` command line is loading the app (not a server such as
    uvicorn or granian, whose command lines are click programs too)."""
    context = click.get_current_context(silent=True)
    return context is not None and context.find_object(ScriptInfo) is not None


def _static_url(app: Flask) -> str:
    """The static URL the app's deployments are built for."""
    configured: str | None = app.config.get("DEPLOYSYNC_STATIC_URL")
    if configured:
        return configured
    # An app without a static folder (static_folder=None) has no static URL of its own.
    return DEFAULT_STATIC_URL if app.static_url_path is None else app.static_url_path + "/"


def _nonce_option(option: Any) -> Any:
    if not isinstance(option, str):
        return option

    def lookup(environ: dict[str, Any]) -> str | None:
        # The environ first (a WSGI middleware put it there), then the request object,
        # where flask-talisman keeps it (request.csp_nonce).
        value = environ.get(option)
        if value is None:
            value = getattr(environ.get("werkzeug.request"), option, None)
        return str(value) if value else None

    return lookup


def _hashed_static_filename(endpoint: str | None, values: dict[str, Any]) -> None:
    """``url_for("static", filename=...)`` -> the deployment's hashed name.

    Only the ``filename`` changes, so ``_external``, ``_scheme`` and the app's routing
    keep working; the middleware answers the hashed URL before Flask sees it.
    """
    if endpoint != "static" or "filename" not in values:
        return
    middleware = current_app.extensions.get(EXTENSION)
    if not isinstance(middleware, wsgi.DeploySync):
        return
    runtime = middleware.runtime
    prefix = (current_app.static_url_path or "") + "/"
    if runtime.static_path != prefix:
        return  # assets live elsewhere (a CDN): templates use asset_url()
    filename = str(values["filename"])
    if _plain_name(filename, runtime):
        return
    name = runtime.name(filename)  # Flask encodes it: the name, not the URL path
    if name is not None:
        values["filename"] = name
    elif runtime.strict:
        runtime.url(filename)  # raises UnknownAsset


def asset_url(path: str) -> str:
    """Jinja global: the hashed URL of *path* in the current deployment."""
    middleware = DeploySync.middleware()
    if _plain_name(path, middleware.runtime):
        return url_for("static", filename=path)
    return middleware.url(path)


def vite_tags(entry: str, nonce: str | None = None) -> Markup:
    """Jinja global: the tags of a Vite entry (:func:`deploysync.vite.vite_tags`)."""
    middleware = DeploySync.middleware()
    runtime = middleware.runtime
    deployment = runtime.deployment
    if deployment is None:
        if runtime.strict:
            raise DeploySyncError(f"vite_tags({entry!r}): the store has no current deployment")
        return Markup("")
    if nonce is None and middleware.nonce is not None and request:
        nonce = _request_nonce(middleware)
    prefix = runtime.prefix(request.environ.get("SCRIPT_NAME", "") if request else "", wsgi=True)
    html = render_vite_tags(entry, deployment, nonce=nonce, strict=runtime.strict, prefix=prefix)
    return Markup(html)


def deploysync_head() -> Markup:
    """Jinja global: the ``<head>`` tags, for manual placement (the middleware then does
    not inject a second copy)."""
    middleware = DeploySync.middleware()
    return Markup(middleware.head_tags(request.environ if request else None))


def _request_nonce(middleware: wsgi.DeploySync) -> str | None:
    option = middleware.nonce
    if callable(option):
        value = option(request.environ)
    else:
        value = request.environ.get(option) if option else None
    return str(value) if value else None


# -- flask deploysync ... ------------------------------------------------------------------------

deploysync_cli = AppGroup(
    "deploysync", help="Build, activate, list and prune deployments of this app's store."
)
PASS_THROUGH = {"ignore_unknown_options": True, "help_option_names": []}


def _run(command: str, args: Sequence[str]) -> None:
    from deploysync import cli

    argv = [command, *args]
    given = {arg.split("=", 1)[0] for arg in args}
    store = current_app.config.get("DEPLOYSYNC_STORE")
    if "--store" not in given and store:
        # The configured spec, not the store's display location (a redis:// URL with
        # its password, say); without one the command falls back to $DEPLOYSYNC_STORE.
        argv += ["--store", str(store)]
    if command == "build" and "--static-url" not in given and EXTENSION in current_app.extensions:
        argv += ["--static-url", _static_url(current_app)]
    cache_dir = current_app.config.get(CACHE_ENV)
    previous = os.environ.get(CACHE_ENV)
    if command == "build" and cache_dir:
        # The build cache goes to the app's cache folder too; the command reads it from
        # the environment (given back as it was: the app may run on in this process).
        os.environ[CACHE_ENV] = os.fspath(cache_dir)
    try:
        code = cli.main(argv, prog="flask deploysync")
    finally:
        if previous is not None:
            os.environ[CACHE_ENV] = previous
        elif command == "build":
            os.environ.pop(CACHE_ENV, None)
    if code:
        raise SystemExit(code)


def _command(name: str, help_text: str) -> Callable[..., None]:
    @deploysync_cli.command(name, help=help_text, context_settings=PASS_THROUGH)
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        _run(name, args)

    return command


build_command = _command("build", "Fingerprint SRC into a new deployment (deploysync build).")
activate_command = _command("activate", "Make deployment ID current (deploysync activate).")
list_command = _command("list", "List deployments, newest first (deploysync list).")
prune_command = _command("prune", "Delete what only old deployments use (deploysync prune).")
