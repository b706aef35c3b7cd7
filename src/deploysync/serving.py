"""The runtime both adapters share: snapshots of the store, and the thread that swaps them.

A :class:`~deploysync.core.Snapshot` holds everything a request reads: the current
deployment's id, the activation order, a ``name -> StaticFile`` index over every retained
deployment (hashed names are derived from content, so the union has no conflicts), the
current deployment's ``logical path -> URL`` map, precomputed headers and ETags, and small
files' bytes. It is built once per change and swapped by replacing one reference, so a
request sees one deployment or the other, never a mix, and never touches the store (but
for a static file the snapshot lacks, see :meth:`Runtime.catch_up`).

A daemon thread, started on the first request (and again in a forked child), waits on
``store.wait_for_change(poll_interval)`` and compares ``store.probe()``; on a change it
builds a new snapshot. A store that disappears or a corrupt manifest keeps the last good
snapshot and is logged once (logger ``deploysync``). A remote store's blobs are served
from local copies, fetched again when one vanishes; while Redis is unreachable, the
store answers from the state it last read, and logs the outage once itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import gzip
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO, Generic, TypeVar
from urllib.parse import quote, urlsplit

from . import core
from .core import Snapshot, StaticFile
from .inject import ROUTING_MODES, head_tags
from .manifest import (
    DEFAULT_STATIC_URL,
    URL_PATH_SAFE,
    Asset,
    Deployment,
    DeploySyncError,
    is_safe_name,
    normalize_static_url,
    url_path,
    validate_id,
)
from .store import (
    ENV_VAR,
    CacheError,
    DeploymentNotFound,
    Store,
    StoreError,
    StoreNotFound,
    open_store,
)
from .store.base import CACHE_GRACE, HOLD_RENEW

logger = logging.getLogger("deploysync")
# A request for a static file the snapshot lacks looks whether the store changed, at most
# this often (seconds): a deploy is seen at once, a flood of such requests costs little.
CATCH_UP_GAP = 0.01
# How long (seconds) other such requests wait for that look while it only probes.
PROBE_WAIT = 0.25

ENV_DEPLOYMENT = "DEPLOYSYNC_DEPLOYMENT"
# Files up to this size are read into memory once; larger ones are sent from disk.
MEMORY_LIMIT = 256 * 1024
# Both stores' probes change when a deployment is published; the store is still re-read
# every this many polls, a reconciliation for a store whose probe misses a change.
RESCAN_POLLS = 10
#: How long the first request of a process waits for the watcher's first read of the
#: store (a healthy store answers in milliseconds; one that hangs is not waited for).
FIRST_READ_WAIT = 1.0
CLIENT_FILE = Path(__file__).parent / "client" / "deploysync.js"
# Served while the package carries no client yet (a source checkout mid-build).
PLACEHOLDER_CLIENT = b"// deploysync client placeholder: no client/deploysync.js in this install\n"
CLIENT_CONTENT_TYPE = b"text/javascript; charset=utf-8"


class UnknownAsset(DeploySyncError, KeyError):
    """A logical path that is not in the current deployment (``strict`` mode)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Unknown asset"


NonceOption = Callable[[Any], str | None] | str | None


class Runtime:
    """Snapshots of a store for one server process, and the options of the middleware."""

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None,
        *,
        static_url: str = DEFAULT_STATIC_URL,
        routing: str = "server",
        check_interval: float = 0,
        deployment: str | None = None,
        strict: bool = False,
        poll_interval: float = 0.5,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if routing not in ROUTING_MODES:
            raise DeploySyncError(
                f"Unknown routing mode {routing!r}: use one of {', '.join(ROUTING_MODES)}"
            )
        if isinstance(check_interval, bool) or not isinstance(check_interval, int | float):
            raise DeploySyncError(
                f"check_interval must be a number of seconds, not {check_interval!r}"
            )
        if check_interval < 0:
            raise DeploySyncError(f"check_interval must be >= 0, not {check_interval!r}")
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, int | float):
            raise DeploySyncError(
                f"poll_interval must be a number of seconds, not {poll_interval!r}"
            )
        if not poll_interval > 0:
            raise DeploySyncError(f"poll_interval must be > 0, not {poll_interval!r}")
        if strict not in (True, False):  # (0 and 1 too)
            raise DeploySyncError(f"strict must be True or False, not {strict!r}")
        pinned = deployment if deployment is not None else os.environ.get(ENV_DEPLOYMENT) or None
        self.pinned = validate_id(pinned) if pinned is not None else None
        if not (store or os.environ.get(ENV_VAR)):  # said for a server, not a command line
            raise StoreError(f"No store given: pass store=... or set {ENV_VAR}")
        self.store = open_store(store, cache_dir=cache_dir)
        # A server keeps serving what it last read through a Redis outage, even when
        # started during one; commands never opt in.
        self.store.keep_last_known()
        self._cache_warned = False
        self._config_told = False
        self._healed_at = -CACHE_GRACE
        self.static_url = normalize_static_url(static_url)
        path = urlsplit(self.static_url).path if "://" in self.static_url else self.static_url
        self.static_path = normalize_static_url(path or "/")
        self.routing = routing
        self.check_interval = check_interval
        self.strict = strict
        self.poll_interval = float(poll_interval)

        self._root = _store_root(self.store)
        self._deployments: dict[str, Deployment] = {}
        self._files: dict[_FileKey, StaticFile] = {}
        self._state: tuple[Hashable, frozenset[str]] | None = None
        self._activated = False  # the store's activation record was seen non-empty
        self._last_error: str | None = None
        self._pin_told = False  # said that the pinned deployment is not in the store
        # While a snapshot is built: the problems of single assets, to tell at its end.
        self._unread: list[tuple[str, str]] | None = None
        self._refresh_lock = threading.RLock()
        self._read_failed = False  # the last read of the store failed
        # Runtime.catch_up: one look at a time, when the last ended, whether one runs, and
        # the probe token of the last read of the store (complete or not).
        self._catch_up_lock = threading.Lock()
        self._caught_up_at = 0.0
        self._catching_up = ""  # what the look under way does: "probe", "read"
        self._read_token: Hashable = None
        self._probed: Hashable = None  # the token a read under way started from
        self._watch_lock = threading.Lock()
        self._watcher_pid: int | None = None
        self._stop = threading.Event()
        self._closed = False
        # Reset in a forked child (see _after_fork), so requests need no getpid().
        self._watching = False
        _RUNTIMES.add(self)
        self._client_path, self._client = _client_file()
        # The request being handled: the snapshot the middleware answers it with (so
        # url() and head_tags() called by the app render against the deployment announced
        # for it) and the URL path the app is mounted at, as the middleware saw it when
        # the request came in (a sub-app's mount changes root_path / SCRIPT_NAME further
        # in). One variable: it is set and reset for every request.
        self.request_state: contextvars.ContextVar[tuple[Snapshot, str] | None] = (
            contextvars.ContextVar(f"deploysync_request_{id(self):x}", default=None)
        )
        self._snippets: dict[str, bytes] = {}
        self._snippets_for: Snapshot | None = None

        # Configuration errors (a prefix that differs from the one the current
        # deployment was built for) surface here, when the middleware is constructed.
        snapshot = self._build(initial=True)
        self._read_token = self._probed
        self.snapshot: Snapshot = snapshot if snapshot is not None else self._empty()
        self._note_behind()  # started while Redis is unreachable: from the first request
        self._read_at = time.monotonic()
        self._held_at = 0.0
        self._hold()

    def _hold(self) -> None:
        """A pinned server holds its deployment in the store, so prune keeps it while the
        server runs; renewed by the watcher, it lapses by itself once the server stops."""
        if self.pinned is None:
            return
        try:
            self.store.hold(self.pinned)
        except (StoreError, OSError, ValueError) as exc:
            self._report(f"Cannot hold deployment {self.pinned} in {self.store.location}: {exc}")
        self._held_at = time.monotonic()

    # -- what requests read --------------------------------------------------------------
    def current(self) -> Snapshot:
        """The snapshot to answer with; starts the watcher in this process if needed."""
        if not self._watching:
            self._start_watcher()
        return self.snapshot

    @property
    def deployment(self) -> Deployment | None:
        """The current deployment (``None`` before the first, or pinned to one not built).

        During a request, the one the middleware announces for that request."""
        return self._snapshot().deployment

    @property
    def client_path(self) -> str:
        """The client script's path relative to the application root."""
        return self._client_path

    def url(self, logical_path: str) -> str:
        """The hashed URL of *logical_path* in the current deployment.

        Unknown: :class:`UnknownAsset` when ``strict``, else the unhashed URL (a missing
        asset must never turn a page into a 500). Before the first deployment (a fresh
        checkout) every name is unknown, not mistyped: the unhashed URL, strict or not.
        """
        key = logical_path.lstrip("/")
        state = self.request_state.get()
        snapshot, prefix = state if state is not None else (self.current(), "")
        found = snapshot.urls.get(key)
        if found is None:
            if self.strict and snapshot.deployment is not None:
                raise UnknownAsset(
                    f"Asset {logical_path!r} is not in deployment {snapshot.current_id!r}"
                    f" of {self.store.location}"
                )
            found = self.static_url + url_path(key)
        return prefix + found if prefix and found.startswith("/") else found

    def name(self, logical_path: str) -> str | None:
        """The hashed name of *logical_path* below the static prefix (what :meth:`url`
        gives, before URL encoding); ``None`` when the current deployment lacks it."""
        deployment = self._snapshot().deployment
        asset = deployment.assets.get(logical_path.lstrip("/")) if deployment else None
        return asset.name if asset is not None else None

    def prefix(self, root: str = "", *, wsgi: bool = False) -> str:
        """The URL path the app is mounted at: during a request, as the middleware saw it
        when the request came in; else that of *root* (see :func:`mount_prefix`)."""
        state = self.request_state.get()
        return mount_prefix(root, wsgi=wsgi) if state is None else state[1]

    def _snapshot(self) -> Snapshot:
        """The snapshot of the request being handled, else the current one."""
        state = self.request_state.get()
        return state[0] if state is not None else self.current()

    def snippet(self, snapshot: Snapshot, prefix: str = "", nonce: str | None = None) -> bytes:
        """The injected ``<head>`` tags of *snapshot* for an app mounted at *prefix* (a
        URL path, see :func:`mount_prefix`)."""
        if nonce is None:
            if self._snippets_for is not snapshot:
                self._snippets, self._snippets_for = {}, snapshot
            cached = self._snippets.get(prefix)
            if cached is not None:
                return cached
        text = self._tags(snapshot, prefix, nonce).encode()
        if nonce is None and len(self._snippets) < 64:
            self._snippets[prefix] = text
        return text

    def head_tags(self, prefix: str | None = None, nonce: str | None = None) -> str:
        """The tags for templates that place them themselves (``""`` before any deploy).

        *prefix*: the URL path the app is mounted at (:func:`mount_prefix`); by default
        the one of the request the middleware is handling."""
        if prefix is None:
            prefix = self.prefix()
        return self._tags(self._snapshot(), prefix, nonce)

    def _tags(self, snapshot: Snapshot, prefix: str, nonce: str | None) -> str:
        if snapshot.current_id is None:
            return ""
        root = prefix.rstrip("/")
        return head_tags(
            snapshot.current_id,
            script_url=root + self._client_path,
            version_url=root + core.VERSION_PATH,
            routing=self.routing,
            check_interval=self.check_interval,
            static_url=self.static_url if "://" in self.static_url else root + self.static_url,
            nonce=nonce,
        )

    # -- loading -----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Re-read the store now; ``True`` when a new snapshot was swapped in."""
        with self._refresh_lock:
            snapshot = self._build(initial=False)
            self._read_at = time.monotonic()
            self._read_token = self._probed  # (recorded once the read is over)
            if snapshot is not None:
                self.snapshot = snapshot  # one reference assignment: atomic for readers
            self._note_behind()
            return snapshot is not None

    def catch_up_now(self, snapshot: Snapshot) -> tuple[Snapshot | None, bool]:
        """What a request that found no file in *snapshot* under the static prefix can
        have without waiting: a newer snapshot already swapped in (or ``None``), and
        whether :meth:`catch_up` (which may wait on the store) could find one."""
        fresh = self.snapshot
        if fresh is not snapshot:
            return fresh, False
        waiting = self._catching_up or time.monotonic() - self._caught_up_at >= CATCH_UP_GAP
        return None, waiting and not self.store.unreachable

    def catch_up(self, snapshot: Snapshot) -> Snapshot | None:
        """After *snapshot* had no file for a request under the static prefix: probe the
        store (unless that was done within :data:`CATCH_UP_GAP`, or Redis is out of
        reach: the watcher looks then), read it when it changed since the last read, and
        return the newer snapshot, if any. Another process of this server (a gunicorn
        worker) may have switched to a deployment this one has not read yet and sent a
        page naming its files: they must not wait for the next poll. Misses meanwhile
        wait for this look and take what it found: for as long as it reads a change, and
        :data:`PROBE_WAIT` at most while it only probes (a Redis starting to hang holds
        its probe for the socket timeout). (An event loop asks :meth:`catch_up_now`
        first, and calls this off the loop only when it would wait.)"""
        fresh, wait = self.catch_up_now(snapshot)
        if not wait:
            return fresh
        deadline = time.monotonic() + PROBE_WAIT
        while not self._catch_up_lock.acquire(timeout=0.02):
            if self._catching_up == "probe" and time.monotonic() > deadline:
                fresh = self.snapshot
                return fresh if fresh is not snapshot else None
        try:
            if (
                self.snapshot is snapshot
                and time.monotonic() - self._caught_up_at >= CATCH_UP_GAP
                and not self.store.unreachable
            ):
                self._catching_up = "probe"
                try:
                    try:
                        token: Hashable = self.store.probe()
                    except (StoreError, OSError, ValueError):
                        token = self._read_token  # the watcher says it
                    if token != self._read_token:
                        # (A read under way, the watcher's, is waited for: the new
                        # token is recorded when a read ends.)
                        self._catching_up = "read"
                        self.refresh()
                finally:
                    self._caught_up_at = time.monotonic()
                    self._catching_up = ""
        finally:
            self._catch_up_lock.release()
        fresh = self.snapshot
        return fresh if fresh is not snapshot else None

    def _note_behind(self) -> None:
        """Mark the snapshot served as read from a store this server cannot read now
        (Redis unreachable), or no longer: see ``Snapshot.behind``."""
        with self._refresh_lock:
            behind = self._read_failed or self.store.unreachable
            snapshot = getattr(self, "snapshot", None)  # not yet while constructed
            if snapshot is not None and snapshot.behind != behind:
                self.snapshot = dataclasses.replace(snapshot, behind=behind)

    def _empty(self) -> Snapshot:
        version, version_head = core.version_plans(self.pinned, self.static_url, None)
        return Snapshot(
            current_id=self.pinned,
            seq=None,
            order=MappingProxyType({}),
            files=MappingProxyType({}),
            urls=MappingProxyType({}),
            routes=MappingProxyType({self._client_path: self._client}),
            static_url=self.static_url,
            version=version,
            version_head=version_head,
            script_path=self._client_path,
        )

    def _cannot_read(self, exc: Exception) -> None:
        """Report a failed read of the store (by a snapshot or the watcher's probe)."""
        self._read_failed = True
        self._note_behind()
        self._report(f"Cannot read deploysync store {self.store.location}: {exc}")

    def _report(self, message: str, *, then: str | None = None) -> None:
        """Log *message* once (until another one), with what is still served, or *then*
        (what follows for one asset while the rest is served)."""
        if self.store.unreachable:
            # An outage: the store logs it once from the watcher, and its end (a command
            # that builds a runtime must not print what only a server would say).
            return
        if then is not None and self._unread is not None:
            self._unread.append((message, then))  # told once the snapshot is built
            return
        if message != self._last_error:
            self._last_error = message
            serving = getattr(self, "snapshot", None)  # not yet while constructed
            if then is not None:
                logger.error("%s; %s", message, then)
            elif serving is not None and serving.current_id is not None:
                logger.error("%s; still serving deployment %s", message, serving.current_id)
            else:
                logger.error("%s; no deployment is served until it can be read", message)

    def _build(self, initial: bool) -> Snapshot | None:
        """A new snapshot, or ``None`` when nothing changed or the store cannot be read."""
        store = self.store
        try:
            token = store.probe()
            activations = store.activations()
            ids = frozenset(store.ids())
            self._probed = token
        except (StoreError, OSError, ValueError) as exc:
            # A store folder not created yet (nothing built so far) is said by the
            # watcher, which a first request starts: a command that loads the app (to
            # build into that store, say) must not print what only a server would say.
            if not (initial and isinstance(exc, StoreNotFound)):
                self._cannot_read(exc)
            return None
        self._read_failed = False
        # The current (or pinned) deployment is read even when the list lost it (a
        # Redis set evicted or deleted): its pages are out there.
        current_id = self.pinned or (activations[-1].id if activations else None)
        listed = ids
        if current_id is not None:
            ids |= {current_id}
        state = (token, ids)
        if state == self._state:
            return None
        if not activations and self._activated:
            # An activation record never shrinks to nothing: a store that reads as empty
            # after having a current deployment was lost (a Redis restarted without its
            # data, a wiped folder). Serving nothing would break every open page.
            self._report(f"deploysync store {store.location} reads as empty")
            return None
        self._activated = self._activated or bool(activations)
        order = {a.id: a.seq for a in activations}
        gone = set(self._deployments) - ids
        for ident in gone:
            del self._deployments[ident]
        for ident in sorted(ids - set(self._deployments)):
            try:
                self._deployments[ident] = store.load(ident)
            except DeploymentNotFound:
                if ident in listed or ident != self.pinned:  # listed, or activated
                    self._report(f"Deployment {ident} is missing from {store.location}")
                elif not self._pin_told:  # pinned to one not built (yet), or a typo
                    self._pin_told = True
                    logger.warning(
                        "Deployment %s (pinned) is not in %s: pages name it, and its assets"
                        " are served once it is built",
                        ident,
                        store.location,
                    )
            except (StoreError, OSError, ValueError) as exc:
                self._report(f"Cannot load deployment {ident} from {store.location}: {exc}")
        current = self._deployments.get(current_id) if current_id else None
        if current is None and current_id is not None and current_id != self.pinned:
            # The current manifest is unreadable or lost (a Redis key evicted): keep
            # what we have, try again later. Only a pin may name one not built yet.
            return None
        if current is not None and current.static_url != self.static_url:
            message = (
                f"Deployment {current.id} in {store.location} was built for the static URL"
                f" '{current.static_url}', but this server serves assets under"
                f" '{self.static_url}': build one for '{self.static_url}' (`deploysync build"
                f" --static-url`, Django's collectstatic, `flask deploysync build`), or set"
                f" this server's static URL to '{current.static_url}'"
            )
            if initial:
                raise DeploySyncError(message)
            self._report(message)
            return None
        # The current deployment first, then the newest: a name maps to one content.
        ordered = sorted(
            self._deployments.values(),
            key=lambda d: (d.id != current_id, -order.get(d.id, 0), -d.created),
        )
        files: dict[str, StaticFile] = {}
        used: set[_FileKey] = set()
        incomplete = False  # an asset (or a variant) could not be read this time
        # Problems with single assets are told in one line per snapshot: a prune racing
        # a server's first read can make hundreds of them.
        self._unread = []
        if self._root is None:
            # A remote store: the new assets' bytes are copied in bulk first, the loop
            # below then finds them local (a deploy of thousands of files would take a
            # round trip per file and per variant, seconds before the switch).
            self._prefetch(ordered)
        try:
            for deployment in ordered:
                if deployment.static_url != self.static_url:
                    continue  # its pages point elsewhere; nothing here would be asked for
                for asset in deployment.assets.values():
                    if asset.name in files or not is_safe_name(asset.name):
                        continue
                    key = _file_key(asset)
                    static = self._files.get(key)
                    if static is not None and self._root is None and not _on_disk(static):
                        static = None  # a local copy vanished (a cache cleaner): fetch again
                    if static is None:
                        static = self._load_file(asset)
                        if static is None:
                            incomplete = True
                            continue
                        if _complete(static, asset):
                            self._files[key] = static
                        else:
                            incomplete = True
                    used.add(key)
                    files[asset.name] = static
        finally:
            unread, self._unread = self._unread, None
        if unread:
            message, then = unread[0]
            if len(unread) > 1:
                message += f" (and {len(unread) - 1} more assets)"
                if all(told == then for _, told in unread):
                    then = _ASSETS_404 if then == _ASSET_404 else then
                else:
                    then = "those assets answer 404, or are served without a variant, until read"
            self._report(message, then=then)
        for stale in set(self._files) - used:
            del self._files[stale]
        urls = (
            {path: self.static_url + url_path(asset.name) for path, asset in current.assets.items()}
            if current is not None
            else {}
        )
        seq = order.get(current_id) if current_id else None
        version, version_head = core.version_plans(current_id, self.static_url, seq)
        if self._last_error is not None and not incomplete:
            logger.info("deploysync store %s readable again", store.location)
            self._last_error = None
        # With an asset missing, the next read builds the snapshot again, whatever the
        # probe says (the watcher reads every RESCAN_POLLS polls): a blob that failed
        # once (Redis unreachable for a moment, a blob written again) is tried again.
        self._state = None if incomplete else state
        if gone:
            # A prune removed deployments: their local copies (a remote store's cache)
            # are of no use any more.
            keep: set[str] = set()
            for deployment in self._deployments.values():
                keep |= deployment.digests()
            with contextlib.suppress(StoreError, OSError):
                store.trim_cache(keep)
        return Snapshot(
            current_id=current_id,
            seq=seq,
            order=MappingProxyType(_ranking(order, self._deployments, current)),
            files=MappingProxyType(files),
            urls=MappingProxyType(urls),
            routes=MappingProxyType({self._client_path: self._client}),
            static_url=self.static_url,
            version=version,
            version_head=version_head,
            script_path=self._client_path,
            id_header=((b"x-deployment-id", current_id.encode()),) if current_id else (),
            deployment=current,
            loaded=tuple(sorted(self._deployments)),
        )

    def _prefetch(self, deployments: Iterable[Deployment]) -> None:
        wanted: list[tuple[str, str | None]] = []
        for deployment in deployments:
            if deployment.static_url != self.static_url:
                continue
            for asset in deployment.assets.values():
                if _file_key(asset) in self._files:
                    continue
                # The small ones, held in memory anyway: a batch of large files would
                # pull hundreds of MB at once (they come one by one, as before).
                if asset.size <= MEMORY_LIMIT:
                    wanted.append((asset.digest, None))
                coded = asset.encodings.items()
                wanted += [(asset.digest, c) for c, size in coded if size <= MEMORY_LIMIT]
        if wanted:
            with contextlib.suppress(StoreError, OSError, ValueError):  # each read tells
                self.store.prefetch(wanted)

    def _load_file(self, asset: Asset) -> StaticFile | None:
        """The servable form of *asset*, or ``None`` when its bytes are not trustworthy."""
        try:
            content_type = asset.content_type.encode("latin-1")
            vary = bool(asset.encodings)
            etag_base = asset.digest[:32]
            identity = self._variant(asset, None, asset.size, etag_base, content_type, vary)
            if identity is None:
                return None
        except (StoreError, OSError, UnicodeEncodeError, ValueError) as exc:
            self._report(f"Cannot read asset {asset.name}: {exc}", then=_ASSET_404)
            return None
        coded: dict[str, core.Variant] = {}
        for encoding, size in asset.encodings.items():
            if encoding not in ("br", "gzip"):
                continue
            tag = f"{etag_base}-{'br' if encoding == 'br' else 'gz'}"
            try:
                variant = self._variant(asset, encoding, size, tag, content_type, vary)
            except (StoreError, OSError, ValueError) as exc:
                # Served without it (identity or the other encoding) meanwhile.
                self._report(
                    f"Cannot read asset {asset.name} ({encoding}): {exc}",
                    then="it is served without that variant until it can be read",
                )
                continue
            if variant is not None:
                coded[encoding] = variant
        vary = bool(coded)
        if vary != bool(asset.encodings):
            identity = self._variant(asset, None, asset.size, etag_base, content_type, vary)
            assert identity is not None
        return StaticFile(
            content_type=content_type,
            identity=identity,
            gzip=coded.get("gzip"),
            br=coded.get("br"),
            vary=vary,
        )

    def _variant(
        self,
        asset: Asset,
        encoding: str | None,
        size: int,
        etag: str,
        content_type: bytes,
        vary: bool,
    ) -> core.Variant | None:
        found = (
            self._copied(asset, encoding, size)
            if self._root is None
            else self._stored(self._root, asset, encoding, size)
        )
        if found is None:
            return None
        data, path = found
        return core.make_variant(
            encoding,
            etag=f'"{etag}"'.encode(),
            content_type=content_type,
            size=size,
            data=data,
            path=path,
            vary=vary,
        )

    def _stored(
        self, root: str, asset: Asset, encoding: str | None, size: int
    ) -> tuple[bytes | None, str | None] | None:
        """A directory store's blob: its bytes when small, else its file."""
        store = self.store
        # Never a byte from outside the store, even through a symlink inside it.
        path = os.path.realpath(store.blob_path(asset.digest, encoding))
        if not path.startswith(root) or os.path.getsize(path) != size:
            self._report(
                f"Blob of {asset.name} ({encoding or 'identity'}) is not a file of the store",
                then=_ASSET_404,
            )
            return None
        if size > MEMORY_LIMIT:
            return None, path
        data = store.read_blob(asset.digest, encoding)
        if not _matches(data, size, asset.digest if encoding is None else None):
            self._report(f"Blob of {asset.name} does not match its manifest entry", then=_ASSET_404)
            return None
        return data, None

    def _copied(
        self, asset: Asset, encoding: str | None, size: int
    ) -> tuple[bytes | None, str | None] | None:
        """A remote store's blob from its local copy: the bytes when small, else the file.

        A copy that does not match the manifest is fetched again: the store lost its data
        and the same file was stored again with other compressed bytes (another brotli
        quality), or the copy was damaged. Sizes are what the manifest records of a
        variant; an identity copy is named by its sha256, checked when it was fetched.
        """
        store = self.store
        for _ in range(2):
            try:
                path = store.blob_path(asset.digest, encoding)
            except CacheError as exc:
                self._cache_unusable(exc)
                data = store.read_blob(asset.digest, encoding)
                if not _matches(data, size, asset.digest if encoding is None else None):
                    break
                return data, None
            try:
                if size > MEMORY_LIMIT:
                    if os.path.getsize(path) == size:
                        return None, path
                else:
                    with open(path, "rb") as fh:
                        data = fh.read(size + 1)
                    if _matches(data, size, asset.digest if encoding is None else None):
                        return data, None
            except FileNotFoundError:
                continue  # removed meanwhile (a cache cleaner): fetch it again
            store.drop_copy(asset.digest, encoding)
        self._report(
            f"Blob of {asset.name} ({encoding or 'identity'}) does not match its manifest entry",
            then=_ASSET_404,
        )
        return None

    def _cache_unusable(self, exc: CacheError) -> None:
        if not self._cache_warned:
            self._cache_warned = True
            logger.warning(
                "%s: assets are served from memory instead (the cache_dir option chooses"
                " another folder)",
                exc,
            )

    def _restore(self, path: str) -> bool:
        """Fetch again the local copy at *path*, a file of a served asset that vanished;
        whether it is back. Only the copies of a remote store can be fetched again."""
        if self._root is not None or self.store.unreachable:
            return False
        for key, static in list(self._files.items()):
            for variant in (static.identity, static.gzip, static.br):
                if variant is None or variant.path != path:
                    continue
                try:
                    fetched = self.store.blob_path(key[0], variant.encoding)
                    back = fetched == path and os.path.getsize(path) == variant.size
                except (StoreError, OSError):
                    return False
                now = time.monotonic()
                if back and now - self._healed_at > CACHE_GRACE:
                    self._healed_at = now
                    logger.warning(
                        "Local copies of blobs of %s vanished from '%s' (a cache cleaner?);"
                        " fetching them again as they are asked for",
                        self.store.location,
                        os.path.dirname(os.path.dirname(path)),
                    )
                return back
        return False

    # -- the watcher ---------------------------------------------------------------------------
    def _start_watcher(self) -> None:
        with self._watch_lock:
            pid = os.getpid()
            if self._closed or (self._watching and self._watcher_pid == pid):
                return
            # The snapshot may have been read a while ago (at start-up, or in the parent
            # of this forked worker, which may have served for hours): the watcher reads
            # the store first, and this first request waits for that, briefly (a Redis
            # that hangs must not hold it for the socket timeout).
            stale = time.monotonic() - self._read_at > self.poll_interval
            first = threading.Event()
            if not stale:
                first.set()
            # A forked child inherits the flag but not the thread: start its own.
            self._stop = threading.Event()
            # The thread holds the runtime weakly: a runtime nobody uses any more (an
            # app of a test suite's factory) is collected, and its watcher ends.
            thread = threading.Thread(
                target=_watch,
                args=(weakref.ref(self), self.store, self._stop, None if first.is_set() else first),
                name="deploysync-watcher",
                daemon=True,
            )
            thread.start()
            self._watcher_pid = pid
            self._watching = True
            first.wait(FIRST_READ_WAIT)

    def _watch_first(self, first: threading.Event | None) -> Hashable:
        """The watcher's start: the first read (*first* set once done), the store's
        configuration warnings; the token to compare the next probes with."""
        if first is not None:
            try:
                self.refresh()
            except Exception as exc:  # the watcher must outlive any store hiccup
                self._report(f"deploysync watcher: {exc!r}")
            finally:
                first.set()
        if not self._config_told:
            self._config_told = True
            with contextlib.suppress(Exception):
                for message in self.store.config_warnings():
                    logger.warning("deploysync: %s", message)
        return self._state[0] if self._state else None

    def _watch_step(self, polls: int, token: Hashable) -> tuple[int, Hashable]:
        """One look after a wait: renew the hold, probe, re-read when it changed (or
        every RESCAN_POLLS polls)."""
        polls += 1
        if self.pinned is not None and time.monotonic() - self._held_at >= HOLD_RENEW:
            self._hold()
        fresh = self.store.probe()
        # While reads fail, every poll reads again: a probe answering (a directory
        # store's stats of files that are gone) says nothing of whether a read would.
        if fresh != token or polls >= RESCAN_POLLS or self._read_failed:
            self.refresh()
            return 0, fresh
        self._note_behind()  # Redis may have gone away (or come back) since
        return polls, token

    def close(self) -> None:
        """Stop the watcher and release the store."""
        self._closed = True
        self._watching = True  # never start again
        self._stop.set()
        with contextlib.suppress(Exception):
            self.store.close()


_RUNTIMES: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _watch(
    ref: weakref.ref[Runtime],
    store: Store,
    stop: threading.Event,
    first: threading.Event | None = None,
) -> None:
    """A runtime's watcher thread: waits on the store, looks, and ends when the runtime
    is closed or collected (held only while it looks, never while it waits)."""
    runtime = ref()
    if runtime is None:
        return
    poll = runtime.poll_interval
    token = runtime._watch_first(first)
    polls = 0
    del runtime
    while not stop.is_set():
        try:
            store.wait_for_change(poll)
            runtime = ref()
            if runtime is None or stop.is_set():
                return
            polls, token = runtime._watch_step(polls, token)
        except (StoreError, OSError, ValueError) as exc:
            runtime = ref()
            if runtime is None:
                return
            runtime._cannot_read(exc)
            del runtime
            stop.wait(poll)
        except Exception as exc:  # the watcher must outlive any store hiccup
            runtime = ref()
            if runtime is None:
                return
            runtime._report(f"deploysync watcher: {exc!r}")
            del runtime
            stop.wait(poll)
        else:
            del runtime


def _after_fork() -> None:
    # A forked child (a gunicorn worker) inherits the flag but not the thread.
    for runtime in list(_RUNTIMES):
        if not runtime._closed:
            runtime._watching = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _ranking(
    order: dict[str, int], deployments: Mapping[str, Deployment], current: Deployment | None
) -> dict[str, int]:
    """The activation order, with deployments built after *current* but not activated yet
    ranked after it, newest last.

    Pinned servers rolling in render pages of such a deployment before its activation;
    a server still on *current* must give those pages a normal answer, not a 409 that
    would send them back to an older frontend.
    """
    if current is None:
        return order
    pending = sorted(
        (d for d in deployments.values() if d.id not in order and d.created > current.created),
        key=lambda d: (d.created, d.id),
    )
    if not pending:
        return order
    ranking = dict(order)
    for rank, deployment in enumerate(pending, max(order.values(), default=0) + 1):
        ranking[deployment.id] = rank
    return ranking


def open_files(body: Iterable[core.BodyPart]) -> dict[str, BinaryIO] | None:
    """The files *body* is read from, each opened once before the answer starts: a prune
    that unlinks one while it is sent leaves it readable to the end (the parts of a
    multi-range answer included). ``None`` when one is gone for good; the local copies a
    cache cleaner removed are fetched again first. The caller closes them."""
    paths = list(dict.fromkeys(p.path for p in body if not isinstance(p, bytes)))
    for retry in (False, True):
        files: dict[str, BinaryIO] = {}
        try:
            for path in paths:
                files[path] = open(path, "rb")  # noqa: SIM115 - the caller closes them
            return files
        except FileNotFoundError:
            for fh in files.values():
                fh.close()
        if retry or not restore_files(paths):
            return None
    return None


class OpenedBody:
    """A plan's body and the files it is read from, opened by :func:`open_files` before
    the answer started. Iterating reads it in *chunk*-sized pieces; ``close()`` closes
    the files, whether or not it was read (WSGI servers and Django call it)."""

    __slots__ = ("body", "chunk", "files")

    def __init__(
        self, body: Iterable[core.BodyPart], files: dict[str, BinaryIO], chunk: int
    ) -> None:
        self.body = tuple(body)
        self.files = files
        self.chunk = chunk

    def __iter__(self) -> Iterator[bytes]:
        for part in self.body:
            if isinstance(part, bytes):
                yield part
                continue
            fh = self.files[part.path]
            fh.seek(part.offset)
            left = part.length
            while left > 0:
                data = fh.read(min(self.chunk, left))
                if not data:
                    raise OSError(f"{part.path} is shorter than expected")
                left -= len(data)
                yield data

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def restore_files(paths: Iterable[str]) -> bool:
    """Fetch again the local copies at *paths* that vanished from a remote store's cache
    (a cache cleaner emptied ``~/.cache`` or the temporary folder); whether every one is
    there now. The adapters call it before answering 404 for a file that is gone."""
    missing = [path for path in paths if not os.path.isfile(path)]
    for runtime in list(_RUNTIMES):
        if not missing:
            break
        missing = [path for path in missing if not runtime._restore(path)]
    return not missing


_FileKey = tuple[str, str, tuple[tuple[str, int], ...]]


def _file_key(asset: Asset) -> _FileKey:
    """What makes two assets (of any deployments) one servable file."""
    return (asset.digest, asset.content_type, tuple(sorted(asset.encodings.items())))


def _on_disk(static: StaticFile) -> bool:
    """Whether every file *static* is sent from still exists."""
    return all(
        variant is None or variant.path is None or os.path.isfile(variant.path)
        for variant in (static.identity, static.gzip, static.br)
    )


def _matches(data: bytes, size: int, digest: str | None) -> bool:
    """Whether *data* has the manifest's *size* (and sha256 *digest*, for an identity)."""
    return len(data) == size and (digest is None or hashlib.sha256(data).hexdigest() == digest)


_ASSET_404 = "that asset answers 404 until it can be read"
_ASSETS_404 = "those assets answer 404 until they can be read"
_told_compressed = False


def tell_compressed(edit: core.ResponseEdit | None) -> None:
    """Say once per process that the app compresses its pages itself (the tags cannot be
    added to them), if *edit* is such a page."""
    global _told_compressed
    if edit is None or not edit.compressed or _told_compressed:
        return
    _told_compressed = True
    logger.warning(
        "deploysync: an HTML page came from the app already compressed (Content-Encoding:"
        " %s), so its deployment tags could not be added; compress outside the deploysync"
        " middleware (a compressing middleware around it, or the proxy) instead",
        edit.compressed.decode("latin-1"),
    )


def _complete(static: StaticFile, asset: Asset) -> bool:
    """Whether *static* serves every variant the manifest lists for *asset*."""
    found = {"gzip": static.gzip, "br": static.br}
    return all(found.get(encoding, static) is not None for encoding in asset.encodings)


_ESCAPE = re.compile(rb"(%[0-9A-Fa-f]{2})")


@functools.lru_cache(maxsize=64)  # per request under a mount: a server has one or a few
def mount_prefix(root: str, *, wsgi: bool = False) -> str:
    """The URL path of an app mounted at *root*, percent-encoded, without a trailing "/".

    *root* is an ASGI ``root_path`` (decoded text), or with *wsgi* a ``SCRIPT_NAME``,
    whose characters are the request's bytes (PEP 3333).
    """
    # One leading "/", whatever came: "//host" would be another site's URL (a client's
    # SCRIPT_NAME header a server trusts), "x" a URL relative to each page.
    root = "/" + root.strip("/")
    if root == "/":
        return ""
    if not wsgi:  # decoded text (ASGI): every "%" is one
        return quote(root, safe=URL_PATH_SAFE, errors="surrogateescape")
    try:
        raw = root.encode("latin-1")
    except UnicodeEncodeError:  # not latin-1: not from a server following PEP 3333
        raw = root.encode("utf-8", "surrogateescape")
    # Escapes already there stay (gunicorn passes SCRIPT_NAME as the client sent it,
    # still encoded; werkzeug's URLs keep them too); a "%" of no escape is encoded.
    parts = _ESCAPE.split(raw)
    return "".join(
        part.decode("ascii") if index % 2 else quote(part, safe=URL_PATH_SAFE)
        for index, part in enumerate(parts)
    )


def _store_root(store: Store) -> str | None:
    root = getattr(store, "root", None)
    if root is None:
        return None
    return os.path.realpath(str(root)) + os.sep


def _client_file() -> tuple[str, StaticFile]:
    """The browser client as a static file at ``/_deploysync/client-<hash>.js``."""
    try:
        data = CLIENT_FILE.read_bytes()
    except OSError:
        data = PLACEHOLDER_CLIENT
    digest = hashlib.sha256(data).hexdigest()
    path = f"{core.CLIENT_PREFIX}client-{digest[:12]}.js"
    compressed = gzip.compress(data, mtime=0)
    etag = digest[:32]
    vary = len(compressed) < len(data)
    identity = core.make_variant(
        None,
        etag=f'"{etag}"'.encode(),
        content_type=CLIENT_CONTENT_TYPE,
        size=len(data),
        data=data,
        path=None,
        vary=vary,
    )
    coded = (
        core.make_variant(
            "gzip",
            etag=f'"{etag}-gz"'.encode(),
            content_type=CLIENT_CONTENT_TYPE,
            size=len(compressed),
            data=compressed,
            path=None,
            vary=True,
        )
        if vary
        else None
    )
    return path, StaticFile(CLIENT_CONTENT_TYPE, identity, gzip=coded, vary=vary)


def resolve_nonce(option: NonceOption, holder: Mapping[str, Any] | Any) -> str | None:
    """A CSP nonce from a callable(scope or environ), or a key looked up in it.

    A string key is looked up in the scope/environ, then in its ``"state"`` mapping
    (``scope["state"]["csp_nonce"]``, where ASGI frameworks keep request state).
    """
    if option is None:
        return None
    if callable(option):
        value = option(holder)
    else:
        value = holder.get(option) if isinstance(holder, Mapping) else None
        if value is None and isinstance(holder, Mapping):
            state = holder.get("state")
            if isinstance(state, Mapping):
                value = state.get(option)
            elif state is not None:
                value = getattr(state, option, None)
    if isinstance(value, str) and value:
        return value
    return None


AppT = TypeVar("AppT")


class Middleware(Generic[AppT]):
    """What the ASGI and WSGI middleware share: the options, the runtime, ``url()``.

    The adapters add only their ``__call__`` (moving bytes) and ``head_tags``.
    """

    def __init__(
        self,
        app: AppT,
        *,
        store: Store | str | os.PathLike[str] | None = None,
        static_url: str = DEFAULT_STATIC_URL,
        routing: str = "server",
        check_interval: float = 0,
        deployment: str | None = None,
        strict: bool = False,
        nonce: NonceOption = None,
        poll_interval: float = 0.5,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not (nonce is None or callable(nonce) or (isinstance(nonce, str) and nonce)):
            raise DeploySyncError(
                f"nonce must be a callable(scope or environ) or the key of a value in it,"
                f" not {nonce!r}"
            )
        self.app = app
        self.runtime = Runtime(
            store,
            static_url=static_url,
            routing=routing,
            check_interval=check_interval,
            deployment=deployment,
            strict=strict,
            poll_interval=poll_interval,
            cache_dir=cache_dir,
        )
        self.nonce = nonce
        self._static_path = self.runtime.static_path
        self._request_state = self.runtime.request_state

    def url(self, logical_path: str) -> str:
        """The hashed URL of *logical_path* in the current deployment."""
        return self.runtime.url(logical_path)

    def close(self) -> None:
        """Stop watching the store."""
        self.runtime.close()
