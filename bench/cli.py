"""What every benchmark's command line shares: progress lines, Ctrl-C, options, the JSON record."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from clients.osquery_sim import parse_size
from devstack import ROOT


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def work_root(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` (``--workdir``: created if need be, left in place afterwards), or a new
    temporary directory named ``prefix...`` that is removed afterwards, also on errors."""
    root = keep or Path(tempfile.mkdtemp(prefix=prefix))
    root.mkdir(parents=True, exist_ok=True)
    try:
        yield root
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def interruptible(work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run a benchmark; None if SIGTERM or Ctrl-C stopped it (its servers are stopped by then)."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return work()
    except KeyboardInterrupt:
        log("interrupted; servers stopped")
        return None


def names(text: str) -> set[str] | None:
    """``--only A, B`` as {"A", "B"}; None when empty (everything)."""
    return {name.strip() for name in text.split(",") if name.strip()} or None


def add_service_env_option(parser: argparse.ArgumentParser, services: str) -> None:
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"extra environment for {services} (repeatable)",
    )


def size_arg(text: str) -> int:
    """An argparse type: a size such as 1GiB or 64MB."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {path}")


def source_state(paths: Sequence[str] = ("services", "shared")) -> dict[str, Any]:
    """The commit and the uncommitted files, so a figure can be tied to the code it measured
    (with a hash of the uncommitted changes under ``paths``, the code being measured)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout

    changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line]
    diff = git("diff", "HEAD", "--", *paths)
    key = "_".join(paths) + "_diff_sha256"
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted": changed,
        key: hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }
