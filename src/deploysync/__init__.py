"""deploysync: every user moves to the new frontend at their next navigation."""

from __future__ import annotations

from .manifest import Asset, Deployment, DeploySyncError, InvalidId, is_valid_id
from .store import DeploymentNotFound, FileStore, Store, StoreError, open_store

__version__ = "0.1.0"

__all__ = [
    "Asset",
    "DeploySyncError",
    "Deployment",
    "DeploymentNotFound",
    "FileStore",
    "InvalidId",
    "Store",
    "StoreError",
    "__version__",
    "is_valid_id",
    "open_store",
]
