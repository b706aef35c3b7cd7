# Django ships no type information: its base classes and decorators are Any to mypy.
# mypy: disallow-subclassing-any=False, disallow-untyped-decorators=False, warn-return-any=False
"""System checks (``manage.py check``), with stable ids.

============== ==========================================================================
id             means
============== ==========================================================================
deploysync.E001 no store configured, or the store cannot be read (a corrupt activation
                record)
deploysync.E002 the static URL prefix differs from the one the current (or pinned)
                deployment was built for: every asset URL would be broken
deploysync.E003 an invalid ``DEPLOYSYNC`` value (unknown key, ``ROUTING``, intervals,
                ``NONCE``), or a pinned ``DEPLOYMENT`` that is not in the store
deploysync.W001 the middleware is not in ``MIDDLEWARE``: nothing is served or injected
deploysync.W002 the middleware is too low in ``MIDDLEWARE``: middleware above it runs
                for every asset and may answer before it (put it directly after
                ``SecurityMiddleware``)
deploysync.W003 a compressing middleware (``GZipMiddleware``, brotli, zstd) is below the
                middleware: HTML reaches deploysync already compressed and is not injected
deploysync.W004 ``deploysync.contrib.django`` is listed after ``django.contrib.staticfiles``
                while ``DEBUG`` is on: ``runserver`` answers ``/static/`` itself and the
                hashed URLs 404
deploysync.W005 the store has no current deployment yet, or its directory does not exist
                yet (run ``collectstatic`` with the deploysync storage, or
                ``deploysync build --activate``)
deploysync.W006 the staticfiles storage is not deploysync's: ``{% static %}`` gives
                URLs the middleware does not serve (404)
deploysync.W007 the store cannot be reached now (Redis unreachable): servers serve
                what they last read
============== ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from ...manifest import DeploySyncError
from ...store import StoreNotFound, open_store
from ...store.redis import CredentialsRefused
from .conf import read_config as get_config

MIDDLEWARE_PATH = "deploysync.contrib.django.middleware.DeploySyncMiddleware"
APP_NAMES = ("deploysync.contrib.django", "deploysync.contrib.django.apps.DeploySyncConfig")
# Middleware that may sit above deploysync: they neither answer static requests nor
# produce HTML that deploysync would have to see first.
MAY_PRECEDE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.gzip.GZipMiddleware",
        "corsheaders.middleware.CorsMiddleware",
    }
)
GZIP = "django.middleware.gzip.GZipMiddleware"
STORAGE_PATH = "deploysync.contrib.django.storage.DeploySyncStorage"


def _injects() -> bool:
    """Whether the middleware adds the tags (not ``INJECT: False``, where templates do)."""
    raw = getattr(settings, "DEPLOYSYNC", None)
    return not isinstance(raw, Mapping) or bool(raw.get("INJECT", True))


def _compresses(path: str) -> bool:
    """Whether a middleware compresses responses, by its name: Django's GZipMiddleware,
    django-compression-middleware's CompressionMiddleware, and their like."""
    name = path.rsplit(".", 1)[-1].lower()
    if "decompress" in name:  # (request bodies)
        return False
    return any(word in name for word in ("gzip", "compress", "brotli", "zstd"))


NOTHING_BUILT = (
    "Run 'manage.py collectstatic' with the deploysync staticfiles storage, or "
    "'deploysync build STATIC_ROOT --store ... --activate'."
)


@register(Tags.compatibility)
def check_settings(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """E001, E002, E003, W005: the settings and the store they point at."""
    try:
        config = get_config()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="deploysync.E003")]
    if config.store is None:
        return [
            Error(
                "deploysync has no store.",
                hint="Set DEPLOYSYNC = {'STORE': BASE_DIR / '.deploysync'} (a directory or a "
                "redis:// URL) in settings, or the DEPLOYSYNC_STORE environment variable.",
                id="deploysync.E001",
            )
        ]
    try:
        store = open_store(config.store)
    except DeploySyncError as exc:
        return [Error(f"deploysync store {config.store!r}: {exc}", id="deploysync.E001")]
    try:
        current = config.deployment or store.current()
        if current is None:
            return [
                Warning(
                    f"The deploysync store {store.location} has no current deployment yet.",
                    hint=NOTHING_BUILT,
                    id="deploysync.W005",
                )
            ]
        try:
            deployment = store.load(current)
        except KeyError:
            if config.deployment:
                return [
                    Error(
                        f"DEPLOYSYNC['DEPLOYMENT'] is {config.deployment!r}, which is not in "
                        f"the store {store.location}.",
                        id="deploysync.E003",
                    )
                ]
            raise
    except StoreNotFound:
        # A fresh checkout: nothing built yet, as with an empty store.
        return [
            Warning(
                f"The deploysync store {store.location} does not exist yet.",
                hint=NOTHING_BUILT,
                id="deploysync.W005",
            )
        ]
    except DeploySyncError as exc:
        if store.unreachable and not isinstance(exc, CredentialsRefused):
            # An outage, not a mistake in the settings: servers go on with what they
            # last read, and `migrate` or `runserver` of a deploy must not fail on it.
            return [
                Warning(
                    f"The deploysync store {store.location} cannot be reached: {exc}",
                    hint="Servers serve the deployment they last read until it is back.",
                    id="deploysync.W007",
                )
            ]
        # The store exists but cannot be read (a damaged manifest): building it again
        # is not the remedy.
        return [Error(f"deploysync store {store.location}: {exc}", id="deploysync.E001")]
    finally:
        store.close()
    if deployment.static_url != config.static_url:
        return [
            Error(
                f"Deployment {deployment.id} was built for the static URL "
                f"{deployment.static_url!r}, but this site serves assets under "
                f"{config.static_url!r}.",
                hint="Run 'manage.py collectstatic' to build a deployment for this "
                "STATIC_URL (or set DEPLOYSYNC['STATIC_URL'] to the one it was built for).",
                id="deploysync.E002",
            )
        ]
    return []


def _name(entry: Any) -> str:
    return entry if isinstance(entry, str) else f"{entry.__module__}.{entry.__qualname__}"


@register(Tags.compatibility)
def check_middleware(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """W001, W002, W003: where the middleware sits."""
    middleware = [_name(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    if MIDDLEWARE_PATH not in middleware:
        return [
            Warning(
                f"{MIDDLEWARE_PATH} is not in MIDDLEWARE: assets are not served and pages "
                "carry no deployment id.",
                hint="Add it directly after django.middleware.security.SecurityMiddleware.",
                id="deploysync.W001",
            )
        ]
    position = middleware.index(MIDDLEWARE_PATH)
    messages: list[CheckMessage] = []
    above = [m for m in middleware[:position] if m not in MAY_PRECEDE and not _compresses(m)]
    if above:
        messages.append(
            Warning(
                f"{MIDDLEWARE_PATH} is below {', '.join(above)}.",
                hint="Put it directly after SecurityMiddleware: middleware above it runs for "
                "every asset request and may answer before it.",
                id="deploysync.W002",
            )
        )
    below = [m for m in middleware[position + 1 :] if _compresses(m)]
    if below and _injects():
        messages.append(
            Warning(
                f"{', '.join(below)} is below {MIDDLEWARE_PATH}: HTML reaches deploysync "
                "already compressed, so the deployment tags are not injected.",
                hint="Move it above the deploysync middleware.",
                id="deploysync.W003",
            )
        )
    return messages


@register(Tags.compatibility)
def check_app_order(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """W004: ``runserver``'s static handler would shadow the middleware."""
    apps = list(getattr(settings, "INSTALLED_APPS", None) or ())
    if not settings.DEBUG or "django.contrib.staticfiles" not in apps:
        return []
    ours = [i for i, name in enumerate(apps) if name in APP_NAMES]
    if ours and ours[0] > apps.index("django.contrib.staticfiles"):
        return [
            Warning(
                "deploysync.contrib.django is listed after django.contrib.staticfiles: "
                "runserver serves /static/ from the finders and the hashed URLs 404.",
                hint="List 'deploysync.contrib.django' before 'django.contrib.staticfiles' "
                "(its runserver then leaves static files to the middleware), or run "
                "'runserver --nostatic'.",
                id="deploysync.W004",
            )
        ]
    return []


@register(Tags.staticfiles)
def check_storage(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """W006: ``{% static %}`` asks the staticfiles storage for URLs."""
    middleware = [_name(m) for m in getattr(settings, "MIDDLEWARE", None) or ()]
    storages = getattr(settings, "STORAGES", None) or {}
    backend = (storages.get("staticfiles") or {}).get("BACKEND")
    if MIDDLEWARE_PATH not in middleware or not isinstance(backend, str):
        return []
    from django.utils.module_loading import import_string

    from .storage import DeploySyncStorage

    try:
        storage = import_string(backend)
    except ImportError:
        return []  # Django says so itself
    if isinstance(storage, type) and issubclass(storage, DeploySyncStorage):
        return []
    return [
        Warning(
            f"The staticfiles storage is {backend}: {{% static %}} gives URLs of its own"
            " (unhashed, or hashed by it), which the deploysync middleware does not serve.",
            hint=f'Set STORAGES["staticfiles"] = {{"BACKEND": "{STORAGE_PATH}"}}.',
            id="deploysync.W006",
        )
    ]
