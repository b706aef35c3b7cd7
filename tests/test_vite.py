"""Vite: ``deploysync build --vite`` on a real Vite build, and ``vite_tags``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from deploysync import cli
from deploysync.manifest import Asset, Deployment
from deploysync.store import FileStore
from deploysync.vite import ViteError, vite_tags, vite_urls
from integrations.vite_project import ENTRY, LAZY, vite_build

# -- vite_tags on a hand-written manifest (no npm) --------------------------------------------


def deployment_with(manifest: dict[str, Any], static_url: str = "/static/") -> Deployment:
    files = set()
    for chunk in manifest.values():
        files.add(chunk["file"])
        files.update(chunk.get("css", ()))
    assets = {
        f: Asset(path=f, name=f, digest="0" * 64, size=1, content_type="text/plain", integrity="")
        for f in files
    }
    return Deployment(
        id="d1",
        static_url=static_url,
        assets=MappingProxyType(assets),
        extra=MappingProxyType({"vite": manifest}),
    )


MANIFEST: dict[str, Any] = {
    "src/main.ts": {
        "file": "assets/main-AAA.js",
        "src": "src/main.ts",
        "isEntry": True,
        "imports": ["_vendor-BBB.js", "_util-CCC.js"],
        "dynamicImports": ["src/lazy.ts"],
        "css": ["assets/main-AAA.css"],
    },
    "_vendor-BBB.js": {
        "file": "assets/vendor-BBB.js",
        "imports": ["_util-CCC.js"],
        "css": ["assets/vendor-BBB.css", "assets/main-AAA.css"],
    },
    "_util-CCC.js": {"file": "assets/util-CCC.js", "imports": ["_vendor-BBB.js"]},
    "src/lazy.ts": {
        "file": "assets/lazy-DDD.js",
        "isDynamicEntry": True,
        "imports": ["_vendor-BBB.js"],
        "css": ["assets/lazy-DDD.css"],
    },
    "src/style.css": {"file": "assets/style-EEE.css", "src": "src/style.css", "isEntry": True},
}


def test_entry_script_css_and_preloads_recursive_and_deduplicated() -> None:
    html = vite_tags("src/main.ts", deployment_with(MANIFEST))
    assert html.splitlines() == [
        '<link rel="stylesheet" href="/static/assets/main-AAA.css">',
        '<link rel="stylesheet" href="/static/assets/vendor-BBB.css">',
        '<script type="module" src="/static/assets/main-AAA.js"></script>',
        # Dependencies first, each once, whatever the cycles (Vite's importedChunks).
        '<link rel="modulepreload" href="/static/assets/util-CCC.js">',
        '<link rel="modulepreload" href="/static/assets/vendor-BBB.js">',
    ]


def test_dynamic_imports_are_not_preloaded() -> None:
    main, css, preload = vite_urls("src/main.ts", deployment_with(MANIFEST))
    assert main == "/static/assets/main-AAA.js"
    assert not any("lazy" in url for url in [*css, *preload])


def test_css_entry_is_a_stylesheet() -> None:
    html = vite_tags("/src/style.css", deployment_with(MANIFEST))
    assert html == '<link rel="stylesheet" href="/static/assets/style-EEE.css">'


def test_nonce_on_every_tag_and_escaped() -> None:
    html = vite_tags("src/main.ts", deployment_with(MANIFEST), nonce='n"<1')
    lines = html.splitlines()
    assert all(line.count('nonce="n&quot;&lt;1"') == 1 for line in lines)


def test_urls_follow_the_deployment_static_url() -> None:
    html = vite_tags("src/main.ts", deployment_with(MANIFEST, "https://cdn.example/s/"))
    assert 'src="https://cdn.example/s/assets/main-AAA.js"' in html


def test_unknown_entry_raises_naming_the_entries() -> None:
    with pytest.raises(ViteError, match=r"'src/nope.ts'.*src/main.ts, src/style.css"):
        vite_tags("src/nope.ts", deployment_with(MANIFEST))


def test_unknown_entry_is_a_comment_when_not_strict(caplog: pytest.LogCaptureFixture) -> None:
    html = vite_tags("src/nope.ts", deployment_with(MANIFEST), strict=False)
    assert html.startswith("<!--") and "<script" not in html
    assert "src/nope.ts" in caplog.text


def test_deployment_without_vite_manifest() -> None:
    plain = Deployment(id="d2", static_url="/static/", assets=MappingProxyType({}))
    with pytest.raises(ViteError, match="--vite"):
        vite_tags(ENTRY, plain)


# -- a real Vite build -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vite_dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vite_build(tmp_path_factory.mktemp("vite") / "dist", "v1")


@pytest.fixture
def built(vite_dist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Deployment:
    store = tmp_path / "store"
    assert cli.main(["build", str(vite_dist), "--store", str(store), "--activate"]) == 0
    ident = capsys.readouterr().out.strip().splitlines()[-1]
    return FileStore(store).load(ident)


def test_vite_is_detected_and_not_hashed_twice(vite_dist: Path, built: Deployment) -> None:
    vite = json.loads((vite_dist / ".vite" / "manifest.json").read_text())
    files = {c["file"] for c in vite.values()}
    files |= {f for c in vite.values() for f in c.get("css", ())}
    assert files, vite
    for file in files:
        # Vite's names already carry a content hash; the deployment keeps them as they are.
        assert built.assets[file].name == file
        assert built.url(file) == "/static/" + file
    twice = re.compile(r"-[A-Za-z0-9_-]{8}\.[0-9a-f]{12}\.")
    assert not any(twice.search(asset.name) for asset in built.assets.values())


def test_files_vite_emitted_without_listing_them_keep_their_names(
    vite_dist: Path, built: Deployment
) -> None:
    # A worker's chunk and the source maps are not in the manifest, and the bundles,
    # which are not rewritten, ask for them by Vite's names.
    emitted = sorted(p.relative_to(vite_dist).as_posix() for p in (vite_dist / "assets").iterdir())
    assert any(name.endswith(".js.map") for name in emitted), emitted
    worker = [name for name in emitted if name.startswith("assets/worker-")]
    assert worker, emitted
    for name in emitted:
        assert built.assets[name].name == name
    main = (
        vite_dist / json.loads((vite_dist / ".vite" / "manifest.json").read_text())[ENTRY]["file"]
    )
    text = main.read_text()
    assert "/static/" + worker[0] in text
    assert f"sourceMappingURL={main.name}.map" in text


def test_manifest_graph_is_kept(vite_dist: Path, built: Deployment) -> None:
    vite = json.loads((vite_dist / ".vite" / "manifest.json").read_text())
    kept = built.extra["vite"]
    assert set(kept) == set(vite)
    for key, chunk in vite.items():
        for field in ("file", "imports", "dynamicImports", "css", "isEntry"):
            assert kept[key].get(field) == chunk.get(field), (key, field)
    assert LAZY in kept[ENTRY]["dynamicImports"]


def test_vite_tags_of_a_real_build(built: Deployment) -> None:
    manifest = built.extra["vite"]
    entry = manifest[ENTRY]
    shared = [manifest[name] for name in entry["imports"]]
    html = vite_tags(ENTRY, built, nonce="r4nd0m")
    assert f'<script type="module" src="/static/{entry["file"]}" nonce="r4nd0m"></script>' in html
    for css in [*entry["css"], *(c for chunk in shared for c in chunk.get("css", ()))]:
        assert f'<link rel="stylesheet" href="/static/{css}" nonce="r4nd0m">' in html
    for chunk in shared:
        assert f'<link rel="modulepreload" href="/static/{chunk["file"]}" nonce="r4nd0m">' in html
    assert manifest[LAZY]["file"] not in html
    assert len(set(html.splitlines())) == len(html.splitlines())


def test_every_tag_url_is_servable(built: Deployment) -> None:
    html = vite_tags(ENTRY, built)
    urls = re.findall(r'(?:src|href)="/static/([^"]+)"', html)
    assert urls and all(any(a.name == u for a in built.assets.values()) for u in urls)
