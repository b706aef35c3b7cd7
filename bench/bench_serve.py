"""Serving throughput on loopback: deploysync against the usual ways of serving assets.

Run: ``python bench/bench_serve.py [--duration 5] [--connections 32] [--threads 2]``.

Each server runs alone with a single worker on 127.0.0.1 and is measured by ``wrk``:

* ASGI (uvicorn, httptools, ``--no-access-log``): deploysync, Starlette ``StaticFiles``,
  ServeStatic ASGI; 1 KB and 200 KB hashed assets.
* WSGI (gunicorn, one sync worker, the default and the setting whitenoise documents):
  deploysync, whitenoise, ServeStatic WSGI; the same assets.
* nginx (one worker, sendfile, access log off): the ceiling.
* a 20 KB HTML page from memory, bare ASGI app vs the same app behind deploysync (the cost
  of the injection and the headers).

Prints requests/s and the ratios against the goals. Every run is bounded by ``--duration``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

WRK = shutil.which("wrk") or "/usr/bin/wrk"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

APPS = textwrap.dedent(
    """
    import os
    from pathlib import Path

    STORE = os.environ["BENCH_STORE"]
    PLAIN = os.environ["BENCH_PLAIN"]
    PAGE = Path(os.environ["BENCH_PAGE"]).read_bytes()
    PAGE_HEADERS = [(b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(PAGE)).encode())]


    async def bare(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": PAGE_HEADERS})
        await send({"type": "http.response.body", "body": PAGE})


    def bare_wsgi(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                  ("Content-Length", str(len(PAGE)))])
        return [PAGE]


    class Wrapper:
        # The least a middleware can do: wrap send. The floor for any HTML middleware.

        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            async def wrapped(message):
                await send(message)

            await self.app(scope, receive, wrapped)


    def make(name):
        if name == "deploysync_asgi":
            from deploysync.asgi import DeploySync
            return DeploySync(bare, store=STORE)
        if name == "starlette":
            from starlette.applications import Starlette
            from starlette.routing import Mount
            from starlette.staticfiles import StaticFiles
            return Starlette(routes=[Mount("/static", StaticFiles(directory=PLAIN))])
        if name == "servestatic_asgi":
            from servestatic import ServeStaticASGI
            return ServeStaticASGI(bare, root=PLAIN, prefix="static/")
        if name == "bare_asgi":
            return bare
        if name == "wrapped_asgi":
            return Wrapper(bare)
        if name == "deploysync_wsgi":
            from deploysync.wsgi import DeploySync
            return DeploySync(bare_wsgi, store=STORE)
        if name == "whitenoise":
            from whitenoise import WhiteNoise
            return WhiteNoise(bare_wsgi, root=PLAIN, prefix="static/")
        if name == "servestatic_wsgi":
            from servestatic import ServeStatic
            return ServeStatic(bare_wsgi, root=PLAIN, prefix="static/")
        raise LookupError(name)


    app = make(os.environ["BENCH_APP"])
    """
)


@dataclass
class Result:
    label: str
    rps: float
    errors: str = ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def fetch(url: str) -> tuple[int, int]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, len(response.read())


def wrk(url: str, args: argparse.Namespace) -> tuple[float, str]:
    done = subprocess.run(
        [WRK, f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", url],
        capture_output=True,
        text=True,
        timeout=args.duration + 30,
        check=False,
    )
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    errors = " ".join(
        line.strip()
        for line in done.stdout.splitlines()
        if "Non-2xx" in line or "Socket errors" in line
    )
    return (float(match.group(1)) if match else 0.0), errors


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def run_server(
    command: list[str], env: dict[str, str], cwd: Path, port: int
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port, proc)
    return proc


def section(
    title: str,
    servers: dict[str, tuple[list[str], dict[str, str], int]],
    paths: dict[str, tuple[str, int]],
    cwd: Path,
    args: argparse.Namespace,
    results: dict[str, Result],
) -> None:
    """Start the servers of a section (idle ones cost nothing), check every path answers
    the expected size, then load them in interleaved rounds and keep each one's best
    run: on a shared machine, interference only ever lowers a figure."""
    print(title, flush=True)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (command, env, port) in servers.items():
            procs[name] = run_server(command, env, cwd, port)
            for path, size in paths.values():
                status, length = fetch(f"http://127.0.0.1:{port}{path}")
                if status != 200 or length < size:
                    raise RuntimeError(f"{name} {path}: {status}, {length} bytes (want {size})")
        for _ in range(args.rounds):
            for key, (path, _size) in paths.items():
                for name, (_command, _env, port) in servers.items():
                    rps, errors = wrk(f"http://127.0.0.1:{port}{path}", args)
                    label = f"{name} {key}"
                    best = results.get(label)
                    if best is None or rps > best.rps:
                        results[label] = Result(label, rps, errors)
        for name in servers:
            for key in paths:
                found = results[f"{name} {key}"]
                print(f"  {name:<22} {key:<6} {found.rps:>10,.0f} req/s {found.errors}")
    finally:
        for proc in procs.values():
            stop(proc)


def nginx(plain: Path, work: Path) -> tuple[list[str], int]:
    port = free_port()
    conf = work / "nginx.conf"
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        textwrap.dedent(
            f"""
            {user}
            worker_processes 1;
            daemon off;
            pid {work}/nginx.pid;
            error_log {work}/nginx-error.log warn;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                sendfile on;
                tcp_nopush on;
                keepalive_requests 100000;
                client_body_temp_path {work}/nginx-body;
                proxy_temp_path {work}/nginx-proxy;
                fastcgi_temp_path {work}/nginx-fastcgi;
                uwsgi_temp_path {work}/nginx-uwsgi;
                scgi_temp_path {work}/nginx-scgi;
                types {{ text/css css; application/octet-stream bin; }}
                server {{
                    listen 127.0.0.1:{port};
                    location /static/ {{
                        alias {plain}/;
                        add_header Cache-Control "public, max-age=31536000, immutable";
                    }}
                }}
            }}
            """
        )
    )
    return [NGINX, "-c", str(conf), "-p", str(work)], port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per server")
    parser.add_argument(
        "--wsgi-worker",
        choices=("gthread", "sync"),
        default="gthread",
        help="gunicorn worker class for every WSGI server (gthread: keep-alive, 2 threads)",
    )
    parser.add_argument(
        "--only", default="asgi,wsgi,nginx,html", help="comma-separated sections to run"
    )
    args = parser.parse_args(argv)
    sections = set(args.only.split(","))

    from deploysync.build import build

    with tempfile.TemporaryDirectory(prefix="deploysync-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        src = work / "src"
        (src / "css").mkdir(parents=True)
        # Text-like content (compressible, as real CSS is); wrk asks for identity.
        small = (b"body { margin: 0; color: #333 }\n" * 40)[:1024]
        large = b"".join(
            b".c%05d { padding: %dpx; background: url(i%05d.png) }\n" % (i, i % 97, i)
            for i in range(5000)
        )[: 200 * 1024]
        (src / "css" / "small.css").write_bytes(small)
        (src / "css" / "large.css").write_bytes(large)
        store = work / "store"
        deployment = build(src, store, activate=True).deployment
        plain = work / "plain"
        paths: dict[str, tuple[str, int]] = {}
        for logical, key, data in (
            ("css/small.css", "1KB", small),
            ("css/large.css", "200KB", large),
        ):
            url = deployment.url(logical)
            target = plain / url.removeprefix("/static/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            paths[key] = (url, len(data))
        page = work / "page.html"
        body = b"".join(
            b"<p>paragraph %05d of the page, lorem ipsum dolor.</p>\n" % i for i in range(400)
        )
        page.write_bytes(
            b"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Bench</title>"
            b'<link rel="stylesheet" href="'
            + paths["1KB"][0].encode()
            + b'"></head><body>'
            + body[: 20 * 1024 - 200]
            + b"</body></html>"
        )
        (work / "bench_apps.py").write_text(APPS)
        env = {
            **os.environ,
            "BENCH_STORE": str(store),
            "BENCH_PLAIN": str(plain),
            "BENCH_PAGE": str(page),
            "PYTHONPATH": str(work),
        }
        env.pop("DEPLOYSYNC_DEPLOYMENT", None)
        print(
            f"load average {os.getloadavg()[0]:.1f}; "
            f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
            f"{os.cpu_count()} CPUs, page {page.stat().st_size} bytes, id {deployment.id}"
        )
        results: dict[str, Result] = {}

        def uvicorn(app: str) -> tuple[list[str], int]:
            port = free_port()
            return [
                sys.executable, "-m", "uvicorn", "bench_apps:app", "--host", "127.0.0.1",
                "--port", str(port), "--http", "httptools", "--loop", "uvloop",
                "--no-access-log", "--log-level", "warning", "--lifespan", "off",
            ], port  # fmt: skip

        def gunicorn(app: str) -> tuple[list[str], int]:
            port = free_port()
            worker = (
                ["--worker-class", "gthread", "--threads", "2", "--keep-alive", "5"]
                if args.wsgi_worker == "gthread"
                else ["--worker-class", "sync"]
            )
            return [
                sys.executable, "-m", "gunicorn", "bench_apps:app", "--bind",
                f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning", *worker,
            ], port  # fmt: skip

        def with_app(name: str) -> dict[str, str]:
            return {**env, "BENCH_APP": name}

        if "asgi" in sections:
            servers = {}
            for name in ("deploysync_asgi", "starlette", "servestatic_asgi"):
                command, port = uvicorn(name)
                servers[name] = (command, with_app(name), port)
            section(
                "ASGI (uvicorn + httptools + uvloop, 1 worker)", servers, paths, work, args, results
            )
        if "wsgi" in sections:
            servers = {}
            for name in ("deploysync_wsgi", "whitenoise", "servestatic_wsgi"):
                command, port = gunicorn(name)
                servers[name] = (command, with_app(name), port)
            title = f"WSGI (gunicorn, 1 worker, {args.wsgi_worker})"
            section(title, servers, paths, work, args, results)
        if "nginx" in sections:
            command, port = nginx(plain, work)
            servers = {"nginx": (command, dict(os.environ), port)}
            section("nginx (1 worker, sendfile)", servers, paths, work, args, results)
        if "html" in sections:
            servers = {}
            for name in ("bare_asgi", "wrapped_asgi", "deploysync_asgi"):
                command, port = uvicorn(name)
                servers[name] = (command, with_app(name), port)
            page_path = {"page": ("/", page.stat().st_size)}
            title = "20 KB HTML page (uvicorn + httptools + uvloop, 1 worker)"
            section(title, servers, page_path, work, args, results)

    def rps(key: str) -> float:
        found = results.get(key)
        return found.rps if found else 0.0

    def ratio(a: str, b: str) -> float:
        return rps(a) / rps(b) if rps(b) else 0.0

    goals = [
        ("ASGI 1KB vs Starlette StaticFiles", ratio("deploysync_asgi 1KB", "starlette 1KB"), 10.0),
        (
            "ASGI 200KB vs Starlette StaticFiles",
            ratio("deploysync_asgi 200KB", "starlette 200KB"),
            3.0,
        ),
        ("WSGI 1KB vs whitenoise", ratio("deploysync_wsgi 1KB", "whitenoise 1KB"), 1.0),
        ("WSGI 200KB vs whitenoise", ratio("deploysync_wsgi 200KB", "whitenoise 200KB"), 1.0),
        ("ASGI 1KB vs nginx", ratio("deploysync_asgi 1KB", "nginx 1KB"), 0.3),
        ("HTML page vs bare app", ratio("deploysync_asgi page", "bare_asgi page"), 0.95),
        ("(floor: send-wrapping only vs bare)", ratio("wrapped_asgi page", "bare_asgi page"), 0.95),
    ]
    print("\nGoals")
    failed = 0
    for label, value, goal in goals:
        if not value:
            continue
        ok = value >= goal
        failed += not ok
        print(f"  {label:<38} {value:6.2f}x  goal >= {goal:.2f}x  {'met' if ok else 'MISSED'}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
