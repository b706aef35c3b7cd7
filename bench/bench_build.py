"""Benchmark: ``deploysync build`` against Django's and whitenoise's manifest storages.

Generates a realistic frontend tree (cached in ``$DEPLOYSYNC_BENCH_DIR``, default
``/tmp/deploysync-bench``) and times, each in a fresh subprocess:

* ``deploysync build`` with compression, without, and rebuilds after a one-file change
  (first build and rebuilds: the median of three runs);
* Django ``collectstatic`` with ``ManifestStaticFilesStorage`` (JS module rewriting on);
* whitenoise's ``CompressedManifestStaticFilesStorage`` (the same);
* the floor: a plain loop that reads, sha256-hashes and writes a hashed copy of each file.

Both Django storages fail at their defaults on such a graph ("Max post-process passes
exceeded"), and cannot handle an import cycle at all; they run with
``max_post_process_passes = 100`` on a copy of the tree without the cycle, and their
default run is reported too.

Usage::

    python bench/bench_build.py            # the full tree (>= 2,000 files, >= 100 MB)
    python bench/bench_build.py --quick    # a small tree, to check the script works
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
# The generated trees and every contender's output live outside the checkout: a folder
# that an editor, an indexer or a sync agent watches makes every file operation slower
# (measured here: a first build took 3.3 s in the checkout, 1.3 s in /tmp).
WORK = Path(os.environ.get("DEPLOYSYNC_BENCH_DIR") or tempfile.gettempdir()) / "deploysync-bench"
TREE_VERSION = 5


# -- the tree --------------------------------------------------------------------------------


class Shape:
    """How big a generated tree is."""

    def __init__(self, quick: bool) -> None:
        self.levels = 17 if quick else 20  # import depth: at least 16
        self.js = 120 if quick else 800
        self.css = 40 if quick else 300
        self.images = 60 if quick else 860
        self.fonts = 12 if quick else 120
        self.image_kb = (20, 60) if quick else (60, 160)
        self.name = "quick" if quick else "full"


_WORDS = (
    "state", "props", "render", "update", "value", "index", "items", "fetch", "result",
    "error", "cache", "route", "view", "model", "store", "user", "session", "token", "event",
    "handler", "request", "response", "config", "options", "theme",
)  # fmt: skip


def _js_body(rng: random.Random, ident: str, size: int) -> str:
    """Plausible module code: functions, strings, templates, regexes, comments."""
    parts = [f"/**\n * Module {ident}: import helpers from './not-an-import.js' in docs.\n */\n"]
    while sum(map(len, parts)) < size:
        a, b, c = rng.sample(_WORDS, 3)
        parts.append(
            f"export function {a}_{ident}_{len(parts)}({b}, {c} = {{}}) {{\n"
            f'  // import "./commented-out.js" would be wrong here\n'
            f'  const path = "./{b}/{c}.js"; const re = /^\\/{a}\\/(\\d+)/g;\n'
            f"  const ratio = {b}.length / 2 / ({c}.size || 1);\n"
            f"  const label = `{a} ${{{b}.length}} items in {c}`;\n"
            f'  if ({b} && re.test(path)) {{ return {{ {a}: label, ratio, at: "{ident}" }}; }}\n'
            f"  return [{b}, {c}].map((x) => x && x.{a}).filter(Boolean);\n"
            f"}}\n"
        )
    return "".join(parts)


def generate(root: Path, shape: Shape, *, cycle: bool) -> None:
    """Write the tree into *root* (deterministic: the same shape gives the same bytes)."""
    rng = random.Random(20261126)
    images = [
        f"img/{'photos' if i % 3 else 'icons'}/pic-{i:04d}.{'jpg' if i % 2 else 'png'}"
        for i in range(shape.images)
    ]
    fonts = [f"fonts/face-{i:03d}.{'ttf' if i % 10 == 0 else 'woff2'}" for i in range(shape.fonts)]
    for path in images + fonts:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        low, high = shape.image_kb
        # Random bytes: compressed media does not shrink, as in a real image folder.
        target.write_bytes(rng.randbytes(rng.randint(low, high) * 1024))

    # JS modules per level; level 0 are the entry points.
    per_level = [shape.js // shape.levels] * shape.levels
    per_level[0] += shape.js - sum(per_level)
    modules = [[f"js/l{lv:02d}/m{i:03d}.js" for i in range(n)] for lv, n in enumerate(per_level)]
    for level, names in enumerate(modules):
        for index, path in enumerate(names):
            lines = []
            if level + 1 < len(modules):
                below = modules[level + 1]
                deps = sorted(
                    {below[(index + k * 7) % len(below)] for k in range(rng.randint(1, 3))}
                )
                for k, dep in enumerate(deps):
                    rel = "../" + dep[len("js/") :]
                    if k == 0 and index % 5 == 0:
                        lines.append(f'export * from "{rel}";')
                    elif k == 1 and index % 4 == 0:
                        lines.append(f'export {{ default as dep{k} }} from "{rel}";')
                    else:
                        lines.append(f'import dep{k} from "{rel}";')
            if level == 0 and index == 0:
                lines.append('import { ping } from "../cycle/a.js";')
            # Static imports first, as bundlers and linters order them: Django's regexes
            # would otherwise stretch an "export const" to the next line's "from".
            if level + 1 < len(modules) and index % 6 == 0:
                lazy = modules[level + 1][(index * 3 + 1) % len(modules[level + 1])]
                lines.append(f'export const lazy = () => import("../{lazy[len("js/") :]}");')
            if index % 9 == 0:
                picture = images[(level * 31 + index) % len(images)]
                lines.append(f'export const pic = new URL("../../{picture}", import.meta.url);')
            lines.append('import "side-effect-bare-specifier-is-left-alone";' if index == 1 else "")
            lines.append(_js_body(rng, f"l{level}m{index}", rng.randint(1500, 5000)))
            lines.append(f"export default function main_{level}_{index}() {{ return {index}; }}\n")
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(lines))
    cycle_dir = root / "js" / "cycle"
    cycle_dir.mkdir(parents=True, exist_ok=True)
    (cycle_dir / "a.js").write_text(
        'import { pong } from "./b.js";\nexport function ping(n) { return n ? pong(n - 1) : 0; }\n'
    )
    (cycle_dir / "b.js").write_text(
        ('import { ping } from "./a.js";\n' if cycle else "const ping = () => 0;\n")
        + "export function pong(n) { return n ? ping(n - 1) : 1; }\n"
    )

    for index in range(shape.css):
        lines = []
        for k in range(index % 3):
            other = index + 1 + k * 5
            if other < shape.css:
                lines.append(
                    f'@import "part-{other:03d}.css";'
                    if k == 0
                    else f"@import url(part-{other:03d}.css);"
                )
        for k in range(rng.randint(3, 8)):
            picture = images[(index * 13 + k) % len(images)]
            lines.append(
                f".c{index}-{k} {{ background: url(../{picture}) no-repeat; color: #{k}{k}{k};"
                f" margin: {k}px {k * 2}px; }}"
            )
        font = fonts[index % len(fonts)]
        lines.append(
            f'@font-face {{ font-family: "f{index}"; '
            f'src: url("../{font}?v=1#iefix") format("woff2"); }}'
        )
        lines.append('.data { background: url("data:image/png;base64,iVBORw0KGgo="); }')
        lines.append(f"/* was: url(../{images[index % len(images)]}) */")
        lines.extend(
            f".u{index}-{k} {{ padding: {k}px; border: 1px solid #ccc; display: flex; }}"
            for k in range(rng.randint(20, 60))
        )
        target = root / "css" / f"part-{index:03d}.css"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n".join(lines) + "\n")
    (root / "index.html").write_text("<!doctype html><title>bench</title>\n")
    (root / "favicon.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>\n' * 20)


def tree_ready(shape: Shape, *, cycle: bool) -> Path:
    root = WORK / f"tree-{shape.name}-{'cycle' if cycle else 'acyclic'}-v{TREE_VERSION}"
    marker = root.parent / (root.name + ".complete")
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)
        generate(root, shape, cycle=cycle)
        marker.write_text("")
    return root


# -- the contenders (each runs in its own subprocess: `--run NAME`) --------------------------


def run_deploysync(src: Path, out: Path, extra: list[str]) -> float:
    from deploysync.build import build

    compress = "--no-compress" not in extra
    started = time.perf_counter()
    build(src, out / "store", compress=compress, cache_dir=out / "cache")
    return time.perf_counter() - started


def run_command_line(src: Path, out: Path, extra: list[str]) -> float:
    """``deploysync build`` as typed in a shell: a new interpreter, its imports included."""
    command = [sys.executable, "-m", "deploysync.cli", "build", str(src), "--store"]
    env = {**_shell_env(), "DEPLOYSYNC_CACHE_DIR": str(out / "cache")}
    started = time.perf_counter()
    subprocess.run([*command, str(out / "store")], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _shell_env() -> dict[str, str]:
    """The environment of a command-line run: with compiled bytecode to load, as an
    installed package has (kept outside the checkout)."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(WORK / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_floor(src: Path, out: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    for folder, _, names in os.walk(src):
        for name in names:
            path = Path(folder) / name
            data = path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:12]
            rel = path.relative_to(src)
            stem, dot, ext = rel.name.rpartition(".")
            target = (
                out / rel.parent / (f"{stem}.{digest}.{ext}" if dot else f"{rel.name}.{digest}")
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return time.perf_counter() - started


def run_django(src: Path, out: Path, extra: list[str], *, whitenoise: bool) -> float:
    import django
    from django.conf import settings
    from django.core.management import call_command

    passes = int(extra[0]) if extra else 0
    base = (
        "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if whitenoise
        else "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
    )
    module, _, cls = base.rpartition(".")
    parent = getattr(__import__(module, fromlist=[cls]), cls)
    attrs: dict[str, object] = {"support_js_module_import_aggregation": True}
    if passes:
        attrs["max_post_process_passes"] = passes
    storage = type("BenchStorage", (parent,), attrs)
    sys.modules["__main__"].BenchStorage = storage  # type: ignore[attr-defined]
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        INSTALLED_APPS=["django.contrib.staticfiles"],
        STATIC_URL="/static/",
        STATIC_ROOT=str(out / "static"),
        STATICFILES_DIRS=[str(src)],
        STORAGES={"staticfiles": {"BACKEND": "__main__.BenchStorage"}},
    )
    django.setup()
    started = time.perf_counter()
    call_command("collectstatic", interactive=False, verbosity=0)
    return time.perf_counter() - started


RUNNERS: dict[str, Callable[[Path, Path, list[str]], float]] = {
    "deploysync": run_deploysync,
    "command line": run_command_line,
    "floor": run_floor,
    "django": lambda s, o, e: run_django(s, o, e, whitenoise=False),
    "whitenoise": lambda s, o, e: run_django(s, o, e, whitenoise=True),
}


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(
    name: str, src: Path, out: Path, *extra: str, timeout: float = 1800
) -> tuple[float, float] | str:
    """(wall, CPU) seconds taken by contender *name* in a fresh interpreter, or its error."""
    command = [sys.executable, __file__, "--run", name, str(src), str(out), *extra]
    # This checkout's package, installed or not.
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    # Start from a quiet disk: what earlier runs wrote or deleted is not charged to this one.
    os.sync()
    time.sleep(1)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {done.returncode}"
    wall, cpu = done.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


# -- the report ------------------------------------------------------------------------------


def _read_all(root: Path) -> None:
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                while fh.read(1 << 20):
                    pass


def _size(root: Path) -> tuple[int, int]:
    files = total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            total += os.path.getsize(os.path.join(folder, name))
    return files, total


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run"]:  # a contender, in the subprocess measure() started
        name, source, target, *extra = argv[1:]
        before = _cpu()
        wall = RUNNERS[name](Path(source), Path(target), extra)
        # CPU seconds (all threads and worker processes) next to the wall-clock time: on a
        # machine shared with other work, CPU time is the steadier comparison.
        print(wall, _cpu() - before)
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small tree, for a smoke run")
    parser.add_argument(
        "--skip-django", action="store_true", help="time deploysync and the floor only"
    )
    args = parser.parse_args(argv)

    shape = Shape(args.quick)
    src = tree_ready(shape, cycle=True)
    acyclic = tree_ready(shape, cycle=False)
    files, total = _size(src)
    print(
        f"tree: {src} — {files} files, {total / 2**20:.1f} MB, "
        f"{shape.levels} import levels, one cycle"
    )
    results: dict[str, float | str] = {}
    cpu_results: dict[str, float] = {}
    WORK.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=WORK) as scratch:
        work = Path(scratch)

        def timed(
            label: str,
            name: str,
            source: Path,
            *extra: str,
            out: Callable[[int], Path] | None = None,
            repeat: int = 1,
            before: Callable[[int], None] | None = None,
        ) -> None:
            """Run a contender *repeat* times (each after ``before(i)``); keep the median."""
            walls: list[float] = []
            cpus: list[float] = []
            for i in range(repeat):
                if before is not None:
                    before(i)
                # Outputs stay until the end: deleting 100 MB right before a run makes
                # the file system slower for it (ext4 frees and discards blocks lazily).
                target = out(i) if out is not None else work / f"{label}-{i}".replace(" ", "-")
                # Every contender reads its source from the page cache, not from the disk
                # (this machine's memory manager evicts files not read for a while).
                _read_all(source)
                result = measure(name, source, target, *extra)
                if isinstance(result, str):
                    results[label] = result
                    print(f"  {label:<54} FAILED: {result}", flush=True)
                    return
                walls.append(result[0])
                cpus.append(result[1])
            results[label] = statistics.median(walls)
            cpu_results[label] = statistics.median(cpus)
            shown = f"{results[label]:8.3f} s  (CPU {cpu_results[label]:7.3f} s)"
            if repeat > 1:
                shown += "  median of " + ", ".join(f"{w:.3f}" for w in walls)
            print(f"  {label:<54} {shown}", flush=True)

        # deploysync builds a working copy, edited in place for the rebuilds as a developer
        # or a CI checkout would be (the build cache recognises unchanged files by stat).
        tree_copy = work / "tree"
        shutil.copytree(src, tree_copy)
        # Medians of three for the floor and the build without compression too: one run
        # of each varied by up to 2x on this machine (a 0.30 s floor next to a 1.19 s
        # build, then 0.43-0.61 s next to 0.94-1.07 s in alternation).
        timed("floor (read, sha256, write)", "floor", tree_copy, repeat=3)
        timed("deploysync build --no-compress", "deploysync", tree_copy, "--no-compress", repeat=3)
        # Each first build goes to a new store with an empty build cache; the last one is
        # kept for the rebuilds.
        kept = work / "first-2"
        timed(
            "deploysync build", "deploysync", tree_copy, out=lambda i: work / f"first-{i}", repeat=3
        )
        timed(
            "deploysync rebuild, nothing changed",
            "deploysync",
            tree_copy,
            out=lambda i: kept,
            repeat=3,
        )

        # A leaf change: one stylesheet that nothing imports. Then a module in the middle
        # of the import graph: every importer up to the entry points is renamed,
        # rewritten and compressed again.
        edits = [
            ("one CSS file changed", tree_copy / "css" / "part-000.css", ".changed-{} {{}}"),
            (
                "one mid-graph JS module changed",
                tree_copy / "js" / f"l{shape.levels // 2:02d}" / "m000.js",
                "export const changed{} = 1;",
            ),
        ]
        for what, edited, line in edits:

            def edit(i: int, edited: Path = edited, line: str = line) -> None:
                edited.write_text(edited.read_text() + "\n" + line.format(i) + "\n")

            timed(
                f"deploysync rebuild, {what}",
                "deploysync",
                tree_copy,
                out=lambda i: kept,
                repeat=3,
                before=edit,
            )
        # The same, as typed in a shell: each run a new interpreter, imports included
        # (compiled once beforehand, as installing a package does).
        subprocess.run(
            [sys.executable, "-m", "deploysync.cli", "--help"],
            check=True,
            env={**_shell_env(), "PYTHONPATH": str(SRC)},
            stdout=subprocess.DEVNULL,
        )
        shell = work / "shell-2"
        timed(
            "deploysync build, command line",
            "command line",
            tree_copy,
            out=lambda i: work / f"shell-{i}",
            repeat=3,
        )
        leaf_edit, leaf_file, leaf_line = edits[0]

        def edit_leaf(i: int) -> None:
            leaf_file.write_text(leaf_file.read_text() + "\n" + leaf_line.format(f"s{i}") + "\n")

        timed(
            f"deploysync rebuild, {leaf_edit}, command line",
            "command line",
            tree_copy,
            out=lambda i: shell,
            repeat=3,
            before=edit_leaf,
        )
        if not args.skip_django:
            timed("django, defaults (no cycle)", "django", acyclic)
            timed("django, 100 passes (no cycle)", "django", acyclic, "100")
            timed("whitenoise, defaults (no cycle)", "whitenoise", acyclic)
            timed("whitenoise compressed, 100 passes (no cycle)", "whitenoise", acyclic, "100")

    def ratio(slow: str, fast: str, table: Mapping[str, float | str] = results) -> float | None:
        a, b = table.get(slow), table.get(fast)
        return a / b if isinstance(a, float) and isinstance(b, float) and b > 0 else None

    django = "django, 100 passes (no cycle)"
    whitenoise = "whitenoise compressed, 100 passes (no cycle)"
    build, bare, floor = (
        "deploysync build",
        "deploysync build --no-compress",
        "floor (read, sha256, write)",
    )
    leaf = "deploysync rebuild, one CSS file changed"
    middle = "deploysync rebuild, one mid-graph JS module changed"
    goals = [
        ("django / deploysync build", django, build, 20, False),
        ("whitenoise compressed / deploysync build", whitenoise, build, 5, False),
        ("deploysync --no-compress / floor (x slower)", bare, floor, 3, True),
        ("first build / rebuild (CSS leaf change)", build, leaf, 20, False),
        ("first build / rebuild (mid-graph JS change)", build, middle, 20, False),
        (
            "the CSS leaf, as typed in a shell",
            "deploysync build, command line",
            "deploysync rebuild, one CSS file changed, command line",
            20,
            False,
        ),
    ]
    print("goals (wall-clock ratio; CPU-time ratio in brackets):")
    for label, slow, fast, goal, at_most in goals:
        value = ratio(slow, fast)
        cpu = ratio(slow, fast, cpu_results)
        if value is None:
            print(f"  {label:<46} n/a")
            continue
        met = value <= goal if at_most else value >= goal
        bound = "<=" if at_most else ">="
        shown_cpu = f"[{cpu:6.1f}x]" if cpu is not None else ""
        print(
            f"  {label:<46} {value:6.1f}x {shown_cpu}  (goal {bound} {goal}x: "
            f"{'met' if met else 'NOT met'})"
        )
    report = {"wall": results, "cpu": cpu_results}
    (WORK / f"results-{shape.name}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
