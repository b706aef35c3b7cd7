"""Fixtures of the demo's browser tests: the demo as a subprocess, and headless Chromium."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support import CHROMIUM, chromium, watched_page

URL_RE = re.compile(r"running at (http://127\.0\.0\.1:\d+/)")

sync_api = pytest.importorskip("playwright.sync_api")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


class DemoProcess:
    """``python -m deploysync.demo --port 0`` and the URL it prints."""

    def __init__(self, store: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploysync.demo", "--port", "0", "--store", str(store)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.lines: list[str] = []
        self.url = ""
        deadline = time.monotonic() + 15
        # The URL is printed right after v1 is built; readline returns at EOF if it dies.
        while time.monotonic() < deadline and not self.url:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line.rstrip("\n"))
            if found := URL_RE.search(line):
                self.url = found.group(1)
        if not self.url:
            self.stop()
            raise AssertionError(f"the demo did not start: {self.lines}")

    def deploy(self) -> dict[str, Any]:
        """What the operator page's button does; the new version and its id."""
        request = urllib.request.Request(
            self.url + "_demo/operator", data=b"", headers={"Accept": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()
        return self.process.returncode


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[DemoProcess]:
    process = DemoProcess(tmp_path / "store")
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    with watched_page(browser, 1280, 800) as tab:
        yield tab
