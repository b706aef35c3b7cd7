"""Fixtures shared by the whole suite: stores, a real redis-server, a small frontend."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploysync.store import FileStore, Store

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _require_redis() -> None:
    """Skip without redis-server or redis-py, except in CI, where that is a failure."""
    missing = []
    if not os.path.exists(REDIS_SERVER):
        missing.append("redis-server (apt-get install redis-server)")
    try:
        import redis  # noqa: F401
    except ImportError:
        missing.append("redis-py (pip install 'deploysync[redis]')")
    if missing:
        reason = "needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must not skip the Redis tests", pytrace=False)
        pytest.skip(reason)


class RedisServer:
    """A redis-server on a free loopback port, in a temporary folder, without persistence.

    ``stop()`` and ``start()`` keep the port, for outage tests.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self._proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
                "--logfile",
                str(self.folder / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def pytest_configure(config: pytest.Config) -> None:
    # Builds keep a cache of file digests and scan results; the tests (and every server
    # or CLI process they start, which inherit the environment) keep theirs apart from
    # the user's.
    if "DEPLOYSYNC_CACHE_DIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="deploysync-test-cache-")
        os.environ["DEPLOYSYNC_CACHE_DIR"] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the session; its URL is ``redis_server.url``."""
    _require_redis()
    with tempfile.TemporaryDirectory(prefix="deploysync-redis-") as folder:
        server = RedisServer(Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an empty database (flushed before each test)."""
    import redis

    redis_server.start()  # a previous outage test may have left it stopped
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def fs_store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture(params=["fs", pytest.param("redis", marks=pytest.mark.redis)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The same test against each backend."""
    store: Store
    if request.param == "fs":
        store = FileStore(tmp_path / "store")
    else:
        from deploysync.store.redis import RedisStore

        url = request.getfixturevalue("redis_url")
        store = RedisStore(url, cache_dir=tmp_path / "cache")
    try:
        yield store
    finally:
        store.close()


# A 1x1 transparent PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


@pytest.fixture
def site_src(tmp_path: Path) -> Callable[..., Path]:
    """``site_src("v1")`` writes a small frontend folder and returns it.

    Versions differ only in ``js/app.js`` and ``css/app.css``; the image, the base
    stylesheet and the shared modules keep their bytes (shared blobs across versions).
    """

    def make(version: str = "v1", root: Path | None = None) -> Path:
        src = root if root is not None else tmp_path / f"src-{version}"
        files = {
            "index.html": '<!doctype html><link rel="stylesheet" href="css/app.css">'
            '<script type="module" src="js/app.js"></script>\n',
            "css/base.css": "body { margin: 0; font-family: sans-serif; }\n",
            "css/app.css": '@import "./base.css";\n'
            f".logo {{ background: url(../img/logo.png) no-repeat; }} /* {version} */\n",
            "js/util.js": "export const sum = (a, b) => a + b;\n",
            "js/lazy.js": 'export default function lazy() { return "lazy"; }\n',
            "js/app.js": 'import { sum } from "./util.js";\n'
            f'export const VERSION = "{version}";\n'
            'const logo = new URL("../img/logo.png", import.meta.url);\n'
            'document.addEventListener("click", () => import("./lazy.js"));\n'
            "console.log(sum(1, 2), logo.href);\n",
        }
        for name, text in files.items():
            path = src / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (src / "img").mkdir(exist_ok=True)
        (src / "img" / "logo.png").write_bytes(PNG)
        return src

    return make
