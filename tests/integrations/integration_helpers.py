"""Fixtures of the integration browser tests: real servers, npm packages, headless Chromium.

Each example app runs under the server its users would deploy it with (gunicorn, uvicorn)
on a free loopback port, against a temporary store; the test deploys a new version while a
page is open and checks what the user sees.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploysync.build import build
from deploysync.manifest import Deployment
from deploysync.store import FileStore
from support import CHROMIUM, chromium, free_port, watched_page

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CACHE = REPO / "tests" / ".cache"
# npm packages the examples load, and the file each example uses.
VENDOR = {
    "htmx": ("htmx.org@2", "htmx.org/dist/htmx.min.js"),
    "turbo": ("@hotwired/turbo@8", "@hotwired/turbo/dist/turbo.es2017-esm.js"),
}

sync_api = pytest.importorskip("playwright.sync_api")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.slow)
            if "page" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.browser)


def _require(what: str, found: bool, install: str) -> None:
    if not found:
        reason = f"needs {what} ({install})"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must not skip the integration browser tests", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    _require("Chromium", os.path.exists(CHROMIUM), "apt-get install chromium")
    return CHROMIUM


@pytest.fixture(scope="session")
def vendor() -> dict[str, Path]:
    """htmx and Turbo from npm, installed once into tests/.cache/js-vendor."""
    npm = shutil.which("npm")
    _require("npm", npm is not None, "apt-get install npm")
    assert npm is not None
    folder = CACHE / "js-vendor"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        modules = folder / "node_modules"
        missing = [spec for spec, file in VENDOR.values() if not (modules / file).exists()]
        if missing:
            if not (folder / "package.json").exists():
                (folder / "package.json").write_text('{"name": "js-vendor", "private": true}\n')
            subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", *missing],
                cwd=folder,
                check=True,
                capture_output=True,
                timeout=300,
            )
    return {name: folder / "node_modules" / file for name, (_, file) in VENDOR.items()}


class Server:
    """A server subprocess on a free loopback port; ``url`` once it answers."""

    def __init__(
        self, args: Callable[[int], list[str]], *, cwd: Path, env: dict[str, str], log: Path
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            args(self.port),
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + "/_deploysync/version", timeout=1):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise AssertionError(f"server did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            # The session of the server we started: gunicorn's workers go with it.
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log_file.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(args: Callable[[int], list[str]], *, cwd: Path, env: dict[str, str]) -> Server:
        server = Server(args, cwd=cwd, env=env, log=tmp_path / f"server{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def gunicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--threads",
        "4",
        "--graceful-timeout",
        "2",
        app,
    ]


def uvicorn(app: str) -> Callable[[int], list[str]]:
    return lambda port: [
        sys.executable,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        app,
    ]


def copy_static(example: str, dest: Path, vendor_files: dict[str, Path] | None = None) -> Path:
    """The example's static folder, with the npm files its README tells to install."""
    shutil.copytree(EXAMPLES / example / "static", dest, ignore=shutil.ignore_patterns("vendor"))
    for name, file in (vendor_files or {}).items():
        (dest / "vendor").mkdir(exist_ok=True)
        target = "turbo.es2017-esm.js" if name == "turbo" else "htmx.min.js"
        shutil.copy2(file, dest / "vendor" / target)
    return dest


def restyle(static: Path, version: str) -> None:
    """Make *static* visibly another version (the stylesheet's colour and label)."""
    css = static / "app.css"
    css.write_text(
        css.read_text() + f'\nbody {{ --version: "{version}"; }}\n'
        f"body {{ background-color: rgb(255, 240, 200); }}\n"
    )
    # Django's collectstatic compares mtimes to the second and skips a file that is not
    # newer than its collected copy: a restyle in the same second as the first collect
    # would otherwise be skipped.
    later = time.time() + 2
    os.utime(css, (later, later))


def deploy(static: Path, store: FileStore, **options: Any) -> Deployment:
    return build(static, store, activate=True, **options).deployment


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with watched_page(browser, 1100, 800) as tab:
        yield tab


def page_id(tab: Any) -> str:
    value: str = tab.eval_on_selector("meta[name=deployment-id]", "m => m.content")
    return value


def wait_for_id(tab: Any, ident: str) -> None:
    tab.wait_for_function(
        "id => document.querySelector('meta[name=deployment-id]')?.content === id", arg=ident
    )
    # After a full load the meta tag is parsed before the stylesheets have loaded.
    tab.wait_for_load_state("load")


def wait_until_served(url: str, ident: str, timeout: float = 5.0) -> None:
    """Until the server announces *ident* (it polls the store every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/_deploysync/version", timeout=2) as response:
            if ident.encode() in response.read():
                return
        time.sleep(0.1)
    raise AssertionError(f"the server did not switch to {ident} within {timeout} s")


def network_log(tab: Any) -> list[str]:
    """What the page requested and got (with the navigation marker), for failure messages."""
    log: list[str] = []
    tab.on(
        "request",
        lambda r: log.append(f"> {r.method} {r.url} x-deploysync={r.headers.get('x-deploysync')}"),
    )
    tab.on("response", lambda r: log.append(f"< {r.status} {r.url}"))
    tab.on("console", lambda m: log.append(f"console: {m.text}"))
    return log
