"""Benchmark: real app servers over a shared store, Redis against the filesystem.

1. Propagation: the time from ``activate`` (a store call, as ``deploysync activate``
   makes it) until EVERY app server announces the new id on its own
   ``/_deploysync/version`` (asked directly, not through a balancer). Repeated
   activations alternate between two deployments at a random phase; median and max.
   The Redis store wakes servers through pub/sub; the filesystem store is polled (0.5 s).
2. Asset throughput: ``wrk`` against one uvicorn worker serving a 1 KB and a 200 KB
   hashed asset from a Redis store and from a filesystem store (ratio, expected ~1.0:
   both serve from memory or a local file once loaded).

The app servers are the ones of the multi-server tests (``tests/multiserver``: msapp
under uvicorn with httptools, one worker each, on 127.0.0.1).

Run: ``python bench/bench_multiserver.py`` (starts its own redis-server);
``--activations 20 --servers 2 --duration 3 --rounds 3``; ``--json`` for machine output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "multiserver"))
sys.path.insert(0, str(ROOT / "tests"))

from bench_redis import redis_server  # noqa: E402
from cluster import WRK, AppServer, http_get  # noqa: E402

from deploysync.build import build  # noqa: E402
from deploysync.store import Store, open_store  # noqa: E402

SIZES = {"1 KB": 1024, "200 KB": 200 * 1024}


@dataclass
class Propagation:
    backend: str
    activations: int
    median_ms: float
    max_ms: float


@dataclass
class Throughput:
    backend: str
    size: str
    requests_per_s: float


def make_sources(folder: Path) -> tuple[Path, Path]:
    """Two versions of a small frontend; v1 also carries the benchmark's assets."""
    rng = random.Random(42)
    sources = []
    for version in ("v1", "v2"):
        src = folder / f"src-{version}"
        src.mkdir(parents=True)
        (src / "app.css").write_text(f"body {{ margin: 0 }} /* {version} */\n")
        (src / "app.js").write_text(f"window.__app = '{version}';\n")
        (src / "logo.svg").write_text(
            f"<svg xmlns='http://www.w3.org/2000/svg'><!-- {version} --></svg>\n"
        )
        for label, size in SIZES.items():
            # random bytes: nothing to gain from compression, identity is served
            (src / f"asset-{label.replace(' ', '')}.bin").write_bytes(rng.randbytes(size))
        sources.append(src)
    return sources[0], sources[1]


def deploy_two(store: Store, sources: tuple[Path, Path]) -> tuple[str, str]:
    one = build(sources[0], store, activate=True, compress=False, cache=False).deployment.id
    two = build(sources[1], store, activate=False, compress=False, cache=False).deployment.id
    return one, two


@contextlib.contextmanager
def servers(spec: str, folder: Path, count: int, poll: float) -> Iterator[list[AppServer]]:
    started: list[AppServer] = []
    try:
        for n in range(count):
            started.append(AppServer(f"{folder.name}-{n}", spec, folder / str(n), poll=poll))
        for server in started:
            http_get(server.base + "/")  # starts the store watcher
        yield started
    finally:
        for server in started:
            server.stop()


def propagation(
    backend: str, store: Store, ids: tuple[str, str], group: list[AppServer], rounds: int
) -> Propagation:
    """Activate the two ids alternately; time until every server announces each."""
    rng = random.Random(7)
    times = []
    for n in range(rounds):
        target = ids[(n + 1) % 2]
        time.sleep(rng.uniform(0.05, 0.6))  # a random phase against the poll interval
        started = time.perf_counter()
        store.activate(target)
        waiting = list(group)
        deadline = started + 10
        while waiting:
            waiting = [s for s in waiting if s.current() != target]
            if time.perf_counter() > deadline:
                raise SystemExit(f"{backend}: {waiting[0].name} never announced {target}")
        times.append((time.perf_counter() - started) * 1000)
    return Propagation(backend, rounds, statistics.median(times), max(times))


def wrk(url: str, duration: float) -> float:
    out = subprocess.run(
        [WRK, "-t2", "-c32", f"-d{duration:g}s", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None or "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk against {url} failed:\n{out}")
    return float(found.group(1))


def throughput(
    stores: dict[str, tuple[Store, AppServer]], duration: float, rounds: int
) -> list[Throughput]:
    """Best of *rounds* interleaved wrk runs (interference only ever lowers a figure)."""
    best: dict[tuple[str, str], float] = {}
    urls = {}
    for backend, (store, server) in stores.items():
        deployment = store.load(store.current() or "")
        for label, size in SIZES.items():
            name = deployment.assets[f"asset-{label.replace(' ', '')}.bin"].name
            url = f"{server.base}/static/{name}"
            status, body = http_get(url)
            if status != 200 or len(body) != size:
                raise SystemExit(f"{url}: {status}, {len(body)} bytes instead of {size}")
            urls[backend, label] = url
    order = list(urls)
    for n in range(rounds):
        # the backends take turns going first: no one always runs on a warmer machine
        for key in order if n % 2 == 0 else order[::-1]:
            best[key] = max(best.get(key, 0.0), wrk(urls[key], duration))
    return [Throughput(b, s, rps) for (b, s), rps in best.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--activations", type=int, default=20)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="wrk runs per figure (best kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not os.path.exists(WRK):
        raise SystemExit(f"wrk is not installed at {WRK} (apt-get install wrk)")

    with tempfile.TemporaryDirectory(prefix="bench-multi-") as tmp, redis_server() as url:
        folder = Path(tmp)
        sources = make_sources(folder / "src")
        specs = {"redis": url, "fs": str(folder / "fs-store")}
        stores = {backend: open_store(spec) for backend, spec in specs.items()}
        try:
            ids = {backend: deploy_two(store, sources) for backend, store in stores.items()}
            moves: list[Propagation] = []
            rates: list[Throughput] = []
            with contextlib.ExitStack() as stack:
                groups = {
                    backend: stack.enter_context(
                        servers(specs[backend], folder / backend, args.servers, poll=0.5)
                    )
                    for backend in specs
                }
                for backend in specs:
                    moves.append(
                        propagation(
                            backend,
                            stores[backend],
                            ids[backend],
                            groups[backend],
                            args.activations,
                        )
                    )
                # one server per backend for throughput; the others idle
                first = {b: (stores[b], groups[b][0]) for b in specs}
                rates = throughput(first, args.duration, args.rounds)
        finally:
            for store in stores.values():
                store.close()

    if args.json:
        print(
            json.dumps(
                {
                    "propagation": [asdict(m) for m in moves],
                    "throughput": [asdict(r) for r in rates],
                },
                indent=2,
            )
        )
        return 0
    print(
        f"Propagation: activate -> all {args.servers} servers announce the new id"
        f" ({args.activations} activations, alternating two ids)"
    )
    for m in moves:
        how = "pub/sub" if m.backend == "redis" else "0.5 s poll"
        print(f"  {m.backend:6} ({how:10})  median {m.median_ms:7.1f} ms   max {m.max_ms:7.1f} ms")
    print(
        f"Asset throughput, one uvicorn worker, wrk -t2 -c32 -d{args.duration:g}s,"
        f" best of {args.rounds}"
    )
    by = {(r.backend, r.size): r.requests_per_s for r in rates}
    for label in SIZES:
        fs, redis = by["fs", label], by["redis", label]
        print(
            f"  {label:7} fs {fs:9,.0f} req/s   redis {redis:9,.0f} req/s"
            f"   ratio redis/fs {redis / fs:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
