"""The deploysync command line, driven in-process through ``main(argv)``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from build_fixtures import SITE, isolated_build_cache, snapshot, write_tree
from deploysync import cli
from deploysync.cli import format_list, human_size, main, parse_duration
from deploysync.manifest import DeploymentInfo
from deploysync.store import FileStore

__all__ = ["isolated_build_cache"]


@pytest.fixture
def site(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "site", SITE)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("deploysync: error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- build -----------------------------------------------------------------------------------


def test_build_prints_the_id_last(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    code, out, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert code == 0, err
    ident = out.splitlines()[-1]
    assert FileStore(store_dir).ids() == [ident]
    assert f"{len(SITE)} files" in out
    assert err == ""  # no warnings, no progress bar off a terminal
    assert FileStore(store_dir).current() is None


def test_build_activate_and_id(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    code, out, _ = run(
        capsys, "build", str(site), "--store", str(store_dir), "--activate", "--id", "abc123"
    )
    assert code == 0
    assert out.splitlines()[-1] == "abc123"
    assert FileStore(store_dir).current() == "abc123"


def test_build_json_summary(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    code, out, _ = run(
        capsys, "build", str(site), "--store", str(store_dir), "--json", "--activate"
    )
    assert code == 0
    summary = json.loads(out)  # nothing but the JSON object on stdout
    last = summary["id"]
    assert FileStore(store_dir).ids() == [last]
    assert summary["files"] == len(SITE)
    assert summary["bytes"] == FileStore(store_dir).load(last).total_size > 0
    assert summary["stored_blobs"] == len(SITE) and summary["reused_blobs"] == 0
    assert summary["created"] is True and summary["activated"] is True
    assert summary["warnings"] == []
    assert isinstance(summary["seconds"], float)
    # Again: the same id, nothing new.
    _, out, _ = run(capsys, "build", str(site), "--store", str(store_dir), "--json")
    again = json.loads(out)
    assert again["id"] == summary["id"] and again["created"] is False
    assert again["reused_blobs"] == len(SITE) and again["stored_blobs"] == 0


def test_build_warns_on_stderr_and_strict_fails(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    (site / "css" / "bad.css").write_text("\n.x { background: url(img/nope.png); }\n")
    code, out, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert code == 0
    assert err == "deploysync: warning: css/bad.css:2: reference to missing file 'img/nope.png'\n"
    before = snapshot(store_dir)
    code, out, err = run(capsys, "build", str(site), "--store", str(store_dir), "--strict")
    assert_one_line_error(code, err, "css/bad.css:2: reference to missing file 'img/nope.png'")
    assert out == ""
    assert snapshot(store_dir) == before


def test_build_options(capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path) -> None:
    code, out, _ = run(
        capsys,
        "build",
        str(site),
        "--store",
        str(store_dir),
        "--static-url",
        "/assets/",
        "--no-compress",
        "--no-vite",
    )
    assert code == 0
    deployment = FileStore(store_dir).load(out.splitlines()[-1])
    assert deployment.static_url == "/assets/"
    assert all(not asset.encodings for asset in deployment.assets.values())


def test_store_from_the_environment(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPLOYSYNC_STORE", str(store_dir))
    code, out, _ = run(capsys, "build", str(site), "--activate")
    assert code == 0
    assert FileStore(store_dir).current() == out.splitlines()[-1]


def test_no_store_at_all(
    capsys: pytest.CaptureFixture[str], site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEPLOYSYNC_STORE", raising=False)
    code, _, err = run(capsys, "build", str(site))
    assert_one_line_error(code, err, "DEPLOYSYNC_STORE")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: write_tree(tmp / "f", {"x": "x"}) / "x", "is not a folder"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "is empty"),
    ],
)
def test_bad_source(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    store_dir: Path,
    make: Callable[[Path], Path],
    fragment: str,
) -> None:
    code, out, err = run(capsys, "build", str(make(tmp_path)), "--store", str(store_dir))
    assert_one_line_error(code, err, fragment)
    assert out == ""
    assert not store_dir.exists()


def test_bad_files_in_the_source(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, tmp_path: Path
) -> None:
    build_code, _, _ = run(capsys, "build", str(site), "--store", str(store_dir), "--activate")
    assert build_code == 0
    before = snapshot(store_dir)
    os.mkfifo(site / "fifo")
    code, _, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert_one_line_error(code, err, "'fifo' is not a regular file")
    (site / "fifo").unlink()
    (site / "outside").symlink_to(tmp_path)
    code, _, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert_one_line_error(code, err, "'outside' is a symbolic link leading outside")
    (site / "outside").unlink()
    (site / "dangling.png").symlink_to(tmp_path / "nothing")
    code, _, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert_one_line_error(code, err, "Cannot read 'dangling.png'")
    assert snapshot(store_dir) == before


def test_unwritable_store(capsys: pytest.CaptureFixture[str], site: Path, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    code, _, err = run(capsys, "build", str(site), "--store", str(tmp_path / "plain" / "store"))
    assert_one_line_error(code, err, "plain")


NOBODY = 65534


def run_without_privileges(*argv: str) -> tuple[int, str, str]:
    """The command line in a forked child that file permissions apply to.

    Tests run as root here, and root reads and writes through any mode bits: the child
    becomes ``nobody`` (uid and gid 65534) first. Everything it needs is imported before
    the fork, since the interpreter's own files may not be readable by nobody.
    """
    if os.geteuid() != 0:
        command = [sys.executable, "-m", "deploysync.cli", *argv]
        proc = subprocess.run(command, capture_output=True, text=True)
        return proc.returncode, proc.stdout, proc.stderr
    # What the child runs must be loaded already: cli imports the package's modules, and
    # a build of many scripts forks scanning processes.
    importlib.import_module("concurrent.futures.process")
    for name in ("synchronize", "popen_fork", "queues", "connection"):
        importlib.import_module(f"multiprocessing.{name}")

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks; the child only runs the
        # command line and exits.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(out_r)
            os.close(err_r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sys.stdout = os.fdopen(out_w, "w")
            sys.stderr = os.fdopen(err_w, "w")
            os.environ["HOME"] = "/nonexistent"
            code = main(list(argv))
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException as exc:  # reported to the parent, then exit
            os.write(err_w, f"child failed: {exc!r}\n".encode())
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out_file, os.fdopen(err_r) as err_file:
        out, err = out_file.read(), err_file.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out, err


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder that user nobody can reach (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="deploysync-perm-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["chmod", "-R", "u+rwx", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def test_unreadable_file_is_a_one_line_error(shared_dir: Path) -> None:
    site = write_tree(shared_dir / "site", SITE)
    subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
    store = shared_dir / "store"
    store.mkdir()
    if os.geteuid() == 0:
        os.chown(store, NOBODY, NOBODY)
    code, out, err = run_without_privileges("build", str(site), "--store", str(store))
    assert code == 0, err
    before = snapshot(store)
    (site / "css" / "app.css").chmod(0o000)
    code, out, err = run_without_privileges("build", str(site), "--store", str(store))
    assert_one_line_error(code, err, "Cannot read 'css/app.css'", "Permission denied")
    assert out == ""
    assert snapshot(store) == before


def test_store_folder_without_write_permission_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], shared_dir: Path
) -> None:
    site = write_tree(shared_dir / "site", SITE)
    subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
    store = shared_dir / "store"
    code, first, err = run(capsys, "build", str(site), "--store", str(store), "--activate")
    assert code == 0, err
    (site / "extra.css").write_text("body{margin:0}")
    (site / "extra.css").chmod(0o644)
    code, _, err = run(capsys, "build", str(site), "--store", str(store))
    assert code == 0, err
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(store)], check=True)
    before = snapshot(store)
    (site / "more.css").write_text("p{margin:0}")
    (site / "more.css").chmod(0o644)
    code, out, err = run_without_privileges("build", str(site), "--store", str(store))
    assert_one_line_error(code, err, "not writable")
    assert out == ""
    assert snapshot(store) == before
    # A folder that is not a store yet, and that nobody may write to, stays empty.
    bare = shared_dir / "bare"
    bare.mkdir(mode=0o755)
    code, out, err = run_without_privileges("build", str(site), "--store", str(bare))
    assert_one_line_error(code, err, f"Store directory '{bare}' is not writable")
    assert list(bare.iterdir()) == []
    # Moving back to the first deployment needs to write too.
    ident = first.splitlines()[-1]
    code, out, err = run_without_privileges("activate", ident, "--store", str(store))
    assert_one_line_error(code, err)
    assert snapshot(store) == before


@pytest.mark.parametrize("bad_id", ["a b", "x" * 65, "../x"])
def test_build_bad_id(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, bad_id: str
) -> None:
    code, _, err = run(capsys, "build", str(site), "--store", str(store_dir), "--id", bad_id)
    assert_one_line_error(code, err, "Invalid deployment id")
    assert not store_dir.exists()


def test_unknown_option_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "build", "--frobnicate")
    assert_one_line_error(code, err)
    code, _, err = run(capsys)
    assert_one_line_error(code, err)


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "build", "--help")
    assert code == 0
    assert "--static-url" in out


# -- activate, list, prune -------------------------------------------------------------------


def _two_deployments(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> tuple[str, str]:
    _, out, _ = run(capsys, "build", str(site), "--store", str(store_dir), "--activate")
    first = out.splitlines()[-1]
    (site / "js" / "lazy.js").write_text("export default 2;\n")
    time.sleep(0.01)  # distinct creation times order the list
    _, out, _ = run(capsys, "build", str(site), "--store", str(store_dir), "--activate")
    return first, out.splitlines()[-1]


def test_activate_rolls_back_and_forth(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    first, second = _two_deployments(capsys, site, store_dir)
    assert FileStore(store_dir).current() == second
    code, out, _ = run(capsys, "activate", first, "--store", str(store_dir))
    assert code == 0 and first in out
    assert FileStore(store_dir).current() == first
    assert run(capsys, "activate", second, "--store", str(store_dir))[0] == 0
    assert FileStore(store_dir).current() == second


@pytest.mark.parametrize(
    ("ident", "fragment"), [("unknown1", "Unknown deployment"), ("bad id!", "Invalid")]
)
def test_activate_bad_id(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, ident: str, fragment: str
) -> None:
    run(capsys, "build", str(site), "--store", str(store_dir), "--activate")
    before = snapshot(store_dir)
    code, _, err = run(capsys, "activate", ident, "--store", str(store_dir))
    assert_one_line_error(code, err, fragment)
    assert snapshot(store_dir) == before


def test_activate_in_a_missing_store_creates_nothing(
    capsys: pytest.CaptureFixture[str], store_dir: Path
) -> None:
    code, _, err = run(capsys, "activate", "abc", "--store", str(store_dir))
    assert_one_line_error(code, err, "does not exist")
    assert not store_dir.exists()


def test_list_text_and_json(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    first, second = _two_deployments(capsys, site, store_dir)
    run(capsys, "activate", first, "--store", str(store_dir))
    code, out, _ = run(capsys, "list", "--store", str(store_dir))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "CREATED", "ACTIVATED", "FILES", "SIZE"]
    assert lines[1].split()[0] == second  # newest first
    assert lines[2].split()[:2] == ["*", first]  # the current one is marked
    assert "KB" in lines[1] and "(just now)" in lines[1]
    code, out, _ = run(capsys, "list", "--store", str(store_dir), "--json")
    data = json.loads(out)
    assert [d["id"] for d in data] == [second, first]
    assert [d["current"] for d in data] == [False, True]
    assert data[0]["files"] == len(SITE) and data[0]["bytes"] > 0
    assert set(data[0]) == {"id", "created", "activated", "files", "bytes", "current"}


def test_list_empty_and_missing(capsys: pytest.CaptureFixture[str], store_dir: Path) -> None:
    code, _, err = run(capsys, "list", "--store", str(store_dir))
    assert_one_line_error(code, err, "does not exist")
    store_dir.mkdir()
    code, out, _ = run(capsys, "list", "--store", str(store_dir))
    assert code == 0 and out == "no deployments\n"


def test_prune(capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path) -> None:
    first, second = _two_deployments(capsys, site, store_dir)
    code, out, _ = run(
        capsys, "prune", "--store", str(store_dir), "--keep", "1", "--older-than", "1h"
    )
    assert code == 0 and "pruned 0 deployments" in out  # both are younger than an hour
    code, out, _ = run(capsys, "prune", "--store", str(store_dir), "--keep", "1")
    assert code == 0
    assert "pruned 1 deployments" in out and first in out
    assert FileStore(store_dir).ids() == [second]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--keep", "0"], "--keep must be at least 1"),
        (["--keep", "-3"], "--keep must be at least 1"),
        (["--keep", "many"], "invalid int value"),
        (["--keep", "1", "--older-than", "soon"], "invalid duration"),
        ([], "--keep"),
    ],
)
def test_prune_bad_input_changes_nothing(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, args: list[str], fragment: str
) -> None:
    _two_deployments(capsys, site, store_dir)
    before = snapshot(store_dir)
    code, _, err = run(capsys, "prune", "--store", str(store_dir), *args)
    assert_one_line_error(code, err, fragment)
    assert snapshot(store_dir) == before


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("45", 45),
        ("1.5h", 5400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "7x", "-1d", "1 d 2h"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(cli.UsageError):
        parse_duration(text)


def test_human_size() -> None:
    assert [human_size(n) for n in (0, 1023, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 B",
        "1023 B",
        "1.5 KB",
        "5.0 MB",
        "3.0 GB",
    ]


def test_format_list() -> None:
    now = 1_800_000_000.0
    text = format_list(
        [
            DeploymentInfo("new", now - 30, None, 3, 2048, False),
            DeploymentInfo("old", now - 7200, now - 3600, 2, 100, True),
        ],
        now=now,
    )
    lines = text.splitlines()
    assert lines[1].startswith("   new") and "just now" in lines[1] and lines[1].endswith("2.0 KB")
    assert lines[2].startswith("*  old") and "2h ago" in lines[2] and "1h ago" in lines[2]


# -- demo ------------------------------------------------------------------------------------


def test_demo_is_called_with_the_parsed_options(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[argparse.Namespace] = []
    fake = types.ModuleType("deploysync.demo")

    def fake_main(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deploysync.demo", fake)
    code, _, _ = run(
        capsys, "demo", "--port", "0", "--host", "0.0.0.0", "--every", "5", "--store", "/x"
    )
    assert code == 0
    assert (seen[0].port, seen[0].host, seen[0].every, seen[0].store) == (0, "0.0.0.0", 5.0, "/x")


def test_demo_missing_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "deploysync.demo", None)  # makes the import fail
    code, _, err = run(capsys, "demo")
    assert_one_line_error(code, err, "demo")


def test_entry_point_runs_as_a_program(site: Path, store_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deploysync.cli", "build", str(site), "--store", str(store_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert FileStore(store_dir).ids() == [done.stdout.splitlines()[-1]]
    done = subprocess.run(
        [sys.executable, "-m", "deploysync.cli", "activate", "nope", "--store", str(store_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


class _Terminal:
    """A stand-in for a terminal's stderr."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_progress_bar_only_on_a_terminal_after_the_delay(
    site: Path, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["build", str(site), "--store", str(store_dir), "--no-compress"]) == 0
    assert terminal.written == []  # a fast build shows no bar
    monkeypatch.setattr(cli, "PROGRESS_DELAY", 0.0)
    (site / "new.txt").write_text("new")
    assert main(["build", str(site), "--store", str(store_dir), "--no-compress"]) == 0
    shown = "".join(terminal.written)
    assert "building [" in shown and f"/{2 * (len(SITE) + 1)}" in shown
    assert shown.endswith("\r\033[K")  # the bar is erased before the summary


def test_vite_flag(capsys: pytest.CaptureFixture[str], tmp_path: Path, store_dir: Path) -> None:
    dist = write_tree(
        tmp_path / "dist",
        {
            ".vite/manifest.json": json.dumps(
                {"main.js": {"file": "assets/main-AbCd1234.js", "isEntry": True}}
            ),
            "assets/main-AbCd1234.js": "export {};\n",
        },
    )
    code, out, _ = run(capsys, "build", str(dist), "--store", str(store_dir))
    deployment = FileStore(store_dir).load(out.splitlines()[-1])
    assert (
        code == 0 and deployment.assets["assets/main-AbCd1234.js"].name == "assets/main-AbCd1234.js"
    )
    code, out, _ = run(capsys, "build", str(dist), "--store", str(store_dir), "--no-vite")
    deployment = FileStore(store_dir).load(out.splitlines()[-1])
    assert code == 0 and ".vite/manifest.json" in deployment.assets
