"""deploysync.build: fingerprinting a folder into a deployment of a store."""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import marshal
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from build_fixtures import SITE, files_of, isolated_build_cache, snapshot, write_tree
from deploysync import build as build_module
from deploysync.build import (
    BuildError,
    build,
    compressible,
    content_type,
    hashed_name,
    precompress,
    strongly_connected,
)
from deploysync.manifest import Deployment, DeploySyncError, InvalidId, normalize_static_url
from deploysync.store import FileStore, Store, StoreError

__all__ = ["isolated_build_cache"]

HASH = r"[0-9a-f]{12}"


def served(store: FileStore, deployment: Deployment, path: str) -> bytes:
    return store.read_blob(deployment.assets[path].digest)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "site", SITE)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


# -- names and the manifest ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("css/app.css", "css/app.0123456789ab.css"),
        ("app.min.js", "app.min.0123456789ab.js"),
        ("LICENSE", "LICENSE.0123456789ab"),
        (".htaccess", ".htaccess.0123456789ab"),
        ("a/b/my file.png", "a/b/my file.0123456789ab.png"),
    ],
)
def test_hashed_name(path: str, expected: str) -> None:
    assert hashed_name(path, "0123456789abcdef" * 4) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.css", "text/css; charset=utf-8"),
        ("a.js", "text/javascript; charset=utf-8"),
        ("a.mjs", "text/javascript; charset=utf-8"),
        ("a.json", "application/json; charset=utf-8"),
        ("a.map", "application/json; charset=utf-8"),
        ("a.svg", "image/svg+xml; charset=utf-8"),
        ("a.html", "text/html; charset=utf-8"),
        ("a.png", "image/png"),
        ("a.woff2", "font/woff2"),
        ("a.wasm", "application/wasm"),
        ("LICENSE", "application/octet-stream"),
        ("APP.CSS", "text/css; charset=utf-8"),
        ("README.md", "text/markdown; charset=utf-8"),
        ("subs.vtt", "text/vtt; charset=utf-8"),
        ("lib.cjs", "text/javascript; charset=utf-8"),
        ("data.jsonld", "application/ld+json"),
        ("scene.gltf", "model/gltf+json"),
        ("scene.glb", "model/gltf-binary"),
        ("sound.ogg", "audio/ogg"),
        ("clip.ogv", "video/ogg"),
        ("anim.apng", "image/apng"),
        ("photo.jxl", "image/jxl"),
        ("page.xhtml", "application/xhtml+xml"),
        ("tex.ktx2", "image/ktx2"),
        # a compressed file is what it is: no browser is told to decode it
        ("data.json.gz", "application/gzip"),
        ("logo.svgz", "application/gzip"),
        ("site.tgz", "application/gzip"),
        ("dump.sql.xz", "application/x-xz"),
        ("app.js.br", "application/octet-stream"),
    ],
)
def test_content_type(path: str, expected: str) -> None:
    assert content_type(path) == expected


def test_a_compressed_file_is_served_as_it_is_and_not_compressed_again(
    tmp_path: Path, store: FileStore
) -> None:
    data = gzip.compress(b'{"a": 1}' * 200, mtime=0)
    src = write_tree(tmp_path / "src", {"data.json.gz": data, "logo.svgz": data})
    deployment = build(src, store).deployment
    for path in ("data.json.gz", "logo.svgz"):
        asset = deployment.assets[path]
        assert (asset.content_type, dict(asset.encodings)) == ("application/gzip", {})


def test_json_and_xml_of_any_kind_are_compressed(tmp_path: Path, store: FileStore) -> None:
    text = '{"@context": "https://schema.org", "name": "a"}\n' * 40
    src = write_tree(tmp_path / "src", {"data.jsonld": text, "scene.gltf": text})
    deployment = build(src, store).deployment
    for path in ("data.jsonld", "scene.gltf"):
        assert "gzip" in deployment.assets[path].encodings


def test_content_types_do_not_depend_on_pythons_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # Python's mimetypes table changes between versions (README.md was untyped before
    # 3.12): the deployment id of the same source must not.
    import mimetypes

    build_module._base_type.cache_clear()
    build_module._content_type.cache_clear()
    monkeypatch.setattr(mimetypes, "guess_type", lambda *a, **k: ("text/x-other", None))
    try:
        assert content_type("notes.md") == "text/markdown; charset=utf-8"
        assert content_type("page.unknown") == "application/octet-stream"
    finally:
        build_module._base_type.cache_clear()
        build_module._content_type.cache_clear()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.js", True),
        ("a.css", True),
        ("a.svg", True),
        ("a.json", True),
        ("a.wasm", True),
        ("a.ttf", True),
        ("a.otf", True),
        ("a.eot", True),
        ("a.html", True),
        ("a.xml", True),
        ("a.png", False),
        ("a.jpg", False),
        ("a.woff2", False),
        ("a.gz", False),
        ("a.br", False),
        ("a.zip", False),
        ("a.webp", False),
    ],
)
def test_compressible(path: str, expected: bool) -> None:
    assert compressible(path) is expected


def test_every_file_becomes_a_hashed_asset(site: Path, store: FileStore) -> None:
    result = build(site, store)
    deployment = result.deployment
    assert result.created
    assert sorted(deployment.assets) == sorted(SITE)
    for path, asset in deployment.assets.items():
        data = served(store, deployment, path)
        assert asset.digest == hashlib.sha256(data).hexdigest()
        assert asset.size == len(data)
        assert (
            asset.integrity == "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()
        )
        assert asset.content_type == content_type(path)
        stem, _, ext = path.rpartition(".")
        if path == "LICENSE":
            assert re.fullmatch(rf"LICENSE\.{HASH}", asset.name)
        else:
            assert re.fullmatch(rf"{re.escape(stem)}\.{HASH}\.{ext}", asset.name), asset.name
    # A file without references is served as it is, named after its own bytes.
    bg = deployment.assets["img/bg.png"]
    assert bg.digest == hashlib.sha256(SITE["img/bg.png"]).hexdigest()  # type: ignore[arg-type]
    assert bg.name == hashed_name("img/bg.png", bg.digest)
    assert store.load(deployment.id) == deployment
    assert store.current() is None


def test_css_references_are_rewritten(site: Path, store: FileStore) -> None:
    deployment = build(site, store).deployment
    css = served(store, deployment, "css/app.css").decode()
    names = {path: asset.name for path, asset in deployment.assets.items()}
    base = names["css/base.css"].rpartition("/")[2]
    bg = names["img/bg.png"]
    font = names["fonts/f.woff2"]
    assert f'@import "{base}";' in css
    assert f"url(../{bg})" in css
    assert f'url("../{font}?v=1#iefix")' in css  # the query and fragment are kept
    assert f"url('/static/{names['img/logo.svg']}')" in css  # rooted stays rooted
    assert "url(https://cdn.example/x.png)" in css
    assert f"sourceMappingURL={names['css/app.css.map'].rpartition('/')[2]} */" in css
    # The acyclic rule: a rewritten file is named after its final bytes.
    assert deployment.assets["css/app.css"].name == hashed_name(
        "css/app.css", hashlib.sha256(css.encode()).hexdigest()
    )


def test_js_references_are_rewritten(site: Path, store: FileStore) -> None:
    deployment = build(site, store).deployment
    js = served(store, deployment, "js/main.js").decode()
    names = {path: asset.name.rpartition("/")[2] for path, asset in deployment.assets.items()}
    assert f'from "./lib/{names["js/lib/helper.js"]}";' in js
    assert f'import "./{names["js/side.js"]}";' in js
    assert f'import("./{names["js/lazy.js"]}")' in js
    assert f'new URL("../img/{names["img/logo.svg"]}", import.meta.url)' in js
    assert 'import React from "react";' in js  # bare specifier
    assert 'const notARef = "./lib/helper.js";' in js  # a string that merely looks like a path
    assert '// import "./commented.js"' in js


def test_same_source_gives_the_same_id_in_any_store(site: Path, tmp_path: Path) -> None:
    first = build(site, tmp_path / "one").deployment
    again = build(site, tmp_path / "one")
    other = build(site, tmp_path / "two", cache=False).deployment
    assert first.id == again.deployment.id == other.id
    assert not again.created
    assert first.assets == other.assets


def test_a_byte_change_gives_a_new_id_and_keeps_other_urls(site: Path, store: FileStore) -> None:
    first = build(site, store).deployment
    (site / "js" / "lazy.js").write_text("export default 2;\n")
    second = build(site, store)
    assert second.deployment.id != first.id
    changed = {p for p in first.assets if first.assets[p] != second.deployment.assets[p]}
    # The importer of the changed file changes with it; nothing else moves.
    assert changed == {"js/lazy.js", "js/main.js"}
    assert second.stored_blobs == 2


def test_static_url_is_recorded_and_used(site: Path, store: FileStore) -> None:
    deployment = build(site, store, static_url="assets").deployment
    assert deployment.static_url == "/assets/"
    css = served(store, deployment, "css/app.css").decode()
    # "/static/img/logo.svg" is outside the /assets/ prefix: not ours, left alone.
    assert "url('/static/img/logo.svg')" in css


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("static", "/static/"),
        ("/assets", "/assets/"),
        ("/app/assets/", "/app/assets/"),
        ("/v1.2/a-b_c~d/", "/v1.2/a-b_c~d/"),
        ("https://cdn.example.com:8443/s", "https://cdn.example.com:8443/s/"),
        ("http://[::1]:8000/static/", "http://[::1]:8000/static/"),
    ],
)
def test_static_url_is_normalized(given: str, expected: str) -> None:
    assert normalize_static_url(given) == expected
    assert normalize_static_url(expected) == expected


@pytest.mark.parametrize(
    ("given", "reason"),
    [
        ("", "must not be empty"),
        ("/a?b/", "cannot contain '?'"),
        ("/static/?v=1", "cannot contain '?'"),
        ("/static#top", "cannot contain '#'"),
        ("https://cdn.example/s?x", "cannot contain '?'"),
        ("/a/../b/", "cannot be '..'"),
        ("..", "cannot be '..'"),
        ("/./", "cannot be '.'"),
        ("/static/.", "cannot be '.'"),
        ("/a//b/", "cannot contain '//'"),
        ("https://cdn.example//s/", "cannot contain '//'"),
        ("//cdn.example/s/", "starts a host name"),
        ("/my static/", "' ' cannot be part"),
        ("/my%20static/", "'%' cannot be part"),
        ("/stätic/", "'ä' cannot be part"),
        ("/a\\b/", "'\\\\' cannot be part"),
        ('/a"b/', "'\"' cannot be part"),
        ("/a<b>/", "'<' cannot be part"),
        ("ftp://cdn.example/s/", "http(s)://"),
        ("https:///s/", "http(s)://"),
        ("https://cdn example/s/", "http(s)://"),
        ("http://[::1/s/", "Invalid IPv6 URL"),
        # every URL of the site would be the assets' (the app's pages 404)
        ("/", "the prefix '/' would take every URL"),
        ("https://cdn.example.com", "the prefix '/' would take every URL"),
    ],
)
def test_a_static_url_no_asset_could_be_served_under_is_refused(
    given: str, reason: str, site: Path, store: FileStore
) -> None:
    with pytest.raises(DeploySyncError) as caught:
        normalize_static_url(given)
    assert reason in str(caught.value)
    if given:
        assert str(caught.value).startswith(f"Invalid static URL {given!r}: ")
    with pytest.raises(DeploySyncError):
        build(site, store, static_url=given)
    assert not store.root.exists()


def test_the_middleware_refuses_a_static_url_no_asset_could_be_served_under(
    site: Path, store: FileStore
) -> None:
    from deploysync.wsgi import DeploySync

    build(site, store, activate=True)
    with pytest.raises(DeploySyncError, match=r"Invalid static URL '/a\?b/'"):
        DeploySync(lambda environ, start_response: [], store=store, static_url="/a?b/")


def test_deployment_id_option(site: Path, store: FileStore) -> None:
    result = build(site, store, deployment_id="v1-0_abc", activate=True)
    assert result.deployment.id == "v1-0_abc"
    assert store.current() == "v1-0_abc"
    assert result.activated


@pytest.mark.parametrize("bad", ["", "a b", "x" * 65, "../etc", "é"])
def test_malformed_id_is_refused_before_touching_the_store(
    site: Path, tmp_path: Path, bad: str
) -> None:
    with pytest.raises(InvalidId):
        build(site, tmp_path / "store", deployment_id=bad)
    assert not (tmp_path / "store").exists()


def test_names_with_spaces_and_non_ascii(tmp_path: Path, store: FileStore) -> None:
    src = write_tree(
        tmp_path / "src",
        {
            "css/app.css": (
                '.a { background: url("my%20img.png"); }\n'
                ".b { background: url('../img/café.png'); }\n"
                ".c { background: url(../img/caf%C3%A9.png); }\n"
            ),
            "css/my img.png": b"\x89PNG one",
            "img/café.png": b"\x89PNG two",
            "js/entrée.js": 'import "./spaced name.js";\n',
            "js/spaced name.js": "export {};\n",
        },
    )
    result = build(src, store, strict=True)
    deployment = result.deployment
    assert result.warnings == []
    spaced = deployment.assets["css/my img.png"].name.rpartition("/")[2]
    cafe = deployment.assets["img/café.png"].name.rpartition("/")[2]
    assert spaced.startswith("my img.")
    css = served(store, deployment, "css/app.css").decode()
    assert f'url("{spaced.replace(" ", "%20")}")' in css
    quoted_cafe = cafe.replace("é", "%C3%A9")
    assert f"url('../img/{quoted_cafe}')" in css
    assert f"url(../img/{quoted_cafe})" in css
    js = served(store, deployment, "js/entrée.js").decode()
    assert deployment.assets["js/spaced name.js"].name.rpartition("/")[2].replace(" ", "%20") in js


# -- cycles ----------------------------------------------------------------------------------


CYCLE: dict[str, str | bytes] = {
    "js/a.js": 'import { b } from "./b.js";\nexport const a = () => b();\n',
    "js/b.js": (
        'import { a } from "./a.js";\nimport { c } from "./c.js";\nexport const b = () => a;\n'
    ),
    "js/c.js": "export const c = 1;\n",
    "js/entry.js": 'import "./a.js";\n',
    "css/one.css": '@import "two.css";\n.one { background: url(../img/x.png); }\n',
    "css/two.css": "@import url(three.css);\n",
    "css/three.css": '@import "one.css";\n',
    "css/self.css": ".s { background: url(self.css#x); }\n",
    "img/x.png": b"png",
}


def test_cycles_are_rewritten_consistently(tmp_path: Path, store: FileStore) -> None:
    src = write_tree(tmp_path / "src", CYCLE)
    result = build(src, store, strict=True)
    deployment = result.deployment
    names = {p: a.name.rpartition("/")[2] for p, a in deployment.assets.items()}
    a_js = served(store, deployment, "js/a.js").decode()
    b_js = served(store, deployment, "js/b.js").decode()
    assert f'from "./{names["js/b.js"]}"' in a_js
    assert f'from "./{names["js/a.js"]}"' in b_js
    assert f'from "./{names["js/c.js"]}"' in b_js
    assert f'import "./{names["js/a.js"]}"' in served(store, deployment, "js/entry.js").decode()
    one = served(store, deployment, "css/one.css").decode()
    three = served(store, deployment, "css/three.css").decode()
    assert f'@import "{names["css/two.css"]}"' in one
    assert f'@import "{names["css/one.css"]}"' in three
    assert f"url({names['css/self.css']}#x)" in served(store, deployment, "css/self.css").decode()
    for path, asset in deployment.assets.items():
        assert asset.digest == hashlib.sha256(served(store, deployment, path)).hexdigest(), path


def test_cycles_are_deterministic_and_follow_their_dependencies(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "src", CYCLE)
    first = build(src, tmp_path / "s1").deployment
    second = build(src, tmp_path / "s2", cache=False).deployment
    assert first.id == second.id
    assert first.assets == second.assets
    # A change below the cycle renames the whole cycle (and what imports it), not others.
    (src / "js" / "c.js").write_text("export const c = 2;\n")
    third = build(src, tmp_path / "s1").deployment
    moved = {p for p in first.assets if first.assets[p].name != third.assets[p].name}
    assert moved == {"js/a.js", "js/b.js", "js/c.js", "js/entry.js"}


def test_strongly_connected_components_in_dependency_order() -> None:
    edges = {"a": ["b"], "b": ["a", "c"], "c": [], "d": ["d"], "e": ["a", "d"]}
    components = strongly_connected(sorted(edges), edges)
    assert components == [["c"], ["a", "b"], ["d"], ["e"]]


def test_strongly_connected_handles_deep_graphs_without_recursion() -> None:
    depth = 20_000  # far beyond the recursion limit
    nodes = [f"m{i:05d}" for i in range(depth)]
    edges = {node: [nodes[i + 1]] if i + 1 < depth else [nodes[0]] for i, node in enumerate(nodes)}
    assert strongly_connected(nodes, edges) == [nodes]
    edges[nodes[-1]] = []
    components = strongly_connected(nodes, edges)
    assert components[0] == [nodes[-1]] and components[-1] == [nodes[0]]


def test_a_deep_import_chain_builds(tmp_path: Path, store: FileStore) -> None:
    depth = 200
    files: dict[str, str | bytes] = {
        f"js/m{i}.js": f'import "./m{i + 1}.js";\n' for i in range(depth)
    }
    files[f"js/m{depth}.js"] = 'import "./m0.js";\n'  # and one cycle through all of them
    src = write_tree(tmp_path / "src", files)
    deployment = build(src, store, strict=True).deployment
    names = {p: a.name.rpartition("/")[2] for p, a in deployment.assets.items()}
    for i in range(depth):
        assert (
            f'"./{names[f"js/m{i + 1}.js"]}"' in served(store, deployment, f"js/m{i}.js").decode()
        )


def test_references_with_escapes_are_rewritten_unescaped(tmp_path: Path, store: FileStore) -> None:
    src = write_tree(
        tmp_path / "src",
        {
            "css/app.css": ".a { background: url(../img/c\\.png) }\n",
            "js/app.js": 'import "./esc\\u0061pe.js";\n',
            "js/escape.js": "export {};\n",
            "img/c.png": b"png",
        },
    )
    result = build(src, store, strict=True)
    deployment = result.deployment
    css = served(store, deployment, "css/app.css").decode()
    js = served(store, deployment, "js/app.js").decode()
    image = deployment.assets["img/c.png"].name.rpartition("/")[2]
    module = deployment.assets["js/escape.js"].name.rpartition("/")[2]
    assert css == f".a {{ background: url(../img/{image}) }}\n"
    assert js == f'import "./{module}";\n'
    assert result.warnings == []


# -- warnings and strict mode ----------------------------------------------------------------


def test_missing_reference_is_a_warning_naming_file_and_line(
    tmp_path: Path, store: FileStore
) -> None:
    # Each counts its language's line breaks: U+2028 is one in JavaScript, not in CSS.
    css = "/* \u2028 */" + "\n" * 11 + ".x { background: url(img/nope.png); }\n"
    js = '/* \u2028 */\nimport "./gone.js";\n'
    src = write_tree(tmp_path / "src", {"css/app.css": css, "js/a.js": js, "img/ok.png": b"ok"})
    seen: list[str] = []
    result = build(src, store, warn=seen.append)
    expected = [
        "css/app.css:12: reference to missing file 'img/nope.png'",
        "js/a.js:3: reference to missing file './gone.js'",
    ]
    assert result.warnings == expected
    assert seen == expected
    # The reference is left as written.
    assert b"url(img/nope.png)" in served(store, result.deployment, "css/app.css")


def test_strict_turns_warnings_into_an_error_and_leaves_the_store_unchanged(
    tmp_path: Path, site: Path, store: FileStore
) -> None:
    build(site, store, activate=True)
    before = snapshot(store.root)
    (site / "css" / "broken.css").write_text(".x { background: url(nope.png); }\n")
    with pytest.raises(
        BuildError, match=r"css/broken\.css:1: reference to missing file 'nope\.png'"
    ):
        build(site, store, strict=True)
    assert snapshot(store.root) == before


# -- compression -----------------------------------------------------------------------------


def test_precompressed_variants(tmp_path: Path, store: FileStore) -> None:
    text = "".join(f"function f{i}(a) {{ return a * {i}; }}\n" for i in range(400))
    src = write_tree(
        tmp_path / "src",
        {
            "app.js": text,
            "photo.png": os.urandom(4096),
            "tiny.css": "a{}",
            "random.ttf": os.urandom(4096),
            "big-random.ttf": os.urandom(100_000),  # past the sample's size
            "big.css": text * 20,
        },
    )
    deployment = build(src, store).deployment
    app = deployment.assets["app.js"]
    assert set(app.encodings) == {"gzip", "br"}
    gz = store.read_blob(app.digest, "gzip")
    assert gzip.decompress(gz) == text.encode()
    assert app.encodings["gzip"] == len(gz) < app.size
    brotli = pytest.importorskip("brotli")
    assert brotli.decompress(store.read_blob(app.digest, "br")) == text.encode()
    assert deployment.assets["photo.png"].encodings == {}  # not a compressible type
    assert deployment.assets["tiny.css"].encodings == {}  # too small to gain anything
    assert deployment.assets["random.ttf"].encodings == {}  # compressible type, random bytes
    assert deployment.assets["big-random.ttf"].encodings == {}
    assert set(deployment.assets["big.css"].encodings) == {"gzip", "br"}


def test_gzip_is_reproducible() -> None:
    data = b"hello world " * 100
    assert precompress(data)["gzip"] == precompress(data)["gzip"]
    assert precompress(data)["gzip"][4:8] == b"\0\0\0\0"  # mtime 0


def test_brotli_quality_is_a_choice_of_size_against_time() -> None:
    brotli = pytest.importorskip("brotli")
    text = "".join(f"export const value{i} = compute({i}, 'label {i % 7}');\n" for i in range(3000))
    data = text.encode()
    best = precompress(data, brotli_quality=11)["br"]
    fast = precompress(data, brotli_quality=5)["br"]
    assert brotli.decompress(best) == brotli.decompress(fast) == data
    assert len(best) <= len(fast)


@pytest.mark.parametrize("quality", [-1, 12])
def test_brotli_quality_out_of_range_is_refused(quality: int, site: Path, store: FileStore) -> None:
    with pytest.raises(BuildError, match="Brotli quality"):
        build(site, store, brotli_quality=quality)
    assert not store.root.exists() or not store.ids()


def test_no_compress(site: Path, store: FileStore) -> None:
    deployment = build(site, store, compress=False).deployment
    assert all(not asset.encodings for asset in deployment.assets.values())


def test_stored_content_is_never_compressed_again(
    site: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(site, store).deployment
    calls: list[int] = []
    original = build_module.precompress

    def counting(data: bytes, brotli_quality: int = 9) -> dict[str, bytes]:
        calls.append(len(data))
        return original(data, brotli_quality)

    monkeypatch.setattr(build_module, "precompress", counting)
    (site / "js" / "side.js").write_text("console.log('changed side');\n" * 20)
    second = build(site, store)
    # The changed file and its importer only; the rest reuses the recorded variants.
    assert len(calls) == 2
    assert second.reused_blobs == len(first.assets) - 2
    assert (
        second.deployment.assets["img/logo.svg"].encodings == first.assets["img/logo.svg"].encodings
    )


def _edit_cache(edit: Callable[[dict[str, Any]], None]) -> None:
    """Apply *edit* to the data of the (one) build cache file."""
    cache_file = next(Path(os.environ["DEPLOYSYNC_CACHE_DIR"]).glob("build-*.cache"))
    header, check, body = cache_file.read_bytes().split(b"\n", 2)
    assert check == b"%08x" % zlib.crc32(body)
    data = marshal.loads(body)
    edit(data)
    body = marshal.dumps(data)
    cache_file.write_bytes(header + b"\n%08x\n" % zlib.crc32(body) + body)


def _age_stat_cache() -> None:
    """Make the stat cache trust the files as they are now.

    The stat cache distrusts files modified within 2 s of being recorded (they could
    change again unseen within the same timestamp tick): age the records instead of waiting.
    """

    def age(data: dict[str, Any]) -> None:
        for entry in data["stat"].values():
            entry[5] += 10**10  # as if recorded 10 s later than the files' last change

    _edit_cache(age)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """A list that gets a 1 each time the build calls its function *name*."""
    calls: list[int] = []
    original = getattr(build_module, name)

    def counted(*args: Any) -> Any:
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(build_module, name, counted)
    return calls


def _spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    original = build_module._read

    def spy(rel: str, path: str) -> bytes:
        read.append(rel)
        return original(rel, path)

    monkeypatch.setattr(build_module, "_read", spy)
    return read


def test_rebuild_does_not_read_unchanged_files(
    site: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(site, store).deployment
    _age_stat_cache()
    read = _spy_reads(monkeypatch)
    again = build(site, store).deployment
    assert again == first
    assert read == []


@pytest.mark.parametrize(
    ("edited", "expected_reads"),
    [
        # A module: it, and the module importing it (rewritten with the new name).
        ("js/lib/helper.js", ["js/lib/helper.js", "js/main.js"]),
        # An image: it, and the two files naming it.
        ("img/logo.svg", ["css/app.css", "img/logo.svg", "js/main.js"]),
        # A leaf nothing references: only it.
        ("LICENSE", ["LICENSE"]),
    ],
)
def test_rebuild_after_one_change_reads_only_it_and_its_referrers(
    site: Path,
    store: FileStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    edited: str,
    expected_reads: list[str],
) -> None:
    build(site, store)
    _age_stat_cache()
    with open(site / edited, "a") as fh:
        fh.write("\n/* changed */\n")
    read = _spy_reads(monkeypatch)
    incremental = build(site, store).deployment
    assert sorted(set(read)) == expected_reads
    # The same deployment as a build from scratch into another store.
    cold = build(site, tmp_path / "cold", cache=False).deployment
    assert incremental.id == cold.id
    assert incremental.assets == cold.assets
    for asset in incremental.assets.values():
        assert store.read_blob(asset.digest) == FileStore(tmp_path / "cold").read_blob(asset.digest)


def _random_module(rng: random.Random, names: list[str]) -> str:
    """A module importing some of *names* (maybe itself: cycles), maybe missing ones."""
    lines = [f'import "./{target}";' for target in rng.sample(names, rng.randint(0, 3))]
    if rng.random() < 0.3:
        lines.append(f'const lazy = () => import("./gone-{rng.randint(0, 2)}.js");')
    if rng.random() < 0.3:
        lines.append('const img = new URL("../img/i0.png", import.meta.url);')
    lines.append(f"export const v = {rng.randint(0, 10**6)};")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("seed", range(4))
def test_rebuilds_of_the_changed_files_only_equal_builds_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, any_store: Store, seed: int
) -> None:
    """Random edits (changed, added, removed and renamed modules, stylesheets and images,
    import cycles, references to files that come and go, files touched but not changed,
    the first tree again), some after a prune or with an activation: after each, the
    rebuild, which redoes only what the edit reaches, gives the deployment a build from
    scratch gives."""
    rng = random.Random(seed)
    src, store = tmp_path / "src", any_store
    names = [f"m{i}.js" for i in range(8)] + ["gone-0.js", "gone-1.js"]
    files: dict[str, str | bytes] = {f"js/{n}": _random_module(rng, names) for n in names[:8]}
    files["css/a.css"] = '@import "b.css";\n.x { background: url(../img/i0.png); }\n'
    files["css/b.css"] = ".y { background: url(../img/i1.png); }\n"
    files["img/i0.png"] = b"\x89PNG0" * 50
    files["img/i1.png"] = b"\x89PNG1" * 50
    write_tree(src, files)
    first = build(src, store).deployment
    redone: list[int] = []
    original = build_module._to_redo

    def spy(entries: Any, *args: Any) -> Any:
        todo, same = original(entries, *args)
        redone.append(len(todo))
        return todo, same

    monkeypatch.setattr(build_module, "_to_redo", spy)
    actions = ["edit", "edit", "add", "remove", "rename", "css", "image", "touch", "first"]
    for step in range(14):
        _age_stat_cache()
        present = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
        action = rng.choice(actions)
        if action == "edit":
            target = src / rng.choice([p for p in present if p.endswith(".js")])
            target.write_text(target.read_text() + _random_module(rng, names))
        elif action == "add":
            write_tree(src, {f"js/{rng.choice(names)}": _random_module(rng, names)})
        elif action == "remove" and len(present) > 4:
            (src / rng.choice(present)).unlink()
        elif action == "rename":  # as many files as before, one name gone, one new
            moved = src / rng.choice(present)
            moved.rename(moved.with_name(f"r{step}-{moved.name}"))
        elif action == "css":
            write_tree(
                src, {"css/b.css": f".y{step} {{ background: url(../img/i{step % 3}.png); }}"}
            )
        elif action == "touch":  # a new stat, the same bytes
            touched = src / rng.choice(present)
            touched.write_bytes(touched.read_bytes())
        elif action == "first":  # the first deployment again (found in the store)
            shutil.rmtree(src)
            write_tree(src, files)
        else:
            write_tree(src, {f"img/i{rng.randint(0, 2)}.png": f"\x89PNG{step}".encode() * 40})
        if rng.random() < 0.2:
            store.prune(keep=1)
        activate = rng.random() < 0.3
        warnings: list[str] = []
        incremental = build(src, store, activate=activate, warn=warnings.append)
        cold_store = FileStore(tmp_path / f"cold-{step}")
        cold_warnings: list[str] = []
        cold = build(src, cold_store, cache=False, warn=cold_warnings.append)
        assert incremental.deployment.id == cold.deployment.id
        assert incremental.deployment.assets == cold.deployment.assets
        assert store.load(cold.deployment.id).assets == cold.deployment.assets
        assert warnings == cold_warnings
        if activate:
            assert store.current() == cold.deployment.id
        for asset in incremental.deployment.assets.values():
            assert store.read_blob(asset.digest) == cold_store.read_blob(asset.digest)
            for encoding in asset.encodings:
                assert store.read_blob(asset.digest, encoding)
        if action == "first":
            assert incremental.deployment.id == first.id
    # Most rebuilds redid a part of the files only.
    assert sum(0 < count < len(list(src.rglob("*.*"))) for count in redone) >= 6


def test_a_rebuild_repeats_the_warnings_of_unchanged_files_and_strict_refuses_them(
    tmp_path: Path, store: FileStore
) -> None:
    src = write_tree(
        tmp_path / "src",
        {"a.js": 'import "./missing.js";\n', "b.css": "x { background: url(gone.png) }\n"},
    )
    first = build(src, store)
    assert len(first.warnings) == 2
    _age_stat_cache()
    assert build(src, store).warnings == first.warnings  # nothing changed
    with pytest.raises(BuildError, match=r"a\.js:1: reference to missing file"):
        build(src, store, strict=True, activate=True)
    assert store.current() is None
    _age_stat_cache()
    (src / "c.txt").write_text("new\n")  # a change elsewhere: a.js and b.css are kept
    assert build(src, store).warnings == first.warnings
    _age_stat_cache()
    (src / "missing.js").write_text("export {};\n")  # a.js now names a file
    rebuilt = build(src, store)
    assert rebuilt.warnings == first.warnings[1:]
    assert (
        rebuilt.deployment.assets["missing.js"].name
        in store.read_blob(rebuilt.deployment.assets["a.js"].digest).decode()
    )


def test_a_rebuild_counts_the_blobs_of_unchanged_files_as_reused(
    site: Path, store: FileStore
) -> None:
    shutil.copy(site / "css" / "base.css", site / "css" / "copy.css")  # one blob, two files
    first = build(site, store).deployment
    assert len(first.digests()) < len(first.assets)
    _age_stat_cache()
    (site / "LICENSE").write_text("changed\n")
    again = build(site, store)
    assert (again.stored_blobs, again.reused_blobs) == (1, len(first.digests()) - 1)
    _age_stat_cache()
    same = build(site, store, activate=True)
    assert (same.created, same.activated, store.current()) == (False, True, again.deployment.id)
    assert (same.stored_blobs, same.reused_blobs) == (0, len(again.deployment.digests()))


def test_a_rebuild_after_a_build_under_a_given_id_derives_the_id(
    site: Path, store: FileStore, tmp_path: Path
) -> None:
    build(site, store, deployment_id="release-1")
    _age_stat_cache()
    derived = build(site, tmp_path / "other", cache=False).deployment.id
    assert build(site, store).deployment.id == derived


@pytest.mark.parametrize("edit", [None, "LICENSE"])
def test_a_rebuild_keeps_the_cache_entries_of_the_files_it_took_as_they_were(
    site: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch, edit: str | None
) -> None:
    # After a rebuild that redid few files (or none), a build going through every file
    # (under its own id) still finds every unchanged one in the cache: it reads none.
    build(site, store)
    _age_stat_cache()
    if edit is not None:
        (site / edit).write_text("changed\n")
    build(site, store)
    _age_stat_cache()
    read = _spy_reads(monkeypatch)
    build(site, store, deployment_id="release-1")
    assert read == []


def test_a_rebuild_of_an_unchanged_source_leaves_the_cache_file_alone(
    site: Path, store: FileStore
) -> None:
    first = build(site, store).deployment
    _age_stat_cache()
    cache_file = next(Path(os.environ["DEPLOYSYNC_CACHE_DIR"]).glob("build-*.cache"))
    before = cache_file.read_bytes(), cache_file.stat().st_ino
    assert build(site, store).deployment == first
    assert (cache_file.read_bytes(), cache_file.stat().st_ino) == before


def test_build_caches_no_build_used_for_a_month_are_deleted(site: Path, tmp_path: Path) -> None:
    """One cache per source folder and store: stores in temporary folders (CI, demos)
    would leave theirs forever. A new one clears those unused for 30 days."""
    folder = tmp_path / "cache"
    folder.mkdir()
    month = 31 * 86400
    old, recent, other = folder / "build-0ld.cache", folder / "build-recent.cache", folder / "x"
    for path, age in ((old, month), (recent, 29 * 86400), (other, month)):
        path.write_bytes(b"")
        os.utime(path, (time.time() - age, time.time() - age))
    build(site, tmp_path / "store", cache_dir=folder)
    assert not old.exists() and recent.exists() and other.exists()
    assert len(list(folder.glob("build-*.cache"))) == 2


def test_a_build_cache_in_use_stays_fresh_when_nothing_changes(
    site: Path, store: FileStore
) -> None:
    build(site, store)
    _age_stat_cache()
    cache_file = next(Path(os.environ["DEPLOYSYNC_CACHE_DIR"]).glob("build-*.cache"))
    month_ago = time.time() - 31 * 86400
    os.utime(cache_file, (month_ago, month_ago))
    build(site, store)  # nothing to write: the file is touched instead
    assert time.time() - cache_file.stat().st_mtime < 3600


def test_a_build_under_a_given_id_after_nothing_changed_publishes_that_id(
    site: Path, store: FileStore
) -> None:
    build(site, store)
    _age_stat_cache()
    assert build(site, store, deployment_id="release-1").deployment.id == "release-1"
    assert store.exists("release-1")


def test_a_rebuild_under_another_static_url_derives_its_id(
    site: Path, store: FileStore, tmp_path: Path
) -> None:
    build(site, store)
    _age_stat_cache()
    again = build(site, store, static_url="/assets/").deployment
    cold = build(site, tmp_path / "cold", static_url="/assets/", cache=False).deployment
    assert (again.id, again.assets) == (cold.id, cold.assets)
    assert store.load(again.id).static_url == "/assets/"


@pytest.mark.parametrize("pruned", [False, True])
def test_a_rebuild_s_progress_only_grows_to_its_total(
    site: Path, store: FileStore, tmp_path: Path, pruned: bool
) -> None:
    build(site, store)
    _age_stat_cache()
    if pruned:  # the shortcut is given up before any work
        build(write_tree(tmp_path / "other", {"x.css": "x {}\n"}), store, activate=True)
        store.prune(keep=1)
    (site / "LICENSE").write_text("changed\n")
    seen: list[tuple[int, int]] = []
    build(site, store, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1]
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_rebuild_repeats_the_vite_manifest_warnings(tmp_path: Path, store: FileStore) -> None:
    dist = write_tree(
        tmp_path / "dist",
        {
            "assets/x-abc.js": "export {};\n",
            ".vite/manifest.json": json.dumps(
                {"x": {"file": "assets/x-abc.js", "css": ["assets/gone-123.css"]}}
            ),
        },
    )
    first = build(dist, store).warnings
    assert first
    _age_stat_cache()
    assert build(dist, store).warnings == first
    with pytest.raises(BuildError, match=r"gone-123\.css"):
        build(dist, store, strict=True)


class _LeakyStore(FileStore):
    """A directory store that loses blobs by itself, as a Redis evicting keys does."""

    def missing_blobs(self, blobs: Mapping[str, Collection[str]]) -> set[str]:
        lost = set()
        for digest, encodings in blobs.items():
            found = self.blob_variants(digest)
            if found is None or not set(encodings) <= set(found):
                lost.add(digest)
        return lost


@pytest.mark.parametrize("change", ["nothing", "another file", "back to the first"])
def test_a_rebuild_restores_a_blob_the_store_lost(site: Path, tmp_path: Path, change: str) -> None:
    store = _LeakyStore(tmp_path / "leaky")
    first = build(site, store).deployment
    license_text = (site / "LICENSE").read_text()
    if change == "back to the first":
        _age_stat_cache()
        (site / "LICENSE").write_text("changed\n")
        build(site, store)
    _age_stat_cache()
    store.delete_blob(first.assets["css/app.css"].digest)  # a file the rebuild keeps
    if change == "another file":
        (site / "LICENSE").write_text("changed again\n")
    elif change == "back to the first":
        (site / "LICENSE").write_text(license_text)
    again = build(site, store).deployment
    assert store.missing_blobs({a.digest: a.encodings for a in again.assets.values()}) == set()
    assert again.assets == build(site, tmp_path / "cold", cache=False).deployment.assets


class _UnstampedStore(FileStore):
    """A store without a cheap token per deployment (the default of a backend)."""

    def deployment_stamp(self, deployment_id: str) -> str | None:
        return None


def test_a_store_without_stamps_rebuilds_through_every_file(site: Path, tmp_path: Path) -> None:
    # The last deployment cannot be checked as still published: it is not kept.
    store = _UnstampedStore(tmp_path / "unstamped")
    build(site, store)
    _age_stat_cache()

    def check(data: dict[str, Any]) -> None:
        assert data["last"] is None

    _edit_cache(check)
    (site / "LICENSE").write_text("changed\n")
    again = build(site, store).deployment
    assert again.assets == build(site, tmp_path / "cold", cache=False).deployment.assets


class _PruningStore(FileStore):
    """A directory store pruned, once armed, by another writer just before a build takes
    its lock (after the build's first look at its base)."""

    armed = False

    @contextlib.contextmanager
    def _pruned_first(self) -> Iterator[None]:
        with super().lock():
            if self.armed:
                self.armed = False
                self.prune(keep=1)
            yield

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return self._pruned_first()


@pytest.mark.parametrize("changed", [False, True])
def test_a_prune_just_before_a_rebuild_takes_the_lock(
    site: Path, tmp_path: Path, changed: bool
) -> None:
    store = _PruningStore(tmp_path / "pruned")
    first = build(site, store).deployment
    build(write_tree(tmp_path / "other", {"x.css": "x {}\n"}), store, activate=True)
    _age_stat_cache()
    if changed:
        (site / "LICENSE").write_text("changed\n")
    store.armed = True
    again = build(site, store).deployment
    assert not store.armed
    assert (again.id == first.id) is not changed
    assert (
        store.load(again.id).assets == build(site, tmp_path / "cold", cache=False).deployment.assets
    )
    for asset in again.assets.values():
        assert store.blob_variants(asset.digest) == asset.encodings


@pytest.mark.redis
@pytest.mark.parametrize("changed", [False, True])
@pytest.mark.parametrize("evicted", ["blobs", "deployment", "stamps"])
def test_a_redis_rebuild_repairs_what_redis_evicted(
    site: Path, tmp_path: Path, redis_url: str, evicted: str, changed: bool
) -> None:
    import redis

    from deploysync.store.redis import RedisStore

    store = RedisStore(redis_url, cache_dir=tmp_path / "copies")
    raw = redis.Redis.from_url(redis_url)
    try:
        first = build(site, store).deployment
        _age_stat_cache()
        key = f"deploysync:deployment:{first.id}" if evicted == "deployment" else evicted
        assert raw.delete(key if evicted == "deployment" else f"deploysync:{key}") == 1
        if changed:
            (site / "LICENSE").write_text("changed\n")
        again = build(site, store).deployment
        cold = build(site, tmp_path / "cold", cache=False).deployment
        assert (again.id, again.assets) == (cold.id, cold.assets)
        assert store.load(again.id).assets == cold.assets
        assert store.missing_blobs({a.digest: a.encodings for a in cold.assets.values()}) == set()
        # Stamped again: the next rebuild takes the shortcut.
        assert store.deployment_stamp(again.id) is not None
        _age_stat_cache()
        with pytest.MonkeyPatch.context() as patch:
            calls = _count_calls(patch, "_same_as_last")
            assert build(site, store).deployment == again
        assert calls == [1]
    finally:
        raw.close()
        store.close()


def test_a_cache_that_fails_its_checksum_is_not_trusted(site: Path, store: FileStore) -> None:
    first = build(site, store).deployment
    _age_stat_cache()
    cache_file = next(Path(os.environ["DEPLOYSYNC_CACHE_DIR"]).glob("build-*.cache"))
    header, check, body = cache_file.read_bytes().split(b"\n", 2)
    data = marshal.loads(body)
    data["last"][3]["LICENSE"][0] = "LICENSE.bad0bad0bad0"  # as a flipped bit would
    cache_file.write_bytes(header + b"\n" + check + b"\n" + marshal.dumps(data))
    assert build(site, store).deployment == first


def test_records_of_another_shape_are_not_trusted(site: Path, store: FileStore) -> None:
    first = build(site, store).deployment
    _age_stat_cache()

    def spoil(data: dict[str, Any]) -> None:
        for record in data["last"][3].values():
            del record[-1]  # as a cache of another layout would have them

    _edit_cache(spoil)
    (site / "LICENSE").write_text("changed\n")
    again = build(site, store).deployment
    assert again.assets["css/app.css"] == first.assets["css/app.css"]


def test_a_rebuild_after_one_under_other_settings_takes_the_shortcut(
    site: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(site, store)
    _age_stat_cache()
    build(site, store, compress=False)  # the same deployment, found again
    _age_stat_cache()
    calls = _count_calls(monkeypatch, "_to_redo")
    (site / "LICENSE").write_text("changed\n")
    build(site, store, compress=False)
    assert calls == [1]


def test_rebuild_into_an_emptied_store_derives_the_cached_bytes_again(
    site: Path, store: FileStore, tmp_path: Path
) -> None:
    # The cache knows the final digest of every rewritten file; with the store gone, their
    # bytes must be derived again (and checked against those digests) to be stored.
    first = build(site, store).deployment
    _age_stat_cache()
    shutil.rmtree(store.root)
    again = build(site, store).deployment
    assert again.id == first.id
    assert again.assets == first.assets
    main = first.assets["js/main.js"]
    assert b"./lib/helper." in store.read_blob(main.digest)
    assert hashlib.sha256(store.read_blob(main.digest)).hexdigest() == main.digest


def test_a_damaged_cache_only_costs_time(site: Path, store: FileStore) -> None:
    first = build(site, store).deployment
    cache_files = list(Path(os.environ["DEPLOYSYNC_CACHE_DIR"]).glob("build-*.cache"))
    assert cache_files
    for cache_file in cache_files:
        header, _, body = cache_file.read_bytes().partition(b"\n")
        cache_file.write_bytes(header + b"\n" + body[: len(body) // 2])  # truncated
    assert build(site, store).deployment == first
    for cache_file in cache_files:
        cache_file.write_text('{"version": 2, "stat": [1, 2], "refs": "x"}')
    assert build(site, store).deployment == first


@pytest.mark.parametrize("umask", [0o002, 0o000])
def test_the_cache_folder_the_build_creates_is_private_whatever_the_umask(
    site: Path, store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int
) -> None:
    # The servers of a Redis store keep their copies in the same folder and refuse one
    # that others may write to (docs/deploying.md).
    monkeypatch.delenv("DEPLOYSYNC_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    old = os.umask(umask)
    try:
        build(site, store)
    finally:
        os.umask(old)
    for folder in (tmp_path / "xdg", tmp_path / "xdg" / "deploysync"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert list((tmp_path / "xdg" / "deploysync").glob("build-*.cache"))


def test_store_folders_are_not_writable_by_others_whatever_the_umask(
    site: Path, tmp_path: Path
) -> None:
    # Files are 0644 whatever the umask; under umask 000 world-writable folders would let
    # any local user replace a served asset.
    old = os.umask(0)
    try:
        build(site, tmp_path / "parent" / "store", activate=True)
    finally:
        os.umask(old)
    folders = [p for p in (tmp_path / "parent").rglob("*") if p.is_dir()]
    assert len(folders) > 5
    for folder in [tmp_path / "parent", *folders]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
    files = [p for p in (tmp_path / "parent").rglob("*") if p.is_file()]
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o022 for p in files)


@pytest.mark.parametrize("changed", [False, True])
@pytest.mark.parametrize("compress_again", [False, True])
def test_rebuild_after_its_deployment_was_pruned(
    site: Path, store: FileStore, tmp_path: Path, compress_again: bool, changed: bool
) -> None:
    # The cache trusts its entries about blobs only while the deployment it last made is
    # published: once pruned, its blobs may be gone or stored again differently.
    first = build(site, store, activate=True).deployment
    _age_stat_cache()
    other = write_tree(tmp_path / "other", {"x.css": "body { color: red }\n" * 40})
    build(other, store, activate=True)
    store.prune(keep=1)
    assert not store.exists(first.id)
    assert not any(store.blob_stamp(a.digest) for a in first.assets.values())
    if changed:  # the unchanged files' blobs are gone with the deployment
        (site / "LICENSE").write_text("changed\n")
    again = build(site, store, compress=compress_again).deployment
    cold = build(site, tmp_path / "cold", compress=compress_again, cache=False).deployment
    assert (again.id, again.assets) == (cold.id, cold.assets)
    assert (again.id == first.id) is not changed
    for asset in again.assets.values():
        assert store.blob_variants(asset.digest) == asset.encodings
        assert store.read_blob(asset.digest)
        for encoding in asset.encodings:
            assert len(store.read_blob(asset.digest, encoding)) == asset.encodings[encoding]
    assert any(a.encodings for a in again.assets.values()) is compress_again


@pytest.mark.parametrize("junk", [None, 7, "x", [], [1, 2, 3], {"a": 1}, ["a" * 64, -1]])
def test_cache_entries_of_the_wrong_shape_are_ignored(
    site: Path, store: FileStore, tmp_path: Path, junk: object
) -> None:
    first = build(site, store).deployment
    _age_stat_cache()

    def spoil(data: dict[str, Any]) -> None:
        assert data["base"] == [first.id, store.deployment_stamp(first.id)]
        for name, section in data.items():
            if isinstance(section, dict):
                for key in section:
                    section[key] = junk
            else:
                data[name] = junk

    _edit_cache(spoil)
    assert build(site, store).deployment == first
    assert build(site, tmp_path / "other").deployment.assets == first.assets


@pytest.mark.parametrize(
    "packed", [b"", b"\x00garbage", marshal.dumps([[1, 2]]), marshal.dumps([])]
)
def test_damaged_packed_references_only_cost_time(
    site: Path, store: FileStore, packed: bytes
) -> None:
    first = build(site, store).deployment
    _age_stat_cache()

    def spoil(data: dict[str, Any]) -> None:
        assert data["scan"]
        for entry in data["scan"].values():
            entry[2] = packed
        # Also force the rewrite of every module, which needs the references.
        data["final"].clear()

    _edit_cache(spoil)
    shutil.rmtree(store.root)
    assert build(site, store).deployment.assets == first.assets


# -- Vite ------------------------------------------------------------------------------------


VITE_DIST: dict[str, str] = {
    ".vite/manifest.json": json.dumps(
        {
            "index.html": {
                "file": "assets/index-BXb3a1Zq.js",
                "name": "index",
                "src": "index.html",
                "isEntry": True,
                "imports": ["_shared-B7PI925R.js"],
                "dynamicImports": ["src/lazy.ts"],
                "css": ["assets/index-C1sQ9fXa.css"],
                "assets": ["assets/logo-Dq7rWm2x.svg"],
                "integrity": "ignored",
            },
            "_shared-B7PI925R.js": {"file": "assets/shared-B7PI925R.js", "name": "shared"},
            "src/lazy.ts": {
                "file": "assets/lazy-CcE1qs9a.js",
                "src": "src/lazy.ts",
                "isDynamicEntry": True,
            },
        }
    ),
    "index.html": '<script type="module" src="/assets/index-BXb3a1Zq.js"></script>',
    "assets/index-BXb3a1Zq.js": 'import "./shared-B7PI925R.js";\nimport("./lazy-CcE1qs9a.js");\n',
    "assets/shared-B7PI925R.js": "export const s = 1;\n",
    "assets/lazy-CcE1qs9a.js": 'import "./missing-but-ignored.js";\n',
    "assets/index-C1sQ9fXa.css": "body { background: url(/favicon.svg); }\n",
    "assets/logo-Dq7rWm2x.svg": "<svg/>",
    "favicon.svg": "<svg>fav</svg>",
    "public.css": '.x { background: url("assets/logo-Dq7rWm2x.svg"); }\n',
}


def test_vite_dist_keeps_vite_names(tmp_path: Path, store: FileStore) -> None:
    dist = write_tree(tmp_path / "dist", VITE_DIST)
    result = build(dist, store, strict=True)  # auto-detected from .vite/manifest.json
    deployment = result.deployment
    assert ".vite/manifest.json" not in deployment.assets
    for path in (
        "assets/index-BXb3a1Zq.js",
        "assets/shared-B7PI925R.js",
        "assets/lazy-CcE1qs9a.js",
        "assets/index-C1sQ9fXa.css",
        "assets/logo-Dq7rWm2x.svg",
    ):
        asset = deployment.assets[path]
        assert asset.name == path  # no double hashing
        assert served(store, deployment, path) == VITE_DIST[path].encode()
    assert re.fullmatch(rf"favicon\.{HASH}\.svg", deployment.assets["favicon.svg"].name)
    assert re.fullmatch(rf"index\.{HASH}\.html", deployment.assets["index.html"].name)
    # A non-Vite file pointing at a Vite file gets its (unchanged) name.
    assert b'url("assets/logo-Dq7rWm2x.svg")' in served(store, deployment, "public.css")
    vite = deployment.extra["vite"]
    assert vite["index.html"] == {
        "file": "assets/index-BXb3a1Zq.js",
        "name": "index",
        "src": "index.html",
        "isEntry": True,
        "imports": ["_shared-B7PI925R.js"],
        "dynamicImports": ["src/lazy.ts"],
        "css": ["assets/index-C1sQ9fXa.css"],
        "assets": ["assets/logo-Dq7rWm2x.svg"],
    }
    assert vite["src/lazy.ts"]["isDynamicEntry"] is True
    assert store.load(deployment.id).extra == deployment.extra


def test_no_vite_treats_the_dist_as_plain_files(tmp_path: Path, store: FileStore) -> None:
    dist = write_tree(tmp_path / "dist", VITE_DIST)
    deployment = build(dist, store, vite=False).deployment
    assert ".vite/manifest.json" in deployment.assets
    assert deployment.assets["assets/shared-B7PI925R.js"].name != "assets/shared-B7PI925R.js"
    assert "vite" not in deployment.extra


def test_vite_forced_without_manifest_is_an_error(site: Path, store: FileStore) -> None:
    with pytest.raises(BuildError, match="Vite manifest"):
        build(site, store, vite=True)


# -- bad input -------------------------------------------------------------------------------


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="does not exist"):
        build(tmp_path / "nope", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_source_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildError, match="is not a folder"):
        build(tmp_path / "file", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_empty_source(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(BuildError, match="is empty"):
        build(tmp_path / "empty", tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_fifo_is_refused(site: Path, store: FileStore) -> None:
    os.mkfifo(site / "css" / "pipe.css")
    with pytest.raises(BuildError, match=r"'css/pipe\.css' is not a regular file"):
        build(site, store)
    assert not store.root.exists()


def test_dangling_symlink_is_refused(site: Path, store: FileStore) -> None:
    (site / "img" / "gone.png").symlink_to(site / "img" / "nothing.png")
    with pytest.raises(BuildError, match=r"Cannot read 'img/gone\.png'"):
        build(site, store)
    assert not store.root.exists()


def test_symlink_outside_the_source_is_refused(
    site: Path, store: FileStore, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (site / "leak.txt").symlink_to(secret)
    with pytest.raises(BuildError, match=r"'leak\.txt' is a symbolic link leading outside"):
        build(site, store)
    assert not store.root.exists()


def test_a_name_that_is_not_utf8_is_refused_in_one_line(
    site: Path, store: FileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(os.fsencode(site) + b"/img/bad\xff.png", "wb") as fh:
        fh.write(b"x")
    with pytest.raises(BuildError, match=r"'img/bad\\xff\.png' has a name that is not valid UTF-8"):
        build(site, store)
    assert not store.root.exists()
    from deploysync.cli import main

    assert main(["build", str(site), "--store", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "bad\\xff.png" in err


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("a\\b.css", "'css/a\\\\b.css'"),
        ("new\nline.css", "'css/new\\nline.css'"),
        ("c:x.css", None),
    ],
)
def test_a_name_no_server_would_serve_is_refused_in_one_line(
    site: Path, store: FileStore, capsys: pytest.CaptureFixture[str], name: str, shown: str | None
) -> None:
    """The server leaves such names out of its index (is_safe_name): built, they
    would be assets whose URLs answer 404."""
    folder = site if shown is None else site / "css"
    (folder / name).write_text("b{}")
    shown = shown or repr(name)
    with pytest.raises(BuildError, match=re.escape(f"{shown} has a name that cannot be served")):
        build(site, store)
    assert not store.root.exists()
    from deploysync.cli import main

    assert main(["build", str(site), "--store", str(store.root)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "rename it" in err
    assert not store.root.exists()


def test_a_store_and_cache_inside_the_source_are_not_built_into_it(site: Path) -> None:
    # `deploysync build . --store .deploysync`: the store is not part of the frontend.
    store, cache = site / ".deploysync", site / ".cache"
    first = build(site, store, cache_dir=cache).deployment
    again = build(site, store, cache_dir=cache).deployment
    assert first.id == again.id
    assert not any(name.startswith((".deploysync", ".cache")) for name in first.assets)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("store", "is the store"),
        ("store/objects", "is inside the store"),
        ("cache", "is the build cache"),
    ],
)
def test_a_source_that_is_the_store_or_the_build_cache_is_refused(
    site: Path, tmp_path: Path, where: str, message: str
) -> None:
    # `deploysync build STORE --store STORE`: the store's own files are no frontend.
    store, cache = FileStore(tmp_path / "store"), tmp_path / "cache"
    build(site, store, activate=True, cache_dir=cache)
    before = snapshot(tmp_path)
    with pytest.raises(BuildError, match=message):
        build(tmp_path / where, store, cache_dir=cache)
    assert snapshot(tmp_path) == before


def test_symlinks_inside_the_source_are_followed(site: Path, store: FileStore) -> None:
    (site / "img" / "alias.png").symlink_to(site / "img" / "bg.png")
    (site / "again").symlink_to(site / "img")
    (site / "img" / "loop").symlink_to(site)  # a loop back up: visited once
    deployment = build(site, store).deployment
    assert deployment.assets["img/alias.png"].digest == deployment.assets["img/bg.png"].digest
    assert "again/bg.png" in deployment.assets


def _linked_levels(root: Path, levels: int, width: int = 2) -> Path:
    """A tree where each level holds *width* links to the level below: width**levels
    names."""
    (root / "l0").mkdir(parents=True)
    (root / "l0" / "f.css").write_text("p{}")
    for level in range(1, levels + 1):
        (root / f"l{level}").mkdir()
        for name in "abcdefgh"[:width]:
            (root / f"l{level}" / name).symlink_to(f"../l{level - 1}")
    return root


def test_links_to_linked_folders_are_bounded(tmp_path: Path, store: FileStore) -> None:
    small = _linked_levels(tmp_path / "small", 3)
    names = build(small, store).deployment.assets
    assert len(names) == 1 + 2 + 4 + 8  # l0/f.css, l1/a/f.css, ..., l3/b/b/b/f.css
    before = snapshot(store.root)
    deep = _linked_levels(tmp_path / "deep", 12)  # 2**12 names of one file
    with pytest.raises(BuildError, match="through more than 8 symbolic links to folders"):
        build(deep, store)
    assert snapshot(store.root) == before
    # Not deeper than 8, but wide: 3 links a level make 9,840 linked folders.
    wide = _linked_levels(tmp_path / "wide", 8, width=3)
    with pytest.raises(BuildError, match="More than 1000 folders are reached through symbolic"):
        build(wide, store)
    assert snapshot(store.root) == before


def test_a_file_vite_named_without_a_hash_cannot_change_under_its_url(
    tmp_path: Path, store: FileStore
) -> None:
    # Vite's names carry a hash unless its config drops it: the same URL would then be
    # served, as immutable, with other bytes by the next deployment.
    dist = tmp_path / "dist"
    (dist / ".vite").mkdir(parents=True)
    (dist / "assets").mkdir()
    manifest = {"main.js": {"file": "assets/main.js", "isEntry": True}}
    (dist / ".vite" / "manifest.json").write_text(json.dumps(manifest))
    (dist / "assets" / "main.js").write_text("console.log(1)\n")
    first = build(dist, store, activate=True).deployment
    assert first.assets["assets/main.js"].name == "assets/main.js"
    (dist / "assets" / "other.js").write_text("console.log(3)\n")
    build(dist, store)  # new files, the same bytes under the kept name: fine
    (dist / "assets" / "main.js").write_text("console.log(2)\n")
    before = snapshot(store.root)
    with pytest.raises(BuildError, match=r"'assets/main\.js' keeps the name Vite gave it, but"):
        build(dist, store)
    assert snapshot(store.root) == before


def test_unwritable_store(site: Path, tmp_path: Path) -> None:
    (tmp_path / "regular-file").write_text("x")
    with pytest.raises(StoreError):
        build(site, tmp_path / "regular-file" / "store")
    assert (tmp_path / "regular-file").read_text() == "x"


# -- crashes ---------------------------------------------------------------------------------

KILLED_BUILD = textwrap.dedent(
    """
    import sys
    from deploysync.build import build

    def progress(done, total):
        print(done, flush=True)

    build(sys.argv[1], sys.argv[2], progress=progress, activate=True, workers=2)
    print("done", flush=True)
    """
)


def _big_tree(root: Path) -> Path:
    files: dict[str, str | bytes] = {}
    for i in range(120):
        files[f"js/m{i:03d}.js"] = (
            f'import "./m{i + 1:03d}.js";\n' if i < 119 else 'import "./m000.js";\n'
        ) + "".join(
            f"export const v{i}_{k} = {k} * 2; // {os.urandom(4).hex()}\n" for k in range(60)
        )
        files[f"img/p{i:03d}.png"] = os.urandom(64 * 1024)
    return write_tree(root, files)


def _check_consistent(store_dir: Path) -> list[str]:
    store = FileStore(store_dir)
    ids = store.ids()
    for ident in ids:
        deployment = store.load(ident)
        for asset in deployment.assets.values():
            store.read_blob(asset.digest)  # raises when missing
            for encoding in asset.encodings:
                store.read_blob(asset.digest, encoding)
    current = store.current()
    assert current is None or current in ids
    return ids


@pytest.mark.slow
def test_sigkill_during_a_build_leaves_the_store_old_or_complete(
    tmp_path: Path, site: Path
) -> None:
    big = _big_tree(tmp_path / "big")
    store_dir = tmp_path / "store"
    old = build(site, store_dir, activate=True).deployment.id
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    script = tmp_path / "killed.py"
    script.write_text(KILLED_BUILD)
    total_steps = 2 * 240
    outcomes = []
    # Kill points spread over reading, compressing and writing, and one near the end.
    for kill_at in (1, 200, 250, 330, 420, total_steps - 5):
        with subprocess.Popen(
            [sys.executable, str(script), str(big), str(store_dir)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        ) as process:
            assert process.stdout is not None
            finished = False
            for line in process.stdout:
                if line.strip() == "done":
                    finished = True
                    break
                if line.strip().isdigit() and int(line) >= kill_at:
                    os.kill(process.pid, signal.SIGKILL)
                    break
            process.wait(timeout=60)
        ids = _check_consistent(store_dir)  # every published manifest is complete
        current = FileStore(store_dir).current()
        if finished or len(ids) == 2:
            # The new deployment is complete; killed between publishing and activating,
            # the old one is still current, which is just as consistent.
            assert len(ids) == 2 and current in ids
            outcomes.append("complete")
            break
        assert ids == [old] and current == old  # as it was
        outcomes.append("old")
    # The early kill points land before the publication, whatever the machine's speed.
    assert outcomes[:3] == ["old", "old", "old"]
    # After the crashes, a build still works and makes everything consistent.
    result = build(big, store_dir, activate=True)
    assert FileStore(store_dir).current() == result.deployment.id
    _check_consistent(store_dir)


# -- user-supplied ids ------------------------------------------------------------------------


def test_an_id_already_naming_other_content_is_refused(site: Path, store: FileStore) -> None:
    build(site, store, deployment_id="release-1", activate=True)
    before = snapshot(store.root)
    (site / "app.css").write_text("body { color: teal }\n")
    with pytest.raises(BuildError, match=r"'release-1' already exists .* other content"):
        build(site, store, deployment_id="release-1", activate=True)
    assert snapshot(store.root) == before


def test_an_id_already_naming_another_vite_manifest_is_refused(
    tmp_path: Path, store: FileStore
) -> None:
    entry = {"file": "assets/main-AbCd1234.js", "isEntry": True}
    dist = write_tree(
        tmp_path / "dist",
        {
            "assets/main-AbCd1234.js": "console.log(1)\n",
            ".vite/manifest.json": json.dumps({"src/main.ts": entry}),
        },
    )
    build(dist, store, deployment_id="release-1")
    before = snapshot(store.root)
    manifest = {"src/main.ts": entry, "src/admin.ts": {**entry, "isEntry": True}}
    (dist / ".vite" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match=r"'release-1' already exists .* other content"):
        build(dist, store, deployment_id="release-1")
    assert snapshot(store.root) == before


def test_rebuilding_the_same_content_under_its_id_changes_nothing(
    site: Path, store: FileStore
) -> None:
    first = build(site, store, deployment_id="release-1").deployment
    before = snapshot(store.root)
    again = build(site, store, deployment_id="release-1")
    assert not again.created
    assert again.deployment == first
    assert snapshot(store.root) == before


def test_a_failure_after_blobs_were_written_leaves_the_store_as_it_was(
    tmp_path: Path, site: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(site, store, activate=True)
    before = files_of(store.root)
    src = write_tree(tmp_path / "src", {f"f{n}.css": f"a{{n:{n}}}" * 40 for n in range(40)})
    written: list[str] = []
    real_put, real_precompress = store.put_blob, build_module.precompress

    def put_blob(digest: str, data: bytes, variants: Any) -> None:
        real_put(digest, data, variants)
        written.append(digest)

    def precompress(data: bytes, quality: int = 9) -> dict[str, bytes]:
        if len(written) >= 10:
            raise KeyboardInterrupt  # Ctrl-C: the same as any other failure
        return real_precompress(data, quality)

    monkeypatch.setattr(store, "put_blob", put_blob)
    monkeypatch.setattr(build_module, "precompress", precompress)
    with pytest.raises(KeyboardInterrupt):
        build(src, store, cache=False, workers=1)
    assert len(written) >= 10
    assert files_of(store.root) == before


def test_prepared_blobs_are_written_in_order_with_a_bounded_lead() -> None:
    # The pool prepares blobs while one thread writes them: the pool may not run more
    # than `ahead` results past the writer, so a slow disk does not fill the memory.
    import threading
    from concurrent.futures import ThreadPoolExecutor

    started: list[int] = []
    lock = threading.Lock()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        return item * item

    taken: list[int] = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for result in build_module._in_order(pool, work, range(50), ahead=3):
            with lock:
                lead = len(started) - len(taken)
            assert lead <= 4  # the result being taken and at most 3 more
            taken.append(result)
    assert taken == [n * n for n in range(50)]


def test_a_failing_preparation_stops_the_build_with_the_store_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write_tree(tmp_path / "src", {f"f{n}.css": f"a{{n:{n}}}" * 40 for n in range(40)})
    store = tmp_path / "store"
    calls = 0
    real = build_module.precompress

    def failing(data: bytes, quality: int = 9) -> dict[str, bytes]:
        nonlocal calls
        calls += 1
        if calls == 20:
            raise OSError(28, "No space left on device")
        return real(data, quality)

    monkeypatch.setattr(build_module, "precompress", failing)
    with pytest.raises(OSError):
        build(src, store, cache=False)
    assert FileStore(store).list() == []
    monkeypatch.setattr(build_module, "precompress", real)
    assert build(src, store, cache=False).deployment.assets.keys() == {
        f"f{n}.css" for n in range(40)
    }


def _running(pid: int) -> bool:
    """Whether *pid* runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_scan_workers_exit_when_the_build_is_killed() -> None:
    # A killed build's workers must not live on holding the caller's pipes: a deploy
    # script reading the id (`ID=$(deploysync build ... | tail -n1)`) would hang.
    script = textwrap.dedent(
        """
        import os, time
        from deploysync.build import _scan_pool
        pool = _scan_pool(2)
        pids = {pool.submit(os.getpid).result() for _ in range(4)}
        for _ in range(2):
            pool.submit(time.sleep, 60)
        print(*pids, flush=True)
        time.sleep(60)
        """
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    ) as build_process:
        assert build_process.stdout is not None
        workers = [int(pid) for pid in build_process.stdout.readline().split()]
        assert workers and all(_running(pid) for pid in workers)
        build_process.kill()
    deadline = time.monotonic() + 5
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in workers if _running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "scan workers outlived the killed build"


def test_a_prune_interrupted_mid_blob_leaves_nothing_a_build_takes_as_whole(
    tmp_path: Path, store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_src = write_tree(tmp_path / "old", {"app.css": "body { color: teal }\n" * 60})
    new_src = write_tree(tmp_path / "new", {"app.css": "body { color: plum }\n" * 60})
    cache = tmp_path / "cache"
    old = build(old_src, store, cache_dir=cache).deployment
    assert set(old.assets["app.css"].encodings) >= {"gzip"}
    build(new_src, store, cache_dir=cache, activate=True)
    # The prune is killed right after the first file of the old blob is deleted.
    real_unlink = Path.unlink

    def killed(path: Path, missing_ok: bool = False) -> None:
        if path.parent.parent.name == "objects":
            real_unlink(path, missing_ok)
            raise KeyboardInterrupt
        real_unlink(path, missing_ok)

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        store.prune(keep=1)
    monkeypatch.undo()
    # The old frontend built again (a revert) from the same build cache: whole again.
    again = build(old_src, store, cache_dir=cache).deployment
    assert again.id == old.id
    _check_consistent(store.root)
    # What an interrupted prune leaves is found and finished by the next one.
    store.delete_deployment(old.id)
    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        store.prune(keep=1)
    monkeypatch.undo()
    digest = old.assets["app.css"].digest
    assert list((store.root / "objects" / digest[:2]).glob(digest + "*"))
    store.prune(keep=1)
    assert not list((store.root / "objects" / digest[:2]).glob(digest + "*"))
