"""A shared Redis store that lost keys, wants credentials, evicts or hangs.

Each test damages the store the way an operator's Redis can (a key evicted or deleted,
``requirepass`` set, ``maxmemory-policy allkeys-lru``, a server gone quiet), then checks
that prune never deletes what the current deployment uses, that builds and activations
repair what they can, and that every message says what happened.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploysync import cli
from deploysync.build import build
from deploysync.serving import Runtime
from deploysync.store import StoreError

pytestmark = pytest.mark.redis

SrcFactory = Callable[..., Path]


@pytest.fixture
def store(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    from deploysync.store.redis import RedisStore

    store = RedisStore(redis_url, cache_dir=tmp_path / "cache")
    yield store
    store.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[Any]:
    """A plain client on the same database, to damage it."""
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def write_big_css(src: Path) -> None:
    """A stylesheet large enough to get precompressed variants."""
    rules = "".join(f".r{i} {{ margin: {i}px }}\n" for i in range(200))
    (src / "css" / "big.css").write_text(rules)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_prune_keeps_the_current_deployment_when_the_list_lost_it(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    current = build(site_src("v1"), store, activate=True).deployment
    build(site_src("v2"), store)
    raw.delete("deploysync:deployments")
    # Still listed and served: it is current.
    assert [info.id for info in store.list() if info.current] == [current.id]
    runtime = Runtime(store)
    try:
        assert runtime.snapshot.current_id == current.id
        assert set(runtime.snapshot.files) >= {a.name for a in current.assets.values()}
    finally:
        runtime.close()
    store.prune(keep=1)
    for digest in current.digests():
        assert store.read_blob(digest)
    # An activation lists it again.
    store.activate(current.id)
    assert current.id in store.ids()


def test_an_id_whose_manifest_vanished_is_shown_rebuilt_and_pruned(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    build(site_src("v1"), store, activate=True)
    src = site_src("v2")
    lost = build(src, store).deployment.id
    raw.delete(f"deploysync:deployment:{lost}")  # evicted
    listed = {info.id: info.error for info in store.list()}
    assert listed[lost] == "its manifest is missing"
    # A build of the same folder publishes it again.
    again = build(src, store)
    assert again.created and again.deployment.id == lost
    assert store.load(lost).id == lost
    raw.delete(f"deploysync:deployment:{lost}")
    result = store.prune(keep=5)
    assert lost in result.deployments
    assert lost not in store.ids()


def test_an_activation_record_that_lost_entries_does_not_block_activations(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    first = build(site_src("v1"), store, activate=True).deployment.id
    second = build(site_src("v2"), store, activate=True).deployment.id
    raw.delete("deploysync:history")  # evicted
    store.activate(first)
    assert store.current() == first
    store.activate(second)
    assert [a.id for a in store.activations()] == [first, second]
    assert store.activations()[-1].seq == 4


def test_passwords_in_the_query_are_hidden() -> None:
    from deploysync.store.redis import redact

    assert redact("redis://127.0.0.1:6379/0?password=s3cret") == (
        "redis://127.0.0.1:6379/0?password=***"
    )
    assert "s3cret" not in redact("unix:///run/redis.sock?db=1&Password=s3cret&x=1")
    assert "s3cret" not in redact("redis://user:s3cret@127.0.0.1:6379/0")


def test_wrong_credentials_are_named(redis_url: str, raw: Any, tmp_path: Path) -> None:
    from deploysync.store.redis import RedisStore

    raw.config_set("requirepass", "right")
    try:
        for url in (redis_url, redis_url.replace("redis://", "redis://:wrong@")):
            store = RedisStore(url, cache_dir=tmp_path / "cache")
            try:
                with pytest.raises(StoreError) as caught:
                    store.ids()
            finally:
                store.close()
            message = str(caught.value)
            assert "refused the credentials" in message, message
            assert "wrong" not in message.split(":", 1)[1].split(" refused")[0]
    finally:
        raw.execute_command("AUTH", "right")
        raw.config_set("requirepass", "")


def test_a_server_names_wrong_credentials_in_its_log(
    redis_url: str, raw: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from deploysync.store.redis import RedisStore

    raw.config_set("requirepass", "right")
    try:
        store = RedisStore(redis_url.replace("redis://", "redis://:wrong@"), cache_dir=tmp_path)
        store.keep_last_known()  # as a server's store
        try:
            with caplog.at_level(logging.WARNING, logger="deploysync"):
                store.wait_for_change(0.1)
        finally:
            store.close()
    finally:
        raw.execute_command("AUTH", "right")
        raw.config_set("requirepass", "")
    told = [r.getMessage() for r in caplog.records]
    assert any(" refused the credentials: " in m for m in told), told
    assert not any("unreachable" in m or "wrong" in m for m in told), told


def test_an_evicting_redis_is_warned_about(redis_url: str, raw: Any, site_src: SrcFactory) -> None:
    build_args = ("build", str(site_src("v1")), "--store", redis_url)
    code, _, err = run_cli(*build_args)
    assert code == 0 and "warning" not in err
    raw.config_set("maxmemory", "512mb")
    raw.config_set("maxmemory-policy", "allkeys-lru")
    try:
        for argv in (build_args, ("list", "--store", redis_url)):
            code, _, err = run_cli(*argv)
            assert code == 0
            assert "deploysync: warning: Redis at" in err
            assert "maxmemory-policy allkeys-lru" in err
    finally:
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", "0")


def test_a_server_does_not_wait_on_redis_twice_in_a_row(
    redis_server: Any, store: Any, site_src: SrcFactory
) -> None:
    build(site_src("v1"), store, activate=True)
    store.keep_last_known()
    known = store.ids()
    calls: list[str] = []
    real = store._redis.smembers

    def counted(*args: Any) -> Any:
        calls.append("smembers")
        return real(*args)

    store._redis.smembers = counted
    redis_server.stop()
    try:
        assert store.ids() == known  # tried Redis once, answered from the last state
        assert calls == ["smembers"]
        assert store.ids() == known  # right after: not tried again
        assert calls == ["smembers"]
    finally:
        redis_server.start()


def test_a_value_above_the_bulk_limit_is_named(
    store: Any, raw: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deploysync.store import redis as redis_store

    monkeypatch.setattr(redis_store, "LARGE_VALUE", 1 << 20)
    src = tmp_path / "big"
    src.mkdir()
    (src / "big.bin").write_bytes(bytes(range(256)) * (8 << 12))  # 8 MB
    raw.config_set("proto-max-bulk-len", str(4 << 20))
    try:
        with pytest.raises(StoreError) as caught:
            build(src, store, compress=False)
    finally:
        raw.config_set("proto-max-bulk-len", str(512 << 20))
    assert "proto-max-bulk-len" in str(caught.value)
    assert store.ids() == []


def test_a_lost_blob_is_reported_as_one_missing_asset(
    store: Any, raw: Any, site_src: SrcFactory, caplog: pytest.LogCaptureFixture
) -> None:
    deployment = build(site_src("v1"), store, activate=True).deployment
    lost = deployment.assets["css/base.css"]
    raw.delete(f"deploysync:blob:{lost.digest}")  # evicted
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        runtime = Runtime(store)
    try:
        assert runtime.snapshot.current_id == deployment.id
        assert lost.name not in runtime.snapshot.files
        assert deployment.assets["css/app.css"].name in runtime.snapshot.files
    finally:
        runtime.close()
    told = [r.getMessage() for r in caplog.records if lost.name in r.getMessage()]
    assert told and all(m.endswith("that asset answers 404 until it can be read") for m in told)


def test_many_lost_blobs_are_told_in_one_line(
    store: Any, raw: Any, site_src: SrcFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A prune racing a server's first read: hundreds of assets at once, one line.
    deployment = build(site_src("v1"), store, activate=True).deployment
    for asset in deployment.assets.values():
        raw.delete(f"deploysync:blob:{asset.digest}")
    with caplog.at_level(logging.ERROR, logger="deploysync"):
        runtime = Runtime(store)
    try:
        assert not runtime.snapshot.files.keys() & {a.name for a in deployment.assets.values()}
        runtime.refresh()  # the same problems again: not told again
    finally:
        runtime.close()
    told = [r.getMessage() for r in caplog.records if "Cannot read asset" in r.getMessage()]
    more = len(deployment.assets) - 1
    assert len(told) == 1, told
    assert told[0].endswith(
        f"(and {more} more assets); those assets answer 404 until they can be read"
    )


def test_a_build_writes_again_the_blobs_the_store_lost(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    big = "".join(f".rule-{i} {{ margin: {i}px }}\n" for i in range(200)).encode()
    src = site_src("v1")
    (src / "css" / "big.css").write_bytes(big)
    deployment = build(src, store, activate=True).deployment
    compressed = deployment.assets["css/big.css"]
    assert set(compressed.encodings) >= {"gzip"}
    plain = deployment.assets["css/base.css"]
    raw.delete(f"deploysync:blob:{plain.digest}", f"deploysync:blob:{compressed.digest}:gzip")
    lost = {plain.digest: plain.encodings, compressed.digest: compressed.encodings}
    assert store.missing_blobs(lost) == set(lost)
    # The same folder again: the deployment exists, its lost blobs come back.
    result = build(src, store)
    assert not result.created
    assert result.stored_blobs == 2
    assert store.missing_blobs(lost) == set()
    assert gzip.decompress(store.read_blob(compressed.digest, "gzip")) == big
    # A new deployment reusing a lost blob writes it again too.
    raw.delete(f"deploysync:blob:{plain.digest}")
    newer = build(site_src("v2"), store).deployment
    assert newer.assets["css/base.css"].digest == plain.digest
    assert store.read_blob(plain.digest) == (src / "css" / "base.css").read_bytes()


def test_a_server_gives_up_on_a_hanging_redis_sooner_than_a_command(store: Any) -> None:
    from deploysync.store.redis import SERVER_SOCKET_TIMEOUT, SOCKET_TIMEOUT

    kwargs = store._redis.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == SOCKET_TIMEOUT
    store.keep_last_known()  # what a server's runtime does
    store.ids()
    assert kwargs["socket_timeout"] == SERVER_SOCKET_TIMEOUT < SOCKET_TIMEOUT
    connection = store._redis.connection_pool.make_connection()
    assert connection.socket_timeout == SERVER_SOCKET_TIMEOUT
    connection.disconnect()


def test_a_running_server_serves_a_blob_a_build_restored(
    store: Any, raw: Any, site_src: SrcFactory, tmp_path: Path
) -> None:
    src = site_src("v1")
    write_big_css(src)
    deployment = build(src, store, activate=True).deployment
    plain = deployment.assets["css/base.css"]
    coded = deployment.assets["css/big.css"]
    raw.delete(f"deploysync:blob:{plain.digest}", f"deploysync:blob:{coded.digest}:gzip")
    runtime = Runtime(store.url, cache_dir=tmp_path / "server-cache")
    try:
        files = runtime.snapshot.files
        assert plain.name not in files
        # A lost variant: the asset is served without it meanwhile.
        assert files[coded.name].gzip is None and files[coded.name].identity is not None
        build(src, store)  # restores them, and tells the servers
        assert runtime.refresh()
        files = runtime.snapshot.files
        assert plain.name in files
        assert files[coded.name].gzip is not None
    finally:
        runtime.close()


def test_prune_keeps_held_and_unlisted_deployments_when_the_list_lost_them(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    held = build(site_src("v1"), store).deployment
    other = build(site_src("v2"), store).deployment
    current = build(site_src("v3"), store, activate=True).deployment
    store.hold(held.id)
    raw.delete("deploysync:deployments")
    listed = {info.id for info in store.list()}
    assert listed == {held.id, other.id, current.id}
    result = store.prune(keep=1)
    # The newest and the current are one; the held one stays; the other goes whole.
    assert result.deployments == (other.id,)
    for deployment in (held, current):
        for digest in deployment.digests():
            assert store.read_blob(digest)
    assert raw.exists(f"deploysync:deployment:{other.id}") == 0


def test_activating_a_deployment_that_lost_blobs_is_refused(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    first = build(site_src("v1"), store, activate=True).deployment
    second = build(site_src("v2"), store).deployment
    lost = second.assets["js/app.js"]
    raw.delete(f"deploysync:blob:{lost.digest}")
    with pytest.raises(StoreError, match="1 of its blobs are missing"):
        store.activate(second.id)
    assert store.current() == first.id


def test_the_eviction_warning_follows_the_command_and_its_error(redis_url: str, raw: Any) -> None:
    raw.config_set("maxmemory", "512mb")
    raw.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, _, err = run_cli("activate", "0123456789abcdef", "--store", redis_url)
    finally:
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", "0")
    assert code == 1
    lines = err.splitlines()
    assert lines[0].startswith("deploysync: error: Unknown deployment")
    assert lines[1].startswith("deploysync: warning: Redis at")


def test_a_failed_build_keeps_the_blobs_it_was_restoring(
    store: Any, raw: Any, site_src: SrcFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = site_src("v1")
    write_big_css(src)
    current = build(src, store, activate=True).deployment
    big = current.assets["css/big.css"]
    raw.delete(f"deploysync:blob:{big.digest}:gzip")  # evicted
    (src / "extra.txt").write_text("a new file")

    def full(*args: Any, **kwargs: Any) -> bool:
        raise StoreError("OOM command not allowed when used memory > 'maxmemory'")

    monkeypatch.setattr(store, "publish", full)
    with pytest.raises(StoreError, match="OOM"):
        build(src, store)
    # The blob the failed build was writing again is the current deployment's: kept.
    assert store.read_blob(big.digest)
    assert store.missing_blobs({big.digest: ()}) == set()


def test_an_asset_that_failed_to_load_is_tried_again(
    store: Any, site_src: SrcFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(site_src("v1"), store, activate=True)
    runtime = Runtime(store.url, cache_dir=tmp_path / "server-cache")
    try:
        newer = build(site_src("v2"), store, activate=True).deployment
        real = runtime.store.blob_path
        failing = {"left": 1}

        def hiccup(digest: str, encoding: str | None = None) -> str:
            if failing["left"]:
                failing["left"] -= 1
                raise StoreError("Cannot reach Redis at ...: Connection reset by peer")
            return real(digest, encoding)

        monkeypatch.setattr(runtime.store, "blob_path", hiccup)
        runtime.refresh()
        names = {a.name for a in newer.assets.values()}
        assert runtime.snapshot.current_id == newer.id
        assert not names <= set(runtime.snapshot.files)  # one failed this time
        runtime.refresh()  # the store did not change: read again all the same
        assert names <= set(runtime.snapshot.files)
    finally:
        runtime.close()


def test_a_deployment_that_lost_a_variant_can_still_be_activated(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    src = site_src("v1")
    write_big_css(src)
    first = build(src, store, activate=True).deployment
    build(site_src("v2"), store, activate=True)
    big = first.assets["css/big.css"]
    raw.delete(f"deploysync:blob:{big.digest}:gzip")  # its bytes stay: served without it
    store.activate(first.id)
    assert store.current() == first.id


def test_a_server_pinned_to_a_deployment_not_built_yet_serves_the_others(
    store: Any, site_src: SrcFactory, tmp_path: Path
) -> None:
    built = build(site_src("v1"), store, activate=True).deployment
    runtime = Runtime(store.url, deployment="0123456789abcdef", cache_dir=tmp_path / "c")
    try:
        assert runtime.snapshot.current_id == "0123456789abcdef"
        assert {a.name for a in built.assets.values()} <= set(runtime.snapshot.files)
    finally:
        runtime.close()


def test_a_pinned_server_of_a_store_never_activated_sees_new_deployments(
    store: Any, site_src: SrcFactory, tmp_path: Path
) -> None:
    first = build(site_src("v1"), store).deployment  # pinned containers: no activation
    runtime = Runtime(store.url, deployment=first.id, cache_dir=tmp_path / "c")
    try:
        second = build(site_src("v2"), store).deployment
        runtime.refresh()
        assert {a.name for a in second.assets.values()} <= set(runtime.snapshot.files)
    finally:
        runtime.close()


def test_a_manifest_listing_an_encoding_this_version_does_not_know_is_served(
    store: Any, raw: Any, site_src: SrcFactory
) -> None:
    # A newer build (zstd variants, say) shares the store: this server serves the rest.
    src = site_src("v1")
    write_big_css(src)
    deployment = build(src, store, activate=True).deployment
    key = f"deploysync:deployment:{deployment.id}"
    manifest = json.loads(raw.get(key))
    for entry in manifest["assets"].values():
        if entry.get("encodings"):
            entry["encodings"]["zstd"] = 12
    raw.set(key, json.dumps(manifest))
    runtime = Runtime(store)
    try:
        assert runtime.snapshot.current_id == deployment.id
        assert set(runtime.snapshot.files) >= {a.name for a in deployment.assets.values()}
    finally:
        runtime.close()
