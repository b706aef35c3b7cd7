"""One store test suite, run against every backend (``any_store``: filesystem and Redis)."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from deploysync.build import build
from deploysync.manifest import Asset, Deployment, InvalidId, ManifestError
from deploysync.store import (
    DeploymentNotFound,
    FileStore,
    PruneError,
    Store,
    StoreError,
    open_store,
)

SrcFactory = Callable[..., Path]


# -- helpers --------------------------------------------------------------------------------
def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(store: Store, data: bytes, **variants: bytes) -> str:
    digest = digest_of(data)
    store.put_blob(digest, data, variants)
    return digest


def deployment_of(ident: str, *blobs: bytes, created: float = 1.0) -> Deployment:
    assets = {}
    for index, data in enumerate(blobs):
        digest = digest_of(data)
        path = f"f{index}.txt"
        name = f"f{index}.{digest[:12]}.txt"
        assets[path] = Asset(path, name, digest, len(data), "text/plain", "")
    return Deployment(ident, "/static/", MappingProxyType(assets), created=created)


def snapshot(store: Store) -> Any:
    """Everything the store holds, to assert that a refused command changed nothing."""
    if isinstance(store, FileStore):
        root = store.root
        if not root.exists():
            return None
        return sorted(
            (p.relative_to(root).as_posix(), p.read_bytes())
            for p in root.rglob("*")
            if p.is_file() and p.name != ".lock" and "tmp" not in p.relative_to(root).parts
        )
    client = store._redis  # type: ignore[attr-defined]
    state = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        if kind == b"string":
            state[key] = client.get(key)
        elif kind == b"hash":
            state[key] = sorted(client.hgetall(key).items())
        elif kind == b"set":
            state[key] = sorted(client.smembers(key))
        elif kind == b"list":
            state[key] = client.lrange(key, 0, -1)
        else:  # pragma: no cover - the store writes no other type
            state[key] = kind
    return state


def corrupt_manifest(store: Store, ident: str, raw: bytes) -> None:
    if isinstance(store, FileStore):
        (store.root / "deployments" / f"{ident}.json").write_bytes(raw)
    else:
        store._redis.set(f"{store.namespace}:deployment:{ident}", raw)  # type: ignore[attr-defined]


@pytest.fixture
def built(any_store: Store, site_src: SrcFactory) -> Callable[[str], Deployment]:
    """``built("v2")``: build that version of the small site into the store (not activated)."""

    def make(version: str) -> Deployment:
        return build(site_src(version), any_store).deployment

    return make


# -- blobs ----------------------------------------------------------------------------------
def test_blob_round_trip(any_store: Store) -> None:
    any_store.ensure_writable()
    data = b"body { color: red }\n" * 50
    packed = gzip.compress(data)
    digest = put(any_store, data, gzip=packed)

    assert any_store.blob_variants(digest) == {"gzip": len(packed)}
    assert any_store.read_blob(digest) == data
    assert any_store.read_blob(digest, "gzip") == packed
    assert Path(any_store.blob_path(digest)).read_bytes() == data
    assert Path(any_store.blob_path(digest, "gzip")).read_bytes() == packed
    assert digest in set(any_store.all_blobs())
    with pytest.raises(StoreError, match="missing"):
        any_store.read_blob(digest, "br")
    with pytest.raises(StoreError, match="missing"):
        any_store.blob_path(digest, "br")


def test_put_blob_is_idempotent(any_store: Store) -> None:
    any_store.ensure_writable()
    data = b"export const x = 1;\n"
    digest = put(any_store, data)
    before = snapshot(any_store)
    put(any_store, data)
    assert snapshot(any_store) == before
    assert list(any_store.all_blobs()) == [digest]
    assert any_store.blob_variants(digest) == {}


def test_a_variant_left_in_part_by_a_killed_build_is_written_over(tmp_path: Path) -> None:
    # A new blob's variants are written in place before its plain file: a build killed
    # meanwhile leaves a part of one, and no plain file (the blob is not stored).
    store = FileStore(tmp_path / "store")
    store.ensure_writable()
    data = b"body { color: red; }\n" * 50
    digest = digest_of(data)
    compressed = gzip.compress(data, mtime=0)
    folder = store.root / "objects" / digest[:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{digest}.gz").write_bytes(compressed[:10])
    assert store.blob_variants(digest) is None  # not stored
    store.put_blob(digest, data, {"gzip": compressed})
    assert store.read_blob(digest, "gzip") == compressed
    assert store.read_blob(digest) == data
    assert not list((store.root / "tmp").iterdir())


def test_a_variant_left_in_part_never_joins_a_blob_stored_without_it(tmp_path: Path) -> None:
    # The next build writes the blob without that variant (--no-compress, another
    # brotli quality): the part must not become the blob's variant.
    store = FileStore(tmp_path / "store")
    store.ensure_writable()
    data = b"body { color: red; }\n" * 50
    digest = digest_of(data)
    folder = store.root / "objects" / digest[:2]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{digest}.gz").write_bytes(gzip.compress(data, mtime=0)[:10])
    store.put_blob(digest, data, {})
    assert store.blob_variants(digest) == {}
    assert sorted(p.name for p in folder.iterdir()) == [digest]


def test_absent_blob(any_store: Store) -> None:
    any_store.ensure_writable()
    digest = digest_of(b"never stored")
    assert any_store.blob_variants(digest) is None
    with pytest.raises(StoreError):
        any_store.read_blob(digest)
    with pytest.raises(StoreError):
        any_store.blob_path(digest)


# -- manifests ------------------------------------------------------------------------------
def test_publish_load_ids_exists(any_store: Store) -> None:
    any_store.ensure_writable()
    put(any_store, b"one")
    put(any_store, b"two")
    deployment = deployment_of("dep-1", b"one", b"two")

    assert not any_store.exists("dep-1")
    assert any_store.publish(deployment) is True
    assert any_store.exists("dep-1")
    assert any_store.ids() == ["dep-1"]
    assert any_store.load("dep-1") == deployment
    # Publishing an existing id keeps the first one.
    assert any_store.publish(deployment_of("dep-1", b"one")) is False
    assert any_store.load("dep-1") == deployment
    with pytest.raises(DeploymentNotFound):
        any_store.load("dep-2")


def test_publish_refuses_missing_blobs(any_store: Store) -> None:
    any_store.ensure_writable()
    put(any_store, b"present")
    before = snapshot(any_store)
    with pytest.raises(StoreError, match="missing"):
        any_store.publish(deployment_of("dep-1", b"present", b"absent"))
    assert snapshot(any_store) == before
    assert not any_store.exists("dep-1")
    assert any_store.ids() == []


def test_corrupt_manifest_is_a_manifest_error(any_store: Store) -> None:
    any_store.ensure_writable()
    put(any_store, b"one")
    any_store.publish(deployment_of("good", b"one", created=2.0))
    any_store.publish(deployment_of("bad", b"one"))
    corrupt_manifest(any_store, "bad", b"{not json")
    with pytest.raises(ManifestError, match=r"bad.*not valid JSON"):  # names the manifest
        any_store.load("bad")
    corrupt_manifest(any_store, "bad", b'{"version": 1, "id": "good"}')
    with pytest.raises(ManifestError):
        any_store.load("bad")
    # One broken manifest does not break listing the others; it is listed first, unknown.
    infos = any_store.list()
    assert [info.id for info in infos] == ["bad", "good"]
    assert (infos[0].created, infos[0].files, infos[0].bytes) == (None, None, None)
    assert infos[0].error is not None and "Malformed manifest" in infos[0].error
    assert infos[1].error is None and infos[1].files == 1


# -- activation -----------------------------------------------------------------------------
def test_activate_and_rollback(any_store: Store, built: Callable[[str], Deployment]) -> None:
    v1, v2 = built("v1"), built("v2")
    assert v1.id != v2.id
    assert any_store.current() is None
    assert any_store.activate(v1.id).seq == 1
    assert any_store.current() == v1.id
    any_store.activate(v2.id)
    assert any_store.current() == v2.id
    rollback = any_store.activate(v1.id)  # a rollback is the same move
    assert rollback.seq == 3
    assert any_store.current() == v1.id
    assert [(a.id, a.seq) for a in any_store.activations()] == [(v1.id, 1), (v2.id, 2), (v1.id, 3)]
    assert any_store.order() == {v2.id: 2, v1.id: 3}


def test_activate_refuses_unknown_and_invalid_ids(
    any_store: Store, built: Callable[[str], Deployment]
) -> None:
    v1 = built("v1")
    any_store.activate(v1.id)
    before = snapshot(any_store)
    with pytest.raises(DeploymentNotFound):
        any_store.activate("0123456789abcdef")
    with pytest.raises(InvalidId):
        any_store.activate("../" + v1.id)
    assert snapshot(any_store) == before
    assert any_store.current() == v1.id


def test_list_newest_first_with_current_marker(
    any_store: Store, built: Callable[[str], Deployment]
) -> None:
    v1 = built("v1")
    any_store.activate(v1.id)
    time.sleep(0.01)
    v2 = built("v2")  # built after v1's activation: the newest
    infos = any_store.list()
    assert [info.id for info in infos] == [v2.id, v1.id]
    assert [info.current for info in infos] == [False, True]
    assert infos[1].activated is not None and infos[0].activated is None
    assert infos[1].files == len(v1.assets) == 7
    assert infos[1].bytes == v1.total_size


def test_probe_changes_on_every_activation(
    any_store: Store, built: Callable[[str], Deployment]
) -> None:
    v1 = built("v1")
    tokens = [any_store.probe()]
    assert any_store.probe() == tokens[0]  # stable while nothing happens
    for _ in range(3):
        time.sleep(0.01)  # fs: a coarse mtime must not hide a change
        any_store.activate(v1.id)  # the same id again still changes the token
        tokens.append(any_store.probe())
    assert len(set(tokens)) == 4


def test_probe_changes_when_a_deployment_is_published_or_deleted(any_store: Store) -> None:
    # A build that is not activated must reach servers too (a container pinned to it).
    any_store.ensure_writable()
    before = any_store.probe()
    time.sleep(0.01)  # fs: a coarse mtime must not hide a change
    put(any_store, b"pinned")
    any_store.publish(deployment_of("pinned", b"pinned"))
    published = any_store.probe()
    assert published != before
    time.sleep(0.01)
    any_store.delete_deployment("pinned")
    assert any_store.probe() not in (before, published)


def test_a_deployment_stamp_lasts_while_it_stays_published(any_store: Store) -> None:
    # A build trusts the blobs of the deployment it made last while its stamp holds.
    any_store.ensure_writable()
    put(any_store, b"kept")
    assert any_store.deployment_stamp("dep-1") is None
    any_store.publish(deployment_of("dep-1", b"kept"))
    stamp = any_store.deployment_stamp("dep-1")
    assert stamp is not None
    assert any_store.publish(deployment_of("dep-1", b"kept")) is False
    assert any_store.deployment_stamp("dep-1") == stamp
    any_store.delete_deployment("dep-1")
    assert any_store.deployment_stamp("dep-1") is None
    time.sleep(0.01)  # fs: a coarse mtime must not hide the new publication
    any_store.publish(deployment_of("dep-1", b"kept"))
    assert any_store.deployment_stamp("dep-1") not in (None, stamp)
    assert any_store.deployment_stamp("../x") is None


def test_wait_for_change_without_change_returns_after_timeout(any_store: Store) -> None:
    any_store.ensure_writable()
    any_store.probe()
    started = time.monotonic()
    any_store.wait_for_change(0.2)
    assert 0.15 <= time.monotonic() - started < 2.0


# -- prune ----------------------------------------------------------------------------------
def test_prune_keeps_newest_and_current(
    any_store: Store, built: Callable[[str], Deployment]
) -> None:
    v1 = built("v1")
    time.sleep(0.01)
    v2 = built("v2")
    time.sleep(0.01)
    v3 = built("v3")
    orphan = put(any_store, b"left by an interrupted build")
    any_store.activate(v1.id)  # an old one is current (a rollback): the newest activity

    result = any_store.prune(keep=2)

    assert result.deployments == (v2.id,)
    assert sorted(any_store.ids()) == sorted([v1.id, v3.id])
    assert any_store.current() == v1.id
    only_v2 = v2.digests() - v1.digests() - v3.digests()
    assert only_v2, "the versions must differ"
    remaining = set(any_store.all_blobs())
    assert not only_v2 & remaining
    assert orphan not in remaining
    assert remaining == v1.digests() | v3.digests()
    assert result.blobs == len(only_v2) + 1
    # Every kept deployment is still whole, shared blobs included.
    for deployment in (v1, v3):
        for asset in deployment.assets.values():
            assert any_store.read_blob(asset.digest) is not None
            assert Path(any_store.blob_path(asset.digest)).stat().st_size == asset.size


def test_prune_counts_a_deployment_from_its_last_activation(
    any_store: Store, built: Callable[[str], Deployment]
) -> None:
    # x is live, then y; x again (a rebuild of its source finds it in the store and
    # activates it: its creation time stays old), then z. Users were on x just now.
    x = built("v1")
    any_store.activate(x.id)
    time.sleep(0.01)
    y = built("v2")
    any_store.activate(y.id)
    time.sleep(0.01)
    any_store.activate(x.id)
    time.sleep(0.01)
    z = built("v3")
    any_store.activate(z.id)
    # list shows the order prune counts in
    assert [d.id for d in any_store.list()] == [z.id, x.id, y.id]
    assert any_store.prune(keep=2).deployments == (y.id,)
    assert sorted(any_store.ids()) == sorted([x.id, z.id])
    # --older-than counts from the same time: x was live a moment ago.
    assert any_store.prune(keep=1, older_than=3600).deployments == ()


def test_prune_never_removes_current(any_store: Store, built: Callable[[str], Deployment]) -> None:
    v1 = built("v1")
    any_store.activate(v1.id)
    time.sleep(0.01)
    v2 = built("v2")  # the newest, not activated yet
    any_store.prune(keep=1)
    assert sorted(any_store.ids()) == sorted([v1.id, v2.id])
    any_store.activate(v2.id)
    assert any_store.prune(keep=1).deployments == (v1.id,)
    assert any_store.ids() == [v2.id]


def test_prune_keeps_what_a_running_server_holds_until_the_hold_lapses(
    any_store: Store, built: Callable[[str], Deployment]
) -> None:
    # A container pinned to an older deployment holds it: prune must not take its assets.
    v1 = built("v1")
    time.sleep(0.01)
    v2 = built("v2")
    any_store.activate(v2.id)
    any_store.hold(v1.id, ttl=0.5)
    assert any_store.held() == {v1.id}
    assert any_store.prune(keep=1).deployments == ()
    assert sorted(any_store.ids()) == sorted([v1.id, v2.id])
    time.sleep(0.7)  # the server stopped renewing: its hold lapses by itself
    assert any_store.held() == set()
    assert any_store.prune(keep=1).deployments == (v1.id,)


def test_a_hold_refuses_an_invalid_id(any_store: Store) -> None:
    any_store.ensure_writable()
    with pytest.raises(ValueError):
        any_store.hold("../../etc")
    assert any_store.held() == set()


@pytest.mark.parametrize("raw", [b"{not json", b'{"version": 1, "id": "x"}', b""])
def test_prune_refuses_while_a_manifest_cannot_be_read(
    any_store: Store, built: Callable[[str], Deployment], raw: bytes
) -> None:
    v1 = built("v1")
    time.sleep(0.01)
    v2 = built("v2")
    any_store.activate(v2.id)
    put(any_store, b"left by an interrupted build")
    corrupt_manifest(any_store, v2.id, raw)  # the current one: its blobs look unused
    before = snapshot(any_store)
    with pytest.raises(StoreError, match=f"deployment '{v2.id}' cannot be read") as caught:
        any_store.prune(keep=1)
    assert "nothing was deleted" in str(caught.value) and "\n" not in str(caught.value)
    assert snapshot(any_store) == before
    assert sorted(any_store.ids()) == sorted([v1.id, v2.id])


def test_a_blob_that_cannot_be_deleted_stops_prune_and_is_not_counted(
    any_store: Store, built: Callable[[str], Deployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = built("v1")
    time.sleep(0.01)
    v2 = built("v2")
    any_store.activate(v2.id)
    unused = sorted(v1.digests() - v2.digests())
    assert len(unused) >= 2
    real = any_store.delete_blob

    def delete_blob(digest: str) -> int:
        if digest == unused[1]:
            raise StoreError(f"Cannot delete blob {digest}: Permission denied")
        return real(digest)

    monkeypatch.setattr(any_store, "delete_blob", delete_blob)
    with pytest.raises(PruneError, match="Permission denied") as caught:
        any_store.prune(keep=1)
    assert f"{len(unused) - 1} of {len(unused)} unused blobs not deleted" in str(caught.value)
    result = caught.value.result
    assert result.deployments == (v1.id,)
    assert result.blobs == 1
    freed = next(a for a in v1.assets.values() if a.digest == unused[0])
    assert result.bytes == freed.size + sum(freed.encodings.values())
    assert set(any_store.all_blobs()) == v2.digests() | set(unused[1:])
    monkeypatch.undo()
    assert any_store.prune(keep=1).blobs == len(unused) - 1


def test_prune_keep_zero_is_refused(any_store: Store, built: Callable[[str], Deployment]) -> None:
    any_store.activate(built("v1").id)
    built("v2")
    before = snapshot(any_store)
    with pytest.raises(StoreError, match="--keep"):
        any_store.prune(keep=0)
    assert snapshot(any_store) == before


# -- lock -----------------------------------------------------------------------------------
def second_store(store: Store, tmp_path: Path) -> Store:
    """Another object on the same store, as another server or CLI would open it."""
    if isinstance(store, FileStore):
        return FileStore(store.root)
    from deploysync.store.redis import RedisStore

    return RedisStore(store.url, cache_dir=tmp_path / "cache2")  # type: ignore[attr-defined]


def test_lock_is_exclusive_across_store_objects(any_store: Store, tmp_path: Path) -> None:
    any_store.ensure_writable()
    other = second_store(any_store, tmp_path)
    inside: list[int] = []
    overlaps: list[int] = []
    errors: list[BaseException] = []

    def hold(store: Store, name: int) -> None:
        try:
            for _ in range(3):
                with store.lock(), store.lock():  # re-entrant within a process
                    inside.append(name)
                    if len(inside) > 1:
                        overlaps.append(name)
                    time.sleep(0.03)
                    inside.remove(name)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hold, args=(s, n)) for n, s in enumerate([any_store, other])]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    finally:
        other.close()
    assert not errors
    assert not any(thread.is_alive() for thread in threads)
    assert overlaps == []


def test_a_writer_finding_the_lock_held_is_told_once(any_store: Store, tmp_path: Path) -> None:
    any_store.ensure_writable()
    other = second_store(any_store, tmp_path)
    told = threading.Event()
    calls: list[int] = []

    def waiting() -> None:
        calls.append(1)
        told.set()

    other.on_wait = waiting
    done = threading.Event()

    def take() -> None:
        with other.lock():
            done.set()

    thread = threading.Thread(target=take)
    try:
        with any_store.lock():
            thread.start()
            assert told.wait(timeout=20), "the waiting writer was not told"
            time.sleep(0.3)  # several attempts while held (Redis polls)
            assert not done.is_set()
        assert done.wait(timeout=20)
        assert calls == [1]
        with any_store.lock():  # a free lock: nobody is told anything
            pass
    finally:
        thread.join(timeout=20)
        other.close()


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from deploysync.store import open_store
    store = open_store(sys.argv[1])
    with store.lock():
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    store.close()
    """
)


def test_lock_is_exclusive_across_processes(any_store: Store) -> None:
    any_store.ensure_writable()
    spec = str(any_store.root) if isinstance(any_store, FileStore) else any_store.url  # type: ignore[attr-defined]
    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, spec, "0.6"], stdout=subprocess.PIPE, text=True
    ) as holder:
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            started = time.monotonic()
            with any_store.lock():
                waited = time.monotonic() - started
        finally:
            holder.wait(timeout=20)
    assert holder.returncode == 0
    assert waited >= 0.3


# -- bad input never reaches a path or a key ------------------------------------------------
BAD_IDS = ["../evil", "a/b", "", "x" * 65, "..", "has space", "dep\n", "*"]
BAD_DIGESTS = ["../../etc/passwd", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "", "*", "a" * 63 + "/"]


def test_invalid_ids_and_digests_are_rejected(any_store: Store, tmp_path: Path) -> None:
    any_store.ensure_writable()
    around = sorted(p.name for p in tmp_path.iterdir())
    before = snapshot(any_store)
    for bad in BAD_IDS:
        assert not any_store.exists(bad)
        with pytest.raises(DeploymentNotFound):
            any_store.load(bad)
        with pytest.raises(InvalidId):
            any_store.activate(bad)
        with pytest.raises(DeploymentNotFound):
            any_store.delete_deployment(bad)
    for bad in BAD_DIGESTS:
        with pytest.raises(StoreError, match="Invalid blob digest"):
            any_store.put_blob(bad, b"x", {})
        for call in (
            any_store.read_blob,
            any_store.blob_path,
            any_store.blob_variants,
            any_store.delete_blob,
        ):
            with pytest.raises(StoreError, match="Invalid blob digest"):
                call(bad)
    assert snapshot(any_store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == around


# -- build into either backend --------------------------------------------------------------
@pytest.mark.parametrize("failing", ["put_blob", "publish"])
def test_a_failed_build_deletes_the_blobs_it_wrote(
    any_store: Store, site_src: SrcFactory, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    old = build(site_src("v1"), any_store, activate=True).deployment
    before = snapshot(any_store)
    real_put = any_store.put_blob
    written: list[str] = []

    def put_blob(digest: str, data: bytes, variants: Any) -> None:
        real_put(digest, data, variants)
        written.append(digest)
        if failing == "put_blob" and len(written) == 2:
            raise StoreError("Cannot write: No space left on device")

    def publish(deployment: Deployment, **kwargs: Any) -> bool:
        raise StoreError("Cannot write: No space left on device")

    monkeypatch.setattr(any_store, "put_blob", put_blob)
    if failing == "publish":
        monkeypatch.setattr(any_store, "publish", publish)
    with pytest.raises(StoreError, match="No space"):
        build(site_src("v2"), any_store, cache=False)
    assert len(written) == 2  # v2 brings two new blobs; both were written, then deleted
    assert snapshot(any_store) == before
    assert any_store.current() == old.id


def test_a_build_published_despite_an_error_keeps_its_blobs(
    any_store: Store, site_src: SrcFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The manifest went in, but the answer was lost (a dropped connection).
    old = build(site_src("v1"), any_store, activate=True).deployment
    real = any_store.publish

    def publish(deployment: Deployment, **kwargs: Any) -> bool:
        real(deployment, **kwargs)
        raise StoreError("Cannot reach the store: Connection reset by peer")

    monkeypatch.setattr(any_store, "publish", publish)
    with pytest.raises(StoreError, match="Connection reset"):
        build(site_src("v2"), any_store, cache=False)
    (new,) = set(any_store.ids()) - {old.id}
    for asset in any_store.load(new).assets.values():
        assert any_store.read_blob(asset.digest)


def test_build_then_load(any_store: Store, site_src: SrcFactory) -> None:
    first = build(site_src("v1"), any_store, activate=True)
    assert first.created
    assert any_store.current() == first.deployment.id
    again = build(site_src("v1"), any_store)
    assert not again.created
    assert again.deployment.id == first.deployment.id
    loaded = any_store.load(first.deployment.id)
    assert loaded.assets == first.deployment.assets
    for asset in loaded.assets.values():
        assert digest_of(Path(any_store.blob_path(asset.digest)).read_bytes()) == asset.digest


@pytest.mark.redis
def test_same_source_gives_same_id_in_both_backends(
    fs_store: FileStore, redis_url: str, site_src: SrcFactory, tmp_path: Path
) -> None:
    from deploysync.store.redis import RedisStore

    src = site_src("v1")
    store = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    try:
        in_redis = build(src, store).deployment
    finally:
        store.close()
    in_fs = build(src, fs_store).deployment
    assert in_fs.id == in_redis.id
    assert in_fs.assets == in_redis.assets


# -- Redis only -----------------------------------------------------------------------------
@pytest.fixture
def redis_store(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    from deploysync.store.redis import RedisStore

    store = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    yield store
    store.close()


@pytest.mark.redis
def test_open_store_routes_redis_urls(redis_url: str) -> None:
    from deploysync.store.redis import RedisStore

    store = open_store(redis_url)
    try:
        assert isinstance(store, RedisStore)
        assert store.probe() is None
    finally:
        store.close()


@pytest.mark.redis
def test_wait_for_change_wakes_on_activation(
    redis_store: Any, site_src: SrcFactory, tmp_path: Path
) -> None:
    ident = build(site_src("v1"), redis_store).deployment.id
    activator = second_store(redis_store, tmp_path)
    seen = redis_store.probe()
    redis_store.wait_for_change(0.05)  # subscribed from now on
    timer = threading.Timer(0.3, activator.activate, args=(ident,))
    try:
        started = time.monotonic()
        timer.start()
        redis_store.wait_for_change(10)
        woke = time.monotonic() - started
        timer.join()
    finally:
        timer.cancel()
        activator.close()
    assert 0.25 <= woke < 1.5
    assert redis_store.probe() != seen


@pytest.mark.redis
def test_wait_for_change_sees_an_activation_before_it_subscribed(
    redis_store: Any, site_src: SrcFactory, tmp_path: Path
) -> None:
    ident = build(site_src("v1"), redis_store).deployment.id
    redis_store.probe()
    activator = second_store(redis_store, tmp_path)
    try:
        activator.activate(ident)  # lands between the probe and the first wait
    finally:
        activator.close()
    started = time.monotonic()
    redis_store.wait_for_change(10)
    assert time.monotonic() - started < 1.0


@pytest.mark.redis
def test_namespaces_are_independent(redis_url: str, site_src: SrcFactory, tmp_path: Path) -> None:
    from deploysync.store.redis import RedisStore

    one = RedisStore(redis_url, cache_dir=tmp_path / "c1", namespace="app-one")
    two = RedisStore(redis_url, cache_dir=tmp_path / "c2", namespace="app-two")
    try:
        build(site_src("v1"), one, activate=True)
        assert two.ids() == [] and two.current() is None and list(two.all_blobs()) == []
        assert two.probe() is None
    finally:
        one.close()
        two.close()


@pytest.mark.redis
def test_the_url_names_the_namespace(
    redis_url: str, site_src: SrcFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deploysync.store.redis import RedisStore

    main = cli_main()
    assert main is not None
    shop = f"{redis_url}?namespace=shop"
    assert main(["build", str(site_src("v1")), "--store", shop, "--activate"]) == 0
    ident = capsys.readouterr().out.splitlines()[-1]
    named = RedisStore(redis_url, cache_dir=tmp_path / "c1", namespace="shop")
    default = RedisStore(redis_url, cache_dir=tmp_path / "c2")
    opened = open_store(f"{redis_url}?socket_timeout=5&namespace=shop", cache_dir=tmp_path / "c3")
    try:
        assert named.current() == ident and default.current() is None
        assert default.ids() == [] and list(default.all_blobs()) == []
        # The parameter is the store's, not a connection's: the others stay in the URL.
        assert isinstance(opened, RedisStore)
        assert (opened.namespace, opened.url) == ("shop", f"{redis_url}?socket_timeout=5")
        assert opened.current() == ident
    finally:
        for store in (named, default, opened):
            store.close()
    assert main(["list", "--store", shop]) == 0
    assert ident in capsys.readouterr().out


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("namespace=", "Invalid Redis namespace ''"),
        ("namespace=a%20b", "Invalid Redis namespace 'a b'"),
        ("namespace=a&namespace=b", "names more than one namespace"),
    ],
)
def test_a_bad_namespace_in_the_url_is_refused_in_one_line(
    query: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("redis")
    url = f"redis://:secret@127.0.0.1:1/0?{query}"
    with pytest.raises(StoreError, match=reason):
        open_store(url)
    main = cli_main()
    assert main is not None
    capsys.readouterr()
    assert main(["list", "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and reason in err and "secret" not in err


@pytest.mark.parametrize(
    ("url", "rest", "namespace"),
    [
        ("unix:///tmp/r.sock?db=2&namespace=proj", "unix:///tmp/r.sock?db=2", "proj"),
        ("redis:///0?namespace=x", "redis:///0", "x"),
        ("redis://:p%26w@h:1/0?namespace=a&password=x#f", "redis://:p%26w@h:1/0?password=x#f", "a"),
        ("rediss://h/0?ssl_cert_reqs=none&namespace=a", "rediss://h/0?ssl_cert_reqs=none", "a"),
        ("redis://h/0?password=a%26b", "redis://h/0?password=a%26b", "deploysync"),
    ],
)
def test_the_namespace_parameter_leaves_the_rest_of_the_url_as_written(
    url: str, rest: str, namespace: str
) -> None:
    pytest.importorskip("redis")
    from deploysync.store.redis import RedisStore

    store = RedisStore(url)
    try:
        assert (store.url, store.namespace) == (rest, namespace)
    finally:
        store.close()


def test_a_namespace_given_twice_must_agree() -> None:
    pytest.importorskip("redis")
    from deploysync.store.redis import RedisStore

    with pytest.raises(StoreError, match="names namespace 'a', the store was given 'b'"):
        RedisStore("redis://127.0.0.1:1/0?namespace=a", namespace="b")
    store = RedisStore("redis://127.0.0.1:1/0?namespace=a", namespace="a")
    assert store.namespace == "a"
    store.close()


@pytest.mark.redis
def test_local_copies_of_unused_blobs_are_trimmed_once_old(redis_store: Any) -> None:
    kept, dropped = b"still used\n" * 40, b"pruned away\n" * 40
    paths = {data: Path(redis_store.blob_path(put(redis_store, data))) for data in (kept, dropped)}
    keep = {digest_of(kept)}
    # Young copies stay: another worker may have fetched them for a newer deployment.
    assert redis_store.trim_cache(keep) == 0
    assert all(path.is_file() for path in paths.values())
    assert redis_store.trim_cache(keep, older_than=0) == len(dropped)
    assert paths[kept].is_file()
    assert not paths[dropped].exists()


@pytest.mark.redis
def test_blob_cache_checks_the_bytes(redis_store: Any) -> None:
    data = b"console.log('hello')\n"
    digest = put(redis_store, data)
    redis_store._redis.set(f"deploysync:blob:{digest}", b"tampered")
    with pytest.raises(StoreError, match="corrupt"):
        redis_store.blob_path(digest)
    assert not list(redis_store.cache_dir.rglob("*" + digest + "*"))
    redis_store._redis.set(f"deploysync:blob:{digest}", data)
    path = Path(redis_store.blob_path(digest))
    assert path.read_bytes() == data
    assert path.is_relative_to(redis_store.cache_dir)
    # Pruned blobs leave this process's cache too.
    redis_store.delete_blob(digest)
    assert not path.exists()


@pytest.mark.redis
def test_prefetch_copies_many_blobs_in_few_round_trips(
    redis_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server switching to a deployment of thousands of new files must not wait for a
    # round trip per file and per variant.
    from deploysync.store import redis as redis_module

    blobs = [f"/* file {i} */ body {{ color: red; }}\n".encode() * 20 for i in range(150)]
    digests = [put(redis_store, data, gzip=gzip.compress(data, mtime=0)) for data in blobs]
    tampered = digests[7]
    redis_store._redis.set(f"deploysync:blob:{tampered}", b"tampered")
    executed: list[int] = []
    real_pipeline = redis_store._redis.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = real_pipeline(*args, **kwargs)
        real_execute = pipe.execute
        pipe.execute = lambda *a, **k: executed.append(1) or real_execute(*a, **k)
        return pipe

    monkeypatch.setattr(redis_store._redis, "pipeline", pipeline)
    wanted = [(d, coding) for d in digests for coding in (None, "gzip")]
    redis_store.prefetch(wanted)
    assert len(executed) == -(-len(wanted) // redis_module.PREFETCH_BATCH)  # 5 for 300
    executed.clear()
    for digest, data in zip(digests, blobs, strict=True):
        if digest == tampered:
            with pytest.raises(StoreError, match="corrupt"):  # not copied: told when read
                redis_store.blob_path(digest)
            continue
        assert Path(redis_store.blob_path(digest)).read_bytes() == data
        assert gzip.decompress(Path(redis_store.blob_path(digest, "gzip")).read_bytes()) == data
    assert len(executed) == 1  # only the tampered one was asked for again


@pytest.mark.redis
def test_a_writer_whose_lock_expired_meanwhile_changes_nothing(redis_store: Any) -> None:
    # A build or prune paused past the lock's TTL (a suspended terminal) while another
    # writer took the lock: it must not publish, nor delete what that one relies on.
    kept = put(redis_store, b"kept by the other writer")
    deployment = deployment_of("paused", b"kept by the other writer")
    redis_store.publish(deployment_of("listed", b"kept by the other writer"))
    before = snapshot(redis_store)
    with redis_store.lock():
        redis_store._redis.set("deploysync:lock", b"another-writer")  # it expired, was taken
        for attempt in (
            lambda: redis_store.publish(deployment),
            lambda: redis_store.publish(deployment_of("listed", b"kept by the other writer")),
            lambda: redis_store.delete_blob(kept),
            lambda: redis_store.delete_deployment("listed"),
        ):
            with pytest.raises(StoreError, match=r"lock on .* expired.*run it again"):
                attempt()
        redis_store._redis.delete("deploysync:lock")
    assert snapshot(redis_store) == before
    # Outside any lock (a repair by hand) the deletions still work.
    redis_store.delete_deployment("listed")
    assert redis_store.delete_blob(kept) > 0


@pytest.mark.redis
def test_stale_lock_of_a_crashed_writer_expires(redis_store: Any) -> None:
    redis_store._redis.set("deploysync:lock", b"crashed-writer", px=300)
    started = time.monotonic()
    with redis_store.lock():
        waited = time.monotonic() - started
        assert redis_store._redis.get("deploysync:lock") != b"crashed-writer"
    assert 0.2 <= waited < 5
    assert redis_store._redis.get("deploysync:lock") is None  # released


def cli_main() -> Callable[[list[str]], int] | None:
    if importlib.util.find_spec("deploysync.cli") is None:
        return None
    cli = importlib.import_module("deploysync.cli")
    main: Callable[[list[str]], int] = cli.main
    return main


@pytest.mark.redis
def test_outage_fails_every_operation_with_one_line_then_recovers(
    redis_server: Any,
    redis_store: Any,
    site_src: SrcFactory,
) -> None:
    src = site_src("v1")
    ident = build(src, redis_store, activate=True).deployment.id
    digest = next(iter(redis_store.load(ident).digests()))
    cached = redis_store.blob_path(digest)
    redis_store.wait_for_change(0.01)  # subscribed
    url = redis_server.url
    redis_server.stop()
    try:
        operations: list[Callable[[], object]] = [
            redis_store.probe,
            redis_store.ids,
            redis_store.current,
            redis_store.activations,
            redis_store.ensure_writable,
            redis_store.list,
            lambda: redis_store.load(ident),
            lambda: redis_store.exists(ident),
            lambda: redis_store.activate(ident),
            lambda: redis_store.prune(keep=1),
            lambda: redis_store.blob_variants(digest),
            lambda: redis_store.read_blob(digest),
            lambda: redis_store.blob_path("0" * 64),
            lambda: build(src, redis_store),
        ]
        for operation in operations:
            with pytest.raises(StoreError) as caught:
                operation()
            message = str(caught.value)
            assert "\n" not in message
            assert message.startswith(f"Cannot reach Redis at {url}: "), message
        # A blob already materialised keeps being served from the local cache.
        assert redis_store.blob_path(digest) == cached
        # The watcher never raises; it sleeps out its timeout.
        for _ in range(2):
            started = time.monotonic()
            redis_store.wait_for_change(0.2)
            assert 0.15 <= time.monotonic() - started < 2.0
    finally:
        redis_server.start()

    # Back: the same objects work again without being reopened (the data is gone: the
    # test server does not persist).
    assert redis_store.probe() is None
    ident = build(src, redis_store).deployment.id
    redis_store.probe()
    redis_store.wait_for_change(0.05)  # subscribes again
    timer = threading.Timer(0.2, redis_store.activate, args=(ident,))
    started = time.monotonic()
    timer.start()
    try:
        redis_store.wait_for_change(10)
    finally:
        timer.join()
    assert time.monotonic() - started < 1.5
    assert redis_store.current() == ident


@pytest.mark.redis
def test_cli_fails_with_one_line_while_redis_is_down(
    redis_server: Any,
    redis_url: str,
    site_src: SrcFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    main = cli_main()
    if main is None:
        pytest.skip("deploysync.cli is not written yet")
    src = str(site_src("v1"))
    redis_server.stop()
    try:
        for argv in (
            ["build", src, "--store", redis_url],
            ["activate", "0123456789abcdef", "--store", redis_url],
            ["list", "--store", redis_url],
            ["prune", "--store", redis_url, "--keep", "1"],
        ):
            capsys.readouterr()
            assert main(argv) != 0, argv
            captured = capsys.readouterr()
            err = captured.err.strip()
            assert err and "\n" not in err, (argv, err)
            assert f"Cannot reach Redis at {redis_url}" in err, (argv, err)
    finally:
        redis_server.start()


@pytest.mark.redis
def test_close_wakes_a_blocked_watcher(redis_url: str, tmp_path: Path) -> None:
    from deploysync.store.redis import RedisStore

    store = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    store.probe()
    store.wait_for_change(0.01)  # subscribed
    watcher = threading.Thread(target=store.wait_for_change, args=(30,))
    watcher.start()
    time.sleep(0.1)
    started = time.monotonic()
    store.close()
    watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert time.monotonic() - started < 2.0


@pytest.mark.redis
def test_default_blob_cache_must_be_private(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploysync.store.redis import RedisStore

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.delenv("DEPLOYSYNC_CACHE_DIR", raising=False)  # chosen: never checked
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    store = RedisStore(redis_url)
    try:
        assert store.cache_dir.is_relative_to(shared)
        digest = put(store, b"x")
        with pytest.raises(StoreError, match="not private"):
            store.blob_path(digest)
        shared.chmod(0o700)
        assert Path(store.blob_path(digest)).read_bytes() == b"x"
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://127.0.0.1:1/0?foo=bar", "unknown parameter 'foo'"),
        ("redis://127.0.0.1:1/0?db=1&socket_keepalive_typo=1", "unknown parameter"),
        ("redis://127.0.0.1:1/x", "the database 'x' is not a number"),
        ("redis://:secret@127.0.0.1:1/1/2", "the database '1/2' is not a number"),
        ("redis://127.0.0.1:1/0?db=x", "Invalid value for 'db'"),
        ("redis://[::1", "Invalid IPv6 URL"),
        ("redis://:secret@[::1/0", "Invalid IPv6 URL"),
        ("redis://127.0.0.1:port/0", "Port could not be cast"),
    ],
)
def test_an_invalid_redis_url_is_refused_at_once_in_one_line(
    url: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("redis")
    with pytest.raises(StoreError) as caught:
        open_store(url)
    message = str(caught.value)
    assert message.startswith("Invalid Redis URL") and reason in message
    assert "secret" not in message
    main = cli_main()
    assert main is not None
    capsys.readouterr()
    assert main(["list", "--store", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("deploysync: error: Invalid Redis URL") and reason in err
    assert "secret" not in err


def test_redis_store_without_redis_py_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` fail
    with pytest.raises(StoreError, match=r"pip install 'deploysync\[redis\]'"):
        open_store("redis://127.0.0.1:1/0")


# -- what a server keeps locally -----------------------------------------------------------
@pytest.mark.redis
def test_a_server_store_answers_from_the_last_known_state_while_redis_is_down(
    redis_server: Any, redis_url: str, site_src: SrcFactory, tmp_path: Path
) -> None:
    from deploysync.store.redis import RedisStore

    writer = RedisStore(redis_url, cache_dir=tmp_path / "writer")
    deployment = build(site_src("v1"), writer, activate=True).deployment
    writer.close()
    server = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    server.keep_last_known()
    token = server.probe()
    record = server.activations()
    assert server.ids() == [deployment.id]
    assert server.load(deployment.id) == deployment
    server.wait_for_change(0.01)  # the watcher's loop writes what was read
    state = server.cache_dir / "state.json"
    assert state.is_file()
    assert [p.name for p in server.cache_dir.iterdir() if p.name.startswith(".")] == []
    server.close()

    redis_server.stop()
    try:
        restarted = RedisStore(redis_url, cache_dir=tmp_path / "cache")
        restarted.keep_last_known()
        assert restarted.probe() == token
        assert restarted.activations() == record
        assert restarted.current() == deployment.id
        assert restarted.ids() == [deployment.id]
        assert restarted.load(deployment.id) == deployment
        assert restarted.unreachable
        with pytest.raises(StoreError, match="Cannot reach Redis"):
            restarted.activate(deployment.id)  # writes never pretend
        restarted.close()
        # A command's store has not opted in: it fails, whatever a server kept.
        command = RedisStore(redis_url, cache_dir=tmp_path / "cache")
        for read in (command.probe, command.activations, command.current, command.ids):
            with pytest.raises(StoreError, match="Cannot reach Redis"):
                read()
        with pytest.raises(StoreError, match="Cannot reach Redis"):
            command.load(deployment.id)
        command.close()
    finally:
        redis_server.start()


@pytest.mark.redis
def test_an_empty_redis_never_overwrites_the_last_known_state(
    redis_url: str, site_src: SrcFactory, tmp_path: Path
) -> None:
    from deploysync.store.redis import RedisStore

    server = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    server.keep_last_known()
    ident = build(site_src("v1"), server, activate=True).deployment.id
    server.activations()
    server.wait_for_change(0.01)
    state = server.cache_dir / "state.json"
    saved = state.read_bytes()
    server._redis.flushdb()  # a Redis restarted without its data
    assert server.activations() == [] and server.ids() == []
    server.wait_for_change(0.01)
    server.close()
    assert state.read_bytes() == saved and ident.encode() in saved


@pytest.mark.redis
def test_stores_sharing_a_cache_folder_keep_apart(redis_url: str, tmp_path: Path) -> None:
    from deploysync.store.redis import RedisStore

    one = RedisStore(redis_url, cache_dir=tmp_path / "cache", namespace="app-one")
    two = RedisStore(redis_url, cache_dir=tmp_path / "cache", namespace="app-two")
    try:
        assert one.cache_dir.parent == two.cache_dir.parent == tmp_path / "cache"
        assert one.cache_dir != two.cache_dir
        data = b"shared by both apps\n" * 20
        copies = [Path(store.blob_path(put(store, data))) for store in (one, two)]
        # A prune in one app trims its own copies only.
        assert one.trim_cache(set(), older_than=0) == len(data)
        assert not copies[0].exists() and copies[1].read_bytes() == data
    finally:
        one.close()
        two.close()


@pytest.mark.redis
def test_the_cache_folder_is_deploysyncs_and_configurable(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploysync.serving import Runtime
    from deploysync.store.redis import RedisStore

    monkeypatch.setenv("DEPLOYSYNC_CACHE_DIR", str(tmp_path / "env"))
    stores = [
        RedisStore(redis_url),  # the build cache's folder
        open_store(redis_url, cache_dir=tmp_path / "given"),
        Runtime(redis_url, cache_dir=tmp_path / "option").store,
    ]
    try:
        homes = [store.cache_dir.parent for store in stores]  # type: ignore[attr-defined]
        assert homes == [tmp_path / "env", tmp_path / "given", tmp_path / "option"]
        with pytest.raises(StoreError, match="cache_dir applies to a store given by its URL"):
            open_store(stores[0], cache_dir=tmp_path / "other")
    finally:
        for store in stores:
            store.close()


@pytest.mark.redis
def test_cache_folders_are_private_whatever_the_umask(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from deploysync.store.redis import RedisStore

    monkeypatch.delenv("DEPLOYSYNC_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # not there yet
    previous = os.umask(0o002)  # Ubuntu's default for regular users
    store = RedisStore(redis_url)
    try:
        digest = put(store, b"x" * 100)
        assert Path(store.blob_path(digest)).read_bytes() == b"x" * 100
        for folder in (store.cache_dir, store.cache_dir.parent, tmp_path / "xdg"):
            assert folder.stat().st_mode & 0o777 == 0o700, folder
    finally:
        os.umask(previous)
        store.close()
