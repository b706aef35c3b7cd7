"""Stale pages recover at the next navigation: pruned chunks, history, tabs, rollbacks, loops."""

from __future__ import annotations

import re
import time
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
    stale,
    title_is,
    wait_stale,
)
from playwright.sync_api import expect

from deploysync.store import open_store

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("routing", ["client", "server"])
def test_a_lazy_chunk_pruned_by_a_deploy_shows_no_error_page_and_the_next_click_recovers(
    make_site: MakeSite, tab: Tab, routing: str
) -> None:
    # the failed import() is an unhandled rejection of the app
    site = make_site(routing=routing)
    page = tab.page
    page.goto(site.url("/lazy"))
    client_routed(page)
    mark(page)
    chunk = page.get_attribute("#load", "data-chunk")
    assert chunk
    new = site.deploy("v2")
    pruned = open_store(site.store).prune(keep=1)
    assert site.versions["v1"] in pruned.deployments
    site.wait_gone(chunk)
    # Exactly what the failed import produces: the 404 and the app's unhandled rejection.
    tab.allow(rf"status of 404 \(Not Found\) @ {re.escape(site.url(chunk))}$")
    tab.allow(
        rf"uncaught: .*Failed to fetch dynamically imported module: {re.escape(site.url(chunk))}"
    )
    page.click("#load")
    wait_stale(page)
    title_is(page, "Lazy")  # no error page: the user stays where they were
    assert marked(page)
    page.click("#to-a")
    title_is(page, "A")
    assert not marked(page)
    assert page_id(page) == new


def test_a_pruned_asset_that_fails_to_load_marks_the_page_stale(
    make_site: MakeSite, tab: Tab
) -> None:
    site = make_site(routing="client")
    page = tab.page
    page.goto(site.url("/"))
    client_routed(page)
    script = page.get_attribute("script[src*=app]", "src")
    assert script
    site.deploy("v2")
    open_store(site.store).prune(keep=1)
    site.wait_gone(script)
    late = script + "?late"  # not the cached URL: the browser asks the server
    tab.allow(rf"status of 404 \(Not Found\) @ {re.escape(site.url(late))}$")
    tab.allow(rf"Refused to execute script from '{re.escape(site.url(late))}' because its MIME")
    # an asset of the old version, loaded late (a lazy stylesheet, image or script)
    page.evaluate(
        f"document.head.append(Object.assign(document.createElement('script'), {{src: '{late}'}}))"
    )
    wait_stale(page)
    page.click("#to-a")
    title_is(page, "A")
    assert page_id(page) == site.versions["v2"]


def test_the_app_can_save_state_before_the_full_load(make_site: MakeSite, tab: Tab) -> None:
    site = make_site(routing="client")
    page = tab.page
    page.goto(site.url("/type"))
    client_routed(page)
    page.evaluate(
        """() => {
        document.addEventListener("deploysync:stale", (e) => { window.__stale = e.detail })
        document.addEventListener("deploysync:before-reload", () => {
            sessionStorage.draft = document.querySelector("#text").value
        })
    }"""
    )
    page.fill("#text", "draft text")
    new = site.deploy("v2")
    assert check(page)
    detail = page.evaluate("window.__stale")
    assert detail == {"pageId": site.versions["v1"], "serverId": new, "reason": "check"}
    page.click("#to-a")
    title_is(page, "A")
    assert page.evaluate("sessionStorage.draft") == "draft text"


def test_back_and_forward_after_a_deploy_land_on_the_new_version(
    make_site: MakeSite, tab: Tab
) -> None:
    site = make_site(routing="client")
    page = tab.page
    page.goto(site.url("/"))
    client_routed(page)
    mark(page)
    page.click("#to-a")
    title_is(page, "A")
    page.click("#to-b")
    title_is(page, "B")
    page.go_back()
    title_is(page, "A")
    assert marked(page), "back before a deploy is client-routed"
    new = site.deploy("v2")
    assert check(page)
    page.go_back()
    title_is(page, "Home")
    assert not marked(page)
    assert page_id(page) == new
    assert page.url == site.url("/")
    client_routed(page)
    mark(page)
    page.go_forward()
    title_is(page, "A")
    assert page_id(page) == new


@pytest.mark.parametrize("routing", ["server", "client", "external"])
def test_an_in_page_link_on_a_stale_page_keeps_typed_text(
    make_site: MakeSite, tab: Tab, routing: str
) -> None:
    # A change of the #fragment only (link, back, forward) stays in the document: no reload.
    site = make_site(routing=routing)
    page = tab.page
    page.goto(site.url("/type"))
    client_routed(page)
    mark(page)
    page.fill("#text", "typed before the deploy")
    new = site.deploy("v2")
    assert check(page)
    page.click("#to-end")
    page.wait_for_url(site.url("/type#end"))
    page.go_back()
    page.wait_for_url(site.url("/type"))
    page.go_forward()
    page.wait_for_url(site.url("/type#end"))
    page.wait_for_timeout(300)  # a reload would have started by now
    assert marked(page), "the page was reloaded"
    assert page.input_value("#text") == "typed before the deploy"
    assert tab.documents == 1
    # a navigation to another page is still a full load of the new version
    page.click("#to-a")
    title_is(page, "A")
    assert page_id(page) == new


def _bfcache_probe(page: Any) -> None:
    page.add_init_script(
        "addEventListener('pageshow', (e) => { if (e.persisted)"
        " sessionStorage.restored = (+sessionStorage.restored || 0) + 1 })"
    )


@pytest.mark.parametrize("routing", ["server", "client"])
def test_a_page_restored_from_the_back_forward_cache_after_a_deploy_loads_afresh(
    make_site: MakeSite, tab: Tab, routing: str
) -> None:
    site = make_site(routing=routing)
    page = tab.page
    _bfcache_probe(page)
    page.goto(site.url("/"))
    client_routed(page)
    page.goto(site.url("/a"))  # a cross-document navigation: "/" may enter the bfcache
    title_is(page, "A")
    new = site.deploy("v2")
    page.go_back(wait_until="commit")  # a restored page fires no load event
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    title_is(page, "Home")
    assert page.evaluate("+sessionStorage.restored || 0") == 1, "not restored from the bfcache"


def test_a_restored_page_the_user_types_in_before_its_check_answers_is_not_reloaded(
    make_site: MakeSite, tab: Tab
) -> None:
    # On a slow network the version check of a restored page answers seconds later: by
    # then the user is at work on the page, which only becomes stale (a check answered
    # within a second completes the navigation back: the page loads afresh).
    site = make_site(routing="server")
    page = tab.page
    _bfcache_probe(page)
    page.goto(site.url("/type"))
    client_routed(page)
    mark(page)
    # The page's version checks wait for the test (the page keeps this through the cache).
    page.evaluate(
        """() => {
        const real = fetch
        window.__checks = 0
        window.__answer = new Promise((resolve) => (window.__release = resolve))
        window.fetch = (url, options) => String(url).includes("/_deploysync/version")
            ? (window.__checks++, window.__answer.then(() => real(url, options)))
            : real(url, options)
    }"""
    )
    page.goto(site.url("/a"))
    title_is(page, "A")
    new = site.deploy("v2")
    page.go_back(wait_until="commit")
    page.wait_for_function("window.__checks > 0")
    assert page.evaluate("+sessionStorage.restored || 0") == 1, "not restored from the bfcache"
    page.type("#text", "a comment")
    page.wait_for_timeout(1500)  # the answer comes once the restore is long over
    page.evaluate("window.__release()")
    wait_stale(page)
    page.wait_for_timeout(500)
    assert marked(page) and page.input_value("#text") == "a comment"
    page.click("#to-a")  # the next navigation is the full load
    title_is(page, "A")
    assert page_id(page) == new


def test_a_page_taken_from_the_http_cache_by_back_after_a_deploy_loads_afresh(
    make_site: MakeSite, browser_without_bfcache: Any
) -> None:
    # Chromium answers back/forward from its HTTP cache even for "no-cache" documents.
    site = make_site(routing="server")
    context = browser_without_bfcache.new_context()
    try:
        tab = Tab(context.new_page())
        page = tab.page
        _bfcache_probe(page)
        page.goto(site.url("/"))
        client_routed(page)
        page.goto(site.url("/a"))
        title_is(page, "A")
        new = site.deploy("v2")
        page.go_back()
        expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
        title_is(page, "Home")
        assert page.evaluate("+sessionStorage.restored || 0") == 0
        assert not tab.unexpected(), tab.unexpected()
    finally:
        context.close()


def test_a_page_from_the_http_cache_that_loads_slowly_is_not_reloaded_while_typed_in(
    make_site: MakeSite, browser_without_bfcache: Any
) -> None:
    # Taken from the HTTP cache, the page fires pageshow only after its load event, here
    # seconds after the navigation back (a slow image): the user is typing by then, and
    # the check's answer only makes the page stale.
    site = make_site(routing="server")
    context = browser_without_bfcache.new_context()
    try:
        page = context.new_page()
        page.goto(site.url("/type?slow=3"))
        page.goto(site.url("/a"))
        title_is(page, "A")
        new = site.deploy("v2")
        page.go_back(wait_until="commit")
        page.wait_for_selector("#text")
        mark(page)
        page.type("#text", "a comment")
        page.wait_for_function("document.readyState == 'complete'", timeout=10_000)
        wait_stale(page)
        page.wait_for_timeout(700)
        assert marked(page) and page.input_value("#text") == "a comment"
        page.click("#to-a")  # the next navigation is the full load
        title_is(page, "A")
        assert page_id(page) == new
    finally:
        context.close()


@pytest.mark.parametrize("answer", ["json", "html"])
def test_a_version_check_answered_with_an_error_marks_nothing(
    make_site: MakeSite, tab: Tab, answer: str
) -> None:
    # A proxy's 503 during a restart is no news of a deploy: the next click stays a
    # client navigation.
    site = make_site(routing="client")
    page = tab.page
    tab.allow(r"status of 503")
    open_marked(page, site.url("/"))
    body, kind = ('{"message": "Service Unavailable"}', "application/json")
    if answer == "html":
        body, kind = "<h1>Service Unavailable</h1>", "text/html"
    page.route(
        "**/_deploysync/version*",
        lambda route: route.fulfill(status=503, body=body, content_type=kind),
    )
    assert check(page) is False
    assert not stale(page)
    page.click("#to-a")
    title_is(page, "A")
    assert marked(page)


@pytest.mark.parametrize("link", ["#to-plain", "#to-json"])
def test_back_from_a_page_without_the_client_to_a_stale_page_loads_it_afresh(
    make_site: MakeSite, browser_without_bfcache: Any, link: str
) -> None:
    # The full load after the 409 leaves the loop guard's note for the next page, which
    # here runs no client to take it: Back to the old page must not take it as its own.
    site = make_site(routing="client")
    context = browser_without_bfcache.new_context()
    try:
        page = context.new_page()
        page.goto(site.url("/type"))
        client_routed(page)
        new = site.deploy("v2")
        page.click(link)  # refused (409), then loaded in full
        page.wait_for_url(site.url("/plain" if link == "#to-plain" else "/_test/stats"))
        page.go_back()
        expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
        title_is(page, "Type")
        client_routed(page)
        mark(page)
        page.click("#to-a")  # client routing resumed on the new version
        title_is(page, "A")
        assert marked(page)
    finally:
        context.close()


# -- loops ---------------------------------------------------------------------------------


def refuse_every_navigation(site: Site) -> Any:
    """A broken server: 409 to every navigation fetch, whatever the page's id."""
    from testapp import make_asgi

    inner = make_asgi(str(site.store), "client")
    site.closers.append(inner.close)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = dict(scope["headers"])
        if headers.get(b"x-deploysync") == b"navigate":
            await send(
                {
                    "type": "http.response.start",
                    "status": 409,
                    "headers": [
                        (b"x-deploysync", b"reload"),
                        (b"x-deployment-id", b"elsewhere"),
                        (b"content-length", b"0"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    return app


def flip_flop(site: Site) -> Any:
    """A rolling deploy: two servers, one on v1 and one on v2, taking turns."""
    from testapp import make_asgi

    v1 = site.versions["v1"]
    v2 = site.build("v2", activate=True)
    servers = [
        make_asgi(str(site.store), "client", deployment=v1),
        make_asgi(str(site.store), "client", deployment=v2),
    ]
    site.closers.extend(server.close for server in servers)
    turn = [0]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        turn[0] += 1
        await servers[turn[0] % 2](scope, receive, send)

    return app


@pytest.mark.parametrize("server", [refuse_every_navigation, flip_flop])
def test_a_server_that_keeps_answering_outdated_ids_causes_no_reload_loop(
    make_site: MakeSite, tab: Tab, server: Any
) -> None:
    site = make_site(routing="client", wrap=server)
    tab.allow(RELOAD_409)
    page = tab.page
    page.goto(site.url("/"))
    client_routed(page)
    for link, title in [("#to-a", "A"), ("#to-b", "B"), ("#to-home", "Home")] * 2:
        before = tab.documents
        page.click(link)
        title_is(page, title)
        client_routed(page)
        # at most one full load per navigation (a fetch answered 409 plus a load)
        assert tab.documents - before <= 1, f"{tab.documents - before} loads to reach {title}"
    if server is refuse_every_navigation:
        # after a full load that got the same outdated id, the next click is left to the
        # browser: only every other navigation tries a fetch
        refused = sum("status of 409" in error for error in tab.errors)
        assert refused <= 3, f"{refused} navigation fetches refused for 6 clicks"
    settled = tab.documents
    time.sleep(1.5)  # and none on its own while the user does nothing
    assert tab.documents == settled
    assert page.locator("h1").inner_text() == "Home"


# -- other tabs and rollbacks --------------------------------------------------------------


@pytest.mark.parametrize(
    ("routing", "start", "link", "title"),
    [("client", "/", "#to-a", "A"), ("external", "/spa", "#spa-y", "SPA")],
)
def test_a_deploy_learned_in_one_tab_makes_the_other_tabs_next_navigation_a_full_load(
    make_site: MakeSite, open_page: Any, routing: str, start: str, link: str, title: str
) -> None:
    site = make_site(routing=routing)
    first, second = open_page(), open_page()
    for tab in (first, second):
        tab.page.goto(site.url(start))
        client_routed(tab.page)
        mark(tab.page)
    new = site.deploy("v2")
    assert check(first.page)
    wait_stale(second.page)  # told by the first tab, it asked the server
    assert marked(second.page)
    second.page.click(link)
    title_is(second.page, title)
    assert not marked(second.page)
    assert page_id(second.page) == new


def test_news_from_another_tab_during_this_tabs_own_check_is_not_lost(
    make_site: MakeSite, open_page: Any
) -> None:
    # The second tab's check left before the deploy and answers late (a slow network):
    # the first tab's message must make it ask again, not wait for that old answer.
    site = make_site(routing="external")
    first, second = open_page(), open_page()
    for tab in (first, second):
        tab.page.goto(site.url("/spa"))
        client_routed(tab.page)
        mark(tab.page)
    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        if held:
            route.continue_()
        else:
            held.append((route, route.fetch()))  # answered now, delivered later

    second.page.route("**/_deploysync/version*", hold_the_first)
    second.page.evaluate("void (window.__late = window.deploysync.check())")
    deadline = time.monotonic() + 8
    while not held and time.monotonic() < deadline:
        second.page.wait_for_timeout(50)
    assert held, "the second tab's check never left"
    new = site.deploy("v2")
    assert check(first.page)
    wait_stale(second.page)
    route, answer = held[0]
    route.fulfill(response=answer)
    assert marked(second.page)
    second.page.click("#spa-y")
    title_is(second.page, "SPA")
    assert not marked(second.page)
    assert page_id(second.page) == new


def test_a_rollback_moves_users_back_at_their_next_navigation(
    make_site: MakeSite, tab: Tab
) -> None:
    site = make_site(routing="client")
    old = site.versions["v1"]
    new = site.deploy("v2")
    page = tab.page
    page.goto(site.url("/"))
    client_routed(page)
    assert page_id(page) == new
    mark(page)
    site.activate(old)
    tab.allow(RELOAD_409)
    page.click("#to-a")  # the server refuses the v2 page's fetch: a full load
    title_is(page, "A")
    assert not marked(page)
    assert page_id(page) == old
    client_routed(page)
    mark(page)
    page.click("#to-b")
    title_is(page, "B")
    assert marked(page)
