"""routing="external": another router navigates (pushState SPA, htmx boost, Turbo Drive)."""

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
    open_marked,
    page_id,
    title_is,
    wait_stale,
)
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


# A page's clock as if it had been open for 30 s (the navigation check waits that long).
OPEN_FOR_30_S = (
    "const now = performance.now.bind(performance); performance.now = () => now() + 30e3"
)

# The routers that boost links and forms: htmx 2, htmx 4 (other event names, fetch
# instead of XMLHttpRequest) and Turbo Drive.
BOOSTING = pytest.mark.parametrize("lib", ["htmx", "htmx4", "turbo"])

NAVIGATION_API = pytest.mark.parametrize(
    "navigation_api", [True, False], ids=["navigation-api", "history-wrap"]
)


def _open(
    make_site: MakeSite, tab: Tab, path: str, navigation_api: bool = True
) -> tuple[Site, Any]:
    """A page of an external-routing site, client-routed and marked; without the
    Navigation API the client wraps history instead."""
    site = make_site(routing="external")
    page = tab.page
    if not navigation_api:
        page.add_init_script("Object.defineProperty(window, 'navigation', {value: undefined})")
    open_marked(page, site.url(path))
    return site, page


def _router_takes(page: Any, name: str) -> None:
    """The Navigation API test router shows /nav/<name> in place: no full load."""
    page.click(f"#nav-{name}")
    expect(page.locator("#view")).to_have_text(f"view /nav/{name}")
    assert marked(page), "the router's navigation became a full load"


@NAVIGATION_API
def test_a_pushstate_routers_next_navigation_after_a_deploy_is_a_full_load(
    make_site: MakeSite, tab: Tab, navigation_api: bool
) -> None:
    site, page = _open(make_site, tab, "/spa", navigation_api)
    page.click("#spa-x")
    expect(page.locator("#view")).to_have_text("view /spa/x")
    assert marked(page), "the router navigates by itself before a deploy"
    new = site.deploy("v2")
    # the page checks the version (its router's navigation just did, so on coming back
    # to the tab it would wait 30 s)
    assert check(page)
    assert marked(page)
    page.click("#spa-y")
    expect(page.locator("#view")).to_have_text("view /spa/y")
    assert not marked(page), "the router's push must become a full load"
    assert page.url == site.url("/spa/y")
    assert page_id(page) == new


@pytest.mark.parametrize("router", ["spa", "nav"], ids=["pushstate", "navigation-api-router"])
def test_a_routers_navigation_checks_the_version_so_the_next_one_is_a_full_load(
    make_site: MakeSite, tab: Tab, router: str
) -> None:
    # No check_interval and the tab never hidden: the router's navigations themselves
    # ask the server (at most every 30 s, not in the first 30 s after the load), so a
    # deploy is learned at the first one and the one after it is a full load.
    tab.page.add_init_script(OPEN_FOR_30_S)
    site, page = _open(make_site, tab, f"/{router}")
    new = site.deploy("v2")
    page.click(f"#{router}-x")
    expect(page.locator("#view")).to_have_text(f"view /{router}/x")
    assert marked(page), "the navigation that learns of the deploy stays client-side"
    wait_stale(page)
    page.click(f"#{router}-y")
    expect(page.locator("#view")).to_have_text(f"view /{router}/y")
    assert not marked(page), "the next navigation must be a full load"
    assert page_id(page) == new


def test_plain_page_loads_of_an_external_routing_site_ask_for_no_version(
    make_site: MakeSite, tab: Tab
) -> None:
    # Only navigations within a document run the check: a plain link's load would
    # cancel it.
    site = make_site(routing="external")
    page = tab.page
    page.add_init_script(OPEN_FOR_30_S)
    asked: list[str] = []
    page.on("request", lambda r: "/_deploysync/version" in r.url and asked.append(r.url))
    page.goto(site.url("/"))
    client_routed(page)
    for link, title in [("#to-a", "A"), ("#to-b", "B")]:
        page.click(link)
        title_is(page, title)
        client_routed(page)
    assert asked == []


@NAVIGATION_API
def test_typing_into_a_field_bound_to_the_url_after_a_deploy_keeps_the_page(
    make_site: MakeSite, tab: Tab, navigation_api: bool
) -> None:
    # A search box whose router replaces the URL at every key: a replace is the
    # router's own, never a full load (what is typed would be lost); the next push the
    # user starts is one.
    site, page = _open(make_site, tab, "/spa", navigation_api)
    page.evaluate(
        """() => {
          const box = Object.assign(document.createElement("input"), { id: "q" })
          box.oninput = () => history.replaceState({}, "", "/spa?q=" + box.value)
          document.body.prepend(box)
        }"""
    )
    new = site.deploy("v2")
    assert check(page)
    page.click("#q")
    page.keyboard.type("hello world", delay=20)
    assert page.input_value("#q") == "hello world"
    assert marked(page), "typing must never reload the page"
    assert page.evaluate("location.href") == site.url("/spa?q=hello%20world")
    page.click("#spa-y")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    assert not marked(page)
    assert page.url == site.url("/spa/y")


@NAVIGATION_API
def test_back_to_another_url_of_a_pushstate_router_after_a_deploy_is_a_full_load(
    make_site: MakeSite, tab: Tab, navigation_api: bool
) -> None:
    site, page = _open(make_site, tab, "/spa", navigation_api)
    page.click("#spa-x")
    expect(page.locator("#view")).to_have_text("view /spa/x")
    new = site.deploy("v2")
    assert check(page)
    page.go_back()  # to the page's first URL, after the router pushed another one
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    assert not marked(page)
    assert page.evaluate("location.href") == site.url("/spa")
    expect(page.locator("#view")).to_have_text("view /spa")


@pytest.mark.parametrize("how", ["link", "pushState"])
def test_a_navigation_api_routers_next_navigation_after_a_deploy_is_a_full_load(
    make_site: MakeSite, tab: Tab, how: str
) -> None:
    # The router intercepts navigate events; on a stale page it never gets the chance.
    site, page = _open(make_site, tab, "/nav")
    _router_takes(page, "x")  # by itself, before a deploy
    new = site.deploy("v2")
    assert check(page)
    before = tab.documents
    if how == "link":
        page.click("#nav-y")
    else:
        page.evaluate("setTimeout(() => history.pushState({}, '', '/nav/y'))")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    expect(page.locator("#view")).to_have_text("view /nav/y")
    assert not marked(page)
    assert page.evaluate("location.href") == site.url("/nav/y")
    assert tab.documents == before + 1, "one full load, no loop"
    client_routed(page)
    mark(page)
    _router_takes(page, "x")  # it resumes on the new version


def test_back_on_a_navigation_api_router_that_takes_reloads_is_a_full_load(
    make_site: MakeSite, tab: Tab
) -> None:
    # The test router intercepts every navigation, reloads included (MDN's pattern): the
    # reload the client starts for a stale page's back/forward is not the router's.
    site, page = _open(make_site, tab, "/nav")
    _router_takes(page, "x")
    _router_takes(page, "y")
    new = site.deploy("v2")
    assert check(page)
    before = tab.documents
    page.go_back()
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    expect(page.locator("#view")).to_have_text("view /nav/x")
    assert not marked(page)
    assert page.evaluate("location.href") == site.url("/nav/x")
    assert tab.documents == before + 1, "one full load, no loop"


def test_navigate_is_a_full_load_under_a_navigation_api_router(
    make_site: MakeSite, tab: Tab
) -> None:
    _, page = _open(make_site, tab, "/nav")
    before = tab.documents
    page.evaluate("window.deploysync.navigate('/nav/y')")
    expect(page.locator("#view")).to_have_text("view /nav/y")
    assert not marked(page), "navigate() in external mode is a full load, not the router's"
    assert tab.documents == before + 1
    client_routed(page)
    mark(page)
    _router_takes(page, "x")  # the next navigation is the router's again


def test_a_full_load_that_stays_on_the_page_leaves_the_router_its_navigations(
    make_site: MakeSite, tab: Tab
) -> None:
    # navigate() to an answer that loads nothing (204): the page stays, and its router
    # keeps the next navigations.
    _, page = _open(make_site, tab, "/nav")
    page.evaluate("window.deploysync.navigate('/nothing')")
    page.wait_for_timeout(300)
    assert marked(page)
    before = tab.documents
    _router_takes(page, "x")
    assert tab.documents == before


@BOOSTING
def test_a_boosted_link_after_a_deploy_is_a_full_load_of_the_new_version(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    site, page = _open(make_site, tab, f"/{lib}")
    page.click(f"#{lib}-a")
    title_is(page, f"{lib} a")
    assert marked(page), f"{lib} swaps pages by itself before a deploy"
    new = site.deploy("v2")
    tab.allow(RELOAD_409)  # the library's request, refused by the server
    page.click(f"#{lib}-b")
    title_is(page, f"{lib} b")
    assert not marked(page)
    assert page.url == site.url(f"/{lib}/b")
    assert page_id(page) == new
    client_routed(page)
    mark(page)
    page.click(f"#{lib}-a")
    title_is(page, f"{lib} a")
    assert marked(page), f"{lib} resumes on the new version"


@BOOSTING
def test_a_boosted_form_posted_across_a_deploy_is_processed_once(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    site, page = _open(make_site, tab, f"/{lib}")
    page.fill("#message", "boosted")
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.click("#send")
    title_is(page, f"{lib} result")
    assert not marked(page)
    assert "message=boosted" in page.url
    assert "action=send" in page.url, "the submitter's name and value are kept"
    assert page_id(page) == new
    assert site.stats()["posts"] == 1


@BOOSTING
def test_a_boosted_link_to_a_fragment_after_a_deploy_lands_on_the_fragment(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    site, page = _open(make_site, tab, f"/{lib}")
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.click(f"#{lib}-b-end")  # the library's request is refused: a full load
    title_is(page, f"{lib} b")
    assert not marked(page)
    assert page_id(page) == new
    assert page.evaluate("location.href") == site.url(f"/{lib}/b#end")
    expect(page.locator("#end")).to_be_in_viewport()


@pytest.mark.parametrize("lib", ["htmx", "htmx4"])
def test_a_boosted_link_to_a_fragment_of_the_page_after_a_deploy_is_a_new_entry(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    # On /b, a link to /b#end: htmx asks for the page, the server refuses, and the full
    # load is a new history entry, as htmx makes one without a deploy: Back is /b.
    site, page = _open(make_site, tab, f"/{lib}")
    page.click(f"#{lib}-b")
    title_is(page, f"{lib} b")
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.click(f"#{lib}-b-end")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    assert page.evaluate("location.href") == site.url(f"/{lib}/b#end")
    page.go_back()
    expect(page).to_have_url(site.url(f"/{lib}/b"))


@pytest.mark.parametrize("url", ["javascript:window.__pwned = 1", "https://example.invalid/x"])
def test_a_stale_pages_push_of_a_url_the_browser_refuses_stays_refused(
    make_site: MakeSite, tab: Tab, url: str
) -> None:
    # Without the Navigation API the client wraps pushState: the browser's own check
    # (a SecurityError for another origin or a javascript: URL) must come first.
    site, page = _open(make_site, tab, "/spa", navigation_api=False)
    site.deploy("v2")
    assert check(page)
    error = page.evaluate(
        "(u) => { try { history.pushState({}, '', u); return '' } catch (e) { return e.name } }",
        url,
    )
    assert error == "SecurityError"
    assert page.evaluate("window.__pwned") is None
    assert marked(page), "the page stayed"
    assert page.url == site.url("/spa")


def test_a_guard_page_of_a_pushstate_router_can_become_stale_after_a_minute(
    make_site: MakeSite, tab: Tab
) -> None:
    # A page that landed in loop-guard mode (its full load reached a straggler) lives
    # on as a single-page app: once its first minute is over, a newer deployment makes
    # it stale again, and the router's next navigation is a full load.
    site = make_site(routing="external")
    page = tab.page
    page.add_init_script(
        "const now = performance.now.bind(performance);"
        " performance.now = () => now() + (window.__later || 0)"
    )
    page.goto(site.url("/spa"))
    client_routed(page)
    page.evaluate(
        "sessionStorage.deploysync = JSON.stringify({ id: document.querySelector("
        "'meta[name=deployment-id]').content, t: Date.now() })"
    )
    page.reload()
    client_routed(page)
    assert page.evaluate("window.deploysync.router.guard"), "the page runs in guard mode"
    mark(page)
    new = site.deploy("v2")
    assert not check(page), "within its first minute a guard page never becomes stale"
    page.evaluate("window.__later = 61e3")
    assert check(page)
    page.click("#spa-y")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    assert not marked(page)


def test_turbo_keeps_its_own_way_with_a_redirect_to_another_origin(
    make_site: MakeSite, tab: Tab
) -> None:
    # The middleware tells only the client's own router where such a redirect leads;
    # Turbo's request fails on it (CORS) and Turbo loads the link in full, as without us.
    site, page = _open(make_site, tab, "/turbo")
    tab.allow(r"(CORS policy|net::ERR_FAILED|Failed to fetch)")
    page.click("#turbo-away")
    page.wait_for_url(site.url("/b").replace("127.0.0.1", "localhost"))
    title_is(page, "B")
