"""A real Vite app: after a deploy and a prune, the open page's lazy route chunk 404s; the
page shows no error, learns it is outdated, and the next navigation is a full load onto v2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration_helpers import (
    EXAMPLES,
    Server,
    network_log,
    page_id,
    uvicorn,
    wait_for_id,
    wait_until_served,
)
from vite_project import vite_build

from deploysync import cli
from deploysync.store import FileStore


def deploy(dist: Path, store: FileStore) -> str:
    assert cli.main(["build", str(dist), "--store", str(store.root), "--activate"]) == 0
    current = store.current()
    assert current is not None
    return current


def test_pruned_lazy_chunk_then_next_navigation_is_a_full_load(
    tmp_path: Path, serve: Callable[..., Server], page: Any, capsys: Any
) -> None:
    store = FileStore(tmp_path / "store")
    v1 = deploy(vite_build(tmp_path / "dist1", "v1"), store)
    server = serve(
        uvicorn("server:app"), cwd=EXAMPLES / "vite_app", env={"DEPLOYSYNC_STORE": str(store.root)}
    )
    log = network_log(page)
    page.goto(server.url + "/")
    page.wait_for_selector("#outlet[data-route='/']")
    assert page_id(page) == v1
    assert "Home (v1)" in page.text_content("#outlet")
    page.wait_for_selector("html[data-worker='42']")  # its chunk is served by Vite's name
    page.evaluate("() => { window.sameDocument = true }")
    page.click("#about-link")  # client routing: no reload
    page.wait_for_selector("#outlet[data-route='/about']")
    assert page.evaluate("() => window.sameDocument") is True

    v2 = deploy(vite_build(tmp_path / "dist2", "v2"), store)
    assert v2 != v1
    assert cli.main(["prune", "--store", str(store.root), "--keep", "1"]) == 0
    assert not store.exists(v1)
    wait_until_served(server.url, v2)
    capsys.readouterr()

    # The lazy route of v1 is gone from the server: no error page, the app stays usable.
    page.click("#reports-link")
    page.wait_for_selector("#outlet[data-route='unavailable']")
    assert any(line.startswith("< 404") and "/static/assets/lazy-" in line for line in log), log
    page.wait_for_function("() => window.deploysync && window.deploysync.stale === true")
    assert page.evaluate("() => window.sameDocument") is True
    assert page_id(page) == v1

    # The next navigation (the app's own pushState) becomes a full load onto v2.
    page.click("#home-link")
    wait_for_id(page, v2)
    assert page.evaluate("() => window.sameDocument") is None, "\n".join(log)
    page.wait_for_selector("#outlet[data-route='/']")
    assert "Home (v2)" in page.text_content("#outlet")
    # And the lazy route loads again, now from v2, without a reload.
    page.evaluate("() => { window.sameDocument = true }")
    page.click("#reports-link")
    page.wait_for_selector("#outlet[data-route='reports']")
    assert page.evaluate("() => window.sameDocument") is True
