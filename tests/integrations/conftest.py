"""The integration tests' fixtures and collection hook.

They are defined in ``integration_helpers`` with the plain helpers the tests import: a
module with a name of its own, unlike ``conftest``, which several folders share.
"""

from __future__ import annotations

from integration_helpers import (  # the fixtures and the hook pytest finds here
    browser,
    chromium_path,
    page,
    pytest_collection_modifyitems,
    serve,
    vendor,
)

__all__ = [
    "browser",
    "chromium_path",
    "page",
    "pytest_collection_modifyitems",
    "serve",
    "vendor",
]
