"""Helpers shared by the build and command-line tests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_build_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep each test's build cache out of the user's home and away from other tests."""
    previous = os.environ.get("DEPLOYSYNC_CACHE_DIR")
    os.environ["DEPLOYSYNC_CACHE_DIR"] = str(tmp_path_factory.mktemp("build-cache"))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DEPLOYSYNC_CACHE_DIR", None)
        else:
            os.environ["DEPLOYSYNC_CACHE_DIR"] = previous


def write_tree(root: Path, files: Mapping[str, str | bytes]) -> Path:
    """Create *files* (logical path -> content) under *root*; return *root*."""
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content, encoding="utf-8")
        else:
            target.write_bytes(content)
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under *root* -> a digest of its content ("dir" for folders)."""
    if not root.exists():
        return {}
    found: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return found


def files_of(root: Path) -> dict[str, str]:
    """The files of :func:`snapshot`: an empty folder under objects/ holds nothing (a
    deleted blob leaves its folder, as prune does)."""
    return {path: kind for path, kind in snapshot(root).items() if kind != "dir"}


SITE: dict[str, str | bytes] = {
    "css/app.css": (
        '@import "base.css";\n'
        "body { background: url(../img/bg.png) no-repeat; }\n"
        '@font-face { src: url("../fonts/f.woff2?v=1#iefix") format("woff2"); }\n'
        ".logo { background: url('/static/img/logo.svg'); }\n"
        ".ext { background: url(https://cdn.example/x.png); }\n"
        "/*# sourceMappingURL=app.css.map */\n"
    ),
    "css/base.css": "html { color: black; }\n",
    "css/app.css.map": '{"version":3,"sources":[]}',
    "js/main.js": (
        'import { helper } from "./lib/helper.js";\n'
        'import "./side.js";\n'
        'import React from "react";\n'
        'const lazy = () => import("./lazy.js");\n'
        'const logo = new URL("../img/logo.svg", import.meta.url);\n'
        'const notARef = "./lib/helper.js";\n'
        '// import "./commented.js"\n'
        "export default helper;\n"
    ),
    "js/lib/helper.js": 'export const helper = () => "h";\n',
    "js/side.js": "console.log('side');\n",
    "js/lazy.js": "export default 1;\n",
    "img/bg.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    "img/logo.svg": '<svg xmlns="http://www.w3.org/2000/svg">' + "<g/>" * 200 + "</svg>\n",
    "fonts/f.woff2": b"wOF2" + bytes(range(256)),
    "LICENSE": "MIT\n",
}
