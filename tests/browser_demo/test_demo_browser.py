"""``deploysync demo`` in a real browser: what a person sees when a deploy happens.

``docs/demo.png`` (the README's picture) is taken here: when it is missing, or when
``DEPLOYSYNC_UPDATE_SCREENSHOT=1`` asks for a fresh one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
STALE_TIMEOUT = 10_000  # ms: a version check every 2 s, activation picked up within 1 s


def meta_id(page: Any) -> str:
    value = page.get_attribute('meta[name="deployment-id"]', "content")
    assert isinstance(value, str)
    return value


def badge(page: Any) -> str:
    text = page.text_content("#version-badge")
    assert isinstance(text, str)
    return text.strip()


def wait_for_deployment(page: Any, ident: str) -> None:
    page.wait_for_function(
        "id => document.querySelector('meta[name=\"deployment-id\"]')?.content === id",
        arg=ident,
    )


def header_colour(page: Any) -> str:
    colour = page.eval_on_selector(".topbar", "el => getComputedStyle(el).backgroundColor")
    assert isinstance(colour, str)
    return colour


def test_typing_survives_a_deploy_and_the_next_click_lands_on_the_new_version(
    demo: Any, page: Any
) -> None:
    page.goto(demo.url + "about")
    first = meta_id(page)
    assert badge(page) == "v1"
    v1_colour = header_colour(page)
    page.evaluate("window.sameDocument = true")

    # Client routing: before any deploy, a click swaps the page in without loading it.
    page.click('nav a[href="/"]')
    page.wait_for_selector("#notes")
    assert page.evaluate("window.sameDocument") is True
    assert page.url == demo.url

    notes = page.locator("#notes")
    notes.click()
    typed = "Meeting notes: ship the new checkout on Monday. "
    page.keyboard.type(typed, delay=10)

    deployed = demo.deploy()
    assert deployed["version"] == 2 and deployed["id"] != first

    # Keep typing while the page finds out: no keystroke is lost, nothing reloads.
    more = "Nothing I type is lost while v2 goes live; "
    page.keyboard.type(more, delay=25)
    typed += more
    banner = page.locator("#stale-banner")
    banner.wait_for(state="visible", timeout=STALE_TIMEOUT)
    assert "your next click will load it" in (banner.text_content() or "")
    last = "the banner waits for my next click."
    page.keyboard.type(last, delay=10)
    typed += last

    assert notes.input_value() == typed
    assert page.evaluate("document.activeElement && document.activeElement.id") == "notes"
    assert page.evaluate("window.sameDocument") is True
    assert meta_id(page) == first and badge(page) == "v1"
    assert page.evaluate("window.deploysync && window.deploysync.stale") is True
    assert "stays on v1 until your next click" in (page.text_content("#events") or "")

    if os.environ.get("DEPLOYSYNC_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT))

    # The next click is a full page load of its destination, on the new version.
    page.click('nav a[href="/about"]')
    wait_for_deployment(page, deployed["id"])
    page.wait_for_load_state("load")
    assert page.url == demo.url + "about"
    assert badge(page) == "v2"
    assert header_colour(page) != v1_colour
    assert page.evaluate("window.sameDocument") is None
    assert banner.is_hidden()

    # And client routing resumes on the new page.
    page.evaluate("window.sameDocument = true")
    page.click('nav a[href="/guestbook"]')
    page.wait_for_selector("form[action='/guestbook']")
    assert page.evaluate("window.sameDocument") is True
    assert meta_id(page) == deployed["id"]


def test_a_form_sent_after_a_deploy_is_recorded_once_on_the_new_version(
    demo: Any, page: Any
) -> None:
    page.goto(demo.url + "guestbook")
    page.fill("#name", "Ada")
    page.fill("#message", "Written on v1, sent after the deploy")
    deployed = demo.deploy()
    page.locator("#stale-banner").wait_for(state="visible", timeout=STALE_TIMEOUT)
    assert page.input_value("#message") == "Written on v1, sent after the deploy"

    page.click("form[action='/guestbook'] button[type=submit]")
    wait_for_deployment(page, deployed["id"])
    page.wait_for_load_state("load")
    assert page.url == demo.url + "guestbook"
    assert badge(page) == "v2"
    entries = page.locator(".entries li", has_text="Written on v1, sent after the deploy")
    assert entries.count() == 1
    assert "while v2 was live" in (entries.text_content() or "")


def test_the_operator_button_deploys_and_other_windows_find_out(demo: Any, page: Any) -> None:
    page.goto(demo.url)
    first = meta_id(page)
    operator = page.context.new_page()
    operator.goto(demo.url + "_demo/operator")
    operator.click("text=Deploy v2")
    operator.wait_for_selector("text=v2 is live")
    assert "v2 (current)" in (operator.text_content("table") or "")

    page.locator("#stale-banner").wait_for(state="visible", timeout=STALE_TIMEOUT)
    assert meta_id(page) == first
    page.click('nav a[href="/about"]')
    page.wait_for_function(
        "first => document.querySelector('meta[name=\"deployment-id\"]')?.content !== first",
        arg=first,
    )
    assert badge(page) == "v2"
