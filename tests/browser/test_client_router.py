"""routing="client": the router itself, before any deploy (what a Turbo Drive user expects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import MakeSite, Site, Tab
from helpers import client_routed, mark, marked, open_marked, title_is
from playwright.sync_api import expect
from testapp import make_asgi, with_csp

pytestmark = pytest.mark.browser


@pytest.fixture
def site(make_site: MakeSite) -> Site:
    return make_site(routing="client")


@pytest.fixture
def page(site: Site, tab: Tab) -> Any:
    page = tab.page
    page.goto(site.url("/"))
    client_routed(page)
    mark(page)
    return page


def test_a_redirect_is_followed_and_history_gets_the_final_url(site: Site, page: Any) -> None:
    page.click("#to-redirect")
    title_is(page, "B")
    assert page.url == site.url("/b")
    assert marked(page)


def test_a_link_with_a_fragment_scrolls_to_its_target(site: Site, page: Any) -> None:
    page.click("#to-b-hash")
    title_is(page, "B")
    assert page.url == site.url("/b?q=1#end")
    assert page.inner_text("#query") == "q=1"
    expect(page.locator("#end")).to_be_in_viewport()
    assert marked(page)


def test_a_link_to_a_bare_hash_only_scrolls_and_keeps_typed_text(site: Site, tab: Tab) -> None:
    # href="#": a.hash is "", yet it is a link into this document, as href="#end" is
    page = tab.page
    page.goto(site.url("/type"))
    client_routed(page)
    mark(page)
    page.evaluate(
        "window.__navigations = 0;"
        " document.addEventListener('deploysync:before-navigate', () => __navigations++)"
    )
    before = site.stats()["navigate"]
    page.fill("#text", "typed")
    page.evaluate("scrollTo(0, 500)")
    page.click("#to-top")
    assert page.evaluate("__navigations") == 0, "the router took the link"
    page.wait_for_url(site.url("/type#"))
    page.wait_for_function("scrollY == 0")
    assert page.input_value("#text") == "typed"
    assert site.stats()["navigate"] == before
    assert marked(page)


def test_inline_scripts_of_a_new_page_run_under_a_per_response_csp_nonce(
    make_site: MakeSite, tab: Tab
) -> None:
    # The document keeps enforcing its first response's policy and nonce; each later
    # response carries a new nonce that this document does not accept.
    def csp(site: Site) -> Any:
        inner = make_asgi(str(site.store), "client", nonce="csp_nonce")
        site.closers.append(inner.close)
        return with_csp(inner)

    site = make_site(routing="client", wrap=csp)
    page = tab.page
    tab.allow(r"Executing inline script violates the following Content Security Policy")
    response = page.goto(site.url("/"))
    assert response is not None and "nonce-" in response.headers["content-security-policy"]
    client_routed(page)
    mark(page)
    # (no wait_for_function here: the policy forbids its eval; body scripts run at the swap)
    page.click("#to-a")
    title_is(page, "A")
    assert page.evaluate("window.__ran") == 1
    page.click("#to-home")
    title_is(page, "Home")
    page.click("#to-a")
    title_is(page, "A")
    assert page.evaluate("window.__ran") == 2
    # Only the scripts the new response trusted get the document's nonce; the policy
    # blocks the others (and says so in the console).
    assert page.evaluate("window.__forged") is None, "a script without the nonce ran"
    assert marked(page)


def test_an_error_page_is_rendered_in_place(site: Site, page: Any, tab: Tab) -> None:
    tab.allow(rf"status of 404 \(Not Found\) @ {site.url('/missing')}$")
    page.click("#to-missing")
    title_is(page, "Not found")
    assert page.url == site.url("/missing")
    assert marked(page)


def test_a_get_form_is_client_routed_with_its_query(site: Site, page: Any) -> None:
    page.click("#to-form")
    title_is(page, "Form")
    page.fill("#q", "find me")
    page.click("#search")
    title_is(page, "A")
    assert page.url == site.url("/a?q=find+me")
    assert marked(page)


def test_scripts_of_a_new_body_run_and_head_scripts_run_once(page: Any) -> None:
    for link, title in (("#to-a", "A"), ("#to-home", "Home"), ("#to-a", "A")):
        page.click(link)
        title_is(page, title)
    assert page.evaluate("window.__ran") == 2
    assert page.evaluate("window.__app") == 1
    assert page.title() == "A"
    expect(page.locator("[role=status]")).to_have_text("A")  # announced to screen readers


def test_the_head_holds_the_new_pages_inline_scripts_only(page: Any) -> None:
    # A data island (a page's JSON for its scripts) must be the new page's, and the head
    # must not grow with every visit; scripts loaded from a URL stay (they ran).
    def islands() -> list[str]:
        return list(page.eval_on_selector_all("#page-data", "els => els.map(e => e.text)"))

    for link, title, path in (("#to-a", "A", "/a"), ("#to-b", "B", "/b"), ("#to-a", "A", "/a")):
        page.click(link)
        title_is(page, title)
        assert islands() == [f'"{path}"']
    assert page.locator("head script[data-deploysync]").count() == 1
    assert marked(page)


def test_back_restores_the_scroll_position(page: Any) -> None:
    page.click("#to-b")
    title_is(page, "B")
    page.evaluate("scrollTo(0, 1200)")
    page.evaluate("document.querySelector('#to-home').click()")  # page.click would scroll
    title_is(page, "Home")
    assert page.evaluate("scrollY") == 0
    page.go_back()
    title_is(page, "B")
    page.wait_for_function("scrollY == 1200", timeout=5000)
    assert marked(page)


def test_back_and_forward_are_client_routed_without_the_navigation_api(
    site: Site, tab: Tab
) -> None:
    page = tab.page
    page.add_init_script("Object.defineProperty(window, 'navigation', {value: undefined})")
    page.goto(site.url("/"))
    client_routed(page)
    mark(page)
    page.click("#to-a")
    title_is(page, "A")
    page.go_back()
    title_is(page, "Home")
    page.go_forward()
    title_is(page, "A")
    assert marked(page)


def test_a_hovered_link_is_prefetched_and_the_click_uses_it(site: Site, page: Any) -> None:
    before = site.stats()["navigate"]
    page.hover("#to-prefetch")
    page.wait_for_timeout(100)  # lets the prefetch leave; the assertion below waits for it
    deadline = 50
    while site.stats()["navigate"] == before and deadline:
        page.wait_for_timeout(50)
        deadline -= 1
    assert site.stats()["navigate"] == before + 1
    page.click("#to-prefetch")
    title_is(page, "A")
    assert site.stats()["navigate"] == before + 1, "the click fetched again"
    assert marked(page)


def test_links_left_to_the_browser_are_full_loads(site: Site, page: Any) -> None:
    page.click("#to-a-off")  # data-deploysync="off"
    title_is(page, "A")
    assert not marked(page)
    client_routed(page)
    mark(page)
    page.click("#to-json")  # not HTML: the browser shows it
    page.wait_for_url(site.url("/_test/stats"))
    assert not marked(page)


def test_a_failed_fetch_falls_back_to_a_full_load(site: Site, page: Any, tab: Tab) -> None:
    tab.allow(rf"net::ERR_FAILED @ {site.url('/a')}$")
    page.route(
        "**/a",
        lambda route: route.abort() if route.request.resource_type == "fetch" else route.fallback(),
    )
    page.click("#to-a")
    title_is(page, "A")
    assert not marked(page)


@pytest.mark.parametrize(
    ("button", "name"), [("#export", "report.csv"), ("#export-extended", "my r\u00e9port.csv")]
)
def test_a_post_answered_with_a_file_downloads_it_and_is_processed_once(
    site: Site, tab: Tab, button: str, name: str
) -> None:
    # An export form: the browser saves the answer under its name and stays on the page.
    page = tab.page
    open_marked(page, site.url("/export"))
    with page.expect_download() as download:
        page.click(button)
    assert download.value.suggested_filename == name
    assert Path(download.value.path()).read_bytes() == b"id,name\n1,deploysync\n"
    assert site.stats()["posts"] == 1
    assert page.url == site.url("/export") and marked(page)


def test_a_link_to_an_html_attachment_is_left_to_the_browser_to_save(site: Site, tab: Tab) -> None:
    # Content-Disposition: attachment makes even HTML a file, not a page to swap in: a
    # link's answer is the browser's own download (streamed to disk, however large).
    page = tab.page
    open_marked(page, site.url("/export"))
    with page.expect_download() as download:
        page.click("#report")
    assert download.value.suggested_filename == "report.html"
    assert page.url == site.url("/export") and marked(page)
    assert page.locator("h1").inner_text() == "Export"
    assert site.stats()["paths"][-2:] == ["GET /report (client)", "GET /report"]


def test_a_post_answered_with_text_shows_it_as_the_browser_would(site: Site, tab: Tab) -> None:
    # Not a download (no Content-Disposition: attachment): the tab shows it.
    page = tab.page
    tab.allow(r"Failed to load resource: the server responded with a status of 500")
    open_marked(page, site.url("/export"))
    page.click("#fail")
    page.wait_for_url("blob:**")
    expect(page.locator("body")).to_have_text("export failed")
    assert site.stats()["posts"] == 1


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_post_redirected_to_another_origin_lands_there_processed_once(
    make_site: MakeSite, tab: Tab, adapter: str
) -> None:
    # A checkout sending the user to a payment page: a fetch cannot follow the redirect
    # (CORS), and the form must not be sent again to find out where it led.
    site = make_site(adapter, routing="client")
    page = tab.page
    open_marked(page, site.url("/pay"))
    page.click("#pay")
    elsewhere = site.url("/b").replace("127.0.0.1", "localhost")
    page.wait_for_url(elsewhere)
    title_is(page, "B")
    assert site.stats()["posts"] == 1


def test_a_post_redirected_to_a_mailto_url_is_processed_once(site: Site, tab: Tab) -> None:
    # No fetch follows it either: it is handed over like another origin's address.
    page = tab.page
    tab.allow(r"mailto")
    open_marked(page, site.url("/pay"))
    page.click("#mail")
    page.wait_for_timeout(1000)
    assert site.stats()["posts"] == 1
    assert page.url == site.url("/pay")


def test_the_app_hears_about_navigations_and_can_cancel_them(page: Any) -> None:
    page.evaluate(
        """() => {
        window.__events = []
        for (const name of ["before-navigate", "navigated"])
            document.addEventListener(
                "deploysync:" + name, (e) => __events.push([name, e.detail.url])
            )
        document.addEventListener("deploysync:before-navigate", (e) => {
            if (e.detail.url.endsWith("/b")) e.preventDefault()
        })
    }"""
    )
    page.click("#to-b")
    page.click("#to-a")
    title_is(page, "A")
    events = page.evaluate("__events")
    assert [name for name, _ in events] == ["before-navigate", "before-navigate", "navigated"]
    assert events[0][1].endswith("/b") and events[2][1].endswith("/a")
    page.evaluate("window.deploysync.navigate('/b')")
    title_is(page, "A")  # canceled by the app
    assert marked(page)
