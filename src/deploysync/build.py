"""Fingerprinting a folder into a deployment."""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

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

HASH_LENGTH = 12


class BuildError(DeploySyncError):
    """The source folder cannot be built."""


@dataclass
class BuildResult:
    deployment: Deployment
    created: bool
    stored_blobs: int = 0
    reused_blobs: int = 0
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


def hashed_name(path: str, digest: str) -> str:
    """``css/app.css`` + digest -> ``css/app.<12 hex>.css``."""
    folder, _, base = path.rpartition("/")
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    name = f"{stem}.{digest[:HASH_LENGTH]}" + (f".{ext}" if ext else "")
    return f"{folder}/{name}" if folder else name


def content_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(path)
    kind = guessed or "application/octet-stream"
    if kind == "text/javascript" or path.endswith((".js", ".mjs")):
        kind = "text/javascript"
    if kind.startswith("text/") or kind in ("application/json", "image/svg+xml"):
        kind += "; charset=utf-8"
    return kind


def integrity(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def build(
    src: str | os.PathLike[str],
    store: Store | str | os.PathLike[str],
    *,
    static_url: str = DEFAULT_STATIC_URL,
    deployment_id: str | None = None,
    activate: bool = False,
    strict: bool = False,
    compress: bool = True,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> BuildResult:
    """Fingerprint every file under *src* into a new deployment of *store*."""
    started = time.perf_counter()
    root = Path(src)
    if not root.exists():
        raise BuildError(f"Source folder '{src}' does not exist")
    if not root.is_dir():
        raise BuildError(f"Source '{src}' is not a folder")
    if deployment_id is not None:
        validate_id(deployment_id)
    static_url = normalize_static_url(static_url)
    store = open_store(store)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise BuildError(f"Source folder '{src}' is empty")
    store.ensure_writable()
    result_assets = []
    stored = reused = 0
    with store.lock():
        for index, file in enumerate(files):
            rel = file.relative_to(root).as_posix()
            data = file.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            variants = store.blob_variants(digest)
            if variants is None:
                store.put_blob(digest, data, {})
                variants = {}
                stored += 1
            else:
                reused += 1
            result_assets.append(
                Asset(
                    path=rel,
                    name=hashed_name(rel, digest),
                    digest=digest,
                    size=len(data),
                    content_type=content_type(rel),
                    integrity=integrity(data),
                    encodings=MappingProxyType(dict(variants)),
                )
            )
            if progress:
                progress(index + 1, len(files))
        ident = deployment_id or derive_id(static_url, result_assets)
        deployment = Deployment(
            id=ident,
            static_url=static_url,
            assets=MappingProxyType({a.path: a for a in result_assets}),
            created=time.time(),
        )
        created = store.publish(deployment)
        if not created:
            deployment = store.load(ident)
        if activate:
            store.activate(ident)
    return BuildResult(deployment, created, stored, reused, [], time.perf_counter() - started)
