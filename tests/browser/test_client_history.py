"""What a user goes through around the client's navigations: back to a POST's result, a
click that overtakes a slow page, the app's own click and submit handlers, scroll
positions across full loads, and navigations the app cancels."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from harness import MakeSite, Site, Tab
from helpers import check, client_routed, mark, marked, open_marked, page_id, title_is
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture(params=["bfcache", "no-bfcache"])
def history_tab(request: pytest.FixtureRequest) -> Iterator[Tab]:
    """A tab whose back/forward restores pages from the bfcache, or (as Playwright
    launches Chromium) loads them again from the HTTP cache."""
    name = "browser" if request.param == "bfcache" else "browser_without_bfcache"
    context = request.getfixturevalue(name).new_context()
    tab = Tab(context.new_page())
    yield tab
    problems = tab.unexpected()
    context.close()
    assert not problems, "console errors or uncaught exceptions:\n" + "\n".join(problems)


def _client_page(make_site: MakeSite, tab: Tab, path: str = "/") -> tuple[Site, Any]:
    site = make_site(routing="client")
    open_marked(tab.page, site.url(path))
    return site, tab.page


def _scroll(page: Any, y: int) -> None:
    page.evaluate(f"scrollTo(0, {y})")
    page.wait_for_function(f"scrollY == {y}")


def _follow(page: Any, link: str, title: str) -> None:
    """Click *link* where it is (``page.click`` would scroll it into view first)."""
    page.evaluate(f"document.querySelector('{link}').click()")
    title_is(page, title)


# -- a POST's result in history ------------------------------------------------------------


@pytest.mark.parametrize("fragment", ["", "end"], ids=["no-fragment", "fragment"])
@pytest.mark.parametrize("routing", ["server", "external", "client"])
def test_back_to_a_post_result_after_a_deploy_does_not_post_again(
    make_site: MakeSite, history_tab: Tab, routing: str, fragment: str
) -> None:
    # The server answered the POST with a page (200), not a redirect: the history entry
    # is the POST's. After a deploy, Back loads that URL afresh as a GET.
    site = make_site(routing=routing)
    page = history_tab.page
    page.goto(site.url(f"/echo?fragment={fragment}"))
    client_routed(page)
    page.fill("#message", "once")
    page.click("#send")
    expect(page.locator("#echoed")).to_have_text("POST once")
    _follow(page, "#to-a", "A")
    new = site.deploy("v2")
    if routing == "client":
        assert check(page)  # a full load to /a would have been the new version already
    page.go_back(wait_until="commit")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    title_is(page, "Echo")
    assert page.url == site.url("/echo" + (f"#{fragment}" if fragment else ""))
    page.wait_for_timeout(300)
    assert site.stats()["posts"] == 1
    assert page_id(page) == new


# -- a slow navigation in flight -----------------------------------------------------------


def _slow_links(page: Any) -> None:
    page.evaluate(
        """document.body.insertAdjacentHTML("beforeend",
        '<a id="slow-a" href="/a?delay=2">slow A</a>'
        + ' <a id="slower-b" href="/b?delay=4">slower B</a>'
        + ' <form method="post" action="/form?delay=4"><input name="message" value="late">'
        + '<button id="slower-post" name="action" value="send">Post</button></form>')"""
    )


@pytest.mark.parametrize("then", ["link", "post"])
def test_a_click_after_a_deploy_wins_over_a_slower_page_still_loading(
    make_site: MakeSite, tab: Tab, then: str
) -> None:
    # /a is on its way (the server takes 2 s); the page learns of a deploy; the user then
    # clicks a slower link or posts a form: a full load. The answer for /a arriving in
    # the meantime must not take the user back to /a.
    site, page = _client_page(make_site, tab)
    _slow_links(page)
    page.click("#slow-a")
    site.deploy("v2")
    assert check(page)
    page.click("#slower-b" if then == "link" else "#slower-post", no_wait_after=True)
    if then == "link":
        page.wait_for_url(site.url("/b?delay=4"), timeout=8000)
        title_is(page, "B")
    else:
        page.wait_for_url(site.url("/result?*"), timeout=8000)
        expect(page.locator("#received")).to_have_text("late via send #1")
    page.wait_for_timeout(500)
    assert page.url.startswith(site.url("/b" if then == "link" else "/result"))
    assert site.stats()["posts"] == (1 if then == "post" else 0)
    assert "GET /a?delay=2" not in site.stats()["paths"], "the old destination was loaded"


# -- the app's own click and submit handlers ------------------------------------------------


def test_a_form_the_app_submits_itself_from_a_later_handler_is_posted_once(
    make_site: MakeSite, tab: Tab
) -> None:
    site, page = _client_page(make_site, tab, "/form")
    page.evaluate(
        """document.addEventListener("submit", (e) => {
        e.preventDefault()
        const body = new URLSearchParams(new FormData(e.target, e.submitter))
        fetch(e.target.getAttribute("action"), {method: "POST", body})
            .then(() => (window.__sent = true))
    })"""
    )
    page.fill("#message", "once")
    page.click("#send")
    page.wait_for_function("window.__sent === true")
    page.wait_for_timeout(300)
    assert site.stats()["posts"] == 1
    assert page.url == site.url("/form")
    title_is(page, "Form")
    assert marked(page)


@pytest.mark.parametrize("where", ["document", "window"])
@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_a_link_the_app_cancels_in_a_later_handler_is_not_followed(
    make_site: MakeSite, tab: Tab, where: str, stale: bool
) -> None:
    site, page = _client_page(make_site, tab)
    page.evaluate(
        f"""{where}.addEventListener("click", (e) => {{
        if (e.target.closest("#to-a")) e.preventDefault(), (window.__opened = true)
    }})"""
    )
    if stale:
        site.deploy("v2")
        assert check(page)
    page.click("#to-a")
    page.wait_for_function("window.__opened === true")
    page.wait_for_timeout(300)
    assert page.url == site.url("/")
    title_is(page, "Home")
    assert marked(page)
    assert site.stats()["navigate"] == 0


def test_a_link_whose_handler_clicks_something_else_is_still_client_routed(
    make_site: MakeSite, tab: Tab
) -> None:
    # A click dispatched inside the link's own click handler (a menu closing itself)
    # is a second event: the router still sees the link's.
    _, page = _client_page(make_site, tab)
    page.evaluate(
        """() => {
          const other = document.body.appendChild(document.createElement("button"))
          document.querySelector("#to-a").addEventListener("click", () => other.click())
        }"""
    )
    page.click("#to-a")
    title_is(page, "A")
    assert marked(page), "the link was loaded in full, not swapped"


# -- scroll positions ------------------------------------------------------------------------


def test_reloading_a_client_routed_page_keeps_its_scroll_position(
    make_site: MakeSite, tab: Tab
) -> None:
    _, page = _client_page(make_site, tab)
    _follow(page, "#to-b", "B")
    _scroll(page, 1200)
    page.reload()
    title_is(page, "B")
    page.wait_for_function("scrollY == 1200", timeout=5000)


def test_back_to_a_client_routed_page_left_by_a_full_load_keeps_its_scroll_position(
    make_site: MakeSite, history_tab: Tab
) -> None:
    site = make_site(routing="client")
    page = history_tab.page
    page.goto(site.url("/"))
    client_routed(page)
    _follow(page, "#to-b", "B")
    _scroll(page, 1100)
    _follow(page, "#to-a-off", "A")  # data-deploysync="off": a full load
    page.go_back(wait_until="commit")
    title_is(page, "B")
    page.wait_for_function("scrollY == 1100", timeout=5000)


@pytest.mark.parametrize("routing", ["server", "external", "client"])
def test_a_stale_navigation_to_a_fragment_of_the_same_page_is_a_full_load(
    make_site: MakeSite, tab: Tab, routing: str
) -> None:
    # Assigning a URL that differs only by its fragment just scrolls: the page would stay
    # on the old frontend after its before-reload.
    site = make_site(routing=routing)
    page = tab.page
    page.goto(site.url("/b"))
    client_routed(page)
    mark(page)
    new = site.deploy("v2")
    assert check(page)
    page.evaluate("window.deploysync.navigate('#end')")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    assert page.url == site.url("/b#end")
    assert not marked(page)
    page.go_back()  # the fragment was a new entry, as a click on a link to it makes
    assert page.url == site.url("/b")


@pytest.mark.parametrize("routing", ["server", "external"])
def test_a_stale_navigation_to_a_post_result_s_own_url_is_a_get(
    make_site: MakeSite, tab: Tab, routing: str
) -> None:
    # The entry is the POST's (answered in place, at /echo#end): loading it again as it
    # is would send the form a second time.
    site = make_site(routing=routing)
    page = tab.page
    page.goto(site.url("/echo?fragment=end"))
    client_routed(page)
    page.fill("#message", "once")
    page.click("#send")
    expect(page.locator("#echoed")).to_have_text("POST once")
    new = site.deploy("v2")
    assert check(page)
    page.evaluate("window.deploysync.navigate(location.href)")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    expect(page.locator("#echoed")).to_have_text("GET ")
    page.wait_for_timeout(300)
    assert site.stats()["posts"] == 1


# -- navigations the app cancels -------------------------------------------------------------


def test_back_and_forward_cannot_be_cancelled_so_the_url_and_the_page_agree(
    make_site: MakeSite, tab: Tab
) -> None:
    site, page = _client_page(make_site, tab)
    _follow(page, "#to-a", "A")
    page.evaluate(
        """() => {
        window.__cancelable = []
        document.addEventListener("deploysync:before-navigate", (e) => {
            __cancelable.push(e.cancelable)
            e.preventDefault()  // "Leave without saving?" answered no
        })
    }"""
    )
    page.click("#to-b")
    page.wait_for_timeout(300)
    title_is(page, "A")  # a link: cancelled
    page.go_back()
    title_is(page, "Home")
    assert page.url == site.url("/")
    page.go_forward()
    title_is(page, "A")
    assert page.url == site.url("/a")
    assert page.evaluate("__cancelable") == [True, False, False]
    assert marked(page)


def test_only_before_navigate_is_cancelable(make_site: MakeSite, tab: Tab) -> None:
    site, page = _client_page(make_site, tab)
    page.evaluate(
        """() => {
        sessionStorage.events = "[]"
        for (const name of ["stale", "before-navigate", "navigated", "before-reload"])
            document.addEventListener("deploysync:" + name, (e) => {
                const seen = JSON.parse(sessionStorage.events)
                sessionStorage.events = JSON.stringify([...seen, [name, e.cancelable]])
            })
    }"""
    )
    page.click("#to-a")
    title_is(page, "A")
    site.deploy("v2")
    assert check(page)
    page.click("#to-b")
    title_is(page, "B")
    assert not marked(page)
    assert page.evaluate("JSON.parse(sessionStorage.events)") == [
        ["before-navigate", True],
        ["navigated", False],
        ["stale", False],
        ["before-reload", False],
    ]
