"""The store interface: where deployments live and which one is current.

A backend provides a handful of primitives (blobs, manifests, the activation record, a
lock, a cheap change probe); listing and pruning are written once here on top of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..manifest import Deployment, DeploymentInfo, DeploySyncError, validate_id

DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")
ENCODINGS = ("br", "gzip")
# How a stored variant's name (a file, a key) ends.
SUFFIXES = {"br": ".br", "gzip": ".gz"}
# How many activations the record keeps; older ones only matter for ordering, and an id
# absent from the record counts as older than every id in it.
HISTORY_LIMIT = 1000
# How long a server's hold on its pinned deployment lasts without being renewed; servers
# renew it every HOLD_RENEW seconds, so a stopped server's hold lapses by itself.
HOLD_TTL = 600.0
HOLD_RENEW = 60.0
# A local copy younger than this is never trimmed: another worker sharing the cache may
# have fetched it for a deployment this one has not seen yet.
CACHE_GRACE = 600.0


#: deploysync's cache folder, when set: the build cache and a Redis store's local copies.
CACHE_ENV = "DEPLOYSYNC_CACHE_DIR"


def default_cache_home() -> tuple[Path, bool]:
    """deploysync's cache folder, as the build cache's, and whether it was chosen
    (``$DEPLOYSYNC_CACHE_DIR``) rather than derived.

    Else ``$XDG_CACHE_HOME/deploysync`` or ``~/.cache/deploysync``, falling back to the
    temporary folder when that is not writable (a service account); a derived folder is
    checked to be this user's before it is used.
    """
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser().absolute(), True
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base) or not _writable(base):
        user = os.getuid() if hasattr(os, "getuid") else "user"
        base = os.path.join(tempfile.gettempdir(), f"deploysync-{user}")
    return Path(base) / "deploysync", False


def _writable(path: str) -> bool:
    """Whether *path* can be created or written: its nearest existing ancestor is writable."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            return False
        path = parent
    return os.access(path, os.W_OK)


def make_folders(folder: Path, mode: int) -> None:
    """Create *folder* and its missing parents with *mode* whatever the umask (``mkdir``
    applies it, so each is set again); existing folders are left alone."""
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process was first
            path.mkdir()
            os.chmod(path, mode)


class StoreError(DeploySyncError):
    """The store is missing, unwritable, unreachable or inconsistent."""


class StoreNotFound(StoreError):
    """The store does not exist (yet): nothing was ever built into it."""


class CacheError(StoreError):
    """A remote store's local cache cannot be used (a folder other users could write, a
    full or read-only disk); the bytes can still be read from the store itself."""


class DeploymentNotFound(StoreError, KeyError):
    """No deployment with that id in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "Deployment not found"


def check_digest(digest: str) -> str:
    """Blob keys are sha256 hex digests; anything else never reaches a path or a key."""
    if not DIGEST_PATTERN.fullmatch(digest):
        raise StoreError(f"Invalid blob digest {digest[:80]!r}")
    return digest


@dataclass(frozen=True, slots=True)
class Activation:
    """One activation: *id* became current at time *at*, as the *seq*-th activation."""

    id: str
    seq: int
    at: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "seq": self.seq, "at": self.at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Activation:
        return cls(id=validate_id(str(data["id"])), seq=int(data["seq"]), at=float(data["at"]))


@dataclass(frozen=True, slots=True)
class PruneResult:
    deployments: tuple[str, ...]
    blobs: int
    bytes: int


class PruneError(StoreError):
    """A prune that could not delete every unused blob; ``result`` is what it did."""

    def __init__(self, message: str, result: PruneResult) -> None:
        super().__init__(message)
        self.result = result


def _last_activations(record: Iterable[Activation]) -> dict[str, float]:
    """Each activated id -> the time of its last activation (*record* is oldest first)."""
    return {a.id: a.at for a in record}


def last_used(deployment: Deployment, activated: Mapping[str, float]) -> float:
    """When *deployment* was last new: built, or activated (a rollback makes an old
    deployment new again). Newest first by it is the order of ``list`` and ``prune``."""
    return max(deployment.created, activated.get(deployment.id, 0.0))


class Store(ABC):
    """Where deployments live. Implementations must make :meth:`publish` and
    :meth:`activate` atomic: a reader sees the old state or the complete new one."""

    #: A human-readable location, for messages.
    location: str = ""
    #: Called once when a writer finds the lock held by another one, before it waits
    #: (the command line says so instead of hanging in silence).
    on_wait: Callable[[], None] | None = None

    def _waiting(self) -> None:
        if self.on_wait is not None:
            self.on_wait()

    # -- blobs: content-addressed, written once, never modified ---------------------------
    def missing_blobs(self, blobs: Mapping[str, Collection[str]]) -> set[str]:
        """The digests of *blobs* (digest -> its encodings) whose bytes or one of those
        variants the store lost by itself (a Redis key evicted); a directory store loses
        nothing but to prune."""
        return set()

    @abstractmethod
    def blob_variants(self, digest: str) -> Mapping[str, int] | None:
        """``None`` when the blob is absent; else its stored encodings and their sizes
        (``{"gzip": 812}``)."""

    def blob_stamp(self, digest: str) -> str | None:
        """``None`` when the blob is absent; else a token that stays the same while the
        stored blob is the same one (not deleted and stored again since).

        A build remembers each blob's variants next to its stamp, so a rebuild checks a
        stamp instead of asking for every variant again. This default is the variants
        themselves; a backend with a cheaper token overrides it.
        """
        variants = self.blob_variants(digest)
        return None if variants is None else json.dumps(sorted(variants.items()))

    @abstractmethod
    def put_blob(self, digest: str, data: bytes, variants: Mapping[str, bytes]) -> None:
        """Store *data* under *digest* with its precompressed *variants*. Idempotent."""

    @abstractmethod
    def read_blob(self, digest: str, encoding: str | None = None) -> bytes:
        """The stored bytes (or a precompressed variant); ``StoreError`` when absent."""

    @abstractmethod
    def blob_path(self, digest: str, encoding: str | None = None) -> str:
        """A local file holding the blob, for zero-copy serving; ``StoreError`` when absent.

        A remote backend materialises the blob into a local cache first."""

    def prefetch(self, blobs: Iterable[tuple[str, str | None]]) -> None:  # noqa: B027
        """Make :meth:`blob_path` of these ``(digest, encoding)`` pairs cheap, in bulk: a
        remote backend fetches what its local cache lacks in a few round trips instead of
        one each. Best effort (what fails is fetched again, and told, by ``blob_path``);
        a local backend has nothing to do."""

    @abstractmethod
    def all_blobs(self) -> Iterator[str]:
        """Every stored digest (used by prune)."""

    @abstractmethod
    def delete_blob(self, digest: str) -> int:
        """Delete a blob and its variants; return the bytes freed. An absent blob frees
        nothing; ``StoreError`` when a part of it cannot be deleted."""

    # -- manifests -------------------------------------------------------------------------
    @abstractmethod
    def publish(self, deployment: Deployment, *, present: Collection[str] = ()) -> bool:
        """Make *deployment* visible, atomically; its blobs must be stored already.

        *present*: digests the caller found or wrote in the store while holding the lock
        (no other writer can have removed them since); a backend need not look for them
        again. Returns ``False`` when a deployment with that id already exists (it is kept
        as is).
        """

    @abstractmethod
    def load(self, deployment_id: str) -> Deployment:
        """The deployment; ``DeploymentNotFound`` when absent, ``ManifestError`` when its
        manifest cannot be read (unreadable, malformed)."""

    def deployment_stamp(self, deployment_id: str) -> str | None:
        """A token that stays the same while the published deployment is the same one
        (not removed and published again since); ``None`` when absent or when the backend
        has no cheap token.

        While a deployment stays published, every blob it uses stays in the store: a
        build that knows the blobs of the deployment it made last trusts them without
        asking the store about each one.
        """
        return None

    @abstractmethod
    def ids(self) -> list[str]:
        """Every published deployment id, in no particular order."""

    @abstractmethod
    def delete_deployment(self, deployment_id: str) -> None:
        """Unpublish a deployment (its blobs stay until pruned)."""

    # -- activation ------------------------------------------------------------------------
    @abstractmethod
    def activations(self) -> list[Activation]:
        """The activation record, oldest first; the last one is current."""

    def announce(self, deployment_id: str) -> None:
        """Make servers read *deployment_id* again: blobs it uses were written again
        (a directory store cannot lose them, so there is nothing to say)."""
        return None

    def stray_ids(self, listed: Collection[str]) -> list[str]:
        """Published deployments missing from *listed*, what :meth:`ids` gave (a Redis
        set that lost members); looked for by the commands that must see every one."""
        return []

    def config_warnings(self) -> list[str]:
        """What in the store's configuration puts deployments at risk (a Redis that
        evicts keys), for commands and servers to say; ``[]`` when it cannot tell."""
        return []

    def last_seq(self) -> int:
        """The highest activation number a counter of the store has used, apart from
        the record (0: the record is all there is)."""
        return 0

    @abstractmethod
    def _record_activation(self, activation: Activation) -> None:
        """Append *activation* to the record, atomically (the lock is held)."""

    @abstractmethod
    def probe(self) -> Hashable:
        """A cheap token that changes whenever the current deployment may have changed."""

    @abstractmethod
    def lock(self) -> AbstractContextManager[None]:
        """An exclusive lock for writers (builds, activations, prunes) of this store."""

    def hold(self, deployment_id: str, ttl: float = HOLD_TTL) -> None:
        """Record that a running server renders *deployment_id* (it is pinned to it) for
        the next *ttl* seconds, so :meth:`prune` keeps it. Renew before it lapses."""
        return None

    def held(self) -> set[str]:
        """The ids some running server holds right now."""
        return set()

    def trim_cache(self, keep: set[str], older_than: float = CACHE_GRACE) -> int:
        """Drop local copies of blobs not in *keep* (digests) that are older than
        *older_than* seconds; return the bytes freed. Only a remote store keeps copies."""
        return 0

    def drop_copy(self, digest: str, encoding: str | None = None) -> None:
        """Forget the local copy of a blob (one that does not match its manifest entry),
        so the next :meth:`blob_path` fetches it again. Only a remote store keeps copies."""
        return None

    def keep_last_known(self) -> None:
        """Answer reads from the state last read when the store cannot be reached.

        Servers opt in (:class:`~deploysync.serving.Runtime`), so a server process started
        or restarted during an outage serves the last known deployment. Commands never
        do: they must fail instead of acting on an old state. Only a remote store keeps
        that state (next to its local copies, and only a watching process writes it).
        """
        return None

    @property
    def unreachable(self) -> bool:
        """Whether the last attempt to reach a remote store failed: an outage, which the
        store logs once from :meth:`wait_for_change`, the loop of a serving process."""
        return False

    def wait_for_change(self, timeout: float) -> None:
        """Block up to *timeout* seconds, returning early when the store learns of an
        activation (a push backend wakes at once; polling backends just sleep)."""
        time.sleep(timeout)

    def ensure_writable(self) -> None:
        """Raise ``StoreError`` with a one-line reason when the store cannot be written."""
        return None

    def close(self) -> None:
        """Release connections and files."""
        return None

    # -- written once, on the primitives ---------------------------------------------------
    def current(self) -> str | None:
        """The id of the current deployment, or ``None`` before the first activation."""
        record = self.activations()
        return record[-1].id if record else None

    def exists(self, deployment_id: str) -> bool:
        return deployment_id in self.ids()

    def activate(self, deployment_id: str) -> Activation:
        """Make *deployment_id* current (newer or older: a rollback is the same move)."""
        validate_id(deployment_id)
        with self.lock():
            deployment = self.load(deployment_id)  # raises DeploymentNotFound
            # Its blobs' bytes; a lost precompressed variant only costs a larger transfer
            # (servers serve without it).
            lost = self.missing_blobs({a.digest: () for a in deployment.assets.values()})
            if lost:
                raise StoreError(
                    f"Cannot activate {deployment_id}: {len(lost)} of its blobs are missing from"
                    f" {self.location}; build it again (the same folder restores them)"
                )
            record = self.activations()
            # The probe's number too: an activation record that lost entries (a Redis
            # key evicted) must not give a number the store already used.
            seq = max(record[-1].seq if record else 0, self.last_seq()) + 1
            activation = Activation(id=deployment_id, seq=seq, at=time.time())
            self._record_activation(activation)
            return activation

    def order(self) -> dict[str, int]:
        """Each activated id -> the seq of its latest activation (higher is newer)."""
        return {a.id: a.seq for a in self.activations()}

    def deployments(self) -> list[Deployment]:
        """Every readable deployment, newest first (see :meth:`_read_all`)."""
        return self._read_all(_last_activations(self.activations()))[0]

    def _read_all(
        self, activated: Mapping[str, float], *also: str | None
    ) -> tuple[list[Deployment], dict[str, str], list[str]]:
        """Every readable deployment, newest first; each unreadable one's id -> why; and
        the ids listed whose manifest is gone (a Redis key evicted).

        Newest by :func:`last_used` (then by id), given *activated* (id -> the time of
        its last activation): ``list`` shows this order and ``prune --keep`` counts in it.

        Deployments the list lost are read too: those published but not listed
        (:meth:`stray_ids`) and the ids in *also* (the current one, held ones).
        """
        found = []
        unreadable = {}
        vanished = []
        ids = self.ids()
        listed = set(ids)
        extra = sorted({i for i in (*self.stray_ids(listed), *also) if i is not None} - listed)
        for ident in [*ids, *extra]:
            try:
                found.append(self.load(ident))
            except DeploymentNotFound:
                vanished.append(ident)
            except ValueError as exc:  # ManifestError: unreadable, not JSON, malformed
                unreadable[ident] = " ".join(str(exc).split())
        if vanished:
            # Unpublished since ids() listed them (a prune), or listed without a manifest.
            still = set(self.ids())
            vanished = [ident for ident in vanished if ident in still]
        found.sort(key=lambda d: (last_used(d, activated), d.id), reverse=True)
        return found, dict(sorted(unreadable.items())), vanished

    def list(self) -> list[DeploymentInfo]:
        """What ``deploysync list`` shows: the deployments whose manifest cannot be read
        first (with the reason in ``error``), then the others, newest first."""
        record = self.activations()
        current = record[-1].id if record else None
        activated = _last_activations(record)
        deployments, unreadable, vanished = self._read_all(activated, current)
        unreadable.update((ident, "its manifest is missing") for ident in vanished)
        infos = [
            DeploymentInfo(
                id=ident,
                created=None,
                activated=activated.get(ident),
                files=None,
                bytes=None,
                current=ident == current,
                error=reason,
            )
            for ident, reason in unreadable.items()
        ]
        infos.extend(
            DeploymentInfo(
                id=d.id,
                created=d.created,
                activated=activated.get(d.id),
                files=len(d.assets),
                bytes=d.total_size,
                current=d.id == current,
                static_url=d.static_url,
            )
            for d in deployments
        )
        return infos

    def _require_store(self) -> None:
        """Raise :class:`StoreNotFound` when there is no store here to change (a command
        that only changes a store never makes one). A Redis database is always one."""
        return None

    def prune(self, keep: int, older_than: float | None = None) -> PruneResult:
        """Delete what only deployments outside the newest *keep* use.

        Newest by the later of their creation and their last activation: a rollback to
        an old deployment makes it new again. The current deployment is always kept, and
        so is any deployment a running server holds (a server pinned to it, see
        :meth:`hold`). With *older_than* (seconds), a deployment is removed only when
        that time is also more than that long ago. Blobs that no
        remaining deployment uses (including leftovers of an interrupted build) go too.

        A deployment whose manifest cannot be read makes it refuse (``StoreError``) before
        deleting anything: the blobs it uses are unknown. A blob that cannot be deleted
        stops it with :class:`PruneError`, which carries what was deleted until then.
        """
        if keep < 1:
            raise StoreError("--keep must be at least 1")
        self._require_store()
        with self.lock():
            current = self.current()
            held = self.held()
            activated = _last_activations(self.activations())
            deployments, unreadable, vanished = self._read_all(activated, current, *held)
            if current is not None and current not in {d.id for d in deployments}:
                unreadable.setdefault(current, "the current deployment's manifest is missing")
            if unreadable:
                ident, reason = next(iter(unreadable.items()))
                more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
                raise StoreError(
                    f"Cannot prune {self.location}: deployment {ident!r}{more} cannot be read"
                    f" ({reason}), so the blobs it uses are unknown; nothing was deleted"
                )
            now = time.time()
            doomed = [
                d
                for d in deployments[keep:]
                if d.id != current
                and d.id not in held
                and (older_than is None or now - last_used(d, activated) > older_than)
            ]
            kept = [d for d in deployments if d not in doomed]
            used: set[str] = set()
            for deployment in kept:
                used |= deployment.digests()
            # Unpublish first: a server never sees a manifest whose blobs are gone. Ids
            # listed without a manifest go too: nothing can serve them.
            for ident in [*(d.id for d in doomed), *vanished]:
                self.delete_deployment(ident)
            pruned = tuple([*(d.id for d in doomed), *vanished])
            unused = [digest for digest in self.all_blobs() if digest not in used]
            freed = 0
            for done, digest in enumerate(unused):
                try:
                    freed += self.delete_blob(digest)
                except StoreError as exc:
                    # What is left is unused: the next prune deletes it.
                    left = f"{len(unused) - done} of {len(unused)} unused blobs not deleted"
                    raise PruneError(f"{exc} ({left})", PruneResult(pruned, done, freed)) from None
            return PruneResult(pruned, len(unused), freed)
