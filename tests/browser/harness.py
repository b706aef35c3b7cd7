"""The test harness: servers on 127.0.0.1, the site under test, and browser tabs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testapp import ASSETS

from deploysync.build import build
from deploysync.store import open_store
from support import free_port, http_get

HERE = Path(__file__).parent
DEADLINE = 10.0  # seconds any server-side wait may take


# -- servers -----------------------------------------------------------------------------


class UvicornThread:
    """An ASGI app served by uvicorn in a daemon thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            ws="none",
            http="h11",
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + DEADLINE
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(DEADLINE)


class GunicornProcess:
    """The WSGI test app served by gunicorn (gthread worker) in a subprocess."""

    def __init__(self, store: Path, routing: str, check_interval: float) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "DEPLOYSYNC_TEST_STORE": str(store),
            "DEPLOYSYNC_TEST_ROUTING": routing,
            "DEPLOYSYNC_TEST_CHECK_INTERVAL": str(check_interval),
            "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--threads",
                "8",
                "--log-level",
                "warning",
                "testapp:wsgi_from_env()",
            ],
            cwd=HERE,
            env=env,
        )
        deadline = time.monotonic() + DEADLINE
        while True:
            with contextlib.suppress(OSError):
                if http_get(f"http://127.0.0.1:{self.port}/_deploysync/version")[0] == 200:
                    return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("gunicorn did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(DEADLINE)


# -- the site under test -----------------------------------------------------------------


@dataclass
class Site:
    """A store, its deployments, and the app served over it."""

    root: Path
    vendor: dict[str, Path]
    base: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    # middleware instances to close (their store watcher threads) when the test ends
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.root / "store"

    def build(self, version: str, *, activate: bool) -> str:
        """Build the app's assets at *version* into a deployment; its id."""
        src = self.root / f"src-{version}"
        if not src.exists():
            for name, text in ASSETS.items():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                (src / name).write_text(text.replace("{v}", version))
            for name, path in self.vendor.items():
                (src / "vendor").mkdir(exist_ok=True)
                shutil.copyfile(path, src / "vendor" / name)
        ident = build(src, self.store, activate=activate, compress=False).deployment.id
        self.versions[version] = ident
        return ident

    def deploy(self, version: str) -> str:
        """Build and activate *version*; returns when the server announces it."""
        ident = self.build(version, activate=True)
        self.wait_for(ident)
        return ident

    def activate(self, ident: str) -> None:
        open_store(self.store).activate(ident)
        self.wait_for(ident)

    def current(self) -> str:
        status, body = http_get(self.base + "/_deploysync/version")
        assert status == 200, status
        ident: str = json.loads(body)["id"]
        return ident

    def wait_for(self, ident: str) -> None:
        deadline = time.monotonic() + DEADLINE
        while self.current() != ident:
            assert time.monotonic() < deadline, f"the server never announced {ident}"
            time.sleep(0.05)

    def wait_gone(self, url: str) -> None:
        """Wait until *url* (an asset of a pruned deployment) answers 404."""
        deadline = time.monotonic() + DEADLINE
        while http_get(self.base + url)[0] != 404:
            assert time.monotonic() < deadline, f"{url} is still served"
            time.sleep(0.1)

    def stats(self) -> dict[str, Any]:
        status, body = http_get(self.base + "/_test/stats")
        assert status == 200
        data: dict[str, Any] = json.loads(body)
        return data

    def url(self, path: str) -> str:
        return self.base + path


MakeSite = Callable[..., Site]


class Tab:
    """A page with its console errors and uncaught exceptions collected."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.allowed: list[re.Pattern[str]] = []
        self.documents = 0  # main-frame document requests (full loads)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", self._request)

    def _console(self, msg: Any) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text} @ {msg.location.get('url', '')}")

    def _request(self, request: Any) -> None:
        if request.is_navigation_request() and request.frame == self.page.main_frame:
            self.documents += 1

    def allow(self, pattern: str) -> None:
        """Expect errors matching *pattern* (a regular expression, searched)."""
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]
