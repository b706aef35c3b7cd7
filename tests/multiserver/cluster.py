"""Several app servers behind nginx on 127.0.0.1: the machinery of the multi-server tests.

No pytest in here: ``bench/bench_multiserver.py`` starts the same servers.

- :class:`AppServer`: ``msapp`` under uvicorn in a subprocess; ``restart(pin=...)`` stops
  it and starts it again on the same port, as a container is replaced;
- :class:`Nginx`: nginx in the foreground, round-robin over the app servers, with an
  access log of every status it answered and the upstream that produced it;
- :class:`Cluster`: a shared store, its deployments, the servers and the balancer.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from msapp import ASSETS

from deploysync.build import build
from deploysync.store import Store, open_store
from support import free_port, http_get

HERE = Path(__file__).parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
DEADLINE = 15.0  # seconds any wait for a server may take


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(DEADLINE)


class AppServer:
    """One app server: ``msapp`` behind the middleware, under uvicorn, in a subprocess."""

    def __init__(
        self,
        name: str,
        store: str,
        folder: Path,
        *,
        pin: str | None = None,
        poll: float = 0.5,
        posts: Path | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.folder = folder
        self.poll = poll
        self.posts = posts
        self.port = free_port()
        self.pin = pin
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.start(pin)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, pin: str | None) -> None:
        self.pin = pin
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("DEPLOYSYNC_DEPLOYMENT", "DEPLOYSYNC_STORE")
        }
        env.update(
            MS_STORE=self.store,
            MS_CACHE=str(self.folder / "cache"),
            MS_NAME=self.name,
            MS_POLL=str(self.poll),
            PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]),
        )
        if self.posts is not None:
            env["MS_POSTS"] = str(self.posts)
        if pin is not None:
            env["DEPLOYSYNC_DEPLOYMENT"] = pin
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the child keeps it)
        with log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "msapp:make_app",
                    "--factory",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--http",
                    "httptools",
                    "--lifespan",
                    "off",
                    "--ws",
                    "none",
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                cwd=HERE,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + DEADLINE
        while True:
            with contextlib.suppress(OSError):
                if http_get(self.base + "/_deploysync/version")[0] == 200:
                    return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop(proc)

    def restart(self, pin: str | None) -> None:
        """Replace the process (a container rolled over), on the same port."""
        self.stop()
        self.start(pin)

    def log(self) -> str:
        try:
            return (self.folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""

    def version(self) -> dict[str, object]:
        status, body = http_get(self.base + "/_deploysync/version")
        if status != 200:
            raise RuntimeError(f"{self.name}: /_deploysync/version answered {status}")
        data: dict[str, object] = json.loads(body)
        return data

    def current(self) -> str | None:
        ident = self.version().get("id")
        return ident if isinstance(ident, str) else None

    def wait_for(self, ident: str, deadline: float = DEADLINE) -> float:
        """Seconds until this server announces *ident*; raises after *deadline*."""
        started = time.monotonic()
        while (seen := self.current()) != ident:
            if time.monotonic() - started > deadline:
                raise AssertionError(f"{self.name} still announces {seen}, not {ident}")
            time.sleep(0.02)
        return time.monotonic() - started


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 512; }}
http {{
    log_format ds '$status $request_method $request_uri $upstream_addr $upstream_status';
    access_log {folder}/access.log ds;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    upstream app {{
        # max_fails=0: a server being replaced is skipped per request (connection
        # refused, retried on the next one), never taken out of the rotation for long.
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://app;
            proxy_set_header Host $http_host;
            # A refused connection sent nothing upstream, so nginx retries even a POST
            # on the next server; a request that reached a server is never repeated.
            proxy_next_upstream error timeout;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground, round-robin over *ports*, on a free loopback port."""

    def __init__(self, folder: Path, ports: Sequence[int]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=0;" for p in ports)
        conf = folder / "nginx.conf"
        conf.write_text(NGINX_CONF.format(folder=folder, port=self.port, servers=servers))
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + DEADLINE
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"nginx did not start:\n{self.errors()}")
            time.sleep(0.02)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop(self.proc)

    def errors(self) -> str:
        try:
            return (self.folder / "error.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def statuses(self) -> list[tuple[int, str, str]]:
        """(status, method, URI) of every answer nginx gave so far."""
        try:
            lines = (self.folder / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []
        found = []
        for line in lines:
            status, method, uri = line.split(" ", 3)[:3]
            found.append((int(status), method, uri))
        return found


class Cluster:
    """A shared store with its deployments, app servers, and nginx in front of them."""

    def __init__(self, store: str, folder: Path) -> None:
        self.store_spec = store
        self.folder = folder
        self.versions: dict[str, str] = {}
        self.servers: list[AppServer] = []
        self.nginx: Nginx | None = None
        self.posts = folder / "posts.txt"
        self._store: Store | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.store_spec)
        return self._store

    def build(self, version: str, *, activate: bool) -> str:
        """Build the app's assets at *version* into the shared store; the new id."""
        src = self.folder / f"src-{version}"
        for name, text in ASSETS.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text.replace("{v}", version))
        result = build(src, self.store, activate=activate, compress=False, cache=False)
        self.versions[version] = result.deployment.id
        return result.deployment.id

    def activate(self, ident: str) -> None:
        self.store.activate(ident)

    def start(
        self, count: int = 2, *, pin: str | None = None, poll: float = 0.5
    ) -> list[AppServer]:
        for _ in range(count):
            name = "ABCDEFGH"[len(self.servers)]
            server = AppServer(
                name, self.store_spec, self.folder / name, pin=pin, poll=poll, posts=self.posts
            )
            self.servers.append(server)
        return self.servers

    def balance(self) -> Nginx:
        self.nginx = Nginx(self.folder / "nginx", [s.port for s in self.servers])
        return self.nginx

    @property
    def base(self) -> str:
        assert self.nginx is not None, "call balance() first"
        return self.nginx.base

    def processed_posts(self) -> list[str]:
        try:
            return self.posts.read_text().splitlines()
        except FileNotFoundError:
            return []

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
        for server in self.servers:
            server.stop()
        if self._store is not None:
            self._store.close()


@contextlib.contextmanager
def cluster(store: str, folder: Path) -> Iterator[Cluster]:
    made = Cluster(store, folder)
    try:
        yield made
    finally:
        made.close()
