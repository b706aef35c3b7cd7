"""The ``DEPLOYSYNC`` settings dict, and the process-wide runtime built from it.

========================== =============================== =========================================
key                        default                         meaning
========================== =============================== =========================================
``STORE``                  ``DEPLOYSYNC_STORE`` env var    directory path or ``redis://`` URL
``STATIC_URL``             ``settings.STATIC_URL``         prefix the assets are served under
                           (below the script prefix)
``ROUTING``                ``"server"``                    ``server``, ``client`` or ``external``
``CHECK_INTERVAL``         ``0``                           seconds between version checks (0: none)
``DEPLOYMENT``             ``None``                        pin a deployment id instead of current
``STRICT``                 ``settings.DEBUG``              a missing asset raises instead of falling
                                                           back to its unhashed URL
``INJECT``                 ``True``                        inject the tags into HTML responses;
                                                           ``False``: use ``{% deploysync_head %}``
``NONCE``                  ``None``                        CSP nonce: a request attribute
                                                           name or ``callable(request)``
``ACTIVATE_ON_COLLECTSTATIC`` ``True``                     ``collectstatic`` activates what it built
``POLL_INTERVAL``          ``0.5``                         seconds between store change probes
``CACHE_DIR``              ``DEPLOYSYNC_CACHE_DIR`` env    deploysync's cache folder: a Redis
                           var, else the XDG cache         store's local copies, the build cache
========================== =============================== =========================================
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.urls import get_script_prefix

from ...manifest import DEFAULT_STATIC_URL, DeploySyncError, is_valid_id, normalize_static_url
from ...serving import Runtime, mount_prefix

__all__ = [
    "DEFAULTS",
    "ROUTINGS",
    "Config",
    "get_config",
    "get_runtime",
    "request_nonce",
    "reset",
    "script_prefix",
    "site_static_url",
]

ROUTINGS = ("server", "client", "external")
DEFAULTS: dict[str, Any] = {
    "STORE": None,
    "STATIC_URL": None,
    "ROUTING": "server",
    "CHECK_INTERVAL": 0,
    "DEPLOYMENT": None,
    "STRICT": None,
    "INJECT": True,
    "NONCE": None,
    "ACTIVATE_ON_COLLECTSTATIC": True,
    "POLL_INTERVAL": 0.5,
    "CACHE_DIR": None,
}
# Settings whose change (override_settings in tests) invalidates the runtime.
WATCHED_SETTINGS = frozenset({"DEPLOYSYNC", "STATIC_URL", "DEBUG", "STATIC_ROOT", "STORAGES"})


@dataclass(frozen=True)
class Config:
    """The ``DEPLOYSYNC`` dict, validated, with the defaults filled in."""

    store: str | None
    static_url: str
    routing: str
    check_interval: float
    deployment: str | None
    strict: bool
    inject: bool
    nonce: str | Callable[[Any], str | None] | None
    activate_on_collectstatic: bool
    poll_interval: float
    cache_dir: str | None = None


def _raw() -> Mapping[str, Any]:
    raw = getattr(settings, "DEPLOYSYNC", None) or {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(f"settings.DEPLOYSYNC must be a dict, not {type(raw).__name__}")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown key(s) in settings.DEPLOYSYNC: {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(DEFAULTS)})"
        )
    return raw


def get_config() -> Config:
    """The validated ``settings.DEPLOYSYNC``, read once (again after a settings change)."""
    global _config
    config = _config
    if config is None:
        config = _config = read_config()
    return config


def read_config() -> Config:
    """Read and validate ``settings.DEPLOYSYNC``; ``ImproperlyConfigured`` names a bad value."""
    raw = {**DEFAULTS, **_raw()}
    store = raw["STORE"] if raw["STORE"] is not None else os.environ.get("DEPLOYSYNC_STORE")
    if store is not None:
        store = os.fspath(store) or None  # an empty value is no store (E001), not "."
    static_url = raw["STATIC_URL"] or site_static_url() or DEFAULT_STATIC_URL
    routing = raw["ROUTING"]
    if routing not in ROUTINGS:
        raise ImproperlyConfigured(
            f"DEPLOYSYNC['ROUTING'] is {routing!r}; expected one of {', '.join(ROUTINGS)}"
        )
    numbers = {}
    for key in ("CHECK_INTERVAL", "POLL_INTERVAL"):
        value = raw[key]
        low = 0 if key == "CHECK_INTERVAL" else 1e-3  # the store poll cannot be "never"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
            expected = ">= 0" if key == "CHECK_INTERVAL" else "> 0"
            raise ImproperlyConfigured(
                f"DEPLOYSYNC[{key!r}] is {value!r}; expected a number of seconds {expected}"
            )
        numbers[key] = float(value)
    nonce = raw["NONCE"]
    if nonce is not None and not isinstance(nonce, str) and not callable(nonce):
        raise ImproperlyConfigured(
            "DEPLOYSYNC['NONCE'] must be a request attribute name or a callable(request)"
        )
    cache_dir = raw["CACHE_DIR"]
    if cache_dir is not None:
        if not isinstance(cache_dir, str | os.PathLike) or not os.fspath(cache_dir):
            raise ImproperlyConfigured(
                f"DEPLOYSYNC['CACHE_DIR'] is {cache_dir!r}; expected a folder path"
            )
        cache_dir = os.fspath(cache_dir)
    deployment = raw["DEPLOYMENT"] or None  # ("": an unset environment variable read)
    if deployment is not None and not (isinstance(deployment, str) and is_valid_id(deployment)):
        raise ImproperlyConfigured(
            f"DEPLOYSYNC['DEPLOYMENT'] is {deployment!r}; expected a deployment id (1 to 64"
            " letters, digits, '_' or '-'), as `deploysync list` shows them"
        )
    strict = raw["STRICT"]
    try:
        static_url = normalize_static_url(str(static_url))
    except DeploySyncError as exc:
        raise ImproperlyConfigured(f"STATIC_URL: {exc}") from None
    return Config(
        store=store,
        static_url=static_url,
        routing=routing,
        check_interval=numbers["CHECK_INTERVAL"],
        deployment=deployment,
        strict=bool(settings.DEBUG) if strict is None else bool(strict),
        inject=bool(raw["INJECT"]),
        nonce=nonce,
        activate_on_collectstatic=bool(raw["ACTIVATE_ON_COLLECTSTATIC"]),
        poll_interval=numbers["POLL_INTERVAL"],
        cache_dir=cache_dir,
    )


def site_static_url() -> str | None:
    """``settings.STATIC_URL`` as a path below the site's mount (the script prefix).

    Django puts the script prefix of the moment before a relative ``STATIC_URL``
    (``"static/"``, the ``startproject`` default), and that prefix is not the same in
    ``manage.py`` (``FORCE_SCRIPT_NAME``) and in a server (at start-up none, then each
    request's). The deployment records the prefix below the mount, the same whatever
    the entry point; pages get the request's script prefix put before their URLs. An
    absolute path under ``FORCE_SCRIPT_NAME`` loses that part the same way.
    """
    value = getattr(getattr(settings, "_wrapped", None), "STATIC_URL", None)
    if value is None:
        value = getattr(settings, "STATIC_URL", None)
    if not value:
        return None
    url = str(value)
    if "://" in url:
        return url
    if not url.startswith("/"):
        return "/" + url
    forced = (getattr(settings, "FORCE_SCRIPT_NAME", None) or "").rstrip("/")
    if forced and url.startswith(forced + "/"):
        return url[len(forced) :]
    return url


def script_prefix() -> str:
    """The URL path Django serves the site under now (the request's script prefix),
    percent-encoded, without a trailing "/" (see :func:`deploysync.serving.mount_prefix`)."""
    return mount_prefix(get_script_prefix())


_lock = threading.Lock()
_runtime: Runtime | None = None
_config: Config | None = None


def get_runtime() -> Runtime:
    """The process-wide runtime: the store's current deployment, kept fresh in the background.

    The middleware, the staticfiles storage and the template tags share it, so a page
    and the URLs in it are rendered against the same deployment.
    """
    global _runtime
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _lock:
        if _runtime is None:
            config = get_config()
            if config.store is None:
                raise ImproperlyConfigured(
                    "deploysync has no store: set DEPLOYSYNC = {'STORE': ...} in settings "
                    "(a directory path or a redis:// URL) or the DEPLOYSYNC_STORE variable"
                )
            _runtime = Runtime(
                config.store,
                static_url=config.static_url,
                routing=config.routing,
                check_interval=config.check_interval,
                deployment=config.deployment,
                strict=config.strict,
                poll_interval=config.poll_interval,
                cache_dir=config.cache_dir,
            )
        return _runtime


def reset() -> None:
    """Forget the runtime (settings changed); the next use builds a new one."""
    global _runtime, _config
    with _lock:
        runtime, _runtime = _runtime, None
        _config = None
    if runtime is not None:
        runtime.close()


def reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        reset()


def request_nonce(request: Any, config: Config | None = None) -> str | None:
    """The CSP nonce of *request* per ``DEPLOYSYNC['NONCE']``, or ``None``."""
    source = (config or get_config()).nonce
    if source is None or request is None:
        return None
    value = source(request) if callable(source) else getattr(request, source, None)
    # django-csp's request.csp_nonce is a lazy object: str() evaluates it.
    return str(value) if value else None
