"""Fingerprinting a folder into a deployment.

The steps, each one a plain function below:

1. collect the files under SRC (symbolic links must stay inside it) and read them
   (:func:`_load`; the :class:`BuildCache` spares unchanged files a second reading);
2. find the references of CSS files and JS modules (:mod:`deploysync.rewrite`) and resolve
   them to files of SRC, warning about the ones that point at nothing (:func:`_link`);
3. name every file after its content, dependencies first (:func:`_name_all`). Files that
   reference each other in a cycle form a strongly connected component, named as one unit
   (:func:`_name_component`), so cycles need no repeated passes and stay deterministic;
4. under the store's lock, precompress (gzip, brotli) and write what the store does not
   hold yet, on all cores, then publish the manifest and maybe activate it
   (:func:`_store`).

Nothing touches the store before step 4, so bad input leaves it unchanged; the store's
atomic publish makes a crash at any moment leave it as it was or complete.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import mimetypes
import multiprocessing
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from . import rewrite
from .manifest import (
    DEFAULT_STATIC_URL,
    Asset,
    Deployment,
    DeploySyncError,
    derive_id,
    normalize_static_url,
    validate_id,
)
from .store import Store, open_store

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
CACHE_VERSION = 2
CACHE_ENV = "DEPLOYSYNC_CACHE_DIR"

# A precompressed variant is kept only when it saves at least this share of the bytes: a
# smaller saving is not worth a second file and a Vary header.
MIN_SAVING = 0.05
# Below this size a variant cannot save a useful number of bytes.
MIN_COMPRESS_SIZE = 256
# Brotli's quality 11 costs about 1 s of CPU per MB of text; quality 9 about 1/50 of that
# for files about 5% larger (measured on the bench/ tree: 4.4 s vs 0.08 s for 3.9 MB of JS
# and CSS, 648 KB vs 684 KB). 9 keeps a build of a large frontend in seconds;
# ``--brotli-quality 11`` buys the last percent for those who want it.
DEFAULT_BROTLI_QUALITY = 9
# Above this size a lower quality keeps big bundles from dominating the build.
BROTLI_MAX_QUALITY_SIZE = 256 * 1024

# Deterministic content types: the same on every machine (system mime.types files are not
# read), so the deployment id does not depend on where it was built.
_MIME = mimetypes.MimeTypes(filenames=())
_EXTRA_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".avif": "image/avif",
    ".webp": "image/webp",
    ".ico": "image/vnd.microsoft.icon",
}
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


def _base_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext in _EXTRA_TYPES:
        return _EXTRA_TYPES[ext]
    guessed, _ = _MIME.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def content_type(path: str) -> str:
    """The ``Content-Type`` an asset is served with; text types name their charset."""
    kind = _base_type(path)
    if kind.startswith("text/") or kind in _CHARSET_TYPES:
        kind += "; charset=utf-8"
    return kind


def compressible(path: str) -> bool:
    """Whether precompressing the file can pay (text, SVG, JSON, wasm, uncompressed fonts)."""
    kind = _base_type(path)
    return kind.startswith("text/") or kind in _COMPRESSIBLE_TYPES or kind.endswith("+xml")


def integrity(data: bytes) -> str:
    """The Subresource Integrity value of *data* (sha384)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def precompress(data: bytes, brotli_quality: int = DEFAULT_BROTLI_QUALITY) -> dict[str, bytes]:
    """The precompressed variants of *data* worth keeping (``{"gzip": ..., "br": ...}``)."""
    size = len(data)
    if size < MIN_COMPRESS_SIZE:
        return {}
    limit = size * (1 - MIN_SAVING)
    # Random-looking content (an already compressed font, a minified blob of base64) is
    # detected cheaply on a sample instead of paying brotli's full price for nothing.
    sample = data[: 64 * 1024]
    if len(zlib.compress(sample, 1)) > len(sample) * (1 - MIN_SAVING):
        return {}
    variants: dict[str, bytes] = {}
    gz = _gzip(data)
    if len(gz) <= limit:
        variants["gzip"] = gz
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


def collect(root: Path, *, skip: Iterable[str] = ()) -> list[tuple[str, Path, os.stat_result]]:
    """Every regular file under *root* as ``(logical path, file path, stat)``, sorted.

    Symbolic links are followed when they stay inside *root*; one leading outside it,
    a dangling one, a FIFO or a device is a :class:`BuildError` naming it.
    """
    real_root = os.path.realpath(root)
    skipped = set(skip)
    found: list[tuple[str, Path, os.stat_result]] = []
    # Each pending folder carries the real paths of its ancestors: a link back up the
    # tree would loop forever, a link to a sibling folder is just another name for it.
    pending: list[tuple[str, Path, frozenset[str]]] = [("", root, frozenset((real_root,)))]
    while pending:
        prefix, folder, ancestors = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise BuildError(f"Cannot read folder '{folder}': {exc.strerror}") from None
        for entry in entries:
            rel = prefix + entry.name
            if rel in skipped:
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = os.path.realpath(path)
                if not os.path.exists(target):
                    raise BuildError(f"Cannot read '{rel}': dangling symbolic link")
                if os.path.commonpath([real_root, target]) != real_root:
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
                    pending.append((rel + "/", path, ancestors | {real}))
            elif st is not None:
                found.append((rel, path, st))
            else:
                raise BuildError(f"'{rel}' is not a regular file")
    found.sort(key=lambda item: item[0])
    return found


def _read(rel: str, path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise BuildError(f"Cannot read '{rel}': {exc.strerror or exc}") from None


@dataclass
class _File:
    """One source file on its way to becoming an asset.

    ``data`` stays ``None`` for a file the build cache vouches for (same stat, same
    digest) until its bytes are needed: an unchanged image already in the store is
    never read.
    """

    path: str
    location: Path
    data: bytes | None
    source_digest: str
    fixed_name: bool = False  # already hashed by a bundler (Vite): kept as is
    text: str | None = None
    refs: list[rewrite.Reference] = field(default_factory=list)
    # For each reference resolved to a file of the source: (reference, target path).
    links: list[tuple[rewrite.Reference, str]] = field(default_factory=list)
    final: bytes | None = None  # the served bytes, when they differ from the source's
    digest: str = ""
    name: str = ""
    size: int = 0

    def served(self) -> bytes:
        """The bytes to store, read now if the build has not needed them so far."""
        if self.final is not None:
            return self.final
        if self.data is None:
            data = _read(self.path, self.location)
            if hashlib.sha256(data).hexdigest() != self.source_digest:
                raise BuildError(f"'{self.path}' changed during the build")
            self.data = data
        return self.data


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


# -- the build cache -------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$DEPLOYSYNC_CACHE_DIR``, else ``$XDG_CACHE_HOME/deploysync`` (``~/.cache``)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "deploysync"


# A file modified this close to the moment its stat was recorded could change again within
# the same timestamp tick unseen (git's "racily clean" entries): such entries are not trusted.
_RACY_NS = 2_000_000_000


class BuildCache:
    """What a rebuild of the same folder into the same store can skip.

    * ``stat``: a file's (size, mtime, inode, ctime) -> the sha256 of its bytes, so an
      unchanged image is neither read nor hashed again (like git's index);
    * ``refs``: the references found in a CSS or JS file, keyed by the sha256 of its bytes
      (scanning JavaScript is the one step that runs in Python character by character);
    * ``integrity``: the SRI value of a stored blob, keyed by its sha256.

    Keys are contents or full stat signatures, so an entry can be missing but not wrong.
    There is one cache file per (source folder, store), rewritten with only the entries
    the last build used, so it does not grow without bound. A missing, damaged or
    unwritable cache only costs time.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.stat: dict[str, list[int | str]] = {}
        self.refs: dict[str, list[rewrite.Reference]] = {}
        self.integrity: dict[str, str] = {}
        self.used_stat: dict[str, list[int | str]] = {}
        self.used_refs: dict[str, list[rewrite.Reference]] = {}
        self.used_integrity: dict[str, str] = {}
        if path is None:
            return
        try:
            data = json.loads(path.read_bytes())
            if data.get("version") == CACHE_VERSION:
                self.stat = dict(data["stat"])
                self.refs = {
                    digest: [rewrite.Reference(s, e, u, k) for s, e, u, k in refs]
                    for digest, refs in data["refs"].items()
                }
                self.integrity = dict(data["integrity"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self.stat, self.refs, self.integrity = {}, {}, {}

    @classmethod
    def open(cls, folder: Path | None, root: Path, store: Store) -> BuildCache:
        if folder is None:
            return cls(None)
        key = hashlib.sha256(
            f"{os.path.realpath(root)}\0{store.location}".encode("utf-8", "surrogateescape")
        )
        return cls(folder / f"build-{key.hexdigest()[:24]}.json")

    @staticmethod
    def _signature(st: os.stat_result) -> list[int | str]:
        return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]

    def known_digest(self, path: Path, st: os.stat_result) -> str | None:
        """The sha256 recorded for the file at *path* when its stat is unchanged."""
        entry = self.stat.get(str(path))
        if entry is None or entry[:4] != self._signature(st):
            return None
        recorded_at = entry[5] if len(entry) > 5 else 0
        if not isinstance(recorded_at, int) or recorded_at - st.st_mtime_ns < _RACY_NS:
            return None
        self.used_stat[str(path)] = entry
        digest = entry[4]
        return digest if isinstance(digest, str) else None

    def record_digest(self, path: Path, st: os.stat_result, digest: str) -> None:
        self.used_stat[str(path)] = [*self._signature(st), digest, time.time_ns()]

    def get_refs(self, digest: str) -> list[rewrite.Reference] | None:
        refs = self.refs.get(digest)
        if refs is not None:
            self.used_refs[digest] = refs
        return refs

    def put_refs(self, digest: str, refs: list[rewrite.Reference]) -> None:
        self.used_refs[digest] = refs

    def get_integrity(self, digest: str) -> str | None:
        value = self.integrity.get(digest)
        if value is not None:
            self.used_integrity[digest] = value
        return value

    def put_integrity(self, digest: str, value: str) -> None:
        self.used_integrity[digest] = value

    def save(self) -> None:
        if self.path is None:
            return
        payload = {
            "version": CACHE_VERSION,
            "stat": self.used_stat,
            "refs": {
                digest: [[r.start, r.end, r.url, r.kind] for r in refs]
                for digest, refs in self.used_refs.items()
            },
            "integrity": self.used_integrity,
        }
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".build-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    # dumps, not dump: one call into the C encoder instead of a write
                    # per token.
                    fh.write(json.dumps(payload, separators=(",", ":")))
                os.replace(tmp, self.path)
            except OSError:
                os.unlink(tmp)
                raise


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
    assert file.text is not None
    targets = {id(ref): target for ref, target in file.links}

    def replace(ref: rewrite.Reference) -> str | None:
        target = targets.get(id(ref))
        return None if target is None else rewrite.retarget(ref.url, names[target])

    text = rewrite.apply(file.text, file.refs, replace)
    return file.served() if text is file.text else text.encode("utf-8", "surrogateescape")


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


def _name_all(files: dict[str, _File]) -> None:
    """Give every file its final bytes, digest and hashed name, dependencies first."""
    names: dict[str, str] = {}
    for file in files.values():
        if not file.links:
            file.digest = file.source_digest
            file.name = file.path if file.fixed_name else hashed_name(file.path, file.digest)
            names[file.path] = file.name
    graph_nodes = sorted(path for path, file in files.items() if file.links)
    edges = {
        path: sorted({t for _, t in files[path].links if files[t].links}) for path in graph_nodes
    }
    for component in strongly_connected(graph_nodes, edges):
        first = component[0]
        if len(component) == 1 and first not in edges[first]:
            file = files[first]
            file.final = _rewritten(file, names)
            file.digest = hashlib.sha256(file.final).hexdigest()
            file.size = len(file.final)
            file.name = hashed_name(file.path, file.digest)
            names[file.path] = file.name
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
) -> BuildResult:
    """Fingerprint every file under *src* into a new deployment of *store*.

    *vite*: treat *src* as a Vite ``dist`` folder (``None``: when it has
    ``.vite/manifest.json``). *progress* is called with (done, total) steps; *warn* with
    each warning (references to missing files), which *strict* turns into an error.
    *workers* bounds the parallelism (default: the number of cores). The build cache
    (see :class:`BuildCache`) lives in *cache_dir*, default :func:`default_cache_dir`,
    unless *cache* is false.
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
    entries = collect(root, skip=(".vite",) if vite else ())
    if not entries:
        raise BuildError(f"Source folder '{src}' is empty")
    build_cache = BuildCache.open(
        (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None,
        root,
        store,
    )
    total_steps = 2 * len(entries)
    done = 0

    def step(count: int = 1) -> None:
        nonlocal done
        done += count
        if progress is not None and count:
            progress(done, total_steps)

    warnings: list[str] = []
    fixed = vite_files(vite_manifest)
    for missing in sorted(fixed - {rel for rel, _, _ in entries}):
        warnings.append(f"{VITE_MANIFEST}: names missing file '{missing}'")

    # Reading, hashing, compressing and writing all release the GIL: threads keep every
    # core and the disk busy without the cost of shipping bytes to other processes. Twice
    # the cores, so that a thread waiting on the disk does not leave a core idle.
    with ThreadPoolExecutor(max_workers=2 * workers) as pool:
        files = _load(entries, fixed, build_cache, pool, step)
    # Between the two pools no thread of ours runs, so scanning may fork worker processes.
    warnings += _link(files, static_url, build_cache, workers)
    if warnings and warn is not None:
        for message in warnings:
            warn(message)
    if strict and warnings:
        more = f" (and {len(warnings) - 1} more)" if len(warnings) > 1 else ""
        raise BuildError(warnings[0] + more)
    _name_all(files)
    with ThreadPoolExecutor(max_workers=2 * workers) as pool:
        result = _store(
            [files[path] for path in sorted(files)],
            store,
            pool,
            static_url=static_url,
            deployment_id=deployment_id,
            activate=activate,
            compress=compress,
            brotli_quality=brotli_quality,
            extra={"vite": vite_manifest} if vite else {},
            cache=build_cache,
            step=step,
        )
    build_cache.save()
    result.warnings = warnings
    result.seconds = time.perf_counter() - started
    return result


def _load(
    entries: list[tuple[str, Path, os.stat_result]],
    fixed: set[str],
    cache: BuildCache,
    pool: Executor,
    step: Callable[[int], None],
) -> dict[str, _File]:
    """A :class:`_File` per entry: digests from the cache or from reading the file."""

    def load(entry: tuple[str, Path, os.stat_result]) -> _File:
        rel, path, st = entry
        is_fixed = rel in fixed
        scanned = not is_fixed and rewrite.scanner_for(rel) is not None
        digest = cache.known_digest(path, st)
        if digest is not None and not scanned:
            return _File(rel, path, None, digest, fixed_name=is_fixed, size=st.st_size)
        data = _read(rel, path)
        digest = hashlib.sha256(data).hexdigest()
        cache.record_digest(path, st, digest)
        return _File(rel, path, data, digest, fixed_name=is_fixed, size=len(data))

    files: dict[str, _File] = {}
    for batch in pool.map(lambda items: [load(item) for item in items], _batches(entries)):
        for file in batch:
            files[file.path] = file
        step(len(batch))
    return files


_T = TypeVar("_T")


def _batches(items: Sequence[_T], size: int = 16) -> list[Sequence[_T]]:
    """*items* in slices: one pool task per file costs more than reading a small file."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def _scan_batch(jobs: list[tuple[str, str]]) -> list[list[tuple[int, int, str, str]]]:
    """Scan (path, text) pairs in a worker process; plain tuples cross the process boundary."""
    results = []
    for path, text in jobs:
        scanner = rewrite.scanner_for(path)
        refs = scanner(text) if scanner is not None else []
        results.append([(r.start, r.end, r.url, r.kind) for r in refs])
    return results


def _scan(jobs: list[tuple[str, str]], workers: int) -> list[list[rewrite.Reference]]:
    """The references of each (path, text), on several processes when there is much text."""
    total = sum(len(text) for _, text in jobs)
    # Only forked workers are cheap enough, and only a process without other threads may
    # fork safely (a lock held by another thread would stay locked in the child). Spawned
    # workers would also re-run a caller's unguarded __main__ script.
    can_fork = "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
    if workers < 2 or total < PARALLEL_SCAN_BYTES or not can_fork:
        return [[rewrite.Reference(*r) for r in refs] for refs in _scan_batch(jobs)]
    # Balanced batches, largest first; one batch per worker keeps pickling cheap.
    batches: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for index in sorted(range(len(jobs)), key=lambda i: len(jobs[i][1]), reverse=True):
        lightest = loads.index(min(loads))
        batches[lightest].append(index)
        loads[lightest] += len(jobs[index][1])
    results: list[list[rewrite.Reference]] = [[] for _ in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as procs:
        scanned = procs.map(_scan_batch, [[jobs[i] for i in batch] for batch in batches])
        for batch, batch_refs in zip(batches, scanned, strict=True):
            for index, refs in zip(batch, batch_refs, strict=True):
                results[index] = [rewrite.Reference(*r) for r in refs]
    return results


def _link(files: dict[str, _File], static_url: str, cache: BuildCache, workers: int) -> list[str]:
    """Scan the CSS and JS files and resolve their references; return the warnings."""
    todo: list[_File] = []
    for path, file in files.items():
        if file.fixed_name or rewrite.scanner_for(path) is None:
            continue
        assert file.data is not None  # scanned files are always read
        file.text = file.data.decode("utf-8", "surrogateescape")
        refs = cache.get_refs(file.source_digest)
        if refs is None:
            todo.append(file)
        else:
            file.refs = refs
    if todo:
        scanned = _scan([(f.path, f.text or "") for f in todo], workers)
        for file, refs in zip(todo, scanned, strict=True):
            file.refs = refs
            cache.put_refs(file.source_digest, refs)

    warnings: list[str] = []
    for path, file in files.items():
        for ref in file.refs:
            target = rewrite.resolve(ref, path, static_url)
            if target is None:
                continue
            if target in files:
                file.links.append((ref, target))
            else:
                line = rewrite.line_of(file.text or "", ref.start)
                warnings.append(f"{path}:{line}: reference to missing file '{ref.url}'")
    return warnings


def _store(
    files: list[_File],
    store: Store,
    pool: Executor,
    *,
    static_url: str,
    deployment_id: str | None,
    activate: bool,
    compress: bool,
    brotli_quality: int,
    extra: Mapping[str, Any],
    cache: BuildCache,
    step: Callable[[int], None],
) -> BuildResult:
    """Compress and write what the store lacks, publish the manifest (and activate it).

    Everything happens under the store's lock, so a prune cannot remove a blob between
    the moment it is found in the store and the publication of the manifest using it.
    """
    unique: dict[str, _File] = {}
    for file in files:
        unique.setdefault(file.digest, file)
    # What the manifest will name is known before the store is touched: the id (derived
    # from it, or the user's) and each file's name and digest.
    content = {(f.path, f.name, f.digest, content_type(f.path)) for f in files}
    ident = deployment_id or derive_id(
        static_url,
        (Asset(path, name, digest, 0, kind, "") for path, name, digest, kind in content),
        extra,
    )
    with store.lock():
        if store.exists(ident):
            existing = store.load(ident)
            same = {(a.path, a.name, a.digest, a.content_type) for a in existing.assets.values()}
            if same != content or existing.static_url != static_url:
                raise BuildError(
                    f"Deployment {ident!r} already exists in {store.location} with other"
                    " content; choose another --id"
                )
            # A rebuild of what is published already: nothing to write.
            step(len(files))
            if activate:
                store.activate(ident)
            return BuildResult(existing, False, 0, len(unique), activated=activate)
        variants: dict[str, Mapping[str, int]] = {}
        new: list[_File] = []
        for digest, file in unique.items():
            found = store.blob_variants(digest)
            if found is None:
                new.append(file)
            else:
                variants[digest] = found

        def save(file: _File) -> tuple[str, dict[str, int]]:
            data = file.served()
            wanted = compress and compressible(file.path)
            encoded = precompress(data, brotli_quality) if wanted else {}
            store.put_blob(file.digest, data, encoded)
            return integrity(data), {name: len(payload) for name, payload in encoded.items()}

        # Largest first, so the pool does not end on one big file while other cores idle.
        new.sort(key=lambda f: f.size, reverse=True)
        signatures: dict[str, str] = {}
        saved = pool.map(lambda batch: [save(f) for f in batch], _batches(new, 8))
        for batch, results in zip(_batches(new, 8), saved, strict=True):
            for file, (value, sizes) in zip(batch, results, strict=True):
                variants[file.digest] = sizes
                signatures[file.digest] = value
            step(len(batch))
        unsigned = []
        for digest, file in unique.items():
            if digest not in signatures:
                recorded = cache.get_integrity(digest)
                if recorded is None:
                    unsigned.append(file)
                else:
                    signatures[digest] = recorded
        for file, value in zip(
            unsigned, pool.map(lambda f: integrity(f.served()), unsigned), strict=True
        ):
            signatures[file.digest] = value
        for digest, value in signatures.items():
            cache.put_integrity(digest, value)
        step(len(files) - len(new))

        assets = [
            Asset(
                path=file.path,
                name=file.name,
                digest=file.digest,
                size=file.size,
                content_type=content_type(file.path),
                integrity=signatures[file.digest],
                encodings=MappingProxyType(dict(sorted(variants[file.digest].items()))),
            )
            for file in files
        ]
        deployment = Deployment(
            id=ident,
            static_url=static_url,
            assets=MappingProxyType({a.path: a for a in assets}),
            created=time.time(),
            extra=MappingProxyType(dict(extra)),
        )
        created = store.publish(deployment)
        if not created:
            deployment = store.load(ident)
        if activate:
            store.activate(ident)
    return BuildResult(deployment, created, len(new), len(unique) - len(new), activated=activate)
