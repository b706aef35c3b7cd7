"""Stores: where deployments live. ``open_store`` picks the backend from a spec."""

from __future__ import annotations

import os

from .base import (
    Activation,
    DeploymentNotFound,
    PruneError,
    PruneResult,
    Store,
    StoreError,
    check_digest,
)
from .fs import FileStore

__all__ = [
    "Activation",
    "DeploymentNotFound",
    "FileStore",
    "PruneError",
    "PruneResult",
    "Store",
    "StoreError",
    "check_digest",
    "open_store",
]

ENV_VAR = "DEPLOYSYNC_STORE"


def open_store(spec: str | os.PathLike[str] | Store | None = None) -> Store:
    """A store from a directory path, a ``redis://`` URL, or a store object.

    ``None`` reads ``DEPLOYSYNC_STORE``. An empty spec is no store, not the current
    directory.
    """
    if isinstance(spec, Store):
        return spec
    if spec is None:
        spec = os.environ.get(ENV_VAR, "")
    text = os.fspath(spec)
    if not text:
        raise StoreError(f"No store given: pass --store or set {ENV_VAR}")
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(text)
    if "://" in text:
        raise StoreError(f"Unsupported store URL {text!r}: use a directory path or redis://")
    return FileStore(text)
