"""Benchmark: the shared Redis store against the filesystem store.

1. Propagation: the time from ``activate`` until every reader announces the new id
   (median and max over repeated activations). A reader here is a thread that watches
   the store the way a server process does: ``probe()``, ``wait_for_change(poll)``,
   ``probe()`` again, reload the current id when the token changed. The filesystem store
   polls (0.5 s); Redis wakes readers through pub/sub.
2. Serving: throughput of ``blob_path()`` + reading the file, for a set of realistic
   asset sizes; the Redis store serves from its local content-addressed cache, so the
   ratio to the filesystem store should be ~1.0. The first materialisation of the cache
   (a cold server) is reported separately.

Run: ``python bench/bench_redis.py`` (starts its own redis-server on 127.0.0.1, or pass
``--redis-url``). ``--json`` prints the numbers machine-readably.

Extending to real servers: :func:`propagation` only needs *observers*, callables that
return the id a server currently announces. Replace :func:`watch_in_process` with
observers that GET ``/_deploysync/version`` from each app server and the measurement is
the same.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from deploysync.build import build
from deploysync.store import FileStore, Store

#: Returns the deployment id one server currently announces.
Observer = Callable[[], "str | None"]
#: Opens a new store object on the backend under test (one per simulated server).
StoreFactory = Callable[[], Store]

FS_POLL = 0.5


# -- a redis-server of our own, on loopback -----------------------------------------------
@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as folder:
        args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", folder, "--logfile", f"{folder}/redis.log"]
        with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            try:
                for _ in range(500):
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                            s.sendall(b"PING\r\n")
                            if s.recv(16).startswith(b"+PONG"):
                                break
                    except OSError:
                        time.sleep(0.02)
                else:
                    raise SystemExit("redis-server did not start")
                yield f"redis://127.0.0.1:{port}/0"
            finally:
                proc.terminate()
                proc.wait(timeout=10)


# -- sources --------------------------------------------------------------------------------
def write_site(root: Path, version: str, files: int = 40) -> Path:
    """A small site; every version changes the entry module and one stylesheet."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        (root / f"mod{index}.js").write_text(f"export const m{index} = {index};\n" * 20)
    (root / "app.js").write_text(f'import "./mod0.js";\nexport const VERSION = "{version}";\n')
    (root / "app.css").write_text(f"body {{ --version: '{version}'; }}\n")
    return root


def write_assets(root: Path, total_mb: int, seed: int = 7) -> Path:
    """Incompressible files with the size mix of a real frontend (2 KB to 1 MB)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    sizes = [2_048, 8_192, 32_768, 131_072, 524_288, 1_048_576]
    written = index = 0
    while written < total_mb * 1_048_576:
        size = rng.choice(sizes)
        (root / f"asset{index}.bin").write_bytes(rng.randbytes(size))
        written += size
        index += 1
    return root


# -- propagation ----------------------------------------------------------------------------
def watch_in_process(
    factory: StoreFactory, poll: float, stop: threading.Event
) -> tuple[Observer, threading.Thread]:
    """A reader thread that follows ``current`` like a server; returns its observer."""
    store = factory()
    announced: list[str | None] = [store.current()]

    def run() -> None:
        try:
            token = store.probe()
            while not stop.is_set():
                store.wait_for_change(poll)
                new = store.probe()
                if new != token:
                    token = new
                    announced[0] = store.current()
        finally:
            store.close()

    thread = threading.Thread(target=run, name="bench-reader", daemon=True)
    thread.start()
    return (lambda: announced[0]), thread


def propagation(
    writer: Store,
    ids: tuple[str, str],
    observers: list[Observer],
    activations: int,
    timeout: float = 10.0,
) -> list[float]:
    """Seconds from each ``activate`` until every observer announces the new id."""
    rng = random.Random(1)
    delays = []
    for round_ in range(activations):
        target = ids[round_ % 2]
        # A random phase, so polling readers are not caught at the same point each time.
        time.sleep(rng.uniform(0.05, 0.3))
        started = time.perf_counter()
        writer.activate(target)
        deadline = started + timeout
        while not all(observe() == target for observe in observers):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"readers did not see {target} within {timeout} s")
            time.sleep(0.001)
        delays.append(time.perf_counter() - started)
    return delays


# -- serving --------------------------------------------------------------------------------
def serve_all(store: Store, digests: list[str]) -> int:
    """What a server does per asset request, minus HTTP: find the file, read it."""
    served = 0
    for digest in digests:
        with open(store.blob_path(digest), "rb") as fh:
            served += len(fh.read())
    return served


def serving(servers: dict[str, tuple[Store, list[str]]], rounds: int) -> dict[str, float]:
    """Best of *rounds* per backend, in MB/s. Rounds alternate between the backends, so
    a neighbour's load on a shared machine hits both alike."""
    best = dict.fromkeys(servers, float("inf"))
    sizes = dict.fromkeys(servers, 0)
    for _ in range(rounds):
        for name, (store, digests) in servers.items():
            started = time.perf_counter()
            sizes[name] = serve_all(store, digests)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: sizes[name] / 1_048_576 / best[name] for name in servers}


@dataclass
class Result:
    backend: str
    readers: int
    activations: int
    median_s: float
    max_s: float
    serve_mb_s: float = 0.0
    cold_cache_mb_s: float | None = None


def run_backend(
    name: str,
    factory: StoreFactory,
    work: Path,
    poll: float,
    readers: int,
    activations: int,
) -> tuple[Result, Store, list[str]]:
    """Propagation on this backend; then a fresh server store with a warm blob cache
    (the caller closes it) and the digests to serve."""
    writer = factory()
    stop = threading.Event()
    try:
        v1 = build(write_site(work / f"{name}-v1", "v1"), writer, activate=True).deployment.id
        v2 = build(write_site(work / f"{name}-v2", "v2"), writer).deployment.id
        watchers = [watch_in_process(factory, poll, stop) for _ in range(readers)]
        time.sleep(0.2)  # readers subscribed
        delays = propagation(writer, (v2, v1), [w[0] for w in watchers], activations)
        stop.set()
        writer.activate(v1)  # wakes the pub/sub readers, so they see the stop at once
        for _, thread in watchers:
            thread.join(timeout=poll + 5)
        result = Result(name, readers, activations, statistics.median(delays), max(delays))

        digests = sorted(build(work / "assets", writer).deployment.digests())
        server = factory()  # a fresh server process: a remote store's cache starts empty
        started = time.perf_counter()
        size = serve_all(server, digests)
        if name != "fs":
            result.cold_cache_mb_s = size / 1_048_576 / (time.perf_counter() - started)
        return result, server, digests
    finally:
        stop.set()
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--redis-url", help="use this Redis (its db is flushed!) instead of starting one"
    )
    parser.add_argument("--activations", type=int, default=30)
    parser.add_argument("--readers", type=int, default=4, help="simulated servers")
    parser.add_argument("--poll", type=float, default=FS_POLL, help="filesystem poll interval")
    parser.add_argument("--assets-mb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from deploysync.store.redis import RedisStore

    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(redis_server())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-")))
        write_assets(work / "assets", args.assets_mb)
        cache_root = work / "caches"

        def fs_factory() -> Store:
            return FileStore(work / "fs-store")

        def redis_factory() -> Store:
            # Each simulated server has its own local cache, as separate machines would.
            cache = cache_root / hashlib.sha256(os.urandom(8)).hexdigest()[:8]
            return RedisStore(url, cache_dir=cache)

        if args.redis_url:
            flusher = RedisStore(url)
            flusher._redis.flushdb()
            flusher.close()
        options = (args.readers, args.activations)
        fs, fs_server, fs_digests = run_backend("fs", fs_factory, work, args.poll, *options)
        # Redis readers are woken by pub/sub; their poll is only the reconciliation.
        redis, redis_serving, redis_digests = run_backend(
            "redis", redis_factory, work, 30.0, *options
        )
        try:
            rates = serving(
                {"fs": (fs_server, fs_digests), "redis": (redis_serving, redis_digests)},
                args.rounds,
            )
        finally:
            fs_server.close()
            redis_serving.close()
        fs.serve_mb_s, redis.serve_mb_s = rates["fs"], rates["redis"]
        results = [fs, redis]

    ratio = redis.serve_mb_s / fs.serve_mb_s
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "serve_ratio": ratio}, indent=1))
        return 0
    print(
        f"activate -> all {args.readers} readers announce it,"
        f" over {args.activations} activations"
    )
    for r in results:
        how = f"poll {args.poll} s" if r.backend == "fs" else "pub/sub"
        print(f"  {r.backend:5} ({how:11}) median {r.median_s * 1000:7.1f} ms"
              f"   max {r.max_s * 1000:7.1f} ms")
    print(f"serving ({args.assets_mb} MB of assets, blob_path + read, best of {args.rounds})")
    print(f"  fs     {fs.serve_mb_s:8.0f} MB/s")
    print(f"  redis  {redis.serve_mb_s:8.0f} MB/s  (local cache; cold cache "
          f"{redis.cold_cache_mb_s or 0:.0f} MB/s)")
    print(f"  ratio redis/fs {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
