# Django ships no type information: its base classes and decorators are Any to mypy.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, warn-return-any=False
"""A staticfiles storage: ``collectstatic`` builds a deployment, ``{% static %}`` uses it.

Configure it as the staticfiles backend::

    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "deploysync.contrib.django.storage.DeploySyncStorage"},
    }

``collectstatic`` copies the files into ``STATIC_ROOT`` as usual, then builds
``STATIC_ROOT`` into the store as a new deployment (and activates it unless
``DEPLOYSYNC["ACTIVATE_ON_COLLECTSTATIC"]`` is ``False``). Running servers pick the new
deployment up without a restart.

``{% static "css/app.css" %}`` resolves to the hashed URL of the current deployment.
A name that the deployment lacks never turns a page into a 500 in production: the
unhashed URL is returned and the miss is logged. With ``DEBUG`` (or
``DEPLOYSYNC["STRICT"]``) it raises ``ValueError`` naming the file, as Django's
``ManifestStaticFilesStorage`` does. Before any deployment is current (a fresh checkout), URLs
are unhashed; the middleware answers 404 for them, so run ``collectstatic`` first, or
``runserver --static`` to let the staticfiles finders serve them (docs/django.md): under
``runserver --static`` URLs are always unhashed, and the files are served as edited.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from django.contrib.staticfiles.storage import StaticFilesStorage
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError

from ...build import build
from ...manifest import DeploySyncError
from .conf import get_config, get_runtime, script_prefix

__all__ = ["DeploySyncStorage"]

logger = logging.getLogger("deploysync.django")

# The manifest of Django's ManifestStaticFilesStorage (and whitenoise's, built on it).
OTHER_MANIFEST = "staticfiles.json"


# The streams and verbosity of the collectstatic running in this thread, if it lent
# them (management/commands/collectstatic.py); else the process's own streams.
_output: contextvars.ContextVar[tuple[TextIO, TextIO, int] | None] = contextvars.ContextVar(
    "deploysync_collectstatic_output", default=None
)


@contextlib.contextmanager
def command_output(stdout: TextIO, stderr: TextIO, verbosity: int) -> Iterator[None]:
    """Make :meth:`DeploySyncStorage.post_process` write to a command's streams."""
    token = _output.set((stdout, stderr, verbosity))
    try:
        yield
    finally:
        _output.reset(token)


def _say(line: str, *, error: bool = False) -> None:
    """One line of the build: a warning to stderr always, the outcome at verbosity >= 1."""
    lent = _output.get()
    if lent is None:
        (sys.stderr if error else sys.stdout).write(line + "\n")
        return
    stdout, stderr, verbosity = lent
    if error:
        stderr.write(line)  # (Django's OutputWrapper ends the line)
    elif verbosity >= 1:
        stdout.write(line)


# Set by ``runserver --static``: the staticfiles finders answer /static/ from the apps'
# folders as they are edited, so {% static %} gives their plain names, as Django's
# ManifestStaticFilesStorage does under DEBUG.
_plain_names = False


def use_plain_names() -> None:
    """Make ``{% static %}`` give unhashed URLs in this process (``runserver --static``)."""
    global _plain_names
    _plain_names = True


class DeploySyncStorage(StaticFilesStorage):
    """``StaticFilesStorage`` whose URLs come from the current deployment."""

    def post_process(
        self, paths: Mapping[str, Any], dry_run: bool = False, **options: Any
    ) -> Iterator[tuple[str, str | None, bool | Exception]]:
        """Build ``STATIC_ROOT`` into the store (collectstatic's post-processing step)."""
        if dry_run or not paths:
            return
        try:
            config = get_config()
        except ImproperlyConfigured as exc:  # (collectstatic runs no E003 check first)
            raise CommandError(str(exc)) from None
        # A CommandError, not an exception yielded to collectstatic: the command prints
        # its one-line reason, where it would print a traceback for any other error.
        if config.store is None:
            raise CommandError(
                "collectstatic cannot build a deployment: DEPLOYSYNC['STORE'] is not set"
            )

        def warn(message: str) -> None:
            # As `deploysync build` says them (with STRICT on, the first one fails).
            _say(f"deploysync: warning: {message}", error=True)

        if OTHER_MANIFEST not in paths and os.path.isfile(
            os.path.join(self.location, OTHER_MANIFEST)
        ):
            warn(
                f"STATIC_ROOT holds {OTHER_MANIFEST}, left by ManifestStaticFilesStorage or"
                " whitenoise: their hashed and compressed copies are built into the"
                " deployment too; run 'collectstatic --clear' once"
            )

        try:
            result = build(
                self.location,
                config.store,
                static_url=config.static_url,
                activate=config.activate_on_collectstatic,
                strict=config.strict,
                cache_dir=config.cache_dir,
                warn=warn,
                # collectstatic --link fills STATIC_ROOT with links to the apps' files.
                links_outside=True,
            )
        except DeploySyncError as exc:
            raise CommandError(str(exc)) from None
        deployment = result.deployment
        for name in sorted(paths):
            asset = deployment.assets.get(name.replace("\\", "/"))
            if asset is not None:
                yield name, asset.name, True
            else:
                yield name, None, False
        # The id, as `deploysync build` ends: the next step may need it (activate ID).
        if config.activate_on_collectstatic:
            state = "activated"
        elif result.created:
            state = "built (not activated: deploysync activate ID)"
        else:
            state = "already in the store (not activated)"
        _say(f"deploysync: deployment {deployment.id} {state}")

    def url(self, name: str | None) -> str:
        """The hashed URL of *name* in the current deployment."""
        if not name or _plain_names or name.endswith("/"):
            # (A folder, `{% static "admin/" %}`: no file to hash, nor to miss.)
            return super().url(name)
        clean, sep, suffix = _split_suffix(name)
        try:
            runtime = get_runtime()
            deployment = runtime.deployment
        except (DeploySyncError, ImproperlyConfigured) as exc:
            if get_config().strict:
                raise
            logger.error("deploysync: unhashed URL for %r: %s", name, exc)
            return super().url(name)
        if deployment is None:
            # Nothing built yet: development before the first collectstatic.
            return super().url(name)
        try:
            url = deployment.url(clean)
        except KeyError:
            if get_config().strict:
                raise ValueError(
                    f"Missing static file {clean!r} in deployment {deployment.id}: run "
                    "'manage.py collectstatic' (or check the name) — with DEBUG off the "
                    "unhashed URL would be used"
                ) from None
            logger.warning(
                "deploysync: %r is not in deployment %s; using its unhashed URL",
                clean,
                deployment.id,
            )
            return super().url(name)
        # Recorded below the mount (conf.site_static_url): the request's script prefix
        # goes before it, as Django puts it before a relative STATIC_URL.
        if url.startswith("/"):
            url = script_prefix() + url
        return url + sep + suffix


def _split_suffix(name: str) -> tuple[str, str, str]:
    """``"font.woff2?v=1#x"`` -> ``("font.woff2", "?", "v=1#x")``; the logical name has neither."""
    for sep in ("?", "#"):
        if sep in name:
            clean, _, rest = name.partition(sep)
            return clean, sep, rest
    return name, "", ""
