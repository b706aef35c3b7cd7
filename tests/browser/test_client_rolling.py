"""A rolling deploy: servers on different deployments answer the same pages.

Only the server knows the activation order (docs/deploying.md, "The ordering rule during
a rolling deploy"), so the client lets it judge: a straggler still on the older
deployment never makes a page of the newer one stale, and a page of the older one still
moves forward. Here one store holds the deployments and a balancer in front of servers
pinned to each of them lets the test choose which one answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from harness import DEADLINE, MakeSite, Site, Tab
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
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

VERSION_PATH = "/_deploysync/version"

_App = TypeVar("_App")

# Keeps the tab's deploysync:stale details, across full loads too.
RECORD_STALE = """document.addEventListener("deploysync:stale", (e) => {
    const seen = JSON.parse(sessionStorage.staleEvents || "[]")
    sessionStorage.staleEvents = JSON.stringify([...seen, e.detail])
})"""


def stale_events(page: Any) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate("JSON.parse(sessionStorage.staleEvents || '[]')")
    return events


class Balancer:
    """Servers pinned to deployments of one store, v1 first; ``to`` names the one answering.

    Deployments after v1 are built and activated in order, so v1 is the oldest. ``asked``
    records the page ids version checks came with (the harness's own polls send none).
    """

    def __init__(self, site: Site, routing: str, versions: list[str]) -> None:
        from testapp import make_asgi

        for version in versions:
            if version not in site.versions:
                site.build(version, activate=True)
        self.servers = {
            version: make_asgi(str(site.store), routing, deployment=site.versions[version])
            for version in versions
        }
        site.closers.extend(server.close for server in self.servers.values())
        self.to = versions[-1]
        self.asked: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == VERSION_PATH:
            self.asked.extend(v.decode() for k, v in scope["headers"] if k == b"x-deployment-id")
        await self.servers[self.to](scope, receive, send)


class Proxy:
    """One server behind a proxy that drops the request headers ``drop(path, name)`` names.

    ``asked`` as for :class:`Balancer`; ``version_delay``: seconds version checks wait.
    """

    def __init__(
        self, site: Site, routing: str, drop: Callable[[str, bytes], bool], version_delay: float
    ) -> None:
        from testapp import make_asgi

        self.server = make_asgi(str(site.store), routing)
        site.closers.append(self.server.close)
        self.drop = drop
        self.version_delay = version_delay
        self.asked: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == VERSION_PATH:
            self.asked.extend(v.decode() for k, v in scope["headers"] if k == b"x-deployment-id")
            await asyncio.sleep(self.version_delay)
        headers = [(k, v) for k, v in scope["headers"] if not self.drop(path, k)]
        await self.server({**scope, "headers": headers}, receive, send)


def behind(make_site: MakeSite, routing: str, front: Callable[[Site], _App]) -> tuple[Site, _App]:
    """A site whose server is the ASGI app ``front(site)`` builds (a balancer, a proxy)."""
    made: list[_App] = []

    def wrap(site: Site) -> _App:
        made.append(front(site))
        return made[0]

    site = make_site(routing=routing, wrap=wrap)
    return site, made[0]


def rolling(make_site: MakeSite, routing: str, versions: list[str]) -> tuple[Site, Balancer]:
    return behind(make_site, routing, lambda site: Balancer(site, routing, versions))


def proxied(
    make_site: MakeSite, routing: str, drop: Callable[[str, bytes], bool], version_delay: float = 0
) -> tuple[Site, Proxy]:
    return behind(make_site, routing, lambda site: Proxy(site, routing, drop, version_delay))


def follow(page: Any, link: str) -> None:
    """Click *link* without hovering it first: Turbo would prefetch it on hover and show
    that response instead of a visit of its own (a test of its own). htmx boosts a
    swapped page's links while it settles: a click before that is a plain one."""
    page.wait_for_function(
        "!document.querySelector('.htmx-request, .htmx-swapping, .htmx-settling')"
    )
    page.evaluate("(link) => document.querySelector(link).click()", link)


def open_at(tab: Tab, url: str) -> Any:
    page = tab.page
    page.add_init_script(RECORD_STALE)
    page.goto(url)
    client_routed(page)
    return page


# The routers a navigation goes through: start page, link, its title, then a second link.
ROUTERS = pytest.mark.parametrize(
    ("routing", "start", "link", "title", "then", "then_title"),
    [
        ("client", "/", "#to-a", "A", "#to-b", "B"),
        ("external", "/htmx", "#htmx-a", "htmx a", "#htmx-b", "htmx b"),
        ("external", "/htmx4", "#htmx4-a", "htmx4 a", "#htmx4-b", "htmx4 b"),
        ("external", "/turbo", "#turbo-a", "turbo a", "#turbo-b", "turbo b"),
    ],
    ids=["own-router", "htmx", "htmx4", "turbo"],
)


# -- a page of the newer deployment, answered by a straggler ---------------------------------


def test_a_version_check_answered_by_a_straggler_leaves_a_newer_page_fresh(
    make_site: MakeSite, tab: Tab
) -> None:
    site, lb = rolling(make_site, "client", ["v1", "v2"])
    page = open_at(tab, site.url("/"))
    new = site.versions["v2"]
    assert page_id(page) == new
    mark(page)
    lb.to = "v1"  # the straggler answers from now on
    assert not check(page), "a straggler's older id made a page of the newer deployment stale"
    assert set(lb.asked) == {new}, "the check must send the page's id for the server to judge"
    assert stale_events(page) == []
    lb.to = "v2"  # the rollout is over: the page was left fresh, its router goes on
    page.click("#to-a")
    title_is(page, "A")
    assert marked(page), "the next navigation must stay client-side"
    assert tab.documents == 1


@ROUTERS
def test_a_navigation_answered_by_a_straggler_leaves_a_newer_page_fresh(
    make_site: MakeSite,
    tab: Tab,
    routing: str,
    start: str,
    link: str,
    title: str,
    then: str,
    then_title: str,
) -> None:
    site, lb = rolling(make_site, routing, ["v1", "v2"])
    tab.allow(RELOAD_409)  # the older page's move forward, once the rollout is over
    page = open_at(tab, site.url(start))
    old, new = site.versions["v1"], site.versions["v2"]
    assert page_id(page) == new
    mark(page)
    lb.to = "v1"
    # The straggler judges the page not outdated (it is newer): a normal answer that
    # announces the older id. The client asks instead of believing the id.
    follow(page, link)
    title_is(page, title)
    assert not check(page)
    assert stale_events(page) == []
    assert new in lb.asked
    # The own router loads the older page in full rather than merge its <head> (its
    # scripts): one page never runs the scripts of two frontends. htmx swaps the body
    # only; Turbo merges it as it would any page (its data-turbo-track is the app's).
    merges_head = start == "/"
    if merges_head:
        assert not marked(page) and page_id(page) == old and tab.documents == 2
        mark(page)
    else:
        assert marked(page), "the answer was thrown away for a full load"
    lb.to = "v2"
    follow(page, then)
    title_is(page, then_title)
    assert page_id(page) == new
    if merges_head:
        # The older page moves forward: one full load (the server's 409), as always.
        assert not marked(page) and tab.documents == 3
    else:
        assert marked(page), "the next navigation must not be a full load"
        assert tab.documents == 1
    assert not stale(page)


def test_a_newer_page_never_runs_the_scripts_of_a_stragglers_answer(
    make_site: MakeSite, tab: Tab
) -> None:
    """The straggler's answer is its frontend's page, loaded in full: its scripts do not
    join those of the newer page (their handlers would run twice, for the rest of the
    session), and once the rollout is over the page moves forward."""
    site, lb = rolling(make_site, "client", ["v1", "v2"])
    tab.allow(RELOAD_409)  # the older page's move forward
    page = open_at(tab, site.url("/"))
    scripts = "[...document.querySelectorAll('script[src*=\"/static/\"]')].map(s => s.src)"
    newer_scripts = page.evaluate(scripts)
    assert newer_scripts
    lb.to = "v1"
    follow(page, "#to-a")
    title_is(page, "A")
    older_scripts = page.evaluate(scripts)
    assert not set(newer_scripts) & set(older_scripts), "both frontends' scripts in one page"
    assert page_id(page) == site.versions["v1"]
    lb.to = "v2"
    follow(page, "#to-b")
    title_is(page, "B")
    assert page.evaluate(scripts) == newer_scripts
    assert page_id(page) == site.versions["v2"]
    assert tab.documents == 3


# -- a page of the older deployment still moves forward --------------------------------------


def test_a_version_check_of_a_newer_server_makes_an_older_page_stale(
    make_site: MakeSite, tab: Tab
) -> None:
    site, lb = rolling(make_site, "client", ["v1", "v2"])
    old, new = site.versions["v1"], site.versions["v2"]
    lb.to = "v1"
    page = open_at(tab, site.url("/"))
    assert page_id(page) == old
    mark(page)
    assert not check(page), "its own server does not find it outdated"
    lb.to = "v2"
    assert check(page)
    assert set(lb.asked) == {old}
    assert stale_events(page) == [{"pageId": old, "serverId": new, "reason": "check"}]
    assert marked(page), "stale never reloads by itself"
    page.click("#to-a")
    title_is(page, "A")
    assert not marked(page)
    assert page_id(page) == new


@ROUTERS
def test_a_response_of_a_newer_deployment_makes_an_older_page_stale_through_a_check(
    make_site: MakeSite,
    tab: Tab,
    routing: str,
    start: str,
    link: str,
    title: str,
    then: str,
    then_title: str,
) -> None:
    # A proxy that drops the navigate marker: the server answers the navigation without
    # judging it (no 409), with its newer id; the version check lets it judge. The check
    # is slowed down: a router that pushes its history entry after the check answered
    # (Turbo can) has that navigation become a full load instead, which is right too.
    site, proxy = proxied(
        make_site,
        routing,
        lambda path, name: path != VERSION_PATH and name == b"x-deploysync",
        version_delay=0.5,
    )
    old = site.versions["v1"]
    page = open_at(tab, site.url(start))
    new = site.deploy("v2")
    mark(page)
    follow(page, link)
    title_is(page, title)
    if start == "/":
        # The own router loads the newer frontend's page in full rather than run both
        # frontends' scripts in one page: moved at once.
        assert not marked(page) and page_id(page) == new
        assert tab.documents == 2
        return
    wait_stale(page)
    assert marked(page), "the answer is shown: the server did not refuse it"
    assert stale_events(page) == [{"pageId": old, "serverId": new, "reason": "response"}]
    assert old in proxy.asked
    follow(page, then)
    title_is(page, then_title)
    assert not marked(page), "the next navigation must be a full load"
    assert page_id(page) == new
    assert tab.documents == 2


def test_an_older_server_that_does_not_judge_pages_is_answered_by_comparing_ids(
    make_site: MakeSite, tab: Tab
) -> None:
    # A server from before the ordering rule ignores the page's id: no "outdated" field.
    site, proxy = proxied(
        make_site, "client", lambda path, name: path == VERSION_PATH and name == b"x-deployment-id"
    )
    old = site.versions["v1"]
    page = open_at(tab, site.url("/"))
    assert not check(page)
    new = site.deploy("v2")
    assert check(page)
    assert set(proxy.asked) == {old}, "the client sent its id; the proxy dropped it"
    assert stale_events(page) == [{"pageId": old, "serverId": new, "reason": "check"}]


# -- other tabs ------------------------------------------------------------------------------


def test_another_tabs_news_makes_a_page_stale_only_when_the_server_finds_it_outdated(
    make_site: MakeSite, open_page: Callable[[], Tab]
) -> None:
    site, lb = rolling(make_site, "client", ["v1", "v2", "v3"])
    v1, v2, v3 = (site.versions[v] for v in ("v1", "v2", "v3"))
    teller, older, newer = open_page(), open_page(), open_page()
    lb.to = "v1"
    for tab in (teller, older):
        open_at(tab, site.url("/"))
        mark(tab.page)
    lb.to = "v3"
    open_at(newer, site.url("/"))
    mark(newer.page)
    assert [page_id(t.page) for t in (teller, older, newer)] == [v1, v1, v3]

    lb.to = "v2"  # a straggler, behind v3, ahead of v1, answers everything now
    assert check(teller.page)  # it tells the other tabs it saw v2
    assert stale_events(teller.page) == [{"pageId": v1, "serverId": v2, "reason": "check"}]

    wait_stale(older.page)  # the server found it outdated when it asked
    assert stale_events(older.page) == [{"pageId": v1, "serverId": v2, "reason": "tab"}]

    # the page of v3 asks too, and v2 is no news to it
    deadline = time.monotonic() + DEADLINE
    while v3 not in lb.asked and not stale(newer.page):
        assert time.monotonic() < deadline, "the page of v3 never asked"
        time.sleep(0.05)
    assert not check(newer.page), "another tab's older id made a page of v3 stale"
    assert stale_events(newer.page) == []

    for tab in (teller, older, newer):
        assert marked(tab.page), "stale never reloads by itself"
    lb.to = "v3"
    newer.page.click("#to-a")
    title_is(newer.page, "A")
    assert marked(newer.page), "the page of v3 keeps navigating client-side"
    older.page.click("#to-a")
    title_is(older.page, "A")
    assert not marked(older.page)
    assert page_id(older.page) == v3


# -- external routers: prefetches, and the loop guard ----------------------------------------


def test_a_turbo_link_prefetched_on_hover_after_a_deploy_is_a_full_load(
    make_site: MakeSite, tab: Tab
) -> None:
    # Turbo 8 prefetches a link after 100 ms of hover and shows that response on the
    # click. The prefetch carries the page's id, so the server refuses it: a slow
    # version check cannot let the new page be swapped into the old document.
    site, _ = proxied(make_site, "external", lambda path, name: False, version_delay=2)
    page = open_at(tab, site.url("/turbo"))
    mark(page)
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    with page.expect_response(lambda r: r.url == site.url("/turbo/b")) as prefetched:
        page.hover("#turbo-b")
    assert prefetched.value.request.headers.get("x-sec-purpose") == "prefetch"
    assert prefetched.value.status == 409
    assert marked(page), "a hover alone never loads a page"
    page.click("#turbo-b")
    title_is(page, "turbo b")
    assert not marked(page), "the prefetched page was swapped into the old document"
    assert page_id(page) == new


class LoadsToStraggler(Balancer):
    """Navigation fetches reach the newest server; page loads reach ``to``."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (b"x-deploysync", b"navigate") in scope["headers"]:
            await self.servers["v2"](scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


@pytest.mark.parametrize("lib", ["htmx", "htmx4", "turbo"])
def test_an_external_routers_loop_guard_page_moves_on_once_the_straggler_is_gone(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    site, lb = behind(
        make_site, "external", lambda site: LoadsToStraggler(site, "external", ["v1", "v2"])
    )
    lb.to = "v1"
    page = open_at(tab, site.url(f"/{lib}"))
    old, new = site.versions["v1"], site.versions["v2"]
    assert page_id(page) == old
    tab.allow(RELOAD_409)
    # The v2 server refuses the navigation; the straggler answers the full load.
    follow(page, f"#{lib}-a")
    title_is(page, f"{lib} a")
    assert page_id(page) == old
    assert page.evaluate("window.deploysync.router.guard"), "the page runs in guard mode"
    mark(page)
    lb.to = "v2"  # the straggler is gone
    follow(page, f"#{lib}-b")
    title_is(page, f"{lib} b")
    assert not marked(page), "the guard page swapped the new page into the old document"
    assert page_id(page) == new
    client_routed(page)
    mark(page)
    follow(page, f"#{lib}-a")
    title_is(page, f"{lib} a")
    assert marked(page), f"{lib} resumes on the new version"


def test_a_turbo_prefetch_whose_link_left_the_page_never_navigates(
    make_site: MakeSite, tab: Tab
) -> None:
    # Turbo answers a prefetch on <html> when its link left the page meanwhile (a
    # Turbo Stream or a morph re-rendered the list): that is no visit of the user's.
    site = make_site(routing="external")
    page = open_at(tab, site.url("/turbo"))
    page.evaluate(
        """document.addEventListener("turbo:before-fetch-request", (e) => {
             if (e.detail.fetchOptions.headers["X-Sec-Purpose"] == "prefetch")
               e.target.replaceWith(e.target.cloneNode(true))
           })"""
    )
    mark(page)
    site.deploy("v2")
    tab.allow(RELOAD_409)
    with page.expect_response(lambda r: r.url == site.url("/turbo/b")) as prefetched:
        page.hover("#turbo-b")
    assert prefetched.value.status == 409
    page.mouse.move(0, 0)
    time.sleep(1)
    assert marked(page), "the page left for a link the user only hovered"
    assert page.url == site.url("/turbo")
    assert tab.documents == 1


@pytest.mark.parametrize("lib", ["htmx", "htmx4", "turbo"])
def test_an_external_routers_guard_page_stays_one_while_the_straggler_answers(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    site, lb = behind(
        make_site, "external", lambda site: LoadsToStraggler(site, "external", ["v1", "v2"])
    )
    lb.to = "v1"  # page loads keep reaching the straggler
    page = open_at(tab, site.url(f"/{lib}"))
    tab.allow(RELOAD_409)
    for i, link in enumerate(["a", "b"] * 2):
        before = tab.documents
        follow(page, f"#{lib}-{link}")
        title_is(page, f"{lib} {link}")
        client_routed(page)
        assert tab.documents - before == 1, "one full load per navigation, no more"
        if i:
            assert page.evaluate("window.deploysync.router.guard"), f"navigation {i}"
    assert page_id(page) == site.versions["v1"]
    # stale once (the first refusal), then guard pages: no more stale events
    assert len(stale_events(page)) == 1


class Slow:
    """One server whose Turbo pages answer after *delay* seconds (network latency)."""

    def __init__(self, site: Site, routing: str, delay: float) -> None:
        from testapp import make_asgi

        self.server = make_asgi(str(site.store), routing)
        site.closers.append(self.server.close)
        self.delay = delay

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"].startswith("/turbo"):
            await asyncio.sleep(self.delay)
        await self.server(scope, receive, send)


def turbo_with_held_visits(make_site: MakeSite, tab: Tab) -> tuple[Site, Any]:
    """A Turbo page (/turbo/a) of a slow server whose visits wait 0.8 s before they go
    out (Turbo's "pausing requests": an app adding a token), with a link ``#home`` to
    /turbo, which Turbo has a cached preview of."""
    site, _ = behind(make_site, "external", lambda site: Slow(site, "external", 0.3))
    page = open_at(tab, site.url("/turbo"))
    follow(page, "#turbo-a")
    title_is(page, "turbo a")
    page.evaluate(
        """document.addEventListener("turbo:before-fetch-request", (e) => {
             if (e.target == document.documentElement
                 && !e.detail.fetchOptions.headers["X-Sec-Purpose"]) {
               e.preventDefault(); setTimeout(e.detail.resume, 800) }
           })
           document.body.insertAdjacentHTML("afterbegin", '<a id="home" href="/turbo">home</a>')"""
    )
    return site, page


def test_a_prefetch_refused_during_another_visit_leaves_for_the_clicked_page(
    make_site: MakeSite, tab: Tab
) -> None:
    # A hover's prefetch, then a click on another link whose cached preview replaces the
    # hovered link: the prefetch's 409 is answered on <html> while the visit is busy.
    site, page = turbo_with_held_visits(make_site, tab)
    mark(page)
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.hover("#turbo-b")
    time.sleep(0.2)
    page.click("#home")
    # Turbo shows its cached preview of /turbo at once; the full load follows.
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    client_routed(page)
    title_is(page, "turbo turbo")  # the page at /turbo
    assert not marked(page)
    assert page.url == site.url("/turbo"), "left for the hovered link, not the clicked one"


def test_a_turbo_form_removed_as_it_is_sent_across_a_deploy_marks_the_page_stale(
    make_site: MakeSite, tab: Tab
) -> None:
    # Its answer comes on <html> (a modal closing on submit): the 409 still tells the
    # page it is outdated, so its next navigation is a full load.
    site = make_site(routing="external")
    page = open_at(tab, site.url("/turbo"))
    page.evaluate("""document.addEventListener("turbo:submit-start", (e) => e.target.remove())""")
    page.fill("#message", "hello")
    mark(page)
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.click("#send")
    wait_stale(page)
    assert marked(page)
    assert site.stats()["posts"] == 0
    follow(page, "#turbo-b")
    title_is(page, "turbo b")
    assert not marked(page)
    assert page_id(page) == new


def test_coming_back_to_a_tab_soon_after_its_load_checks_the_version(
    make_site: MakeSite, tab: Tab
) -> None:
    site = make_site(routing="external")
    page = open_at(tab, site.url("/spa"))
    mark(page)
    site.deploy("v2")
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    wait_stale(page)
    assert marked(page)


NEWS = (
    b"<!doctype html><html><head><title>news</title></head><body>"
    b'<turbo-frame id="news"><p id="news-1">news 1</p></turbo-frame></body></html>'
)


class FrameSource:
    """The app, plus ``/news`` (302 -> ``/news/1``): a Turbo frame's source that moved."""

    def __init__(self, site: Site) -> None:
        from testapp import make_asgi

        self.server = make_asgi(str(site.store), "external")
        site.closers.append(self.server.close)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if path == "/news":
            headers = [(b"location", b"/news/1"), (b"content-length", b"0")]
            await send({"type": "http.response.start", "status": 302, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
        elif path == "/news/1":
            length = str(len(NEWS)).encode()
            headers = [(b"content-type", b"text/html"), (b"content-length", length)]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": NEWS})
        else:
            await self.server(scope, receive, send)


@pytest.mark.parametrize("how", ["lazy frame", "link in a frame"])
def test_a_turbo_frames_answer_never_takes_a_stale_page_away(
    make_site: MakeSite, tab: Tab, how: str
) -> None:
    # Turbo marks a frame busy too; its answer (redirected here) is the frame's, not a
    # navigation of the page.
    site, _ = behind(make_site, "external", FrameSource)
    page = open_at(tab, site.url("/turbo"))
    if how == "lazy frame":
        page.evaluate(
            """document.body.insertAdjacentHTML("beforeend",
                 '<turbo-frame id="news" src="/news" loading="lazy">...</turbo-frame>')"""
        )
    else:
        page.evaluate(
            """document.body.insertAdjacentHTML("afterbegin",
                 '<turbo-frame id="news"><a id="more" href="/news">more</a></turbo-frame>')"""
        )
    mark(page)
    site.deploy("v2")
    assert check(page), "the page is stale"
    if how == "lazy frame":
        page.mouse.wheel(0, 5000)  # the user scrolls: no navigation
    else:
        page.evaluate("document.querySelector('#more').click()")  # a frame navigation
    expect(page.locator("#news-1")).to_have_text("news 1")
    time.sleep(0.5)
    assert marked(page), "a frame's answer took the page away"
    assert page.url == site.url("/turbo")


def test_a_prefetch_whose_link_left_before_it_was_sent_never_takes_the_visit(
    make_site: MakeSite, tab: Tab
) -> None:
    # The hovered link is re-rendered before Turbo sends its prefetch: the prefetch's
    # request is then dispatched on <html>, like a visit's, while a visit waits.
    site, page = turbo_with_held_visits(make_site, tab)
    page.evaluate(
        """document.addEventListener("mouseover", (e) => e.target.id == "turbo-b"
             && setTimeout(() => e.target.isConnected
                           && e.target.replaceWith(e.target.cloneNode(true)), 30))"""
    )
    page.mouse.move(0, 0)
    mark(page)
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    page.click("#home")  # Turbo shows its preview of /turbo; the visit waits
    time.sleep(0.1)
    page.hover("#turbo-b")  # in the preview
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    time.sleep(0.5)
    assert page.url == site.url("/turbo"), "left for the hovered link, not the clicked one"
    assert not marked(page)


# -- POSTs processed by a straggler, history restores, pushes the user did not start --------


class PostToStraggler(Balancer):
    """POSTs reach the v1 server (a straggler); everything else reaches ``to``."""

    log: list[str]

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.log = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.log.append(f"{scope['method']} {scope['path']}")
        if scope["method"] == "POST":
            await self.servers["v1"](scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


@pytest.mark.parametrize(
    ("routing", "start", "result"),
    [
        ("client", "/form", "Result"),
        ("external", "/htmx", "htmx result"),
        ("external", "/htmx4", "htmx4 result"),
        ("external", "/turbo", "turbo result"),
    ],
    ids=["own-router", "htmx", "htmx4", "turbo"],
)
def test_a_post_processed_whose_redirect_is_refused_is_not_sent_again(
    make_site: MakeSite, tab: Tab, routing: str, start: str, result: str
) -> None:
    site, lb = behind(make_site, routing, lambda site: PostToStraggler(site, routing, ["v1", "v2"]))
    lb.to = "v1"
    page = open_at(tab, site.url(start))
    assert page_id(page) == site.versions["v1"]
    mark(page)
    lb.to = "v2"  # the rolling deploy moves on; the POST still reaches the straggler
    tab.allow(RELOAD_409)
    page.fill("#message", "once")
    page.click("#send")
    title_is(page, result)
    time.sleep(0.5)
    posted = "POST " + (start if routing == "client" else start + "/form")
    assert lb.log.count(posted) == 1, "the processed POST was submitted again"


@pytest.mark.parametrize("lib", ["htmx", "htmx4", "turbo"])
def test_back_after_a_deploy_never_swaps_the_new_deployments_page_in(
    make_site: MakeSite, tab: Tab, lib: str
) -> None:
    site = make_site(routing="external")
    page = open_at(tab, site.url(f"/{lib}"))
    follow(page, f"#{lib}-a")
    title_is(page, f"{lib} a")
    mark(page)
    new = site.deploy("v2")
    tab.allow(RELOAD_409)
    # a history cache miss: htmx 2 keeps 10 snapshots in localStorage (none with
    # hx-history="false"), htmx 4 keeps none, Turbo keeps 10 in memory
    page.evaluate(
        "localStorage.clear(); sessionStorage.removeItem('htmx-history-cache');"
        " window.Turbo?.cache.clear()"
    )
    seen: list[tuple[int, str | None, str | None]] = []
    page.on(
        "response",
        lambda r: (
            r.url == site.url(f"/{lib}")
            and seen.append(
                (r.status, r.headers.get("x-deployment-id"), r.request.headers.get("x-deploysync"))
            )
        ),
    )
    tab.allow("htmx:historyCacheMissLoadError")  # htmx 2 logs the refused restore
    page.go_back()
    title_is(page, f"{lib} {lib}")
    time.sleep(1)
    assert not (marked(page) and (200, new, None) in seen), (
        "the new deployment's page was swapped into the old document"
    )


@pytest.mark.parametrize("how", ["turbo lazy frame advance", "htmx revealed push-url"])
def test_a_stale_page_never_leaves_while_the_user_only_scrolls(
    make_site: MakeSite, tab: Tab, how: str
) -> None:
    # Infinite scroll that keeps the URL in step with the page reached.
    lib = "turbo" if how.startswith("turbo") else "htmx"
    site, _ = behind(make_site, "external", FrameSource)
    page = open_at(tab, site.url(f"/{lib}"))
    if lib == "turbo":
        html = (
            '<div style="height:3000px"></div><turbo-frame id="news" src="/news/1"'
            ' loading="lazy" data-turbo-action="advance">...</turbo-frame>'
        )
    else:
        html = (
            '<div hx-get="/htmx/a?page=2" hx-trigger="revealed" hx-push-url="true"'
            ' hx-select="h1" hx-swap="outerHTML">...</div>'
        )
    page.evaluate(
        "(html) => { document.body.insertAdjacentHTML('beforeend', html);"
        " window.htmx?.process(document.body) }",
        html,
    )
    mark(page)
    site.deploy("v2")
    assert check(page), "the page is stale"
    before = tab.documents
    time.sleep(5.5)  # page.evaluate runs as a user gesture: let that activation expire
    page.mouse.wheel(0, 20000)  # the user scrolls; no link, no form
    time.sleep(2)
    assert marked(page) and tab.documents == before, "the stale page left by itself"


def test_a_turbo_link_on_a_stale_page_is_one_full_load(make_site: MakeSite, tab: Tab) -> None:
    site = make_site(routing="external")
    page = open_at(tab, site.url("/turbo"))
    mark(page)
    site.deploy("v2")
    assert check(page)
    tab.allow(RELOAD_409)
    before = tab.documents
    follow(page, "#turbo-a")
    title_is(page, "turbo a")
    client_routed(page)
    time.sleep(0.5)
    assert tab.documents - before == 1


def test_a_refused_htmx_post_from_a_page_with_a_fragment_is_sent_again(
    make_site: MakeSite, tab: Tab
) -> None:
    # htmx 2 posts a form without action to location.href, #fragment included; the
    # response URL has none: that is no redirect, the POST was not processed.
    site = make_site(routing="external")
    page = open_at(tab, site.url("/htmx/x#top"))
    page.evaluate(
        """document.body.insertAdjacentHTML("afterbegin", '<form id="f2" method="post">'
             + '<input name="message" value="once"><button id="send2">Send</button></form>');
           htmx.process(document.body)"""
    )
    site.deploy("v2")
    tab.allow(RELOAD_409)
    page.click("#send2")
    title_is(page, "htmx result")
    assert site.stats()["posts"] == 1


@pytest.mark.parametrize("lib", ["htmx", "htmx4"])
@pytest.mark.parametrize("name", ["X-Booking-Ref", "X-History-Token"])
def test_an_htmx_partial_with_an_apps_header_is_no_navigation(
    make_site: MakeSite, tab: Tab, lib: str, name: str
) -> None:
    site = make_site(routing="external")
    page = open_at(tab, site.url(f"/{lib}"))
    page.evaluate(
        """([name, lib]) => { document.body.insertAdjacentHTML("afterbegin",
             `<p id="slot"></p><button id="part" hx-get="/${lib}/a" hx-select="h1"
                hx-target="#slot" hx-headers='{"${name}": "1"}'>part</button>`);
           htmx.process(document.body) }""",
        [name, lib],
    )
    mark(page)
    site.deploy("v2")
    page.click("#part")
    expect(page.locator("#slot")).to_have_text(f"{lib} a")
    assert marked(page), "a partial took the page away"
    assert page.url == site.url(f"/{lib}")


def test_a_browser_without_user_activation_still_full_loads_a_stale_routers_push(
    make_site: MakeSite, tab: Tab
) -> None:
    # Safari before 16.4, Firefox ESR 115: neither navigator.userActivation nor the
    # Navigation API; the client wraps pushState.
    tab.page.add_init_script(
        "delete Navigator.prototype.userActivation; delete window.navigation;"
        " delete Window.prototype.navigation"
    )
    site = make_site(routing="external")
    page = open_at(tab, site.url("/spa"))
    assert page.evaluate("!window.navigation && !navigator.userActivation")
    mark(page)
    new = site.deploy("v2")
    assert check(page)
    page.click("#spa-x")
    expect(page.locator("meta[name=deployment-id]")).to_have_attribute("content", new)
    assert not marked(page)


# -- answers of another deployment: loaded in full, wherever they come from ------------------


class Sequence(Balancer):
    """A balancer whose next page requests go to the servers of ``plan``, in turn (static
    files and version checks to the last one chosen)."""

    def __init__(self, site: Site, routing: str, versions: list[str]) -> None:
        super().__init__(site, routing, versions)
        self.plan: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        if self.plan and not path.startswith(("/static/", "/_deploysync/")):
            self.to = self.plan.pop(0)
        await super().__call__(scope, receive, send)


def in_sequence(make_site: MakeSite, routing: str) -> tuple[Site, Sequence]:
    return behind(make_site, routing, lambda site: Sequence(site, routing, ["v1", "v2"]))


@pytest.mark.parametrize(
    ("first", "then", "lands_on"),
    [("v2", "v1", "v1"), ("v1", "v2", "v2")],
    ids=["answered-by-another", "refused"],
)
def test_back_to_a_fragment_entry_loaded_in_full_loads_it(
    make_site: MakeSite, tab: Tab, first: str, then: str, lands_on: str
) -> None:
    # Loading the entry in full cannot be location.assign(url): to the URL the tab is
    # at, with a #fragment, that only scrolls. Whether the answer was another
    # deployment's page or a 409 (the page's deployment older than the server's).
    site, lb = rolling(make_site, "client", ["v1", "v2"])
    tab.allow(RELOAD_409)
    lb.to = first
    page = open_at(tab, site.url("/"))
    mark(page)
    follow(page, "#to-b-hash")
    title_is(page, "B")
    follow(page, "#to-a")
    title_is(page, "A")
    lb.to = then
    page.go_back()
    title_is(page, "B")
    assert not marked(page) and page_id(page) == site.versions[lands_on]
    assert page.url.endswith("/b?q=1#end")


def test_a_turbo_restoration_refused_loads_the_fragment_entry(
    make_site: MakeSite, tab: Tab
) -> None:
    site, lb = rolling(make_site, "external", ["v1", "v2"])
    tab.allow(RELOAD_409)
    lb.to = "v1"
    page = open_at(tab, site.url("/turbo"))
    mark(page)
    follow(page, "#turbo-b-end")
    title_is(page, "turbo b")
    follow(page, "#turbo-a")
    title_is(page, "turbo a")
    page.evaluate("Turbo.cache.clear()")  # the back is fetched, not restored from memory
    lb.to = "v2"  # the page's deployment is older: refused
    page.go_back()
    title_is(page, "turbo b")
    assert not marked(page) and page_id(page) == site.versions["v2"]
    assert page.url.endswith("/turbo/b#end")


def test_a_posts_redirect_target_from_another_deployment_is_loaded_in_full(
    make_site: MakeSite, tab: Tab
) -> None:
    # The POST reaches a server on the page's deployment (processed), the GET of its
    # redirect target one on the other: that page is loaded in full, the POST not sent again.
    site, lb = in_sequence(make_site, "client")
    page = open_at(tab, site.url("/form"))
    mark(page)
    lb.plan = ["v2", "v1"]
    page.fill("#message", "hello")
    page.click("#send")
    title_is(page, "Result")
    assert not marked(page) and page_id(page) == site.versions["v1"]
    posts = 0
    for version in lb.servers:  # each server's app counts its own
        lb.to = version
        posts += site.stats()["posts"]
    assert posts == 1


def test_a_page_the_app_leaves_to_the_browser_is_loaded_in_full(
    make_site: MakeSite, tab: Tab
) -> None:
    """An answer without the middleware's X-Deployment-Id (X-Deploysync: off, as the docs
    advise for the Django admin) is no page of this frontend: never merged into it."""
    site = make_site(routing="client")
    page = open_at(tab, site.url("/"))
    mark(page)
    follow(page, "#to-plain")
    title_is(page, "Plain")
    assert not marked(page) and page.locator("meta[name=deployment-id]").count() == 0
    follow(page, "#to-a")  # no client on that page: the browser's own navigation
    title_is(page, "A")
    assert not marked(page)
    assert tab.documents == 3
