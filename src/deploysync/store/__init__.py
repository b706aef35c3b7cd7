"""Stores: where deployments live. ``open_store`` picks the backend from a spec."""

from __future__ import annotations

import os

from .base import (
    Activation,
    CacheError,
    DeploymentNotFound,
    PruneError,
    PruneResult,
    Store,
    StoreError,
    StoreNotFound,
    check_digest,
)
from .fs import FileStore

__all__ = [
    "Activation",
    "CacheError",
    "DeploymentNotFound",
    "FileStore",
    "PruneError",
    "PruneResult",
    "Store",
    "StoreError",
    "StoreNotFound",
    "check_digest",
    "open_store",
]

ENV_VAR = "DEPLOYSYNC_STORE"


def open_store(
    spec: str | os.PathLike[str] | Store | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Store:
    """A store from a directory path, a ``redis://`` URL, or a store object.

    ``None`` reads ``DEPLOYSYNC_STORE``. An empty spec is no store, not the current
    directory. *cache_dir*: the local cache folder of a remote store (a directory store
    needs none).
    """
    if isinstance(spec, Store):
        if cache_dir is not None:
            raise StoreError(
                f"cache_dir applies to a store given by its URL; give it to {spec!r} instead"
            )
        return spec
    if spec is None:
        spec = os.environ.get(ENV_VAR, "")
    text = os.fspath(spec)
    if not text:
        raise StoreError(f"No store given: pass --store or set {ENV_VAR}")
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(text, cache_dir=cache_dir)
    if "://" in text:
        raise StoreError(f"Unsupported store URL {text!r}: use a directory path or redis://")
    return FileStore(text)
