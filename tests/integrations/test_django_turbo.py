"""Django + Turbo Drive under uvicorn (ASGI) and gunicorn (WSGI): collectstatic deploys,
typing survives, the next Turbo visit is a full load onto the new deployment."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from integration_helpers import (
    EXAMPLES,
    Server,
    copy_static,
    gunicorn,
    network_log,
    page_id,
    restyle,
    uvicorn,
    wait_for_id,
    wait_until_served,
)

from deploysync.store import FileStore

SITE = EXAMPLES / "django_turbo"


def collectstatic(env: dict[str, str]) -> str:
    """``manage.py collectstatic``: the deploy step of a Django site; the new current id."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=SITE,
        env={**os.environ, **env},
        check=True,
        timeout=60,
    )
    current = FileStore(env["DEPLOYSYNC_STORE"]).current()
    assert current is not None
    return current


@pytest.mark.parametrize("server_kind", ["uvicorn-asgi", "gunicorn-wsgi"])
def test_typed_text_survives_a_deploy_and_the_next_turbo_visit_loads_v2(
    tmp_path: Path,
    vendor: dict[str, Path],
    serve: Callable[..., Server],
    page: Any,
    server_kind: str,
) -> None:
    static = copy_static("django_turbo", tmp_path / "static", {"turbo": vendor["turbo"]})
    env = {
        "DEPLOYSYNC_STORE": str(tmp_path / "store"),
        "EXAMPLE_STATIC": str(static),
        "EXAMPLE_STATIC_ROOT": str(tmp_path / "static_root"),
        "DJANGO_SETTINGS_MODULE": "turbo_site.settings",
    }
    v1 = collectstatic(env)
    command = (
        uvicorn("turbo_site.asgi:application")
        if server_kind == "uvicorn-asgi"
        else gunicorn("turbo_site.wsgi")
    )
    server = serve(command, cwd=SITE, env=env)

    log = network_log(page)
    page.goto(server.url + "/")
    page.wait_for_function("() => window.Turbo !== undefined")
    assert page_id(page) == v1
    page.evaluate("() => { window.sameDocument = true }")
    page.click("#notes-link")
    page.wait_for_url(server.url + "/notes")
    page.wait_for_selector("#text")
    assert page.evaluate("() => window.sameDocument") is True  # a Turbo visit, no reload

    page.click("#text")
    page.keyboard.type("draft")
    restyle(static, "v2")
    v2 = collectstatic(env)
    assert v2 != v1
    wait_until_served(server.url, v2)
    page.keyboard.type(" survives")
    assert page.input_value("#text") == "draft survives"
    assert page.evaluate("() => window.sameDocument") is True

    page.click("#about-link")
    wait_for_id(page, v2)
    assert page.url == server.url + "/about"
    # A full page load (the old document's variable is gone), not a Turbo swap.
    assert page.evaluate("() => window.sameDocument") is None, "\n".join(log)
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == (
        "rgb(255, 240, 200)"
    )
    assert page.text_content("#deployment") == v2


def test_runserver_serves_the_deployment(tmp_path: Path, serve: Callable[..., Server]) -> None:
    """``manage.py runserver``: the app's runserver leaves /static/ to the middleware."""
    static = copy_static("django_turbo", tmp_path / "static")
    env = {
        "DEPLOYSYNC_STORE": str(tmp_path / "store"),
        "EXAMPLE_STATIC": str(static),
        "EXAMPLE_STATIC_ROOT": str(tmp_path / "static_root"),
    }
    current = collectstatic(env)
    deployment = FileStore(env["DEPLOYSYNC_STORE"]).load(current)
    server = serve(
        lambda port: [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=SITE,
        env=env,
    )
    with urllib.request.urlopen(server.url + "/notes", timeout=5) as response:
        html = response.read().decode()
        assert response.headers["X-Deployment-Id"] == current
    assert f'content="{current}"' in html
    assert f'href="{deployment.url("app.css")}"' in html
    with urllib.request.urlopen(server.url + deployment.url("app.css"), timeout=5) as response:
        assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
