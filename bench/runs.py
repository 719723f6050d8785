"""A benchmark run's frame: a scratch directory, the backends up, the work, everything down.

``record_run`` gives the record its common fields (when, on what machine, how long the
backends took to start, how long it all took); ``report_main`` is the end of a benchmark's
``main``: the text report on stdout, the JSON record, and the exit status.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench.cli import interruptible, log, write_json
from bench.procstats import machine_info
from devstack.backends import Backends

Record = dict[str, Any]
Work = Callable[[Backends, Path], Coroutine[Any, Any, Record]]


def record_run(
    prefix: str,
    what: str,
    backends: Callable[[Path], contextlib.AbstractContextManager[Backends]],
    work: Work,
    extra: Callable[[], Record] = dict,
) -> Record:
    """The backends (``backends(root)``, naming ``what``) up in a new directory, then
    ``work(backends, workdir)`` on uvloop, then backends down and the directory gone (also on
    errors and Ctrl-C); the record, with ``extra()`` after the machine."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        log(f"starting {what} under {workdir}")
        with backends(workdir / "backends") as running:
            backend_start_s = round(time.perf_counter() - started, 1)
            report = uvloop.run(work(running, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "started_at": started_at,
        "machine": machine_info(),
        **extra(),
        **report,
        "backend_start_s": backend_start_s,
        "total_seconds": round(time.perf_counter() - started, 1),
    }


def report_main(work: Callable[[], Record], render: Callable[[Record], str], json_out: Path) -> int:
    """Run a benchmark; print its text report and write its JSON record. The exit status: 0
    when it found no error, 1 when it did, 130 when SIGTERM or Ctrl-C stopped it."""
    report = interruptible(work)
    if report is None:
        return 130
    print(render(report))
    write_json(report, json_out)
    return 0 if report["ok"] else 1
