"""Flask + htmx hx-boost under gunicorn: a deploy while typing, the next click is a full load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration_helpers import (
    EXAMPLES,
    Server,
    copy_static,
    deploy,
    gunicorn,
    network_log,
    page_id,
    restyle,
    wait_for_id,
    wait_until_served,
)

from deploysync.store import FileStore


def test_typed_text_survives_a_deploy_and_the_next_boosted_click_loads_v2(
    tmp_path: Path, vendor: dict[str, Path], serve: Callable[..., Server], page: Any
) -> None:
    store = FileStore(tmp_path / "store")
    static = copy_static("flask_htmx", tmp_path / "static", {"htmx": vendor["htmx"]})
    v1 = deploy(static, store)
    server = serve(
        gunicorn("app:app"),
        cwd=EXAMPLES / "flask_htmx",
        env={"DEPLOYSYNC_STORE": str(store.root), "EXAMPLE_STATIC": str(static)},
    )

    log = network_log(page)
    page.goto(server.url + "/")
    page.wait_for_function("() => window.htmx !== undefined")
    assert page_id(page) == v1.id
    page.evaluate("() => { window.sameDocument = true }")

    # Before any deploy, boosted clicks are htmx swaps: the document stays.
    page.click("#notes-link")
    page.wait_for_url(server.url + "/notes")
    page.wait_for_selector("#text")
    assert page.evaluate("() => window.sameDocument") is True

    page.click("#text")
    page.keyboard.type("half a thought")
    restyle(static, "v2")
    v2 = deploy(static, store)
    assert v2.id != v1.id
    wait_until_served(server.url, v2.id)
    page.keyboard.type(", finished")
    # Nothing reloaded while typing.
    assert page.input_value("#text") == "half a thought, finished"
    assert page.evaluate("() => window.sameDocument") is True
    assert page_id(page) == v1.id

    page.click("#about-link")
    wait_for_id(page, v2.id)
    assert page.url == server.url + "/about"
    # A full page load: the old document (and its variable) is gone, v2's CSS applies.
    assert page.evaluate("() => window.sameDocument") is None, "\n".join(log)
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == (
        "rgb(255, 240, 200)"
    )
    # And htmx boosting resumes on the new page.
    page.evaluate("() => { window.sameDocument = true }")
    page.click("#notes-link")
    page.wait_for_url(server.url + "/notes")
    page.wait_for_selector("#text")
    assert page.evaluate("() => window.sameDocument") is True
