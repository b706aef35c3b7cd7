"""FastAPI under uvicorn with deploysync's own client router: a deploy while typing, the
next click is a full load onto the new deployment."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration_helpers import (
    EXAMPLES,
    Server,
    copy_static,
    deploy,
    network_log,
    page_id,
    restyle,
    uvicorn,
    wait_for_id,
    wait_until_served,
)

from deploysync.store import FileStore


def test_typed_text_survives_a_deploy_and_the_next_click_loads_v2(
    tmp_path: Path, serve: Callable[..., Server], page: Any
) -> None:
    store = FileStore(tmp_path / "store")
    static = copy_static("fastapi_app", tmp_path / "static")
    v1 = deploy(static, store)
    server = serve(
        uvicorn("app:app"),
        cwd=EXAMPLES / "fastapi_app",
        env={"DEPLOYSYNC_STORE": str(store.root), "EXAMPLE_STATIC": str(static)},
    )
    log = network_log(page)
    page.goto(server.url + "/")
    page.wait_for_function("() => window.deploysync !== undefined")
    assert page_id(page) == v1.id
    page.evaluate("() => { window.sameDocument = true }")

    page.click("#notes-link")
    page.wait_for_url(server.url + "/notes")
    page.wait_for_selector("#text")
    assert page.evaluate("() => window.sameDocument") is True, "\n".join(log)  # swapped

    page.click("#text")
    page.keyboard.type("typing while")
    restyle(static, "v2")
    v2 = deploy(static, store)
    wait_until_served(server.url, v2.id)
    page.keyboard.type(" a deploy happens")
    assert page.input_value("#text") == "typing while a deploy happens"
    assert page.evaluate("() => window.sameDocument") is True
    assert page_id(page) == v1.id

    page.click("#about-link")
    wait_for_id(page, v2.id)
    assert page.url == server.url + "/about"
    assert page.evaluate("() => window.sameDocument") is None, "\n".join(log)
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == (
        "rgb(255, 240, 200)"
    )
    assert page.text_content("#deployment") == v2.id
