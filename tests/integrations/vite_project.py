"""A real Vite build of ``examples/vite_app`` (a small Vue app) for the tests (npm, cached
in tests/.cache)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "examples" / "vite_app"
CACHE = REPO / "tests" / ".cache" / "vite-app"
ENTRY = "src/main.ts"
LAZY = "src/lazy.ts"


def require_npm() -> str:
    """The npm executable; skip without it, except in CI, where that is a failure."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        reason = "needs node and npm (apt-get install npm) for a real Vite build"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must not skip the Vite tests", pytrace=False)
        pytest.skip(reason)
    return npm


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    # Parallel test processes share the cache: one installs, the others wait.
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> None:
    proc = subprocess.run(
        args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
            f"{proc.stderr[-3000:]}"
        )


def prepare() -> Path:
    """Copy the example app into the cache and install Vite there (once)."""
    npm = require_npm()
    with _locked(CACHE):
        for name in ("package.json", "vite.config.js", "index.html"):
            if (SOURCE / name).exists():
                shutil.copy2(SOURCE / name, CACHE / name)
        shutil.rmtree(CACHE / "src", ignore_errors=True)
        shutil.copytree(SOURCE / "src", CACHE / "src")
        modules = CACHE / "node_modules"
        if not (modules / ".bin" / "vite").exists() or not (modules / "vue").is_dir():
            install = [npm, "install", "--no-audit", "--no-fund"]
            if _node_version() < (20, 19):
                # Vite 7 and later need Node 20.19+, and npm only warns about it (then
                # the build fails): Debian 12's npm comes with Node 18, which Vite 6 runs on.
                install += ["--no-save", "vite@6", "vue@3"]
            _run(install, CACHE)
    return CACHE


def _node_version() -> tuple[int, ...]:
    node = shutil.which("node") or "node"
    found = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    try:
        return tuple(int(part) for part in found.stdout.strip().lstrip("v").split(".")[:2])
    except ValueError:
        return (0,)


def vite_build(out: Path, version: str) -> Path:
    """``vite build`` of the example into *out*, with ``VITE_APP_VERSION=version``."""
    root = prepare()
    with _locked(CACHE):
        _run(
            [
                str(root / "node_modules" / ".bin" / "vite"),
                "build",
                "--outDir",
                str(out),
                "--emptyOutDir",
            ],
            root,
            env={"VITE_APP_VERSION": version},
            timeout=120,
        )
    return out
