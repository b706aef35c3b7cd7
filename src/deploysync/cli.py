"""The ``deploysync`` command: a thin shell over :mod:`deploysync.build` and the store.

Every command exits non-zero with a one-line reason on stderr on bad input, after having
changed nothing in the store.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from . import __version__
from .build import DEFAULT_BROTLI_QUALITY, brotli_available, build
from .manifest import DEFAULT_STATIC_URL, DeploymentInfo, DeploySyncError, validate_id
from .store import (
    ENV_VAR,
    DeploymentNotFound,
    PruneError,
    PruneResult,
    Store,
    StoreError,
    open_store,
)

PROG = "deploysync"
# A progress bar appears only for builds that last longer than this (seconds).
PROGRESS_DELAY = 1.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(DeploySyncError):
    """A malformed command line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one line, not usage plus a message."""

    def error(self, message: str) -> NoReturn:
        stray = message.partition("unrecognized arguments: ")[2].split()
        if stray and not stray[0].startswith("-") and not self.store_given:
            # The most common slip: a store named like SRC (`list .deploysync`).
            message += " (a store is named with --store STORE)"
        raise UsageError(message)

    store_given = False  # (main() tells the top-level parser, which reports stray words)


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"12h"``, ``"7d"``, ``"2w"`` -> seconds (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise UsageError(f"invalid duration {text!r}: use a number with s, m, h, d or w (like 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _count(n: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def human_size(size: float) -> str:
    """``1536`` -> ``"1.5 KB"``."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_time(when: float | None, now: float | None = None) -> str:
    """A local date and time with the age: ``2026-11-26 07:05 (3h ago)``; ``-`` when absent."""
    if when is None:
        return "-"
    age = (time.time() if now is None else now) - when
    if age < 60:
        ago = "just now"
    elif age < 3600:
        ago = f"{int(age // 60)}m ago"
    elif age < 86400:
        ago = f"{int(age // 3600)}h ago"
    else:
        ago = f"{int(age // 86400)}d ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(when)) + f" ({ago})"


# -- commands --------------------------------------------------------------------------------


class _ProgressBar:
    """A progress bar on a terminal's stderr, shown once the build lasts over a second."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.shown = False
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started < PROGRESS_DELAY or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        width = 30
        filled = width * done // max(total, 1)
        self.stream.write(f"\rbuilding [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _open(args: argparse.Namespace, err: TextIO) -> Store:
    store = open_store(args.store)

    def waiting() -> None:
        err.write(f"deploysync: waiting for another command writing to {store.location}\n")
        err.flush()

    store.on_wait = waiting
    args.opened = store  # main() says what its configuration risks, once the command ran
    return store


def cmd_build(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.brotli_quality is not None and not 0 <= args.brotli_quality <= 11:
        raise UsageError(f"--brotli-quality must be 0 to 11 (got {args.brotli_quality})")
    store = _open(args, err)
    previous = None
    if args.activate:
        with contextlib.suppress(StoreError):  # a new store (or one the build will refuse)
            previous = store.current()
    bar = _ProgressBar(err) if err.isatty() else None

    def warn(message: str) -> None:
        if bar is not None:
            bar.close()
        # With --strict a warning ends the build: the error line names the first one.
        if not args.json and not args.strict:
            err.write(f"{PROG}: warning: {message}\n")

    try:
        result = build(
            args.src,
            store,
            static_url=args.static_url,
            deployment_id=args.id,
            activate=args.activate,
            strict=args.strict,
            compress=args.compress,
            brotli_quality=(
                DEFAULT_BROTLI_QUALITY if args.brotli_quality is None else args.brotli_quality
            ),
            progress=bar,
            warn=warn,
            vite=args.vite,
        )
    finally:
        if bar is not None:
            bar.close()
    if args.brotli_quality is not None and args.compress and not brotli_available():
        err.write(
            f"{PROG}: warning: --brotli-quality has no effect without brotli"
            " (pip install 'deploysync[brotli]'): only .gz variants were made\n"
        )
    deployment = result.deployment
    if args.json:
        # Pure JSON, so `deploysync build --json | jq .id` works: the id is in the object.
        out.write(json.dumps(result.to_json(), indent=2) + "\n")
        return 0
    state = "built" if result.created else "already in the store:"
    out.write(
        f"{state} {_count(len(deployment.assets), 'file')}, {human_size(deployment.total_size)} "
        f"({result.stored_blobs} new, {result.reused_blobs} reused) "
        f"in {result.seconds:.2f}s\n"
    )
    if result.activated:
        out.write(f"activated {deployment.id}\n")
        _warn_prefix(store, deployment.id, previous, err)
    # The id is the last line, so `$(deploysync build ... | tail -n1)` works.
    out.write(deployment.id + "\n")
    return 0


def _require_store(store: Store) -> None:
    # Listing ids fails on a store that does not exist, where taking the writers' lock
    # would create it: an error must leave nothing behind.
    store.ids()


def cmd_activate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    ident = validate_id(args.id)
    store = _open(args, err)
    _require_store(store)
    if not store.exists(ident):
        raise DeploymentNotFound(f"Unknown deployment {ident!r} in {store.location}")
    previous = store.current()
    store.activate(ident)
    out.write(f"activated {ident}\n")
    _warn_prefix(store, ident, previous, err)
    return 0


def _warn_prefix(store: Store, ident: str, previous: str | None, err: TextIO) -> None:
    """Warn when the deployment just activated was built for another static prefix than
    the one it replaced: servers refuse it and keep the previous one (a server started
    now fails)."""
    if previous is None or previous == ident:
        return
    with contextlib.suppress(DeploySyncError, StoreError):
        now, before = store.load(ident).static_url, store.load(previous).static_url
        if now != before:
            err.write(
                f"{PROG}: warning: {ident} was built for {now}, {previous} for {before}:"
                f" servers serving {before} keep {previous}\n"
            )


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    store = _open(args, err)
    infos = store.list()
    if args.json:
        out.write(json.dumps([info.to_json() for info in infos], indent=2) + "\n")
    else:
        out.write(format_list(infos))
    # Listed all the same (prune refuses to run), and the exit status says it.
    unreadable = [info for info in infos if info.error is not None]
    if unreadable:
        more = f" (and {len(unreadable) - 1} more)" if len(unreadable) > 1 else ""
        first = unreadable[0]
        raise StoreError(f"Deployment {first.id!r}{more} cannot be read: {first.error}")
    return 0


def format_list(infos: Sequence[DeploymentInfo], now: float | None = None) -> str:
    """The text table of ``deploysync list``: ``*`` marks the current deployment, ``?``
    what an unreadable manifest hides."""
    if not infos:
        return "no deployments\n"
    # The prefix each was built for, when they differ (activating one of another prefix
    # leaves servers on the previous one).
    prefixes = {info.static_url for info in infos if info.static_url is not None}
    rows = [("", "ID", "CREATED", "ACTIVATED", "FILES", "SIZE", "STATIC URL")]
    for info in infos:
        rows.append(
            (
                "*" if info.current else "",
                info.id,
                "?" if info.created is None else human_time(info.created, now),
                human_time(info.activated, now),
                "?" if info.files is None else str(info.files),
                "?" if info.bytes is None else human_size(info.bytes),
                info.static_url or "?",
            )
        )
    columns = 7 if len(prefixes) > 1 else 6
    widths = [max(len(row[i]) for row in rows) for i in range(columns)]
    lines = []
    for row in rows:
        cells = [
            row[i].rjust(widths[i]) if i in (4, 5) else row[i].ljust(widths[i])
            for i in range(columns)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def cmd_prune(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.keep < 1:
        raise UsageError(f"--keep must be at least 1 (got {args.keep}): the newest is always kept")
    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    store = _open(args, err)
    _require_store(store)
    try:
        result = store.prune(args.keep, older_than)
    except PruneError as exc:
        _write_pruned(exc.result, out)  # what it did before it failed
        raise
    _write_pruned(result, out)
    return 0


def _write_pruned(result: PruneResult, out: TextIO) -> None:
    out.write(
        f"pruned {_count(len(result.deployments), 'deployment')}, {_count(result.blobs, 'blob')}, "
        f"{human_size(result.bytes)}\n"
    )
    for ident in result.deployments:
        out.write(f"  {ident}\n")


def cmd_demo(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Imported here: the demo pulls in a web server that the other commands do not need.
    try:
        demo = importlib.import_module("deploysync.demo")
    except ImportError as exc:
        raise DeploySyncError(f"the demo is not available in this installation ({exc})") from None
    code = demo.main(args)
    return int(code) if isinstance(code, int) else 0


# -- parser ----------------------------------------------------------------------------------


def _store_option(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    # Given before or after the command (`deploysync --store S list`, `... list --store S`):
    # a command's own default must not hide the one given before it.
    parser.add_argument(
        "--store",
        metavar="STORE",
        default=default,
        help=f"a directory or a redis:// URL (default: ${ENV_VAR})",
    )


def make_parser(prog: str = PROG) -> _Parser:
    """The command line's parser; *prog* names it in usage lines (``flask deploysync``)."""
    parser = _Parser(prog=prog, description="Deployment synchronization for Python web apps.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _store_option(parser, default=None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    p = commands.add_parser("build", help="fingerprint SRC into a new deployment")
    p.add_argument("src", metavar="SRC", help="the folder of frontend files")
    _store_option(p)
    p.add_argument("--activate", action="store_true", help="make the new deployment current")
    p.add_argument("--id", metavar="ID", help="use this id instead of the content-derived one")
    p.add_argument("--strict", action="store_true", help="a reference to a missing file fails")
    p.add_argument(
        "--static-url",
        metavar="URL",
        default=DEFAULT_STATIC_URL,
        help=f"the URL prefix assets are served under (default {DEFAULT_STATIC_URL})",
    )
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.add_argument(
        "--no-compress",
        dest="compress",
        action="store_false",
        help="skip the precompressed .gz/.br variants",
    )
    p.add_argument(
        "--brotli-quality",
        type=int,
        default=None,
        metavar="N",
        help=f"brotli 0-11 (default {DEFAULT_BROTLI_QUALITY}; 11: ~5%% smaller, 50x slower)",
    )
    p.add_argument(
        "--vite",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="SRC is a Vite dist folder (default: when it has .vite/manifest.json)",
    )
    p.set_defaults(handler=cmd_build)

    p = commands.add_parser("activate", help="make deployment ID current")
    p.add_argument("id", metavar="ID", help="a deployment of the store (see `deploysync list`)")
    _store_option(p)
    p.set_defaults(handler=cmd_activate)

    p = commands.add_parser("list", help="list deployments, newest first")
    _store_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(handler=cmd_list)

    p = commands.add_parser("prune", help="delete what only old deployments use")
    _store_option(p)
    p.add_argument(
        "--keep",
        metavar="N",
        type=int,
        required=True,
        help="keep the newest N deployments (and always the current one)",
    )
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        help="only prune deployments created (or last activated) longer ago (30m, 12h, 7d)",
    )
    p.set_defaults(handler=cmd_prune)

    p = commands.add_parser("demo", help="run the demo site that shows a deployment transition")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the port (8000; 0 picks a free one)")
    p.add_argument(
        "--store",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="keep the demo's deployments here (default: a temporary folder)",
    )
    p.add_argument(
        "--every",
        metavar="SECONDS",
        type=float,
        default=None,
        help="deploy a new version this often",
    )
    p.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run the command line; return the exit status. *prog*: the name it was run by, for
    usage lines (``flask deploysync`` runs it too)."""
    out, err = sys.stdout, sys.stderr
    args: argparse.Namespace | None = None
    try:
        parser = make_parser(prog)
        words = sys.argv[1:] if argv is None else list(argv)
        parser.store_given = any(w == "--store" or w.startswith("--store=") for w in words)
        args = parser.parse_args(argv)
        handler: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.handler
        return handler(args, out, err)
    except UsageError as exc:
        err.write(f"{PROG}: error: {exc}\n")
        return 2
    except (DeploySyncError, StoreError) as exc:
        err.write(f"{PROG}: error: {_one_line(exc)}\n")
        return 1
    except BrokenPipeError:
        # The reader of the output went away (`| head -1`): what the command did is
        # done, what it would print has nowhere to go. Quiet, with a SIGPIPE's status,
        # as shell tools end (and nothing left for Python to fail to flush at exit).
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        return 128 + 13
    except OSError as exc:
        where = f" '{exc.filename}'" if exc.filename else ""
        err.write(f"{PROG}: error:{where} {exc.strerror or exc}\n")
        return 1
    except ImportError as exc:  # an optional dependency (redis, brotli) is not installed
        err.write(f"{PROG}: error: {exc}\n")
        return 1
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    finally:
        # After the command's own output (and its error): a store that answered says
        # what in its configuration puts deployments at risk (one that did not, nothing).
        store = getattr(args, "opened", None)
        if store is not None and not store.unreachable:
            for message in store.config_warnings():
                err.write(f"{PROG}: warning: {message}\n")


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
