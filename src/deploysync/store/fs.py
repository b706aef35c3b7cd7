"""The embedded store: a directory on disk.

Layout::

    STORE/objects/ab/abcdef...        a blob, named by the sha256 of its bytes
    STORE/objects/ab/abcdef....gz     its precompressed variants (.br, .gz)
    STORE/deployments/<id>.json       a published manifest
    STORE/current.json                the activation record; its last entry is current
    STORE/tmp/                        files being written
    STORE/.lock                       the writers' lock

Every file is written under ``tmp/`` and moved into place with ``os.replace``, which is
atomic on POSIX and Windows: a reader, or a build killed at any moment, sees the old file
or the new one, never a part. (The precompressed variants of a blob not stored yet are
written in place, before its plain file: a blob counts as stored only once its plain
file exists, so a part left by a crash is never read.) Blobs are published before the
manifest that names them, and the activation record is replaced last, so ``current``
always names a complete deployment.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Collection, Hashable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

from ..manifest import Deployment, ManifestError, is_valid_id, validate_id
from .base import (
    DIGEST_PATTERN,
    ENCODINGS,
    HISTORY_LIMIT,
    HOLD_TTL,
    SUFFIXES,
    Activation,
    DeploymentNotFound,
    Store,
    StoreError,
    StoreNotFound,
    check_digest,
    make_folders,
)

RECORD = "current.json"

# Names of temporary files: the pid, a random token per process (machines sharing a
# store over the network may reuse pids) and a counter.
_serial = itertools.count()
_token = os.urandom(4).hex()


def _new_token() -> None:
    global _token
    _token = os.urandom(4).hex()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_token)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def _write_error(target: str | Path, exc: OSError) -> StoreError:
    """An error writing *target*, named as such rather than by its temporary file."""
    return StoreError(f"Cannot write '{target}': {exc.strerror or exc}")


@contextlib.contextmanager
def _undone_on_failure(written: str, target: str) -> Iterator[None]:
    """On a failure, delete the file being *written*; an ``OSError`` is told as one
    writing *target*."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(written)
        if isinstance(exc, OSError):
            raise _write_error(target, exc) from None
        raise


def _fill(fd: int, data: bytes, *, durable: bool = False) -> None:
    """Write *data* to the new file *fd* (readable by all, whatever the umask), close it."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, 0o644)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


class FileStore(Store):
    """A store in a local directory, created on first write."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():  # (a typo'd path, a file)
            raise StoreError(f"Store '{self.root}' is a file, not a directory")
        self.location = str(self.root)
        self._objects = self.root / "objects"
        self._objects_str = str(self._objects)
        self._manifests = self.root / "deployments"
        self._tmp = self.root / "tmp"
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_file: int | None = None

    def __repr__(self) -> str:
        return f"FileStore({self.location!r})"

    # -- helpers ---------------------------------------------------------------------------
    def _require(self) -> None:
        if not self.root.is_dir():
            raise StoreNotFound(f"Store directory '{self.root}' does not exist")

    def _blob(self, digest: str, encoding: str | None = None) -> Path:
        check_digest(digest)
        suffix = SUFFIXES[encoding] if encoding else ""
        return self._objects / digest[:2] / (digest + suffix)

    def _write_atomic(self, target: str | Path, data: bytes, *, durable: bool = False) -> None:
        # Plain system calls: a build writes thousands of small files, and a file object
        # and a second path lookup per file cost as much as the writing.
        target = os.fspath(target)
        tmp = f"{self._tmp}/{os.path.basename(target)[:40]}.{os.getpid()}.{_token}.{next(_serial)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise _write_error(target, exc) from None
        with _undone_on_failure(tmp, target):
            _fill(fd, data, durable=durable)
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # the first file of its folder
                make_folders(Path(os.path.dirname(target)), 0o755)
                os.replace(tmp, target)

    # -- writers' setup --------------------------------------------------------------------
    def _require_store(self) -> None:
        self._require()
        if not self._manifests.is_dir():
            # A typo'd path (an empty folder, the source folder) must not become a store.
            raise StoreNotFound(
                f"'{self.root}' is not a deploysync store: it has no {self._manifests.name}/"
                " folder (a build makes one)"
            )

    def ensure_writable(self) -> None:
        try:
            make_folders(self.root, 0o755)
        except OSError as exc:
            reason = exc.strerror
            raise StoreError(f"Cannot create store directory '{self.root}': {reason}") from None
        try:
            for folder in (self._objects, self._manifests, self._tmp):
                make_folders(folder, 0o755)
        except OSError as exc:
            reason = exc.strerror
            raise StoreError(f"Store directory '{self.root}' is not writable: {reason}") from None
        # Every folder a writer adds to or removes from, before anything is written: a
        # build must not find out with its blobs already written.
        for folder in (self.root, self._objects, self._manifests, self._tmp):
            if not os.access(folder, os.W_OK | os.X_OK):
                raise StoreError(f"Store directory '{folder}' is not writable")
        try:
            fd, probe = tempfile.mkstemp(dir=self._tmp, prefix=".probe.")
            os.close(fd)
        except OSError as exc:
            reason = exc.strerror
            raise StoreError(f"Store directory '{self.root}' is not writable: {reason}") from None
        # Creating it proved the point. Another writer that just took the lock may have
        # emptied tmp/ already (_clean_tmp), so the file may be gone.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_depth == 0:
                self.ensure_writable()
                # Only writers need it: a reader of the store could otherwise hold it.
                fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        self._waiting()
                        fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_file = fd
                self._clean_tmp()
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_file is not None:
                    os.close(self._lock_file)  # closing releases the flock
                    self._lock_file = None

    def lock(self) -> AbstractContextManager[None]:
        return self._locked()

    def _clean_tmp(self) -> None:
        # Under the exclusive lock no other writer is running: anything in tmp/ was left
        # by a writer that died.
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                leftover.unlink()

    # -- blobs -----------------------------------------------------------------------------
    def blob_variants(self, digest: str) -> Mapping[str, int] | None:
        # Plain strings and os.stat: a build asks this for every file, and pathlib's
        # object creation cost more than the stats themselves.
        base = f"{self._objects_str}/{check_digest(digest)[:2]}/{digest}"
        try:
            if not stat.S_ISREG(os.stat(base).st_mode):
                return None
        except OSError:
            return None
        found = {}
        for encoding in ENCODINGS:
            try:
                found[encoding] = os.stat(base + SUFFIXES[encoding]).st_size
            except OSError:
                continue
        return found

    def blob_stamp(self, digest: str) -> str | None:
        # One stat: put_blob writes the variants before the plain file, delete_blob removes
        # them before it, and a blob stored again is a new file (new inode and times).
        try:
            st = os.stat(f"{self._objects_str}/{check_digest(digest)[:2]}/{digest}")
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def put_blob(self, digest: str, data: bytes, variants: Mapping[str, bytes]) -> None:
        # Variants first: a blob whose plain file exists is complete. Plain strings: a
        # build writes thousands of blobs, and path objects cost as much as the writing.
        base = f"{self._objects_str}/{check_digest(digest)[:2]}/{digest}"
        stored = os.path.isfile(base)
        for encoding, payload in variants.items():
            if encoding not in SUFFIXES:
                raise StoreError(f"Unknown encoding {encoding!r}")
            if stored:  # a variant the blob lost: others may be reading the blob
                self._write_atomic(base + SUFFIXES[encoding], payload)
            else:
                self._write_new(base + SUFFIXES[encoding], payload)
        if not stored:
            # A variant this build does not write may be a part left by a killed build
            # (another --brotli-quality, --no-compress): the plain file makes the blob
            # complete, and every file of a complete blob must be whole.
            for encoding, suffix in SUFFIXES.items():
                if encoding not in variants:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(base + suffix)
            self._write_atomic(base, data)

    def _write_new(self, target: str, data: bytes) -> None:
        """Write a variant of a blob not stored yet in place, without a temporary file: no
        reader opens it before the blob's plain file exists, written after it, so a
        part left by a crash is only a leftover (written over, or pruned). A file
        already there (such a leftover) is replaced atomically instead."""
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except (FileExistsError, FileNotFoundError):  # a leftover, or the folder's first
            self._write_atomic(target, data)
            return
        except OSError as exc:
            raise _write_error(target, exc) from None
        with _undone_on_failure(target, target):
            _fill(fd, data)

    def read_blob(self, digest: str, encoding: str | None = None) -> bytes:
        try:
            return self._blob(digest, encoding).read_bytes()
        except OSError:
            raise StoreError(f"Blob {digest} ({encoding or 'identity'}) is missing") from None

    def blob_path(self, digest: str, encoding: str | None = None) -> str:
        path = self._blob(digest, encoding)
        if not path.is_file():
            raise StoreError(f"Blob {digest} ({encoding or 'identity'}) is missing")
        return str(path)

    def all_blobs(self) -> Iterator[str]:
        if not self._objects.is_dir():
            return
        for folder in sorted(self._objects.iterdir()):
            if not folder.is_dir():
                continue
            # A variant without its plain file counts too: the rest of a blob whose
            # deletion was interrupted, for the next prune to finish.
            found = {entry.name.split(".", 1)[0] for entry in folder.iterdir()}
            yield from sorted(name for name in found if DIGEST_PATTERN.fullmatch(name))

    def delete_blob(self, digest: str) -> int:
        freed = 0
        # The plain file first: a blob counts as complete while it exists, so a deletion
        # interrupted now leaves no blob that a build would take as whole.
        for encoding in (None, *ENCODINGS):
            path = self._blob(digest, encoding)
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"Cannot delete '{path}': {exc.strerror or exc}") from None
            freed += size
        return freed

    # -- manifests -------------------------------------------------------------------------
    def _manifest(self, deployment_id: str) -> Path:
        if not is_valid_id(deployment_id):
            raise DeploymentNotFound(f"Unknown deployment {deployment_id[:80]!r}")
        return self._manifests / f"{deployment_id}.json"

    def publish(self, deployment: Deployment, *, present: Collection[str] = ()) -> bool:
        with self.lock():
            target = self._manifest(deployment.id)
            if target.exists():
                return False
            objects = self._objects_str
            for digest in deployment.digests().difference(present):
                if not os.path.isfile(f"{objects}/{check_digest(digest)[:2]}/{digest}"):
                    raise StoreError(f"Cannot publish {deployment.id}: blob {digest} is missing")
            self._write_atomic(target, deployment.dumps(), durable=True)
            return True

    def deployment_stamp(self, deployment_id: str) -> str | None:
        # Manifests are written once (publish refuses an existing id) and removed whole.
        try:
            st = os.stat(self._manifest(deployment_id))
        except (OSError, DeploymentNotFound):
            return None
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_size}"

    def load(self, deployment_id: str) -> Deployment:
        path = self._manifest(deployment_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            self._require()
            message = f"Unknown deployment {deployment_id!r} in {self.location}"
            raise DeploymentNotFound(message) from None
        except OSError as exc:
            raise ManifestError(f"Cannot read {path}: {exc.strerror}") from None
        try:
            deployment = Deployment.loads(raw)
        except ManifestError as exc:
            raise ManifestError(
                f"{path}: {exc} (a damaged file: delete it to build again)"
            ) from None
        if deployment.id != deployment_id:
            raise ManifestError(f"Manifest {path} names deployment {deployment.id!r}")
        return deployment

    def ids(self) -> list[str]:
        self._require()
        if not self._manifests.is_dir():
            return []
        return [
            p.name[: -len(".json")]
            for p in self._manifests.iterdir()
            if p.name.endswith(".json") and is_valid_id(p.name[: -len(".json")])
        ]

    def exists(self, deployment_id: str) -> bool:
        return is_valid_id(deployment_id) and self._manifest(deployment_id).is_file()

    def delete_deployment(self, deployment_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._manifest(deployment_id).unlink()

    # -- holds by running servers -----------------------------------------------------------
    def hold(self, deployment_id: str, ttl: float = HOLD_TTL) -> None:
        validate_id(deployment_id)
        # One file per id holding its expiry; every server pinned to it renews the same
        # file, and no lock is needed: the latest renewal wins, and each renews in time.
        expiry = str(time.time() + ttl).encode()
        make_folders(self.root / "holds", 0o755)
        make_folders(self._tmp, 0o755)
        self._write_atomic(self.root / "holds" / deployment_id, expiry)

    def held(self) -> set[str]:
        folder = self.root / "holds"
        if not folder.is_dir():
            return set()
        now = time.time()
        found = set()
        for entry in folder.iterdir():
            try:
                if is_valid_id(entry.name) and float(entry.read_bytes()) > now:
                    found.add(entry.name)
            except (OSError, ValueError):
                continue
        return found

    # -- activation ------------------------------------------------------------------------
    def activations(self) -> list[Activation]:
        try:
            raw = (self.root / RECORD).read_bytes()
        except FileNotFoundError:
            self._require()
            return []
        except OSError as exc:
            raise StoreError(f"Cannot read {self.root / RECORD}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            return [Activation.from_json(item) for item in data["history"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"Corrupt activation record {self.root / RECORD}: {exc}") from None

    def _record_activation(self, activation: Activation) -> None:
        history = [*self.activations(), activation][-HISTORY_LIMIT:]
        data = {"current": activation.id, "history": [a.to_json() for a in history]}
        self._write_atomic(self.root / RECORD, json.dumps(data, indent=1).encode(), durable=True)

    def probe(self) -> Hashable:
        # Two stats: os.replace gives the record a new inode on every activation, and
        # publishing or deleting a manifest changes its folder's mtime, so a build that
        # is not activated (a container pinned to it) is seen at the next poll too.
        token: list[object] = []
        for path in (self.root / RECORD, self._manifests):
            try:
                st = os.stat(path)
            except OSError:
                token.append(None)
                continue
            token.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(token)
