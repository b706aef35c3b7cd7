"""Small assertions on what a user sees, shared by the browser tests."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

# Chromium logs a failed response of a fetch() as a console error; a navigation fetch the
# server answers 409 (the contract's "reload") is expected wherever a deploy happens.
RELOAD_409 = r"status of 409 \(Conflict\)"


def mark(page: Any) -> None:
    """Put a marker into the page's JavaScript realm: a full load loses it."""
    page.evaluate("window.__marker = 'still here'")


def marked(page: Any) -> bool:
    """True when the page was not reloaded since :func:`mark`."""
    return bool(page.evaluate("window.__marker === 'still here'"))


def page_id(page: Any) -> str:
    """The deployment id the current document was rendered by."""
    value: str = page.locator("meta[name=deployment-id]").get_attribute("content")
    return value


def title_is(page: Any, text: str) -> None:
    expect(page.locator("h1")).to_have_text(text)


def stale(page: Any) -> bool:
    return bool(page.evaluate("window.deploysync.stale"))


def wait_stale(page: Any) -> None:
    page.wait_for_function("window.deploysync && window.deploysync.stale", timeout=8000)


def check(page: Any) -> bool:
    """What the page's own version check (as on becoming visible) concludes."""
    return bool(page.evaluate("window.deploysync.check()"))


def client_routed(page: Any) -> None:
    """Wait until the page is ready for client routing (the module has run)."""
    page.wait_for_function("!!window.deploysync", timeout=8000)


def open_marked(page: Any, url: str) -> None:
    """Load *url*, wait for the client, and mark the page (see :func:`mark`)."""
    page.goto(url)
    client_routed(page)
    mark(page)
