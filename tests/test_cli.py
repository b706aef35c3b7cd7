"""The deploysync command line, driven in-process through ``main(argv)``."""

from __future__ import annotations

import argparse
import fcntl
import importlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from build_fixtures import SITE, files_of, isolated_build_cache, snapshot, write_tree
from deploysync import build as build_module
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


def test_a_warning_says_control_characters_of_a_file_escaped(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    # A vendored file must not retitle the terminal or forge lines of a CI log.
    (site / "js").mkdir(exist_ok=True)
    (site / "js" / "evil.js").write_text('import "./\x1b]0;pwned\x07\x1b[2J\x85x.js";\n')
    code, _, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert code == 0
    assert err == (
        "deploysync: warning: js/evil.js:1: reference to missing file"
        " './\\x1b]0;pwned\\x07\\x1b[2J\\x85x.js'\n"
    )


@pytest.mark.parametrize("form", [["--store", "STORE"], ["--store=STORE"]])
def test_a_stray_word_with_a_store_given_is_not_taken_for_one(
    capsys: pytest.CaptureFixture[str], store_dir: Path, form: list[str]
) -> None:
    argv = [arg.replace("STORE", str(store_dir)) for arg in ["list", *form, "--json", "extra"]]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, "unrecognized arguments: extra")
    assert code == 2 and "--store STORE" not in err


@pytest.mark.parametrize("quality", ["-1", "12", "99"])
def test_a_brotli_quality_out_of_range_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, quality: str
) -> None:
    argv = ["build", str(site), "--store", str(store_dir), "--brotli-quality", quality]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(code, err, f"--brotli-quality must be 0 to 11 (got {quality})")
    assert not store_dir.exists()


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


@pytest.mark.parametrize(
    "argv", [["list"], ["activate", "abc123"], ["prune", "--keep", "1"], ["build", "SITE"]]
)
def test_a_store_path_that_is_a_file_is_named_as_such(
    capsys: pytest.CaptureFixture[str], site: Path, tmp_path: Path, argv: list[str]
) -> None:
    plain = tmp_path / "store"
    plain.write_text("x")
    argv = [str(site) if arg == "SITE" else arg for arg in argv]
    code, _, err = run(capsys, *argv, "--store", str(plain))
    assert_one_line_error(code, err, f"Store '{plain}' is a file, not a directory")
    assert plain.read_text() == "x"


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


@pytest.mark.parametrize(
    "argv",
    [
        ["build", "site"],
        ["activate", "abc"],
        ["list"],
        ["list", "--json"],
        ["prune", "--keep", "1"],
    ],
)
def test_an_empty_store_is_no_store(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
) -> None:
    # Not the current directory: the flag and the variable say the same.
    write_tree(tmp_path / "site", SITE)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setenv("DEPLOYSYNC_STORE", str(tmp_path / "from-the-environment"))
    code, out, err = run(capsys, *argv, "--store", "")
    assert_one_line_error(code, err, "No store given: pass --store or set DEPLOYSYNC_STORE")
    assert code == 1 and out == ""
    monkeypatch.setenv("DEPLOYSYNC_STORE", "")
    assert run(capsys, *argv) == (code, out, err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("static_url", "fragment"),
    [
        ("/a?b/", "cannot contain '?'"),
        ("/assets#x/", "cannot contain '#'"),
        ("/static/../other/", "cannot be '..'"),
        ("./static/", "cannot be '.'"),
        ("/my assets/", "' ' cannot be part of a URL path prefix"),
        ("/my%20assets/", "'%' cannot be part of a URL path prefix"),
        ("//cdn.example/static/", "starts a host name"),
        ("ftp://cdn.example/static/", "http(s)://"),
    ],
)
def test_a_static_url_that_cannot_be_a_prefix_is_refused(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path, static_url: str, fragment: str
) -> None:
    code, out, err = run(
        capsys, "build", str(site), "--store", str(store_dir), "--static-url", static_url
    )
    assert_one_line_error(code, err, f"Invalid static URL {static_url!r}", fragment)
    assert code == 1 and out == ""
    assert not store_dir.exists()


@pytest.mark.parametrize("folder", ["objects", "deployments", "tmp"])
def test_a_store_folder_that_is_not_writable_is_named_before_anything_is_written(
    capsys: pytest.CaptureFixture[str], shared_dir: Path, folder: str
) -> None:
    site = write_tree(shared_dir / "site", SITE)
    subprocess.run(["chmod", "-R", "a+rX", str(site)], check=True)
    store = shared_dir / "store"
    code, _, err = run(capsys, "build", str(site), "--store", str(store), "--activate")
    assert code == 0, err
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(store)], check=True)
    (store / folder).chmod(0o555)
    before = snapshot(store)
    (site / "more.css").write_text("p{margin:0}")
    (site / "more.css").chmod(0o644)
    code, out, err = run_without_privileges("build", str(site), "--store", str(store))
    assert_one_line_error(code, err, f"Store directory '{store / folder}' is not writable")
    assert out == ""
    assert snapshot(store) == before


def test_a_failed_write_names_the_file_and_leaves_no_new_blob(
    capsys: pytest.CaptureFixture[str],
    site: Path,
    store_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run(capsys, "build", str(site), "--store", str(store_dir), "--activate")[0] == 0
    before = files_of(store_dir)
    (site / "more.css").write_text("p{margin:0}")
    real = os.replace

    def full_disk(source: str, target: str | os.PathLike[str]) -> None:
        if str(target).endswith(".json"):
            raise OSError(28, "No space left on device", source)
        real(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    code, out, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert_one_line_error(code, err, f"'{store_dir / 'deployments'}", "No space left on device")
    assert "/tmp/" not in err.replace(str(store_dir), "")  # not the temporary file
    assert out == ""
    assert files_of(store_dir) == before


def test_brotli_quality_without_brotli_is_a_warning(
    capsys: pytest.CaptureFixture[str],
    site: Path,
    store_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(build_module, "_brotli", None)  # as without the brotli extra
    code, out, err = run(capsys, "build", str(site), "--store", str(store_dir))
    assert code == 0 and err == ""
    (site / "more.css").write_text("p { margin: 0 }\n" * 40)
    for extra in ([], ["--json"]):
        code, out, err = run(
            capsys, "build", str(site), "--store", str(store_dir), "--brotli-quality", "11", *extra
        )
        assert code == 0
        assert err == (
            "deploysync: warning: --brotli-quality has no effect without brotli"
            " (pip install 'deploysync[brotli]'): only .gz variants were made\n"
        )
        ident = json.loads(out)["id"] if extra else out.splitlines()[-1]
        assets = FileStore(store_dir).load(ident).assets
        assert dict(assets["more.css"].encodings).keys() == {"gzip"}
    argv = ["build", str(site), "--store", str(store_dir), "--brotli-quality", "11"]
    code, out, err = run(capsys, *argv, "--no-compress")
    assert code == 0 and err == ""


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
    # newest first: the rollback to the first made it the newest
    assert lines[1].split()[:2] == ["*", first]  # the current one is marked
    assert lines[2].split()[0] == second
    assert "KB" in lines[2] and "(just now)" in lines[2]
    code, out, _ = run(capsys, "list", "--store", str(store_dir), "--json")
    data = json.loads(out)
    assert [d["id"] for d in data] == [first, second]
    assert [d["current"] for d in data] == [True, False]
    assert data[0]["files"] == len(SITE) and data[0]["bytes"] > 0
    assert set(data[0]) == {
        "id",
        "created",
        "activated",
        "files",
        "bytes",
        "current",
        "static_url",
    }
    assert data[0]["static_url"] == "/static/"


def test_a_deployment_of_another_static_url_is_shown_and_warned_about(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    """Servers keep serving the previous deployment when the one activated was built for
    another prefix (and one started now fails): activating it says so, list shows it."""
    store = str(store_dir)
    code, out, _ = run(capsys, "build", str(site), "--store", store, "--activate")
    first = out.splitlines()[-1]
    code, out, err = run(
        capsys, "build", str(site), "--store", store, "--static-url", "/assets/", "--activate"
    )
    second = out.splitlines()[-1]
    assert code == 0 and err.splitlines() == [
        f"deploysync: warning: {second} was built for /assets/, {first} for /static/:"
        f" servers serving /static/ keep {first}"
    ]
    code, _, err = run(capsys, "activate", first, "--store", store)
    assert code == 0 and f"{first} was built for /static/, {second} for /assets/" in err
    code, _, err = run(capsys, "activate", first, "--store", store)
    assert code == 0 and err == ""  # the same one again: nothing changes for servers
    code, out, _ = run(capsys, "list", "--store", store)
    header, *rows = (line.split() for line in out.splitlines())
    assert header[-2:] == ["STATIC", "URL"]
    assert rows[0][:2] == ["*", first] and rows[0][-1] == "/static/"
    assert rows[1][0] == second and rows[1][-1] == "/assets/"


def test_the_store_may_come_before_the_command(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    code, out, _ = run(capsys, "--store", str(store_dir), "build", str(site), "--activate")
    assert code == 0
    ident = out.splitlines()[-1]
    code, out, _ = run(capsys, "--store", str(store_dir), "list")
    assert code == 0 and ident in out
    # Given twice, the one after the command counts.
    absent = store_dir.parent / "absent"
    code, _, err = run(capsys, "--store", str(store_dir), "list", "--store", str(absent))
    assert_one_line_error(code, err, f"'{absent}' does not exist")


@pytest.mark.parametrize(
    "argv",
    [["list", "STORE"], ["activate", "STORE", "abc123"], ["prune", "STORE", "--keep", "2"]],
)
def test_a_store_given_without_store_is_pointed_out(
    capsys: pytest.CaptureFixture[str], store_dir: Path, argv: list[str]
) -> None:
    argv = [str(store_dir) if arg == "STORE" else arg for arg in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert_one_line_error(code, err, "unrecognized arguments", "--store STORE")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from deploysync import __version__

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"deploysync {__version__}\n"


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
    assert "pruned 1 deployment," in out and first in out
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


def test_build_into_a_pipe_closed_early_ends_quietly(site: Path, store_dir: Path) -> None:
    # `deploysync build ... | head -1`: the reader is gone before the id is printed.
    command = [sys.executable, "-m", "deploysync.cli", "build", str(site), "--store"]
    proc = subprocess.Popen(
        [*command, str(store_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""  # no "error: Broken pipe", no "Exception ignored"
    assert len(FileStore(store_dir).ids()) == 1  # built all the same


@pytest.mark.parametrize("folder", ["empty", "source"])
def test_prune_leaves_a_folder_that_is_no_store_as_it_is(
    capsys: pytest.CaptureFixture[str], site: Path, tmp_path: Path, folder: str
) -> None:
    # A typo'd --store: an empty folder, or the frontend's own folder.
    target = site if folder == "source" else tmp_path / "empty"
    target.mkdir(exist_ok=True)
    before = snapshot(target)
    code, _, err = run(capsys, "prune", "--keep", "1", "--store", str(target))
    assert_one_line_error(code, err, "is not a deploysync store")
    assert snapshot(target) == before


def _corrupt(manifest: Path, how: str) -> None:
    if how == "unreadable":
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(manifest.parent.parent)])
        manifest.chmod(0o000)
    elif how == "truncated":
        manifest.write_bytes(manifest.read_bytes()[:40])
    else:
        manifest.write_text('{"version": 1, "id": "x", "assets": []}')


def _run_as_needed(
    how: str, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str, str]:
    # Root reads a file of mode 000: only another user sees it as unreadable.
    return run_without_privileges(*argv) if how == "unreadable" else run(capsys, *argv)


@pytest.mark.parametrize("how", ["unreadable", "truncated", "malformed"])
def test_prune_refuses_while_a_manifest_cannot_be_read(
    capsys: pytest.CaptureFixture[str], shared_dir: Path, how: str
) -> None:
    site = write_tree(shared_dir / "site", SITE)
    store = shared_dir / "store"
    _, second = _two_deployments(capsys, site, store)
    _corrupt(store / "deployments" / f"{second}.json", how)  # the current one
    before = snapshot(store)
    code, out, err = _run_as_needed(how, capsys, "prune", "--store", str(store), "--keep", "1")
    assert_one_line_error(code, err, f"deployment '{second}' cannot be read", "nothing was deleted")
    assert code == 1 and out == ""
    assert snapshot(store) == before
    assert FileStore(store).ids() != []


@pytest.mark.parametrize("how", ["unreadable", "truncated"])
def test_list_shows_a_deployment_that_cannot_be_read_and_fails(
    capsys: pytest.CaptureFixture[str], shared_dir: Path, how: str
) -> None:
    site = write_tree(shared_dir / "site", SITE)
    store = shared_dir / "store"
    first, second = _two_deployments(capsys, site, store)
    _corrupt(store / "deployments" / f"{second}.json", how)
    code, out, err = _run_as_needed(how, capsys, "list", "--store", str(store))
    assert_one_line_error(code, err, f"Deployment '{second}' cannot be read")
    assert code == 1
    rows = [line.split() for line in out.splitlines()[1:]]
    assert rows[0][:3] == ["*", second, "?"] and rows[0][-2:] == ["?", "?"]
    assert rows[1][0] == first
    code, out, err = _run_as_needed(how, capsys, "list", "--store", str(store), "--json")
    assert_one_line_error(code, err, f"Deployment '{second}' cannot be read")
    data = json.loads(out)
    assert [d["id"] for d in data] == [second, first]
    assert data[0]["current"] is True and data[0]["files"] is None and data[0]["error"]
    assert "error" not in data[1]


def test_prune_reports_blobs_it_could_not_delete(
    capsys: pytest.CaptureFixture[str], shared_dir: Path
) -> None:
    site = write_tree(shared_dir / "site", SITE)
    store = shared_dir / "store"
    first, second = _two_deployments(capsys, site, store)
    only_first = FileStore(store).load(first).digests() - FileStore(store).load(second).digests()
    count = len(only_first)
    assert count > 0
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(store)], check=True)
    for folder in (store / "objects").iterdir():
        folder.chmod(0o555)
    code, out, err = run_without_privileges("prune", "--store", str(store), "--keep", "1")
    assert_one_line_error(code, err, "Cannot delete", "Permission denied", f"{count} of {count}")
    assert code == 1
    assert out == f"pruned 1 deployment, 0 blobs, 0 B\n  {first}\n"
    assert set(FileStore(store).all_blobs()) >= only_first
    code, out, err = run_without_privileges("prune", "--store", str(store), "--keep", "1")
    assert_one_line_error(code, err, "Cannot delete")
    assert out == "pruned 0 deployments, 0 blobs, 0 B\n"
    for folder in (store / "objects").iterdir():
        folder.chmod(0o755)
    code, out, err = run_without_privileges("prune", "--store", str(store), "--keep", "1")
    assert (code, err) == (0, "")
    assert out.startswith(f"pruned 0 deployments, {count} blobs, ")


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--every", "0"], "invalid --every 0: use a number of seconds above 0"),
        (["--every", "-1"], "invalid --every -1: use a number of seconds above 0"),
        (["--every", "inf"], "invalid --every inf: use a number of seconds above 0"),
        (["--port", "70000"], "invalid port 70000: use 0 to 65535"),
        (["--port", "-1"], "invalid port -1: use 0 to 65535"),
    ],
)
def test_demo_bad_values_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
) -> None:
    demo = importlib.import_module("deploysync.demo")
    monkeypatch.setattr(demo, "_run", lambda *args: pytest.fail("the demo started"))
    code, out, err = run(capsys, "demo", *argv)
    assert (code, out, err) == (2, "", f"deploysync: error: {message}\n")


def test_demo_errors_read_like_the_other_commands(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    demo = importlib.import_module("deploysync.demo")
    with monkeypatch.context() as patched:
        patched.setattr(demo, "_run", lambda *args: pytest.fail("the demo started"))
        code, out, err = run(capsys, "demo", "--store", "")
    assert_one_line_error(code, err, "No store given")
    assert code == 1 and out == ""
    assert list(tmp_path.iterdir()) == []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run(capsys, "demo", "--port", str(port))
    assert_one_line_error(code, err, f"port {port} on 127.0.0.1 is already in use")
    assert code == 1 and out == ""


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


def test_a_command_waiting_for_the_store_lock_says_so(
    capsys: pytest.CaptureFixture[str], site: Path, store_dir: Path
) -> None:
    code, out, _ = run(capsys, "build", str(site), "--store", str(store_dir))
    ident = out.strip().splitlines()[-1]
    assert code == 0
    lock = os.open(store_dir / ".lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another writer (a build, a prune) holds it
    command = [sys.executable, "-m", "deploysync.cli", "activate", ident, "--store", str(store_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # blocks until the command says something
        assert line == f"deploysync: waiting for another command writing to {store_dir}\n"
        assert proc.poll() is None, "it waits for the lock"
    finally:
        os.close(lock)  # releases the flock
    out_text, err_text = proc.communicate(timeout=60)
    assert proc.returncode == 0, err_text
    assert out_text == f"activated {ident}\n"
    assert stat.S_IMODE((store_dir / ".lock").stat().st_mode) == 0o600
