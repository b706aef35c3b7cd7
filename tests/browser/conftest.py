"""Real-browser fixtures: headless Chromium (Playwright), servers on 127.0.0.1.

- ``browser``: one Chromium per test module (``DEPLOYSYNC_CHROMIUM`` overrides the binary).
- ``make_site(adapter=..., routing=..., ...)``: a store with a first deployment, the test
  app behind the middleware served by uvicorn (ASGI, in a thread) or gunicorn (WSGI, a
  subprocess), and ``deploy()``/``activate()`` that return once the server announces the
  new id.
- ``open_page()`` / ``tab``: a tab whose console errors and uncaught exceptions are
  collected; a test ends with none left unexplained (``Tab.allow`` names the expected).

htmx and Turbo come from the npm registry (pinned versions), fetched once into
``tests/.cache/vendor`` and shipped inside the test deployments like any app's assets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support import CHROMIUM, CHROMIUM_ARGS

sync_api = pytest.importorskip("playwright.sync_api")

from harness import GunicornProcess, MakeSite, Site, Tab, UvicornThread  # noqa: E402
from testapp import make_asgi  # noqa: E402

HERE = Path(__file__).parent
CACHE = HERE.parent / ".cache" / "vendor"
# npm package spec -> (file inside the package, name in the deployment)
VENDOR = {
    "htmx.org@2.0.11": ("package/dist/htmx.min.js", "htmx.min.js"),
    "htmx.org@4.0.1": ("package/dist/htmx.min.js", "htmx4.min.js"),
    "@hotwired/turbo@8.0.23": ("package/dist/turbo.es2017-esm.js", "turbo.es2017-esm.js"),
}

sync_api.expect.set_options(timeout=8000)


# -- vendored libraries ------------------------------------------------------------------


@pytest.fixture(scope="session")
def vendor() -> dict[str, Path]:
    """htmx (2 and 4) and Turbo dist files, from the npm registry once, then from the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    files = {}
    for spec, (member, name) in VENDOR.items():
        target = CACHE / name
        if not target.exists():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail("npm is needed once to fetch htmx and Turbo into tests/.cache")
            out = subprocess.run(
                [npm, "pack", spec, "--silent", "--pack-destination", str(CACHE)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if out.returncode:
                pytest.fail(
                    f"npm pack {spec} failed (the npm registry is needed once):\n{out.stderr}"
                )
            tarball = CACHE / out.stdout.strip().splitlines()[-1]
            with tarfile.open(tarball) as tar:
                extracted = tar.extractfile(member)
                assert extracted is not None, f"{member} missing in {tarball.name}"
                target.write_bytes(extracted.read())
            tarball.unlink()
        files[name] = target
    return files


@pytest.fixture
def make_site(tmp_path: Path, vendor: dict[str, Path]) -> Iterator[MakeSite]:
    """``make_site(adapter="asgi"|"wsgi", routing=..., check_interval=..., wrap=...)``.

    ``wrap(site) -> ASGI app`` replaces the standard app (for misbehaving servers); it
    registers the middleware it makes in ``site.closers``.
    """
    servers: list[UvicornThread | GunicornProcess] = []
    sites: list[Site] = []

    def make(
        adapter: str = "asgi",
        routing: str = "client",
        check_interval: float = 0,
        wrap: Callable[[Site], Any] | None = None,
    ) -> Site:
        site = Site(tmp_path / f"site{len(servers)}", vendor)
        site.build("v1", activate=True)
        server: UvicornThread | GunicornProcess
        if adapter == "wsgi":
            server = GunicornProcess(site.store, routing, check_interval)
        else:
            if wrap:
                app = wrap(site)
            else:
                app = make_asgi(str(site.store), routing, check_interval)
                site.closers.append(app.close)
            server = UvicornThread(app)
        servers.append(server)
        sites.append(site)
        site.base = f"http://127.0.0.1:{server.port}"
        return site

    yield make
    for server in servers:
        server.stop()
    for site in sites:
        for close in site.closers:
            close()


# -- the browser -------------------------------------------------------------------------


# Module scope: one Playwright per test module, so other suites (tests/browser_demo) can
# start their own; the sync API allows one at a time.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (set DEPLOYSYNC_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    # Playwright turns the back/forward cache off by default; users have it on.
    chromium = playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=CHROMIUM_ARGS,
        ignore_default_args=["--disable-back-forward-cache"],
    )
    yield chromium
    chromium.close()


@pytest.fixture(scope="module")
def browser_without_bfcache(playwright: Any) -> Iterator[Any]:
    """Chromium as Playwright launches it: back/forward reuse the HTTP cache instead."""
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context()
    yield ctx
    ctx.close()


@pytest.fixture
def open_page(context: Any) -> Iterator[Callable[[], Tab]]:
    """Open tabs in the test's context; each must end without unexpected errors."""
    tabs: list[Tab] = []

    def open_() -> Tab:
        tab = Tab(context.new_page())
        tabs.append(tab)
        return tab

    yield open_
    problems = [e for tab in tabs for e in tab.unexpected()]
    assert not problems, "console errors or uncaught exceptions:\n" + "\n".join(problems)


@pytest.fixture
def tab(open_page: Callable[[], Tab]) -> Tab:
    return open_page()
