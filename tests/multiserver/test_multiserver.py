"""Several app servers behind nginx, one Redis store: deploys users never notice break.

Real services on 127.0.0.1, started here: redis-server, two uvicorn app servers
(``msapp``) and nginx round-robin in front of them; users are headless Chromium
contexts browsing with client routing. Every wait is bounded in count and time; no
assertion is about how fast something was.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import Cluster, http_get

from deploysync import cli

pytestmark = [pytest.mark.redis]

TITLES = {"to-home": "Home", "to-a": "A", "to-b": "B", "to-form": "Form"}
CYCLE = ["to-a", "to-b", "to-home"]
STEP_TIMEOUT = 10_000  # ms a navigation may take before the test fails


# -- users ---------------------------------------------------------------------------------


class User:
    """One person in their own browser context (own cookies and sessionStorage)."""

    def __init__(self, browser: Any, base: str, name: str) -> None:
        from harness import Tab
        from helpers import RELOAD_409

        self.name = name
        self.base = base
        self.context = browser.new_context()
        self.tab = Tab(self.context.new_page())
        # Chromium logs a fetch answered 409 (the contract's reload) as a console error.
        self.tab.allow(RELOAD_409)
        self.page = self.tab.page
        self.loads = 0  # documents loaded (full page loads, whatever caused them)
        self.bad_assets: list[str] = []  # failed asset requests, with the page they served
        self.per_navigation: list[tuple[str, int]] = []
        self.journal: list[str] = []  # what happened, for failure messages
        self.step = 0
        self.page.on("domcontentloaded", self._loaded)
        self.page.on("response", self._response)
        self.page.on("requestfailed", self._failed)

    def _loaded(self, _: Any) -> None:
        self.loads += 1

    def _response(self, response: Any) -> None:
        if "/static/" in response.url and response.status >= 400:
            self.bad_assets.append(f"{response.status} {response.url} on {self.page.url}")

    def _failed(self, request: Any) -> None:
        # A full load cancels what the previous document was still fetching: not a failure.
        if "/static/" in request.url and "ERR_ABORTED" not in (request.failure or ""):
            self.bad_assets.append(f"{request.failure} {request.url} on {self.page.url}")

    def open(self, path: str = "/") -> None:
        self.page.goto(self.base + path)
        self._settled(TITLES["to-home"] if path == "/" else "")

    def _settled(self, title: str, extra: str = "true") -> None:
        self.page.wait_for_function(
            f"""() => !!window.deploysync && document.readyState === 'complete'
                && (!{title!r} || document.querySelector('h1')?.textContent === {title!r})
                && ({extra})""",
            timeout=STEP_TIMEOUT,
        )
        # the image and stylesheet of the page have answered
        self.page.wait_for_load_state("load", timeout=STEP_TIMEOUT)

    def deployment(self) -> str:
        from helpers import page_id

        ident: str = page_id(self.page)
        return ident

    def click(self, link: str) -> int:
        """Follow a nav link as a user; the number of documents that took."""
        before = self.loads
        self.page.click(f"#{link}")
        self._settled(TITLES[link])
        used = self.loads - before
        self.per_navigation.append((link, used))
        self.note(link, used)
        return used

    def note(self, action: str, loads: int) -> None:
        server = self.page.locator("#server").text_content()
        self.journal.append(f"{action}: {loads} load(s), {self.deployment()[:6]} from {server}")

    def wander(self) -> int:
        """The next link of a cycle (never the page already shown)."""
        link = CYCLE[self.step % len(CYCLE)]
        if self.page.locator("h1").text_content() == TITLES[link]:
            self.step += 1
            link = CYCLE[self.step % len(CYCLE)]
        self.step += 1
        return self.click(link)

    def post(self) -> str:
        """Go to the form and submit a unique token; returns it once the result shows."""
        if self.page.locator("h1").text_content() != "Form":
            self.click("to-form")
        token = f"{self.name}-{uuid.uuid4().hex[:12]}"
        before = self.loads
        self.page.fill("#token", token)
        self.page.click("#send")
        self._settled("Result", f"document.querySelector('#received')?.textContent === {token!r}")
        self.per_navigation.append(("post", self.loads - before))
        self.note(f"post {token}", self.loads - before)
        return token

    def story(self) -> str:
        return f"{self.name}: " + "; ".join(self.journal)

    def problems(self) -> list[str]:
        return [f"{self.name}: {p}" for p in (*self.bad_assets, *self.tab.unexpected())]

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def users(chromium: Any) -> Iterator[Callable[[str, int], list[User]]]:
    made: list[User] = []

    def make(base: str, count: int) -> list[User]:
        for _ in range(count):
            made.append(User(chromium, base, f"user{len(made)}"))
        return made[-count:]

    yield make
    for user in made:
        user.close()


@contextlib.contextmanager
def meanwhile(action: Callable[[], None]) -> Iterator[threading.Event]:
    """Run *action* in a thread; the event is set when it is done. Re-raises its error."""
    done = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        thread.join(60)
    assert not thread.is_alive(), "the background action never finished"
    if errors:
        raise errors[0]


def browse_until(people: list[User], done: threading.Event, at_least: int, at_most: int) -> None:
    """Every user navigates, round after round, until *done* (bounded in rounds)."""
    for round_ in range(at_most):
        if round_ >= at_least and done.is_set():
            return
        for user in people:
            user.wander()
    assert done.is_set() or done.wait(30), "the background action took too long"


def stories(people: list[User]) -> str:
    return "\n" + "\n".join(user.story() for user in people)


def check_users(people: list[User], cluster: Cluster, tokens: list[str]) -> None:
    problems = [p for user in people for p in user.problems()]
    assert not problems, "\n".join(problems) + stories(people)
    loops = [(u.name, nav) for u in people for nav in u.per_navigation if nav[1] > 2]
    assert not loops, f"more than two document loads for one navigation: {loops}" + stories(people)
    processed = cluster.processed_posts()
    counts = {token: processed.count(token) for token in tokens}
    assert all(n == 1 for n in counts.values()), f"POSTs not processed exactly once: {counts}"
    assert len(processed) == len(tokens), f"unexpected POSTs processed: {processed}"
    assert cluster.nginx is not None
    errors = [s for s in cluster.nginx.statuses() if s[0] >= 500]
    assert not errors, f"nginx answered 5xx: {errors}\n{cluster.nginx.errors()}"


# -- rolling deploys -----------------------------------------------------------------------


@pytest.mark.browser
def test_rolling_deploy_of_pinned_servers_breaks_no_page(
    make_cluster: Callable[[], Cluster], users: Callable[[str, int], list[User]]
) -> None:
    """Containers roll over one by one, each pinned to its own deployment: no asset 404,
    no lost or doubled POST, no loop; once both run v2, every user's next navigation
    lands on v2 and the one after is client-routed again."""
    cluster = make_cluster()
    v1 = cluster.build("v1", activate=True)
    server_a, server_b = cluster.start(2, pin=v1)
    cluster.balance()
    people = users(cluster.base, 3)
    tokens: list[str] = []
    for user in people:
        user.open()
        user.wander()
        assert user.deployment() == v1

    # The new frontend goes into the shared store; the running containers keep v1.
    v2 = cluster.build("v2", activate=True)
    for user in people:
        user.wander()
    # Server A is replaced by a container pinned to v2 while users browse.
    with meanwhile(lambda: server_a.restart(v2)) as done:
        browse_until(people, done, at_least=1, at_most=8)
    assert server_a.current() == v2 and server_b.current() == v1
    for user in people:  # the mixed period: pages of either deployment, either server
        tokens.append(user.post())
        user.wander()
        user.wander()
    with meanwhile(lambda: server_b.restart(v2)) as done:
        browse_until(people, done, at_least=1, at_most=8)
        for user in people:
            tokens.append(user.post())
    assert server_a.current() == v2 and server_b.current() == v2

    # Roll-over complete: one navigation moves everyone to v2; client routing resumes.
    for user in people:
        user.wander()
        assert user.deployment() == v2, f"{user.name} is still on v1" + stories(people)
    for user in people:
        assert user.wander() == 0, f"{user.name}: not client-routed on v2" + stories(people)
        tokens.append(user.post())
        assert user.deployment() == v2
    check_users(people, cluster, tokens)


@pytest.mark.browser
def test_activation_reaches_every_unpinned_server_through_pubsub(
    make_cluster: Callable[[], Cluster], users: Callable[[str, int], list[User]]
) -> None:
    """Servers follow the store: an activation reaches both through pub/sub (their poll,
    60 s, could not explain it), users move at their next navigation, POSTs across the
    switch are processed once, and a rollback moves everyone back the same way."""
    cluster = make_cluster()
    v1 = cluster.build("v1", activate=True)
    servers = cluster.start(2, poll=60)
    cluster.balance()
    people = users(cluster.base, 3)
    tokens: list[str] = []
    for user in people:
        user.open()
        user.wander()
        assert user.deployment() == v1
    for server in servers:  # a first request started each watcher; let it subscribe
        server.wait_for(v1)

    v2 = cluster.build("v2", activate=False)
    for user in people:
        user.page.goto(cluster.base + "/form")
        user._settled("Form")
    cluster.activate(v2)
    for server in servers:
        server.wait_for(v2, deadline=10)  # far below the 60 s poll: pushed, not polled
    for user in people:  # a form filled on v1, submitted after the switch
        tokens.append(user.post())
        assert user.deployment() == v2
    for user in people:
        assert user.wander() == 0, f"{user.name}: not client-routed on v2" + stories(people)

    cluster.activate(v1)  # a rollback is an activation like any other
    for server in servers:
        server.wait_for(v1, deadline=10)
    for user in people:
        user.wander()
        assert user.deployment() == v1, stories(people)
        assert user.wander() == 0, f"{user.name}: not client-routed on v1" + stories(people)
    check_users(people, cluster, tokens)


# -- builds, Redis outages and pruning -------------------------------------------------


def test_a_container_pinned_to_a_new_build_finds_its_assets_on_every_server(
    make_cluster: Callable[[], Cluster],
) -> None:
    """A build without activation reaches every server at once (their poll, 60 s, could
    not explain it), so a container pinned to it can roll in before the activation: its
    pages' assets load through the balancer from either server."""
    cluster = make_cluster()
    v1 = cluster.build("v1", activate=True)
    server_a, server_b = cluster.start(2, pin=v1, poll=60)
    nginx = cluster.balance()
    for server in (server_a, server_b):
        assert http_get(server.base + "/")[0] == 200  # starts its watcher
    v2 = cluster.build("v2", activate=False)
    new = asset_urls(cluster, v2)
    for server in (server_a, server_b):
        deadline = time.monotonic() + 10
        while (status := http_get(server.base + new[0])[0]) != 200:
            assert status == 404 and time.monotonic() < deadline, (
                f"{server.name} does not serve the new build's assets ({status})"
            )
            time.sleep(0.05)
    server_a.restart(v2)  # the first container of the new version
    status, body = http_get(server_a.base + "/a")
    assert status == 200 and f'content="{v2}"'.encode() in body
    referenced = sorted({u for u in new if u.encode() in body})
    assert len(referenced) == 3, body
    assert hammer([nginx.base, server_b.base], referenced, rounds=4, seconds=5) == []
    # The ordering rule (docs/deploying.md): a page of v2, built after v1 and rolling in,
    # is ahead of the v1 server, which answers it normally; a v1 page is moved forward by
    # the container pinned to v2.
    for server, page, expected in ((server_b, v2, 200), (server_a, v1, 409)):
        status, _ = http_get(
            server.base + "/b", {"X-Deploysync": "navigate", "X-Deployment-Id": page}
        )
        assert status == expected, (server.name, page)
    assert not [s for s in nginx.statuses() if s[0] >= 500]


def stop_keeping_data(cluster: Cluster, redis_server: Any) -> Path:
    """Stop Redis after a save, so the restarted server reloads the data as a real one
    does; the dump file, to remove once it is back."""
    import redis

    client = redis.Redis.from_url(cluster.store_spec)
    try:
        client.save()
    finally:
        client.close()
    redis_server.stop()
    return Path(redis_server.folder) / "dump.rdb"


UNKNOWN_ID = "feedbeef0000"


def navigate_from(url: str, page_id: str) -> int:
    """The status of a client router's navigation from a page of *page_id*."""
    headers = {"X-Deploysync": "navigate", "X-Deployment-Id": page_id}
    return http_get(url, headers)[0]


def asset_urls(cluster: Cluster, ident: str) -> list[str]:
    deployment = cluster.store.load(ident)
    return [f"/static/{asset.name}" for asset in deployment.assets.values()]


def hammer(bases: list[str], paths: list[str], rounds: int, seconds: float) -> list[str]:
    """GET every path from every base, round after round (bounded); the failures."""
    failures = []
    started = time.monotonic()
    for _ in range(rounds):
        for base in bases:
            for path in paths:
                status, _ = http_get(base + path)
                if status != 200:
                    failures.append(f"{status} {base}{path}")
        if time.monotonic() - started > seconds:
            break
    return failures


def test_redis_outage_keeps_serving_and_recovers_without_restart(
    make_cluster: Callable[[], Cluster],
    redis_server: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Redis stops under load: no 5xx, pages and assets keep coming from memory, the CLI
    refuses with one line; Redis returns: the next activation reaches both servers."""
    cluster = make_cluster()
    v1 = cluster.build("v1", activate=True)
    v2 = cluster.build("v2", activate=False)
    servers = cluster.start(2)
    nginx = cluster.balance()
    pids = [s.proc.pid for s in servers if s.proc is not None]
    paths = ["/", "/a", "/form", *asset_urls(cluster, v1)]
    bases = [nginx.base, *(s.base for s in servers)]
    assert hammer(bases, paths, rounds=1, seconds=5) == []

    dump = stop_keeping_data(cluster, redis_server)
    try:
        failures = hammer(bases, paths, rounds=40, seconds=3)
        assert failures == [], failures[:10]
        for server in servers:
            assert server.current() == v1
        assert cli.main(["activate", v2, "--store", cluster.store_spec]) != 0
        err = capsys.readouterr().err.strip()
        assert err and "\n" not in err, err
        time.sleep(1.2)  # a few of the watchers' polls fail while Redis is away
        assert hammer(bases, paths, rounds=10, seconds=2) == []
        # Cut off, a server cannot tell an id activated since (by servers that can reach
        # Redis) from a pruned one: it never sends such a page back to its own.
        for server in servers:
            assert navigate_from(server.base + "/a", UNKNOWN_ID) == 200, server.name
    finally:
        redis_server.start()
        dump.unlink(missing_ok=True)

    assert cluster.store.current() == v1, "the failed activation changed the store"
    for server in servers:
        deadline = time.monotonic() + 10
        while navigate_from(server.base + "/a", UNKNOWN_ID) != 409:  # reachable: it knows
            assert time.monotonic() < deadline, f"{server.name} never read Redis again"
            time.sleep(0.1)
    cluster.activate(v2)
    for server in servers:
        server.wait_for(v2)
    assert [s.proc.pid for s in servers if s.proc is not None] == pids, "a server restarted"
    status, body = http_get(nginx.base + "/a")
    assert status == 200 and f'content="{v2}"'.encode() in body
    assert hammer(bases, ["/", *asset_urls(cluster, v2)], rounds=2, seconds=5) == []
    assert not [s for s in nginx.statuses() if s[0] >= 500]
    for server in servers:
        log = server.log()
        assert log.count("unreachable") == 1, f"{server.name} should log the outage once:\n{log}"


def test_a_server_restarted_while_redis_is_down_serves_the_last_known_deployment(
    make_cluster: Callable[[], Cluster],
    redis_server: Any,
) -> None:
    """A container replaced (or a worker recycled) during an outage: it serves the
    deployment its predecessor last read, from the state and the copies kept next to the
    local cache, and says so once; Redis returns: it follows the next activation."""
    cluster = make_cluster()
    v1 = cluster.build("v1", activate=True)
    v2 = cluster.build("v2", activate=False)
    (server,) = cluster.start(1)
    paths = ["/", "/a", *asset_urls(cluster, v1)]
    assert hammer([server.base], paths, rounds=1, seconds=5) == []
    state = server.folder / "cache"
    deadline = time.monotonic() + 10
    while not list(state.rglob("state.json")):  # written by the watcher between polls
        assert time.monotonic() < deadline, "no state kept next to the cache"
        time.sleep(0.05)

    dump = stop_keeping_data(cluster, redis_server)
    try:
        server.stop()
        before = len(server.log())  # the old process may have logged the outage too
        server.start(None)
        assert server.current() == v1
        status, body = http_get(server.base + "/a")
        assert status == 200 and f'content="{v1}"'.encode() in body
        assert hammer([server.base], paths, rounds=5, seconds=5) == []
        time.sleep(1.2)  # a few of the watcher's polls fail while Redis is away
    finally:
        redis_server.start()
        dump.unlink(missing_ok=True)

    cluster.activate(v2)
    server.wait_for(v2)
    assert hammer([server.base], ["/", *asset_urls(cluster, v2)], rounds=2, seconds=5) == []
    log = server.log()[before:]
    assert log.count("unreachable") == 1, f"the outage should be logged once:\n{log}"
    assert "serving what was last read" in log and "reachable again" in log, log


def test_prune_while_serving_keeps_pages_of_kept_deployments(
    make_cluster: Callable[[], Cluster],
) -> None:
    """``prune --keep 2`` on the shared store while both servers serve: assets of the two
    kept deployments never fail; the pruned one's disappear from every server."""
    cluster = make_cluster()
    v1 = cluster.build("v1", activate=True)
    v2 = cluster.build("v2", activate=True)
    v3 = cluster.build("v3", activate=True)
    servers = cluster.start(2)
    nginx = cluster.balance()
    bases = [nginx.base, *(s.base for s in servers)]
    old = asset_urls(cluster, v1)
    kept = ["/", "/a", *asset_urls(cluster, v2), *asset_urls(cluster, v3)]
    assert hammer(bases, kept + old, rounds=1, seconds=5) == []

    def prune() -> None:
        time.sleep(0.3)  # while the loop below is already running
        assert cli.main(["prune", "--keep", "2", "--store", cluster.store_spec]) == 0

    with meanwhile(prune) as done:
        failures = hammer(bases, kept, rounds=200, seconds=2)
        assert failures == [], failures[:10]
        assert done.wait(30)
    assert sorted(cluster.store.ids()) == sorted([v2, v3])
    assert hammer(bases, kept, rounds=3, seconds=5) == []
    for server in servers:  # the pruned deployment's assets go, within the deadline
        deadline = time.monotonic() + 15
        while http_get(server.base + old[0])[0] != 404:
            assert time.monotonic() < deadline, f"{server.name} still serves {old[0]}"
            time.sleep(0.1)
        assert server.current() == v3
    assert not [s for s in nginx.statuses() if s[0] >= 500]
    assert os.path.exists(nginx.folder / "access.log")
