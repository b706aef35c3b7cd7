"""Fixtures of the multi-server tests: app servers behind nginx over a shared Redis store.

- ``make_cluster()``: a :class:`cluster.Cluster` on an empty Redis database (the session
  ``redis_server`` of ``tests/conftest.py``), stopped when the test ends;
- ``chromium``: one headless Chromium for the module. Playwright's sync API keeps an
  asyncio loop running in this thread while it lives, so it never outlives the module.

nginx and redis-server are Debian packages; without them the tests skip, except in CI
(``CI`` set), where that is a failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import CHROMIUM, CHROMIUM_ARGS

HERE = Path(__file__).parent
# The browser harness (Tab, helpers) lives beside us; its modules import each other flat.
BROWSER = HERE.parent / "browser"
for folder in (HERE, BROWSER):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from cluster import NGINX, Cluster  # noqa: E402


def require(what: str, ok: bool) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"needs {what}; CI must not skip the multi-server tests", pytrace=False)
    pytest.skip(f"needs {what}")


@pytest.fixture
def make_cluster(redis_url: str, tmp_path: Path) -> Iterator[Callable[[], Cluster]]:
    require(f"nginx at {NGINX} (apt-get install nginx)", os.path.exists(NGINX))
    made: list[Cluster] = []

    def make() -> Cluster:
        cluster = Cluster(redis_url, tmp_path / f"cluster{len(made)}")
        cluster.folder.mkdir(parents=True)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    require(f"Chromium at {CHROMIUM} (set DEPLOYSYNC_CHROMIUM)", os.path.exists(CHROMIUM))
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
