"""The main user journeys across a deploy, through ASGI (uvicorn) and WSGI (gunicorn)."""

from __future__ import annotations

from typing import Any

import pytest
from harness import MakeSite, Site, Tab
from helpers import (
    RELOAD_409,
    check,
    client_routed,
    mark,
    marked,
    page_id,
    stale,
    title_is,
    wait_stale,
)

pytestmark = pytest.mark.browser

ADAPTERS = ["asgi", "wsgi"]


def _client_page(
    make_site: MakeSite, tab: Tab, path: str = "/", *, clock: bool = False
) -> tuple[Site, Any]:
    """A page of a client-routing site, ready and marked (a full load loses the mark);
    *clock*: with Playwright's clock installed, for time to be moved on."""
    site = make_site(routing="client")
    page = tab.page
    if clock:
        page.clock.install()
    page.goto(site.url(path))
    client_routed(page)
    mark(page)
    return site, page


def _hover_prefetch(site: Site, page: Any) -> None:
    """Hover the page's #to-prefetch link and wait for its one prefetch."""
    before = site.stats()["navigate"]
    page.hover("#to-prefetch")
    for _ in range(50):
        if site.stats()["navigate"] > before:
            break
        page.wait_for_timeout(50)
    assert site.stats()["navigate"] == before + 1, "the hover prefetched the link"


def _posted_once(site: Site, page: Any, received: str, new: str) -> None:
    """The form's POST was processed once, and answered by the new deployment."""
    title_is(page, "Result")
    assert page.inner_text("#received") == received
    assert page_id(page) == new
    assert site.stats()["posts"] == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_clicks_swap_pages_without_a_full_load_before_any_deploy(
    make_site: MakeSite, tab: Tab, adapter: str
) -> None:
    site = make_site(adapter, routing="client")
    page = tab.page
    page.goto(site.url("/"))
    client_routed(page)
    mark(page)
    first = page_id(page)
    for link, title in (("#to-a", "A"), ("#to-b", "B"), ("#to-home", "Home")):
        page.click(link)
        title_is(page, title)
        assert marked(page), f"a full load happened on the way to {title}"
    assert page.url == site.url("/")
    assert page_id(page) == first
    stats = site.stats()
    assert stats["full"] == 1
    assert stats["navigate"] == 3
    assert tab.documents == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_typed_text_survives_a_deploy_and_the_next_click_lands_on_the_new_version(
    make_site: MakeSite, tab: Tab, adapter: str
) -> None:
    # check_interval=1: the page checks by itself while the user types
    site = make_site(adapter, routing="client", check_interval=1)
    page = tab.page
    page.goto(site.url("/type"))
    client_routed(page)
    mark(page)
    old = page_id(page)
    page.click("#text")
    first, second = "typing slowly across a deploy, ", "and still typing after it."
    page.keyboard.type(first, delay=15)
    new = site.deploy("v2")
    page.keyboard.type(second[:10], delay=15)
    wait_stale(page)  # found out by its own periodic check, while the user types
    page.keyboard.type(second[10:20], delay=15)
    assert check(page), "a forced check agrees"
    page.keyboard.type(second[20:], delay=15)
    assert page.input_value("#text") == first + second
    assert marked(page), "the page reloaded under the user's fingers"
    assert page_id(page) == old

    page.click("#to-a")
    title_is(page, "A")
    assert not marked(page), "the next navigation must be a full load"
    assert page_id(page) == new
    assert not stale(page)

    client_routed(page)
    mark(page)
    page.click("#to-b")
    title_is(page, "B")
    assert marked(page), "client routing resumes on the new version"
    assert page_id(page) == new


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("known", [False, True], ids=["found-out-by-the-post", "known-before"])
def test_a_form_posted_across_a_deploy_is_processed_once_and_answered_by_the_new_version(
    make_site: MakeSite, tab: Tab, adapter: str, known: bool
) -> None:
    site = make_site(adapter, routing="client")
    page = tab.page
    page.goto(site.url("/form"))
    client_routed(page)
    mark(page)
    page.fill("#message", "hello")
    new = site.deploy("v2")
    if known:
        assert check(page)
    else:
        tab.allow(RELOAD_409)  # the stale POST is refused before the app sees it
    page.click("#other")
    title_is(page, "Result")
    assert page.inner_text("#received") == "hello via other #1"
    assert not marked(page)
    assert page_id(page) == new
    assert site.stats()["posts"] == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
@pytest.mark.parametrize("routing", ["server", "external"])
def test_without_client_routing_the_next_page_after_a_deploy_is_the_new_version(
    make_site: MakeSite, tab: Tab, adapter: str, routing: str
) -> None:
    site = make_site(adapter, routing=routing)
    page = tab.page
    page.goto(site.url("/form"))
    client_routed(page)
    page.fill("#message", "plain")
    new = site.deploy("v2")
    page.click("#send")
    _posted_once(site, page, "plain via send #1", new)


def test_a_multipart_form_posted_across_a_deploy_is_processed_once(
    make_site: MakeSite, tab: Tab
) -> None:
    site = make_site(routing="client")
    page = tab.page
    page.goto(site.url("/form?multipart=1"))
    client_routed(page)
    page.fill("#message", "multi part")
    tab.allow(RELOAD_409)
    site.deploy("v2")
    page.click("#send")
    title_is(page, "Result")
    assert page.inner_text("#received") == "multi part via send #1"
    assert site.stats()["posts"] == 1


def test_a_link_prefetched_before_a_deploy_is_not_shown_once_the_prefetch_is_old(
    make_site: MakeSite, tab: Tab
) -> None:
    # A hover's prefetch is the page as it was then: kept 10 s, as Turbo keeps its own.
    site, page = _client_page(make_site, tab, clock=True)
    _hover_prefetch(site, page)
    new = site.deploy("v2")
    tab.allow(RELOAD_409)  # the click's own fetch is refused
    page.clock.fast_forward(11_000)
    page.click("#to-prefetch")
    title_is(page, "A")
    assert page_id(page) == new, "the old prefetched page was swapped in after the deploy"
    assert not marked(page)


def test_a_stale_form_clicked_twice_is_processed_once_with_its_fields(
    make_site: MakeSite, tab: Tab
) -> None:
    # The stale form is the browser's own submission: the app's own handlers (here one
    # that clears the form right after the submit) and a double click change nothing.
    site, page = _client_page(make_site, tab, "/form")
    page.evaluate(
        """() => document.querySelector("form").addEventListener("submit", (e) =>
            setTimeout(() => e.target.reset()))"""
    )
    page.fill("#message", "hello")
    new = site.deploy("v2")
    assert check(page)
    page.dblclick("#other")
    _posted_once(site, page, "hello via other #1", new)


def test_a_stale_get_form_announces_the_url_the_browser_loads(
    make_site: MakeSite, tab: Tab
) -> None:
    site, page = _client_page(make_site, tab, "/form")
    page.evaluate(
        """() => document.addEventListener("deploysync:before-reload",
            (e) => sessionStorage.reloadUrl = e.detail.url)"""
    )
    new = site.deploy("v2")
    assert check(page)
    page.fill("#q", "needle")
    page.click("#search")
    title_is(page, "A")
    assert page_id(page) == new
    assert page.evaluate("sessionStorage.reloadUrl") == site.url("/a?q=needle")


def test_a_stale_link_the_app_cancels_later_leaves_its_next_navigations_alone(
    make_site: MakeSite, tab: Tab
) -> None:
    # The app cancels the click after the client saw it (a listener on window): nothing
    # leaves, and the app's own navigate listeners still hear the next navigation.
    site, page = _client_page(make_site, tab)
    page.evaluate(
        """() => {
        window.__seen = []
        navigation.addEventListener("navigate", (e) => __seen.push(new URL(e.destination.url).hash))
        addEventListener("click", (e) => e.target.closest("#to-a") && e.preventDefault())
    }"""
    )
    site.deploy("v2")
    assert check(page)
    page.click("#to-a")
    page.wait_for_timeout(300)
    assert marked(page)
    page.evaluate("location.hash = 'x'")
    assert page.evaluate("__seen") == ["#x"]


def test_a_prefetch_made_again_is_kept_its_own_10_s(make_site: MakeSite, tab: Tab) -> None:
    # The first prefetch's expiry must not take the second one of the same link with it.
    site, page = _client_page(make_site, tab, clock=True)
    _hover_prefetch(site, page)
    page.click("#to-b")  # a navigation empties the cache
    title_is(page, "B")
    page.mouse.move(0, 0)
    page.clock.fast_forward(6_000)
    _hover_prefetch(site, page)
    page.clock.fast_forward(5_000)  # 11 s after the first, 5 s after this one
    before = site.stats()["navigate"]
    page.click("#to-prefetch")
    title_is(page, "A")
    assert site.stats()["navigate"] == before, "the second prefetch was dropped with the first"
    assert marked(page)


def test_a_prefetch_expires_under_the_url_it_was_made_for(make_site: MakeSite, tab: Tab) -> None:
    # The app points the hovered link elsewhere after its prefetch: the prefetch of the
    # old URL still expires, and a click on that URL after a deploy asks the server.
    site, page = _client_page(make_site, tab, clock=True)
    _hover_prefetch(site, page)
    page.evaluate("document.querySelector('#to-prefetch').href = '/b'")
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.clock.fast_forward(11_000)
    page.click("#to-a")
    title_is(page, "A")
    assert page_id(page) == new, "the page prefetched before the deploy was shown"
    assert not marked(page)
