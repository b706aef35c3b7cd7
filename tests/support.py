"""Helpers shared by the test packages: free ports, plain GETs, how Chromium is launched."""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

# Debian's Chromium; DEPLOYSYNC_CHROMIUM points elsewhere.
CHROMIUM = os.environ.get("DEPLOYSYNC_CHROMIUM", "/usr/bin/chromium")
# Running as root in a sandbox-less container, offline: no background traffic.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body of a GET; any HTTP status is an answer, not an exception."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright's sync API, closed on exit.

    Use at most module scope: two Playwright instances must never be alive at once (the
    sync API refuses to start inside another's event loop, and so does ``asyncio.run``).
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def watched_page(browser: Any, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A tab in a fresh context; any uncaught JavaScript error in it fails the test."""
    context = browser.new_context(viewport={"width": width, "height": height})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    yield tab
    with contextlib.suppress(Exception):
        context.close()
    assert errors == [], f"JavaScript errors in the page: {errors}"
