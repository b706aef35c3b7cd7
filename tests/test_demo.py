"""``deploysync demo``: the site, its deploy triggers and its command line.

The server tests run ``python -m deploysync.demo`` as a subprocess on a free port
(``--port 0``, the URL is read from its output), as a user would.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from deploysync.demo import PALETTE, DemoApp, DemoSite, main, theme_for, write_source
from deploysync.store import FileStore

URL_RE = re.compile(r"running at (http://127\.0\.0\.1:\d+/)")
META_RE = re.compile(r'<meta name="deployment-id" content="([A-Za-z0-9_-]+)"')
BADGE_RE = re.compile(r'id="version-badge"[^>]*>v(\d+)<')
READY_RE = re.compile(r"^Press Ctrl-C to stop\.$")
START_TIMEOUT = 15.0


class Demo:
    """A running ``python -m deploysync.demo``, its output collected line by line."""

    def __init__(self, *options: str, stdin: int = subprocess.DEVNULL) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "deploysync.demo", "--port", "0", *options],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self, stream: io.TextIOBase) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(
        self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT
    ) -> re.Match[str]:
        for line in self.lines:
            if found := pattern.search(line):
                return found
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if found := pattern.search(line):
                return found
        raise AssertionError(f"no line matching {pattern.pattern!r} in {self.lines}")

    def start(self) -> Demo:
        self.url = self.wait_for_line(URL_RE).group(1)
        self.wait_for_line(READY_RE)
        return self

    def stop(self) -> tuple[int, str]:
        """Ctrl-C; the exit status and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._reader.join(timeout=5)
        while not self._queue.empty():
            if (line := self._queue.get_nowait()) is not None:
                self.lines.append(line)
        assert self.process.stderr is not None and self.process.stdout is not None
        stderr = self.process.stderr.read()
        self.process.stderr.close()
        self.process.stdout.close()
        return self.process.returncode, stderr


@pytest.fixture
def run_demo(tmp_path: Path) -> Iterator[Callable[..., Demo]]:
    started: list[Demo] = []

    def run(*options: str) -> Demo:
        demo = Demo(*options)
        started.append(demo)
        return demo.start()

    yield run
    for demo in started:
        demo.stop()


def fetch(
    url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Message, str]:
    """Status, headers (case-insensitive) and text of a response."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read().decode()


def current_id(demo: Demo) -> str:
    status, headers, body = fetch(demo.url + "_deploysync/version")
    assert status == 200
    assert headers["Cache-Control"] == "no-store"
    ident = json.loads(body)["id"]
    assert isinstance(ident, str)
    return ident


def wait_for_id_change(demo: Demo, old: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (ident := current_id(demo)) != old:
            return ident
        time.sleep(0.1)
    raise AssertionError(f"the current deployment stayed {old} for {timeout} s")


def page(demo: Demo, path: str) -> tuple[str, int, str]:
    """(meta deployment id, version badge number, body) of a page."""
    status, headers, body = fetch(demo.url + path.lstrip("/"))
    assert status == 200, body
    meta = META_RE.search(body)
    badge = BADGE_RE.search(body)
    assert meta and badge, body[:500]
    assert headers["X-Deployment-Id"] == meta.group(1)
    return meta.group(1), int(badge.group(1)), body


# -- through the server ------------------------------------------------------------------


def test_pages_are_served_with_the_deployment_id(
    run_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    demo = run_demo("--store", str(tmp_path / "store"))
    printed = demo.wait_for_line(re.compile(r"v1 deployed: ([A-Za-z0-9_-]+)")).group(1)
    assert current_id(demo) == printed
    for path, needle in (("/", 'id="notes"'), ("/about", "How it works"), ("/guestbook", "<form")):
        meta, badge, body = page(demo, path)
        assert (meta, badge) == (printed, 1)
        assert needle in body
        assert 'data-routing="client"' in body
    css = re.search(r'href="(/static/css/site\.[0-9a-f]{12}\.css)"', page(demo, "/")[2])
    assert css is not None
    status, headers, body = fetch(demo.url + css.group(1).lstrip("/"))
    assert status == 200 and "--accent: " + PALETTE[0].accent in body
    assert "immutable" in headers["Cache-Control"]
    assert fetch(demo.url + "no/such/page")[0] == 404


def test_the_operator_page_deploys_a_new_version(
    run_demo: Callable[..., Demo], tmp_path: Path
) -> None:
    demo = run_demo("--store", str(tmp_path / "store"))
    first, _, home = page(demo, "/")
    old_css = re.search(r'href="(/static/css/[^"]+)"', home)
    assert old_css is not None
    status, _, body = fetch(
        demo.url + "_demo/operator", data=b"", headers={"Accept": "application/json"}
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["version"] == 2 and answer["id"] != first
    assert wait_for_id_change(demo, first) == answer["id"]
    meta, badge, body = page(demo, "/about")
    assert (meta, badge) == (answer["id"], 2)
    assert PALETTE[1].name in body
    assert demo.wait_for_line(re.compile(r"v2 deployed: " + answer["id"]))
    # Pages still open on v1 keep their assets until they navigate.
    assert fetch(demo.url + old_css.group(1).lstrip("/"))[0] == 200
    # The operator form (no JSON asked) answers with the operator page, on v3.
    status, _, body = fetch(demo.url + "_demo/operator", data=b"")
    assert status == 200 and "v3 is live" in body
    assert BADGE_RE.search(body) is not None
    assert BADGE_RE.search(body).group(1) == "3"  # type: ignore[union-attr]


def test_every_deploys_by_itself(run_demo: Callable[..., Demo]) -> None:
    demo = run_demo("--every", "1")
    first = current_id(demo)
    second = wait_for_id_change(demo, first, timeout=6)
    assert wait_for_id_change(demo, second, timeout=6) not in (first, second)
    assert demo.wait_for_line(re.compile(r"v3 deployed: "))


def test_a_stale_form_post_is_not_processed_twice(run_demo: Callable[..., Demo]) -> None:
    demo = run_demo()
    first = current_id(demo)
    fetch(demo.url + "_demo/operator", data=b"", headers={"Accept": "application/json"})
    wait_for_id_change(demo, first)
    # The client's fetch of a form from a v1 page is refused: the app never sees it...
    status, headers, _ = fetch(
        demo.url + "guestbook",
        data=b"name=Ann&message=from+a+stale+page",
        headers={"X-Deploysync": "navigate", "X-Deployment-Id": first},
    )
    assert status == 409 and headers["X-Deploysync"] == "reload"
    assert "from a stale page" not in page(demo, "/guestbook")[2]
    # ... and the browser then submits it natively, once.
    status, _, body = fetch(demo.url + "guestbook", data=b"name=Ann&message=from+a+stale+page")
    assert status == 200 and body.count("from a stale page") == 1


def test_ctrl_c_stops_it_cleanly_and_removes_the_temporary_store() -> None:
    demo = Demo().start()
    store = Path(demo.wait_for_line(re.compile(r"store: (\S+) \(temporary")).group(1))
    assert store.is_dir()
    returncode, stderr = demo.stop()
    assert (returncode, stderr) == (0, "")
    assert "deploysync demo stopped." in demo.lines
    assert not store.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_enter_in_the_terminal_deploys() -> None:
    import pty

    keyboard, terminal = pty.openpty()
    try:
        demo = Demo(stdin=terminal)
        os.close(terminal)
        terminal = -1
        demo.start()
        assert "  - press Enter here," in demo.lines
        first = current_id(demo)
        os.write(keyboard, b"\n")
        demo.wait_for_line(re.compile(r"v2 deployed: \S+ \(Teal, terminal\)"))
        os.write(keyboard, b"\n")
        demo.wait_for_line(re.compile(r"v3 deployed: "))
        assert wait_for_id_change(demo, first) != first
        assert demo.stop() == (0, "")
    finally:
        os.close(keyboard)
        if terminal >= 0:
            os.close(terminal)


def test_without_a_terminal_it_does_not_wait_for_keys(run_demo: Callable[..., Demo]) -> None:
    demo = run_demo()
    assert not any("press Enter" in line for line in demo.lines)
    assert any("--every 20" in line for line in demo.lines)


def test_a_busy_port_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "deploysync.demo", "--port", str(port)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
        )
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr


# -- in-process ------------------------------------------------------------------------------


def namespace(**values: Any) -> argparse.Namespace:
    defaults: dict[str, Any] = {"port": 8000, "host": "127.0.0.1", "store": None, "every": None}
    return argparse.Namespace(**{**defaults, **values})


@pytest.mark.parametrize(
    ("values", "status", "message"),
    [
        ({"every": 0}, 2, "invalid --every 0"),
        ({"every": -2.5}, 2, "invalid --every -2.5"),
        ({"port": 70000}, 2, "invalid port 70000"),
        ({"host": "no-such-host.invalid", "port": 0}, 1, "cannot listen on host"),
    ],
)
def test_bad_options_are_one_line_errors(
    values: dict[str, Any], status: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(namespace(**values)) == status
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("deploysync: error: " + message) and err.count("\n") == 1


def test_an_unusable_store_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert main(namespace(port=0, store=str(not_a_folder))) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("deploysync: error: ") and str(not_a_folder) in err
    assert err.count("\n") == 1


def test_each_version_looks_different(tmp_path: Path) -> None:
    contents = []
    for number in (1, 2, len(PALETTE) + 1):
        folder = write_source(tmp_path / f"v{number}", number)
        css = (folder / "css/site.css").read_text()
        js = (folder / "js/app.js").read_text()
        assert theme_for(number).accent in css
        assert f"const DEMO_VERSION = {number};" in js
        contents.append(css)
    assert len(set(contents)) == 3  # the palette wraps around, the versions still differ


def wsgi_call(
    app: DemoApp, method: str, path: str, body: bytes = b"", content_type: str = ""
) -> tuple[str, dict[str, str], str]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": content_type,
        "wsgi.input": io.BytesIO(body),
    }
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer.update(status=status, headers=dict(headers))

    chunks = app(environ, start_response)  # type: ignore[arg-type]
    return answer["status"], answer["headers"], b"".join(chunks).decode()


@pytest.fixture
def app(tmp_path: Path) -> DemoApp:
    site = DemoSite(FileStore(tmp_path / "store"), tmp_path / "src", say=lambda line: None)
    site.deploy("test")
    return DemoApp(site)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"name=Ann&message=caf%C3%A9+%3Cb%3E", "application/x-www-form-urlencoded"),
        (
            b'--XyZ\r\nContent-Disposition: form-data; name="name"\r\n\r\nAnn\r\n'
            b'--XyZ\r\nContent-Disposition: form-data; name="message"\r\n\r\ncaf\xc3\xa9 <b>\r\n'
            b"--XyZ--\r\n",
            "multipart/form-data; boundary=XyZ",
        ),
    ],
    ids=["urlencoded", "multipart"],
)
def test_a_guestbook_post_is_recorded_once(app: DemoApp, body: bytes, content_type: str) -> None:
    status, headers, _ = wsgi_call(app, "POST", "/guestbook", body, content_type)
    assert (status, headers["Location"]) == ("303 See Other", "/guestbook")
    _, _, page_body = wsgi_call(app, "GET", "/guestbook")
    assert page_body.count("café &lt;b&gt;") == 1
    assert "2 messages" in page_body


def test_an_empty_guestbook_message_is_refused(app: DemoApp) -> None:
    status, _, body = wsgi_call(
        app, "POST", "/guestbook", b"name=Ann&message=+", "application/x-www-form-urlencoded"
    )
    assert status.startswith("422")
    assert "Please write a message." in body and 'value="Ann"' in body
    assert "1 message<" in body


def test_methods_and_unknown_paths(app: DemoApp) -> None:
    assert wsgi_call(app, "DELETE", "/")[0].startswith("405")
    assert wsgi_call(app, "GET", "/missing")[0].startswith("404")
    status, _, body = wsgi_call(app, "HEAD", "/about")
    assert status == "200 OK" and body == ""


def test_the_deploysync_demo_command_runs_it(capsys: pytest.CaptureFixture[str]) -> None:
    from deploysync.cli import main as deploysync

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert deploysync(["demo", "--port", str(port)]) != 0
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"deploysync: error: port {port} on 127.0.0.1 is already in use;")
