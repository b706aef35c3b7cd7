"""Fingerprinting a folder into a deployment.

The steps, each one a plain function below:

1. collect the files under SRC (symbolic links must stay inside it) and read them
   (:func:`_load`; the :class:`BuildCache` spares unchanged files a second reading);
2. find the references of CSS files and JS modules (:mod:`deploysync.rewrite`) and resolve
   them to files of SRC, warning about the ones that point at nothing (:func:`_link`);
3. name every file after its content, dependencies first (:func:`_name_all`). Files that
   reference each other in a cycle form a strongly connected component, named as one unit
   (:func:`_name_component`), so cycles need no repeated passes and stay deterministic;
4. under the store's lock, precompress (gzip, brotli) what the store does not hold yet on
   all cores, write it from one thread, then publish the manifest and maybe activate it
   (:func:`_store`).

A rebuild into the same store redoes these steps only for the files changed since the
last build and the files referencing them, and takes the other files' assets from the
build cache (:class:`BuildCache`, :func:`_to_redo`).

Nothing touches the store before step 4, so bad input leaves it unchanged; the store's
atomic publish makes a crash at any moment leave it as it was or complete.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import marshal
import os
import re
import sys
import tempfile
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from . import content_types, rewrite
from .manifest import (
    DEFAULT_STATIC_URL,
    Asset,
    Deployment,
    DeploySyncError,
    ManifestError,
    derive_id_of_rows,
    is_safe_name,
    normalize_static_url,
    validate_id,
)
from .store import DeploymentNotFound, Store, open_store
from .store.base import default_cache_home, make_folders

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

try:  # the optional "brotli" extra
    import brotli as _brotli
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

HASH_LENGTH = 12
VITE_MANIFEST = ".vite/manifest.json"
VITE_KEYS = (
    "file",
    "src",
    "name",
    "isEntry",
    "isDynamicEntry",
    "imports",
    "dynamicImports",
    "css",
    "assets",
)
# The build cache's format, and what its entries were made by: raised when either changes
# (a scanner that finds other references must not be answered from the old one's entries).
CACHE_VERSION = 6

# A precompressed variant is kept only when it saves at least this share of the bytes: a
# smaller saving is not worth a second file and a Vary header.
MIN_SAVING = 0.05
# Below this size a variant cannot save a useful number of bytes.
MIN_COMPRESS_SIZE = 256
# A larger file is tried on its first this many bytes before it is compressed.
COMPRESS_SAMPLE_SIZE = 64 * 1024
# Brotli's quality 11 costs about 1 s of CPU per MB of text; quality 9 about 1/50 of that
# for files about 5% larger (measured on the bench/ tree: 4.4 s vs 0.08 s for 3.9 MB of JS
# and CSS, 648 KB vs 684 KB). 9 keeps a build of a large frontend in seconds;
# ``--brotli-quality 11`` buys the last percent for those who want it.
DEFAULT_BROTLI_QUALITY = 9
# Above this size a lower quality keeps big bundles from dominating the build.
BROTLI_MAX_QUALITY_SIZE = 256 * 1024

_CHARSET_TYPES = frozenset(
    ("application/json", "application/manifest+json", "image/svg+xml", "application/xml")
)
_COMPRESSIBLE_TYPES = frozenset(
    (
        "application/json",
        "application/manifest+json",
        "application/xml",
        "application/wasm",
        "application/vnd.ms-fontobject",
        "image/svg+xml",
        "image/vnd.microsoft.icon",
        "image/bmp",
        "font/ttf",
        "font/otf",
    )
)


class BuildError(DeploySyncError):
    """The source folder cannot be built."""


class _NoShortcut(Exception):
    """A rebuild of the changed files only cannot go on: build everything."""


class _CacheMismatch(Exception):
    """A digest taken from the build cache is not the digest of the bytes it stands for."""


@dataclass
class BuildResult:
    """What a build made: the deployment, whether it is new, and what it cost."""

    deployment: Deployment
    created: bool
    stored_blobs: int = 0
    reused_blobs: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    activated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The summary ``deploysync build --json`` prints."""
        return {
            "id": self.deployment.id,
            "static_url": self.deployment.static_url,
            "files": len(self.deployment.assets),
            "bytes": self.deployment.total_size,
            "stored_blobs": self.stored_blobs,
            "reused_blobs": self.reused_blobs,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "created": self.created,
            "activated": self.activated,
        }


def hashed_name(path: str, digest: str) -> str:
    """``css/app.css`` + digest -> ``css/app.<12 hex>.css``."""
    folder, _, base = path.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    name = f"{stem}.{digest[:HASH_LENGTH]}" + (f".{ext}" if ext else "")
    return f"{folder}/{name}" if folder else name


def _type_key(path: str) -> str:
    """What the type of the file at *path* depends on: its name's extensions.

    ``js/app.min.js`` -> ``x.min.js``: thousands of files share a handful of keys, so the
    lookups below are cached per key.
    """
    base = path.rpartition("/")[2]
    stem = base.lstrip(".")
    dot = stem.find(".")
    return "x" + stem[dot:] if dot > 0 else base


@functools.lru_cache(maxsize=1024)
def _base_type(key: str) -> str:
    # The same on every machine and Python version: the deployment id depends on it.
    root, ext = os.path.splitext(key.lower())
    if ext in content_types.SUFFIXES:
        root, ext = os.path.splitext(root + content_types.SUFFIXES[ext])
    return (
        content_types.ENCODED.get(ext) or content_types.TYPES.get(ext) or "application/octet-stream"
    )


@functools.lru_cache(maxsize=1024)
def _content_type(key: str) -> str:
    kind = _base_type(key)
    if kind.startswith("text/") or kind in _CHARSET_TYPES:
        kind += "; charset=utf-8"
    return kind


def content_type(path: str) -> str:
    """The ``Content-Type`` an asset is served with; text types name their charset."""
    return _content_type(_type_key(path))


def compressible(path: str) -> bool:
    """Whether precompressing the file can pay (text, SVG, JSON, wasm, uncompressed fonts)."""
    kind = _base_type(_type_key(path))
    return (
        kind.startswith("text/") or kind in _COMPRESSIBLE_TYPES or kind.endswith(("+xml", "+json"))
    )


def integrity(data: bytes) -> str:
    """The Subresource Integrity value of *data* (sha384)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def brotli_available() -> bool:
    """Whether the ``brotli`` extra is installed: without it only gzip variants are made."""
    return _brotli is not None


def precompress(data: bytes, brotli_quality: int = DEFAULT_BROTLI_QUALITY) -> dict[str, bytes]:
    """The precompressed variants of *data* worth keeping (``{"gzip": ..., "br": ...}``)."""
    size = len(data)
    if size < MIN_COMPRESS_SIZE:
        return {}
    limit = size * (1 - MIN_SAVING)
    # Random-looking content (an already compressed font, a minified blob of base64) is
    # detected cheaply on a sample instead of paying full price for nothing. A small file
    # is its own sample: what gzip cannot shrink, brotli does not either.
    if size > COMPRESS_SAMPLE_SIZE:
        sample = data[:COMPRESS_SAMPLE_SIZE]
        if len(zlib.compress(sample, 1)) > len(sample) * (1 - MIN_SAVING):
            return {}
    variants: dict[str, bytes] = {}
    gz = _gzip(data)
    if len(gz) <= limit:
        variants["gzip"] = gz
    elif size <= COMPRESS_SAMPLE_SIZE:
        return {}
    if _brotli is not None:
        quality = brotli_quality
        if size > BROTLI_MAX_QUALITY_SIZE:
            quality = min(quality, 9 if size <= 4 * 2**20 else 6)
        # A window just larger than the file gives the same output with less memory to
        # set up per call, which adds up over thousands of small modules.
        window = max(16, min(24, size.bit_length() + 1))
        br: bytes = _brotli.compress(data, quality=quality, lgwin=window)
        if len(br) <= limit:
            variants["br"] = br
    return variants


def _gzip(data: bytes) -> bytes:
    # zlib's gzip container (wbits 31) writes mtime 0 and no file name: reproducible output.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


# -- collecting the source -------------------------------------------------------------------


# How many symbolic links to folders a path of the source may go through.
MAX_FOLDER_LINKS = 8
# And how many folders the links lead into in all: a few links per level already make
# thousands (3 links to the next of 9 levels: 9,841 folders).
MAX_LINKED_FOLDERS = 1000


def collect(
    root: Path, *, skip: Iterable[str] = (), links_outside: bool = False
) -> list[tuple[str, str, os.stat_result]]:
    """Every regular file under *root* as ``(logical path, file path, stat)``, sorted.

    Symbolic links are followed when they stay inside *root* (anywhere with
    *links_outside*); one leading outside it, a dangling one, a FIFO or a device is a
    :class:`BuildError` naming it.
    """
    real_root = os.path.realpath(root)
    skipped = set(skip)
    found: list[tuple[str, str, os.stat_result]] = []
    # Each pending folder carries the real paths of its ancestors: a link back up the
    # tree would loop forever, a link to a sibling folder is just another name for it.
    # It also carries how many linked folders lead to it: links to links multiply the
    # names (two links per level: 2**levels files), so their nesting is bounded.
    # Plain strings, not Path objects: a rebuild spends most of its time walking.
    pending: list[tuple[str, str, frozenset[str], int]] = [
        ("", os.fspath(root), frozenset((real_root,)), 0)
    ]
    linked_folders = 0
    while pending:
        prefix, folder, ancestors, links = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError as exc:
            raise BuildError(f"Cannot read folder '{folder}': {exc.strerror}") from None
        for entry in entries:
            rel = prefix + entry.name
            if rel in skipped:
                continue
            if not entry.name.isascii():
                try:
                    entry.name.encode()
                except UnicodeEncodeError:
                    shown = os.fsencode(rel).decode(errors="backslashreplace")
                    raise BuildError(
                        f"'{shown}' has a name that is not valid UTF-8: rename it"
                    ) from None
            path = entry.path
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not os.path.exists(target):
                    raise BuildError(f"Cannot read '{rel}': dangling symbolic link")
                if not links_outside and os.path.commonpath([real_root, target]) != real_root:
                    raise BuildError(
                        f"'{rel}' is a symbolic link leading outside the source folder ({target})"
                    )
            try:
                is_dir = entry.is_dir()
                is_file = entry.is_file()
                st = entry.stat() if is_file else None
            except OSError as exc:
                raise BuildError(f"Cannot read '{rel}': {exc.strerror}") from None
            if is_dir:
                real = os.path.realpath(path)
                if real not in ancestors:
                    linked = links + entry.is_symlink()
                    if linked > MAX_FOLDER_LINKS:
                        raise BuildError(
                            f"'{rel}' is reached through more than {MAX_FOLDER_LINKS} symbolic"
                            " links to folders: links to linked folders multiply the files"
                        )
                    if linked:
                        linked_folders += 1
                        if linked_folders > MAX_LINKED_FOLDERS:
                            raise BuildError(
                                f"More than {MAX_LINKED_FOLDERS} folders are reached through"
                                f" symbolic links (the last: '{rel}'): links to linked"
                                " folders multiply the files"
                            )
                    pending.append((rel + "/", path, ancestors | {real}, linked))
            elif st is not None:
                if not is_safe_name(rel):
                    raise BuildError(
                        f"{rel!r} has a name that cannot be served (a backslash, a control"
                        " character, or a colon in its first 3 characters): rename it"
                    )
                found.append((rel, path, st))
            else:
                raise BuildError(f"'{rel}' is not a regular file")
    found.sort(key=lambda item: item[0])
    return found


def _read(rel: str, path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise BuildError(f"Cannot read '{rel}': {exc.strerror or exc}") from None


@dataclass(eq=False, slots=True)
class _File:
    """One source file on its way to becoming an asset.

    Everything is read on demand: a file the build cache vouches for (same stat, same
    digest) is not read at all unless its bytes are needed, so an unchanged image
    already in the store, or an unchanged module whose final name is cached, costs one
    stat per build.
    """

    path: str
    location: str
    source_digest: str
    size: int
    data: bytes | None = None
    fixed_name: bool = False  # already hashed by a bundler (Vite): kept as is
    scanned: bool = False  # a stylesheet or JS module: its references are rewritten
    # The references found in it as the cache keeps them: a list of (start, end, url,
    # kind) lists in marshal form, loaded only when a rewrite needs them.
    packed_refs: bytes | None = None
    # What each reference resolves to (a logical path, or None when out of reach).
    targets: list[str | None] = field(default_factory=list)
    # The references resolved to a file of the source: (index in the references, path).
    links: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # its references to missing files
    final_key: str | None = None  # its entry in the ``final`` section of the cache
    final: bytes | None = None  # the served bytes, when they differ from the source's
    digest: str = ""
    name: str = ""
    # The final names of its links, when its digest came from the cache and its final
    # bytes are only derived if the store lacks them.
    pending: Mapping[str, str] | None = None
    _text: str | None = None
    _refs: list[rewrite.Reference] | None = None

    def source(self) -> bytes:
        """The source bytes, read now if the build has not needed them so far."""
        if self.data is None:
            data = _read(self.path, self.location)
            if hashlib.sha256(data).hexdigest() != self.source_digest:
                raise BuildError(f"'{self.path}' changed during the build")
            self.data = data
        return self.data

    def text(self) -> str:
        if self._text is None:
            self._text = self.source().decode("utf-8", "surrogateescape")
        return self._text

    def references(self) -> list[rewrite.Reference]:
        if self._refs is None:
            if self.packed_refs is None:
                scanner = rewrite.scanner_for(self.path)
                self.set_references(scanner(self.text()) if scanner is not None else [])
            else:
                self._refs = _unpack_refs(self.packed_refs)
                if self._refs is None or (self.targets and len(self.targets) != len(self._refs)):
                    raise _CacheMismatch(self.path)
        assert self._refs is not None
        return self._refs

    def set_references(self, refs: list[rewrite.Reference]) -> None:
        self._refs = refs
        self.packed_refs = marshal.dumps([[r.start, r.end, r.url, r.kind] for r in refs])

    def served(self) -> bytes:
        """The bytes to store."""
        if self.final is None and self.pending is not None:
            final = _rewritten(self, self.pending)
            if hashlib.sha256(final).hexdigest() != self.digest:
                raise _CacheMismatch(self.path)
            self.final, self.pending = final, None
        return self.final if self.final is not None else self.source()


# -- Vite ------------------------------------------------------------------------------------


def load_vite_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``.vite/manifest.json`` reduced to the keys a server needs."""
    path = root / VITE_MANIFEST
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise BuildError(f"Cannot read the Vite manifest '{path}': {exc.strerror}") from None
    except ValueError as exc:
        raise BuildError(f"The Vite manifest '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise BuildError(f"The Vite manifest '{path}' is not an object of chunks")
    return {
        str(key): {k: chunk[k] for k in VITE_KEYS if k in chunk}
        for key, chunk in sorted(data.items())
    }


def vite_files(manifest: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The files Vite emitted with a hash in their name (``file``, ``css``, ``assets``)."""
    files: set[str] = set()
    for chunk in manifest.values():
        if isinstance(chunk.get("file"), str):
            files.add(chunk["file"])
        for key in ("css", "assets"):
            files.update(item for item in chunk.get(key) or () if isinstance(item, str))
    return files


def vite_emitted(named: Iterable[str], paths: Iterable[str]) -> set[str]:
    """The other files of Vite's assets folder (the folders of the files its manifest
    *named*, ``assets/`` by default) among *paths*: what Vite emitted without listing it
    (a worker's chunk, source maps), named as its bundles, which are not rewritten, ask
    for them. Files copied from ``public/`` land outside it."""
    folders = tuple({name.rpartition("/")[0] + "/" for name in named if "/" in name})
    return {path for path in paths if path.startswith(folders)} if folders else set()


# -- the build cache -------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """deploysync's cache folder (:func:`~deploysync.store.base.default_cache_home`)."""
    return default_cache_home()[0]


# A file modified this close to the moment its stat was recorded could change again within
# the same timestamp tick unseen (git's "racily clean" entries): such entries are not trusted.
_RACY_NS = 2_000_000_000

_SECTIONS = ("stat", "scan", "final", "blobs")


class BuildCache:
    """What a rebuild of the same folder into the same store can skip.

    Sections, each a JSON object:

    * ``stat``: a file's logical path -> (size, mtime, inode, ctime, sha256 of its bytes,
      when recorded), so an unchanged file is neither read nor hashed again (like git's
      index);
    * ``scan``: a CSS or JS file's logical path -> (sha256, static URL, the references
      found in it, what each resolves to): scanning JavaScript is the one step that runs
      in Python character by character;
    * ``final``: the digest and size of a rewritten file, keyed by a hash of its source's
      sha256 and the final names it references, so an unchanged module whose imports kept
      their names is neither read nor rewritten;
    * ``blobs``: a stored blob's sha256 -> (its stamp, see :meth:`Store.blob_stamp`, its
      variants, its SRI value), for exactly the blobs of ``base``;
    * ``base``: the deployment the last build made or found, with its stamp (see
      :meth:`Store.deployment_stamp`). While it stays published its blobs stay stored,
      so the next build trusts the ``blobs`` entries without a look at each blob;
    * ``last``: that deployment file by file (see :class:`_Last`), so that a rebuild
      redoes only the files that changed and the ones referencing them.

    Keys are contents, full stat signatures or store stamps, so an entry can be missing
    but not wrong; the file's header names the package and Python versions, so entries
    made by other code are not trusted, and a checksum of the rest follows, so a damaged
    file is not trusted either. There is one cache file per (source folder, store),
    rewritten with only the entries the last build used, so it does not grow without
    bound (and not rewritten when nothing changed); a cache no build used for 30 days is
    deleted when a build makes a new one. It holds plain data in
    :mod:`marshal` form, the format of Python's own ``__pycache__`` (several times faster
    to read and write than JSON, which matters when a rebuild takes a few tens of
    milliseconds). A missing, damaged or unwritable cache only costs time.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._old: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        self._used: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        self._changed = False
        self.base: list[str] | None = None
        self._old_base: object = None
        self.last: _Last | None = None
        self._old_last: _Last | None = None
        if path is None:
            return
        try:
            raw = path.read_bytes()
            header = _cache_header()
            check, payload = raw[len(header) : len(header) + 9], raw[len(header) + 9 :]
            if raw.startswith(header) and check == b"%08x\n" % zlib.crc32(payload):
                data = marshal.loads(payload)
                loaded = {name: data[name] for name in _SECTIONS}
                if all(isinstance(section, dict) for section in loaded.values()):
                    self._old = loaded
                    base = data.get("base")
                    if isinstance(base, list) and all(type(part) is str for part in base):
                        self.base = self._old_base = base
                    self.last = self._old_last = _Last.of(data.get("last"))
        except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError):
            pass

    @classmethod
    def empty(cls, path: Path | None) -> BuildCache:
        """A cache that knows nothing, saved to *path* (replacing what it held)."""
        cache = cls(None)
        cache.path = path
        cache._changed = True
        return cache

    @classmethod
    def open(cls, folder: Path | None, root: Path, store: Store) -> BuildCache:
        if folder is None:
            return cls(None)
        key = hashlib.sha256(
            f"{os.path.realpath(root)}\0{store.location}".encode("utf-8", "surrogateescape")
        )
        return cls(folder / f"build-{key.hexdigest()[:24]}.cache")

    def get(self, section: str, key: str) -> Any:
        """The entry *key* of *section* (kept for the next build), or ``None``."""
        value = self._old[section].get(key)
        if value is not None:
            self._used[section][key] = value
        return value

    def put(self, section: str, key: str, value: Any) -> None:
        self._used[section][key] = value
        self._changed = True

    def known_digest(self, path: str, st: os.stat_result) -> str | None:
        """The sha256 recorded for the file at *path* when its stat is unchanged."""
        entry = self._old["stat"].get(path)
        if (
            not isinstance(entry, list)
            or len(entry) != 6
            or entry[0] != st.st_size
            or entry[1] != st.st_mtime_ns
            or entry[2] != st.st_ino
            or entry[3] != st.st_ctime_ns
        ):
            return None
        digest, recorded_at = entry[4], entry[5]
        if not isinstance(recorded_at, int) or recorded_at - st.st_mtime_ns < _RACY_NS:
            return None
        if not _is_digest(digest):
            return None
        self._used["stat"][path] = entry
        return str(digest)

    def record_digest(self, path: str, st: os.stat_result, digest: str) -> None:
        signature = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        self.put("stat", path, [*signature, digest, time.time_ns()])

    def keep(self, paths: Iterable[str], last: _Last) -> None:
        """Keep the entries of *paths*, files of *last* that a rebuild takes as they were,
        as a build going through every file would use them (their ``stat`` entries are
        kept by the :meth:`known_digest` that found them unchanged)."""
        old, used = self._old, self._used
        for path in paths:
            record = last.records[path]
            for section, key in (
                ("scan", path),
                ("final", record[_FINAL_KEY]),
                ("blobs", record[_DIGEST]),
            ):
                value = old[section].get(key) if key is not None else None
                if value is not None:
                    used[section][key] = value

    def keep_all(self) -> None:
        """Keep every entry: a rebuild found the source as the last build left it. The
        cache's last use before :meth:`save` (the entries are shared, not copied)."""
        self._used = {name: self._old[name] for name in _SECTIONS}

    def save(self) -> None:
        if self.path is None:
            return
        if (
            not self._changed
            and self.base == self._old_base
            and self.last is self._old_last
            and all(len(self._used[name]) == len(self._old[name]) for name in _SECTIONS)
        ):
            # The same entries as the file holds: nothing to write, but it was used.
            with contextlib.suppress(OSError):
                os.utime(self.path)
            return
        last = None if self.last is None else self.last.packed()
        data = marshal.dumps({**self._used, "base": self.base, "last": last})
        payload = _cache_header() + b"%08x\n" % zlib.crc32(data) + data
        with contextlib.suppress(OSError):
            new = not self.path.exists()
            make_folders(self.path.parent, 0o700)  # the servers' cache folder too: private
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".build-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                os.replace(tmp, self.path)
            except OSError:
                os.unlink(tmp)
                raise
            if new:
                _forget_unused(self.path.parent)


# A build cache not used for this long is deleted (when another one is made): there is one
# per source folder and store, and stores in temporary folders (CI, demos) leave theirs.
CACHE_MAX_AGE = 30 * 86400


def _forget_unused(folder: Path) -> None:
    """Delete the build caches in *folder* no build used for :data:`CACHE_MAX_AGE`, and
    temporary files a killed build left for over a day."""
    now = time.time()
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith("build-") and name.endswith(".cache"):
                age = CACHE_MAX_AGE
            elif name.startswith(".build-"):
                age = 86400
            else:
                continue  # a Redis store's local copies, the servers' state
            with contextlib.suppress(OSError):
                if now - entry.stat(follow_symlinks=False).st_mtime > age:
                    os.unlink(entry.path)


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64


def _valid_scan(entry: object) -> bool:
    """Whether a ``scan`` entry of the cache has its shape (a damaged one is ignored; the
    packed references are checked when unpacked)."""
    if not (isinstance(entry, list) and len(entry) == 4):
        return False
    _, _, refs, targets = entry
    return (
        isinstance(refs, bytes)
        and isinstance(targets, list)
        and all(target is None or type(target) is str for target in targets)
    )


def _unpack_refs(packed: bytes) -> list[rewrite.Reference] | None:
    """The references packed by :meth:`_File.set_references`; ``None`` when damaged."""
    try:
        rows = marshal.loads(packed)
        refs = [rewrite.Reference(start, end, url, kind) for start, end, url, kind in rows]
    except (ValueError, EOFError, TypeError):
        return None
    for ref in refs:
        if not (
            type(ref.start) is int
            and type(ref.end) is int
            and type(ref.url) is str
            and type(ref.kind) is str
        ):
            return None
    return refs


def _valid_variants(value: object) -> bool:
    return isinstance(value, dict) and all(
        type(name) is str and type(size) is int for name, size in value.items()
    )


def _cache_header() -> bytes:
    from . import __version__

    python = ".".join(map(str, sys.version_info[:2]))
    return f"deploysync build cache {CACHE_VERSION} {__version__} {python}\n".encode()


# A record of :class:`_Last`, one per file: a plain list (marshal takes no named tuple),
# read through these indices. TARGETS: the paths its references resolve to, present or
# not; FINAL_KEY: its entry in the ``final`` section of the cache, or None.
_RECORD = (
    _NAME,
    _DIGEST,
    _SIZE,
    _CONTENT_TYPE,
    _INTEGRITY,
    _VARIANTS,
    _TARGETS,
    _WARNINGS,
    _FINAL_KEY,
) = range(9)


@dataclass(slots=True)
class _Last:
    """The deployment the last build made or found, as the next build needs it.

    ``records`` maps each logical path to its record (see ``_RECORD``); ``settings``
    (see :func:`_settings`) and ``ident`` tell which build it describes.
    """

    settings: str
    ident: str
    created: float
    records: dict[str, list[Any]]

    @classmethod
    def of(cls, packed: object) -> _Last | None:
        """The :meth:`packed` form read back; ``None`` when it has another shape."""
        if not (isinstance(packed, list) and len(packed) == 4):
            return None
        settings, ident, created, records = packed
        if not (
            type(settings) is str
            and type(ident) is str
            and type(created) is float
            and type(records) is dict
            and all(map(_valid_record, records.values()))
        ):
            return None
        return cls(settings, ident, created, records)

    def packed(self) -> list[Any]:
        return [self.settings, self.ident, self.created, self.records]

    def asset(self, path: str) -> Asset:
        record = self.records[path]
        return Asset._of(
            path,
            record[_NAME],
            record[_DIGEST],
            record[_SIZE],
            record[_CONTENT_TYPE],
            record[_INTEGRITY],
            MappingProxyType(record[_VARIANTS]),
        )


def _valid_record(record: object) -> bool:
    """Whether a record of :class:`_Last` has its shape (see ``_RECORD``)."""
    return (
        type(record) is list
        and len(record) == len(_RECORD)
        and type(record[_NAME]) is str
        and _is_digest(record[_DIGEST])
        and type(record[_SIZE]) is int
        and type(record[_CONTENT_TYPE]) is str
        and type(record[_INTEGRITY]) is str
        and _valid_variants(record[_VARIANTS])
        and type(record[_TARGETS]) is list
        and type(record[_WARNINGS]) is list
        and (record[_FINAL_KEY] is None or type(record[_FINAL_KEY]) is str)
    )


def _record(asset: Asset, targets: list[str], warnings: list[str], final: str | None) -> list[Any]:
    """The record of a file (see ``_RECORD``) made into *asset*."""
    return [
        asset.name,
        asset.digest,
        asset.size,
        asset.content_type,
        asset.integrity,
        dict(asset.encodings),
        targets,
        warnings,
        final,
    ]


def _settings(
    static_url: str, compress: bool, brotli_quality: int, extra: Mapping[str, Any]
) -> str:
    """A digest of what, besides the source, decides a build's output."""
    text = json.dumps(
        [static_url, compress, brotli_quality, _brotli is not None, extra],
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


# -- naming ----------------------------------------------------------------------------------


def strongly_connected(nodes: Sequence[str], edges: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, dependencies first (reverse topological order).

    Iterative, so a deep import graph cannot hit the recursion limit. Each component is
    sorted; with sorted *nodes* and *edges* the result is deterministic.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        work: list[tuple[str, Iterator[str]]] = [(root, iter(edges.get(root, ())))]
        while work:
            node, successors = work[-1]
            descended = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(edges.get(succ, ()))))
                    descended = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _rewritten(file: _File, names: Mapping[str, str]) -> bytes:
    refs = file.references()
    targets = {id(refs[index]): target for index, target in file.links}

    def replace(ref: rewrite.Reference) -> str | None:
        target = targets.get(id(ref))
        return None if target is None else rewrite.retarget(ref.url, names[target])

    text = file.text()
    rewritten = rewrite.apply(text, refs, replace)
    return file.source() if rewritten is text else rewritten.encode("utf-8", "surrogateescape")


def _name_one(file: _File, names: dict[str, str], cache: BuildCache) -> None:
    """Name a file that references others (outside any cycle), once they are named.

    Its final bytes are a function of its path (which picks the scanner), its source
    and the names it references: the cache maps these to the final digest, so the bytes
    are derived only when the store needs them.
    """
    parts = [file.path, file.source_digest]
    parts += [f"{index}:{names[target]}" for index, target in file.links]
    key = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()
    file.final_key = key
    known = cache.get("final", key)
    if (
        isinstance(known, list)
        and len(known) == 2
        and _is_digest(known[0])
        and isinstance(known[1], int)
    ):
        file.digest, file.size = known
        file.pending = names
    else:
        file.final = _rewritten(file, names)
        file.digest = hashlib.sha256(file.final).hexdigest()
        file.size = len(file.final)
        cache.put("final", key, [file.digest, file.size])
    file.name = hashed_name(file.path, file.digest)
    names[file.path] = file.name


def _name_component(members: list[_File], names: dict[str, str]) -> None:
    """Name the files of a reference cycle together, then rewrite them.

    A member's final bytes contain the other members' names, which contain its own hash:
    no fixed point exists. So the names of the members are derived from one hash over what
    determines them all (each member's path and original bytes, and the final names of
    what the component references outside itself), and only then are the members
    rewritten. The same input gives the same names; any change in the cycle or below it
    gives new ones.
    """
    inside = {m.path for m in members}
    unit = hashlib.sha256(b"deploysync-cycle/1\0")
    for member in members:
        unit.update(f"{member.path}\0{member.source_digest}\0".encode("utf-8", "surrogateescape"))
    outside = sorted({t for m in members for _, t in m.links if t not in inside})
    for target in outside:
        unit.update(f"{target}\0{names[target]}\0".encode("utf-8", "surrogateescape"))
    for member in members:
        name_hash = hashlib.sha256(unit.digest() + member.path.encode("utf-8", "surrogateescape"))
        member.name = hashed_name(member.path, name_hash.hexdigest())
        names[member.path] = member.name
    for member in members:
        member.final = _rewritten(member, names)
        member.digest = hashlib.sha256(member.final).hexdigest()
        member.size = len(member.final)


def _name_all(files: dict[str, _File], cache: BuildCache, names: dict[str, str]) -> None:
    """Give every file its digest and hashed name, dependencies first.

    *names* holds the names of the files referenced but not in *files* (a rebuild's
    unchanged files); the new ones are added to it.
    """
    for file in files.values():
        if not file.links:
            file.digest = file.source_digest
            file.name = file.path if file.fixed_name else hashed_name(file.path, file.digest)
            names[file.path] = file.name
    graph_nodes = sorted(path for path, file in files.items() if file.links)
    edges = {
        path: sorted({t for _, t in files[path].links if t in files and files[t].links})
        for path in graph_nodes
    }
    for component in strongly_connected(graph_nodes, edges):
        first = component[0]
        if len(component) == 1 and first not in edges[first]:
            _name_one(files[first], names, cache)
        else:
            _name_component([files[p] for p in component], names)


# -- the build -------------------------------------------------------------------------------

# Scanning runs in Python; past this much new text, worker processes pay for their start-up.
PARALLEL_SCAN_BYTES = 1 << 20


def build(
    src: str | os.PathLike[str],
    store: Store | str | os.PathLike[str],
    *,
    static_url: str = DEFAULT_STATIC_URL,
    deployment_id: str | None = None,
    activate: bool = False,
    strict: bool = False,
    compress: bool = True,
    brotli_quality: int = DEFAULT_BROTLI_QUALITY,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
    vite: bool | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    links_outside: bool = False,
) -> BuildResult:
    """Fingerprint every file under *src* into a new deployment of *store*.

    *vite*: treat *src* as a Vite ``dist`` folder (``None``: when it has
    ``.vite/manifest.json``). *progress* is called with (done, total) steps; *warn* with
    each warning (references to missing files), which *strict* turns into an error.
    *workers* bounds the parallelism (default: the number of cores). The build cache
    (see :class:`BuildCache`) lives in *cache_dir*, default :func:`default_cache_dir`,
    unless *cache* is false. *links_outside*: follow symbolic links leading outside *src*
    (Django's ``collectstatic --link`` makes nothing else).
    """
    started = time.perf_counter()
    root = Path(src)
    if not root.exists():
        raise BuildError(f"Source folder '{src}' does not exist")
    if not root.is_dir():
        raise BuildError(f"Source '{src}' is not a folder")
    if deployment_id is not None:
        validate_id(deployment_id)
    if not 0 <= brotli_quality <= 11:
        raise BuildError(f"Brotli quality {brotli_quality} is out of range: use 0 to 11")
    static_url = normalize_static_url(static_url)
    store = open_store(store)
    workers = max(1, workers or os.cpu_count() or 1)

    if vite is None:
        vite = (root / VITE_MANIFEST).is_file()
    vite_manifest = load_vite_manifest(root) if vite else {}
    cache_folder = (
        (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None
    )
    # A store or build cache kept inside the source is not part of the frontend; a
    # source inside one of them (a typo'd command) is no frontend at all.
    skip = [".vite"] if vite else []
    real_root = root.resolve()
    for folder, what in ((getattr(store, "root", None), "store"), (cache_folder, "build cache")):
        if not isinstance(folder, Path):
            continue
        real = folder.resolve()
        if real_root.is_relative_to(real):
            where = f"the {what}" if real == real_root else f"inside the {what} '{folder}'"
            raise BuildError(f"Source folder '{src}' is {where}, not a frontend")
        if real.is_relative_to(real_root):
            skip.append(real.relative_to(real_root).as_posix())
    entries = collect(root, skip=skip, links_outside=links_outside)
    if not entries:
        raise BuildError(f"Source folder '{src}' is empty")
    build_cache = BuildCache.open(cache_folder, root, store)
    total_steps = 2 * len(entries)
    done = 0

    def step(count: int = 1) -> None:
        nonlocal done
        done += count
        if progress is not None and count:
            progress(done, total_steps)

    named = vite_files(vite_manifest)
    vite_warnings = [
        _printable(f"{VITE_MANIFEST}: names missing file '{missing}'")
        for missing in sorted(named - {rel for rel, _, _ in entries})
    ]
    fixed = named | vite_emitted(named, (rel for rel, _, _ in entries))

    extra = {"vite": vite_manifest} if vite else {}
    settings = _settings(static_url, compress, brotli_quality, extra)
    paths = {rel for rel, _, _ in entries}
    order = [rel for rel, _, _ in entries]

    def attempt(cache: BuildCache, shortcut: bool = True) -> BuildResult:
        nonlocal done
        done = 0
        # The shortcut gives the derived id; a build under the user's id goes through all.
        last = _last_of(cache, store, settings) if shortcut and deployment_id is None else None
        todo = entries
        kept: dict[str, Asset] = {}
        if last is not None:
            todo, same = _to_redo(entries, paths, cache, last)
            if same:
                found = _warnings(vite_warnings, order, {}, last.records)
                _check(found, strict)
                result = _same_as_last(store, cache, last, order, static_url, extra, activate)
                if result is None:
                    raise _NoShortcut
                step(total_steps)
                result.warnings = found
                return result
            redone = {rel for rel, _, _ in todo}
            kept_paths = [rel for rel in order if rel not in redone]
            cache.keep(kept_paths, last)
            kept = {path: last.asset(path) for path in kept_paths}
            step(len(kept))
        # Reading, hashing and compressing release the GIL: threads keep every core busy
        # without the cost of shipping bytes to other processes. Twice the cores, so that
        # a thread waiting on the disk does not leave a core idle.
        with ThreadPoolExecutor(max_workers=2 * workers) as pool:
            files = _load(todo, fixed, cache, pool, step)
        # Between the two pools no thread of ours runs, so scanning may fork processes.
        _link(files, static_url, cache, workers, paths)
        old = last.records if last is not None else {}
        found = _warnings(vite_warnings, order, files, old)
        _check(found, strict)
        _name_all(files, cache, {path: asset.name for path, asset in kept.items()})
        with ThreadPoolExecutor(max_workers=2 * workers) as pool:
            result = _store(
                list(files.values()),
                store,
                pool,
                workers=workers,
                static_url=static_url,
                deployment_id=deployment_id,
                activate=activate,
                compress=compress,
                brotli_quality=brotli_quality,
                extra=extra,
                cache=cache,
                step=step,
                kept=kept,
                order=order,
            )
        step(len(kept))
        deployment = result.deployment
        records = {path: old[path] for path in kept}
        for file in files.values():
            targets = sorted({target for target in file.targets if target is not None})
            asset = deployment.assets[file.path]
            records[file.path] = _record(asset, targets, file.warnings, file.final_key)
        # A rebuild starts from a deployment of derived id whose publication it can check.
        if deployment_id is None and cache.base is not None:
            cache.last = _Last(settings, deployment.id, deployment.created, records)
        else:
            cache.last = None
        result.warnings = found
        return result

    try:
        try:
            result = attempt(build_cache)
        except _NoShortcut:
            result = attempt(build_cache, shortcut=False)
    except _CacheMismatch:
        # An entry of the cache did not hold (damaged, or written by other code): build
        # again without it. Blobs written meanwhile are right (named by their content).
        build_cache = BuildCache.empty(build_cache.path)
        result = attempt(build_cache, shortcut=False)
    warnings = result.warnings
    if warnings and warn is not None:
        for message in warnings:
            warn(message)
    build_cache.save()
    result.seconds = time.perf_counter() - started
    return result


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """*text* with its control characters escaped: a name or URL read from a file, said
    on a terminal or in a CI log, must not move the cursor or retitle the window."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _check(warnings: list[str], strict: bool) -> None:
    """With *strict*, the first warning as an error."""
    if strict and warnings:
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        raise BuildError(warnings[0] + more)


def _warnings(
    vite_warnings: list[str],
    order: list[str],
    files: Mapping[str, _File],
    records: Mapping[str, list[Any]],
) -> list[str]:
    """The Vite manifest's warnings, then each file's in the source's *order*: new ones
    for a file redone (in *files*), those of its record for a file taken as it was."""
    found = list(vite_warnings)
    for rel in order:
        file = files.get(rel)
        found += file.warnings if file is not None else records[rel][_WARNINGS]
    return found


def _last_of(cache: BuildCache, store: Store, settings: str) -> _Last | None:
    """The last deployment of *cache*, when a rebuild may start from it: made under the
    same *settings* and still published as it was (checked again under the store's lock
    before anything relies on it; checked here so that a pruned one costs no work)."""
    last, base = cache.last, cache.base
    if last is None or base is None or base[0] != last.ident or last.settings != settings:
        return None
    return last if store.deployment_stamp(last.ident) == base[-1] else None


def _to_redo(
    entries: list[tuple[str, str, os.stat_result]],
    paths: AbstractSet[str],
    cache: BuildCache,
    last: _Last,
) -> tuple[list[tuple[str, str, os.stat_result]], bool]:
    """The entries a rebuild must redo, and whether the source is exactly the *last*
    build's (no entry to redo, no file gone).

    To redo: the files new or changed since the *last* build and, up the references,
    every file whose bytes name one of them (or named, or now could name, a file added
    or removed). Finding a file unchanged keeps its ``stat`` entry in the cache.
    """
    records = last.records
    changed = {
        rel for rel, _, st in entries if rel not in records or cache.known_digest(rel, st) is None
    }
    gone = records.keys() - paths
    if not changed and not gone:
        return [], True
    referrers: dict[str, list[str]] = {}
    for path, record in records.items():
        for target in record[_TARGETS]:
            referrers.setdefault(target, []).append(path)
    redo = set(changed)
    pending = [*changed, *gone]
    while pending:
        for path in referrers.get(pending.pop(), ()):
            if path not in redo and path in paths:
                redo.add(path)
                pending.append(path)
    return [entry for entry in entries if entry[0] in redo], False


def _same_as_last(
    store: Store,
    cache: BuildCache,
    last: _Last,
    order: list[str],
    static_url: str,
    extra: Mapping[str, Any],
    activate: bool,
) -> BuildResult | None:
    """The result of a rebuild of exactly the *last* build (*order*: its paths), when its
    deployment is still published as it was and the store lost none of its blobs; else
    ``None``."""
    records = last.records
    blobs = {record[_DIGEST]: tuple(record[_VARIANTS]) for record in records.values()}
    with store.lock():
        base = cache.base
        if base is None or store.deployment_stamp(last.ident) != base[-1]:
            return None
        if store.missing_blobs(blobs):
            return None
        if activate:
            store.activate(last.ident)
    cache.keep_all()
    deployment = Deployment(
        id=last.ident,
        static_url=static_url,
        assets=MappingProxyType({path: last.asset(path) for path in order}),
        created=last.created,
        extra=MappingProxyType(dict(extra)),
    )
    return BuildResult(deployment, False, 0, len(blobs), activated=activate)


def _load(
    entries: list[tuple[str, str, os.stat_result]],
    fixed: set[str],
    cache: BuildCache,
    pool: Executor,
    step: Callable[[int], None],
) -> dict[str, _File]:
    """A :class:`_File` per entry, in order: digests from the cache or from reading."""
    files: dict[str, _File] = {}
    unknown: list[_File] = []
    for rel, location, st in entries:
        is_fixed = rel in fixed
        file = _File(
            rel,
            location,
            cache.known_digest(rel, st) or "",
            st.st_size,
            fixed_name=is_fixed,
            scanned=not is_fixed and rewrite.scanner_for(rel) is not None,
        )
        files[rel] = file
        if not file.source_digest:
            unknown.append(file)
    step(len(entries) - len(unknown))
    stats = {rel: st for rel, _, st in entries}

    def load(file: _File) -> _File:
        data = _read(file.path, file.location)
        file.data = data
        file.size = len(data)
        file.source_digest = hashlib.sha256(data).hexdigest()
        return file

    for batch in pool.map(lambda items: [load(item) for item in items], _batches(unknown)):
        for file in batch:
            cache.record_digest(file.path, stats[file.path], file.source_digest)
        step(len(batch))
    return files


_T = TypeVar("_T")
_R = TypeVar("_R")


def _in_order(
    pool: Executor, work: Callable[[_T], _R], items: Iterable[_T], *, ahead: int
) -> Iterator[_R]:
    """``pool.map(work, items)`` with at most *ahead* results computed but not yet taken.

    The bound keeps memory flat when the consumer (the one thread writing) is slower
    than the pool.
    """
    pending: deque[Future[_R]] = deque()
    for item in items:
        pending.append(pool.submit(work, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batches(items: Sequence[_T], size: int = 16) -> list[Sequence[_T]]:
    """*items* in slices: one pool task per file costs more than reading a small file."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _scan_batch(jobs: list[tuple[str, str]]) -> list[list[list[Any]]]:
    """Scan (path, text) pairs in a worker process; plain lists cross the process boundary."""
    results = []
    for path, text in jobs:
        scanner = rewrite.scanner_for(path)
        refs = scanner(text) if scanner is not None else []
        results.append([[r.start, r.end, r.url, r.kind] for r in refs])
    return results


def _scan_pool(workers: int) -> ProcessPoolExecutor:
    """Forked workers that exit by themselves once the build is gone."""
    # Imported here: ``multiprocessing`` is a quarter of the command line's start-up, and
    # only a first build of much JavaScript uses it.
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
    )


def _exit_with_parent(parent: int) -> None:
    """In a scan worker: exit once the build that forked it was killed, rather than wait
    forever on a pipe nobody reads, holding its caller's stdout open (a deploy script
    reading the id would hang)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="deploysync-orphan-watch", daemon=True).start()


def _scan(jobs: list[tuple[str, str]], workers: int) -> list[list[list[Any]]]:
    """The references of each (path, text), on several processes when there is much text."""
    total = sum(len(text) for _, text in jobs)
    # Only forked workers are cheap enough, and only a process without other threads may
    # fork safely (a lock held by another thread would stay locked in the child). Spawned
    # workers would also re-run a caller's unguarded __main__ script.
    if workers < 2 or total < PARALLEL_SCAN_BYTES or threading.active_count() > 1:
        return _scan_batch(jobs)
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        return _scan_batch(jobs)
    # Balanced batches, largest first; one batch per worker keeps pickling cheap.
    batches: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for index in sorted(range(len(jobs)), key=lambda i: len(jobs[i][1]), reverse=True):
        lightest = loads.index(min(loads))
        batches[lightest].append(index)
        loads[lightest] += len(jobs[index][1])
    results: list[list[list[Any]]] = [[] for _ in jobs]
    with _scan_pool(workers) as procs:
        scanned = procs.map(_scan_batch, [[jobs[i] for i in batch] for batch in batches])
        for batch, batch_refs in zip(batches, scanned, strict=True):
            for index, refs in zip(batch, batch_refs, strict=True):
                results[index] = refs
    return results


def _link(
    files: dict[str, _File],
    static_url: str,
    cache: BuildCache,
    workers: int,
    present: AbstractSet[str],
) -> None:
    """Find what the CSS and JS files of *files* reference, resolved to the files
    *present* (those of *files*, and a rebuild's unchanged ones); each file's references
    to missing files become its warnings.

    References and their resolution come from the cache for a file seen before; only
    new contents are scanned (several at once, on all cores, when there are many).
    """
    scanned = [file for file in files.values() if file.scanned]
    unresolved: list[_File] = []
    unscanned: list[_File] = []
    for file in scanned:
        known = cache.get("scan", file.path)
        if _valid_scan(known) and known[0] == file.source_digest:
            file.packed_refs = known[2]
            if known[1] == static_url:
                file.targets = known[3]
                continue
        unresolved.append(file)
        if file.packed_refs is None:
            unscanned.append(file)
    if unscanned:
        found = _scan([(file.path, file.text()) for file in unscanned], workers)
        for file, refs in zip(unscanned, found, strict=True):
            file.set_references([rewrite.Reference(s, e, u, k) for s, e, u, k in refs])
    for file in unresolved:
        file.targets = [rewrite.resolve(ref, file.path, static_url) for ref in file.references()]
        entry = [file.source_digest, static_url, file.packed_refs, file.targets]
        cache.put("scan", file.path, entry)

    for file in scanned:
        missing = []
        for index, target in enumerate(file.targets):
            if target is None:
                continue
            if target in present:
                file.links.append((index, target))
            else:
                missing.append(file.references()[index])
        if missing:
            css = rewrite.scanner_for(file.path) is rewrite.scan_css
            breaks = rewrite.CSS_BREAKS if css else rewrite.JS_BREAKS
            lines = rewrite.lines_of(file.text(), [ref.start for ref in missing], breaks)
            file.warnings = [
                _printable(f"{file.path}:{lines[ref.start]}: reference to missing file '{ref.url}'")
                for ref in missing
            ]


def _store(
    files: list[_File],
    store: Store,
    pool: Executor,
    *,
    workers: int,
    static_url: str,
    deployment_id: str | None,
    activate: bool,
    compress: bool,
    brotli_quality: int,
    extra: Mapping[str, Any],
    cache: BuildCache,
    step: Callable[[int], None],
    kept: Mapping[str, Asset],
    order: Sequence[str],
) -> BuildResult:
    """Compress and write what the store lacks, publish the manifest (and activate it).

    *kept*: the assets of a rebuild's unchanged files, taken from the cache's base
    deployment; *order*: every path (of *files* and *kept*) in the source's order.
    Raises :class:`_NoShortcut` when *kept* cannot be relied on after all (the base was
    pruned since, or the store lost one of their blobs).

    Everything happens under the store's lock, so a prune cannot remove a blob between
    the moment it is found in the store and the publication of the manifest using it.
    """
    unique: dict[str, _File] = {}
    for file in files:
        unique.setdefault(file.digest, file)
    # Per blob: its variants and SRI value, from the store, the cache or the bytes.
    variants: dict[str, Mapping[str, int]] = {}
    signatures: dict[str, str] = {}
    # What the manifest will name is known before the store is touched: the id (derived
    # from it, or the user's) and each file's name and digest.
    kinds = [content_type(file.path) for file in files]
    rows = [(f.path, f.name, f.digest, kind) for f, kind in zip(files, kinds, strict=True)]
    rows += [(a.path, a.name, a.digest, a.content_type) for a in kept.values()]
    ident = deployment_id or derive_id_of_rows(static_url, rows, extra)
    with store.lock():
        if store.exists(ident):
            return _existing(
                store, ident, files, rows, static_url, extra, activate, cache, step, brotli_quality
            )
        _check_kept_names(store, [file for file in files if file.fixed_name])
        new: list[_File] = []
        unsigned: list[_File] = []
        stamps: dict[str, str | None] = {}  # of the blobs whose cache entry is rewritten
        # The cache holds entries for exactly the blobs of its base deployment: while
        # that is published, they are stored as the entries say.
        base = cache.base
        trusted = base is not None and store.deployment_stamp(base[0]) == base[-1]
        if kept and not trusted:
            raise _NoShortcut  # the base was pruned since: its blobs may be gone too
        for digest, file in unique.items():
            known = cache.get("blobs", digest)
            if not (isinstance(known, list) and len(known) == 3):
                known = [None, None, None]
            complete = (
                _valid_variants(known[1])
                and isinstance(known[2], str)
                and known[2].startswith("sha384-")
            )
            if trusted and complete:
                variants[digest], signatures[digest] = known[1], known[2]
                continue
            stamp = store.blob_stamp(digest)
            if stamp is None:
                new.append(file)
                continue
            if known[0] == stamp and complete:
                variants[digest], signatures[digest] = known[1], known[2]
                continue
            stamps[digest] = stamp
            if known[0] == stamp and _valid_variants(known[1]):
                variants[digest] = known[1]
            else:
                found = store.blob_variants(digest)
                if found is None:
                    new.append(file)
                    continue
                variants[digest] = dict(sorted(found.items()))
            if isinstance(known[2], str):
                signatures[digest] = known[2]
            else:
                unsigned.append(file)
        # Listed but lost by the store itself (a Redis key evicted): written again.
        # The blobs of the kept files and those found above (not the absent ones).
        stored = {asset.digest: tuple(asset.encodings) for asset in kept.values()}
        stored.update((digest, tuple(found)) for digest, found in variants.items())
        lost = store.missing_blobs(stored)
        if not lost.issubset(unique):
            raise _NoShortcut  # the bytes of an unchanged file are needed after all
        if lost:
            new += [unique[digest] for digest in sorted(lost)]
            unsigned = [file for file in unsigned if file.digest not in lost]

        def prepare(batch: Sequence[_File]) -> list[tuple[_File, bytes, dict[str, bytes], str]]:
            prepared = []
            for file in batch:
                data = file.served()
                wanted = compress and compressible(file.path)
                encoded = precompress(data, brotli_quality) if wanted else {}
                prepared.append((file, data, encoded, integrity(data)))
            return prepared

        # The blobs this build writes: absent before, used by nothing else until the
        # manifest naming them is published, so a failure before that deletes them.
        written: list[str] = []
        try:
            # The pool prepares (reads, rewrites, compresses); this thread writes. Files
            # made by several threads at once contend in the kernel: measured here, 1,200
            # small files took 36 ms from one thread and 60-70 ms from four, and a whole
            # first build spent 1.8-3.0 s of system time instead of 5.1 s.
            # Largest first, so the pool does not end on one big file while cores idle.
            new.sort(key=lambda f: f.size, reverse=True)
            for batch in _in_order(pool, prepare, _batches(new, 8), ahead=2 * workers):
                for file, data, encoded, value in batch:
                    if file.digest not in lost:  # (a restored blob is others' too)
                        written.append(file.digest)  # a failing write may leave a part
                    store.put_blob(file.digest, data, encoded)
                    variants[file.digest] = {name: len(encoded[name]) for name in sorted(encoded)}
                    signatures[file.digest] = value
                step(len(batch))
            for file, value in zip(
                unsigned, pool.map(lambda f: integrity(f.served()), unsigned), strict=True
            ):
                signatures[file.digest] = value
            for file in new:
                stamps[file.digest] = store.blob_stamp(file.digest)
            for digest, stamp in stamps.items():
                cache.put("blobs", digest, [stamp, variants[digest], signatures[digest]])
            step(len(files) - len(new))

            made = {
                file.path: Asset._of(
                    file.path,
                    file.name,
                    file.digest,
                    file.size,
                    kind,
                    signatures[file.digest],
                    MappingProxyType(variants[file.digest]),  # sorted already
                )
                for file, kind in zip(files, kinds, strict=True)
            }
            assets = {path: made[path] if path in made else kept[path] for path in order}
            deployment = Deployment(
                id=ident,
                static_url=static_url,
                assets=MappingProxyType(assets),
                created=time.time(),
                extra=MappingProxyType(dict(extra)),
            )
            # Every blob was found under the lock (trusted, stamped) or written just now.
            blobs = deployment.digests()
            created = store.publish(deployment, present=blobs)
        except BaseException:
            _discard(store, ident, written)
            raise
        if not created:
            deployment = store.load(ident)
        cache.base = _base(store, ident)
        if activate:
            store.activate(ident)
    return BuildResult(deployment, created, len(new), len(blobs) - len(new), activated=activate)


def _check_kept_names(store: Store, kept_names: list[_File]) -> None:
    """Refuse a file that keeps its name (a bundler's, Vite's) when a deployment of the
    store has other bytes under that name: its URL is served as immutable, so browsers
    and CDNs would keep either for a year, and open pages would get the other one."""
    if not kept_names:
        return
    for other in store.ids():
        try:
            deployment = store.load(other)
        except (DeploymentNotFound, ManifestError):
            continue  # (a manifest gone or damaged names nothing)
        for file in kept_names:
            asset = deployment.assets.get(file.path)
            if asset is not None and asset.name == file.name and asset.digest != file.digest:
                raise BuildError(
                    f"'{file.path}' keeps the name Vite gave it, but deployment {other} has"
                    " other bytes under that URL, which is served as immutable: let Vite put"
                    " a hash in its file names (its default, '[name]-[hash].js')"
                )


def _discard(store: Store, ident: str, digests: Iterable[str]) -> None:
    """Delete the blobs a failed build wrote, unless its manifest was published after all
    (a connection lost after the publication went through)."""
    with contextlib.suppress(DeploySyncError, OSError):  # the build's own error matters
        if store.exists(ident):
            return
        for digest in digests:
            store.delete_blob(digest)


def _existing(
    store: Store,
    ident: str,
    files: list[_File],
    rows: list[tuple[str, str, str, str]],
    static_url: str,
    extra: Mapping[str, Any],
    activate: bool,
    cache: BuildCache,
    step: Callable[[int], None],
    brotli_quality: int = DEFAULT_BROTLI_QUALITY,
) -> BuildResult:
    """A rebuild of what the store holds already: check it is the same (*rows*: each
    file's path, name, digest and content type), write nothing but the blobs the store
    lost by itself (a Redis key evicted). Raises :class:`_NoShortcut` when one of those
    is the blob of a file not in *files* (a rebuild's unchanged file)."""
    existing = store.load(ident)
    same = {(a.path, a.name, a.digest, a.content_type) for a in existing.assets.values()}
    # Both extras are plain JSON values (the Vite manifest read here, and as stored).
    if same != set(rows) or existing.static_url != static_url or dict(extra) != existing.extra:
        raise BuildError(
            f"Deployment {ident!r} already exists in {store.location} with other"
            " content; choose another --id"
        )
    assets = {a.digest: a for a in existing.assets.values()}
    lost = store.missing_blobs({d: tuple(a.encodings) for d, a in assets.items()})
    losers = {f.digest: f for f in files if f.digest in lost}
    if len(losers) < len(lost):
        raise _NoShortcut  # the bytes of an unchanged file are needed
    for file in losers.values():
        data = file.served()
        # The variants as the manifest lists them: made again with the same settings
        # they come out the same (a variant that does not stays missing).
        wanted = assets[file.digest].encodings
        encoded = precompress(data, brotli_quality) if wanted else {}
        store.put_blob(
            file.digest,
            data,
            {name: v for name, v in encoded.items() if wanted.get(name) == len(v)},
        )
    if lost:
        store.announce(ident)  # servers that answered 404 for them read them again
    # Published already: listed again if the store's list lost it, and stamped if it has
    # no stamp yet (a Redis store written by an earlier version), for the next rebuild.
    store.publish(existing)
    # What the next build may need again is kept in the cache, as the manifest has it.
    for asset in existing.assets.values():
        known = cache.get("blobs", asset.digest)
        stored = [dict(asset.encodings), asset.integrity]
        if not (isinstance(known, list) and len(known) == 3 and known[1:] == stored):
            cache.put("blobs", asset.digest, [None, *stored])
    cache.base = _base(store, ident)
    step(len(files))
    if activate:
        store.activate(ident)
    reused = len(assets) - len(lost)
    return BuildResult(existing, False, len(lost), reused, activated=activate)


def _base(store: Store, ident: str) -> list[str] | None:
    """The ``base`` of the build cache after a build that made or found *ident*."""
    stamp = store.deployment_stamp(ident)
    return None if stamp is None else [ident, stamp]
