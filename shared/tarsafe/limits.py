"""What one pass over a hostile tar may cost, and the errors that say why it stopped."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class Limits:
    """Bounds on reading one archive; the defaults are the download service's.

    ``max_bytes`` counts decompressed bytes, per pass over the archive (skipped bytes too: a
    zstd stream must be decompressed to be skipped). An uncompressed tar is read with seeks and
    costs no more than its stored bytes, so it is not counted. ``max_seconds`` is the wall time
    of the whole request (all its passes); None: no limit.
    """

    max_bytes: int = 16 * GiB
    max_seconds: float | None = 300.0
    max_members: int = 1_000_000
    # A pax header or GNU long name is read into memory whole.
    max_header_bytes: int = 1 * MiB
    zstd_max_window: int = 8 * MiB


class Refused(Exception):
    """The archive uses a feature osquery never writes, or would cost more than allowed.

    ``reason`` is a short code: ``sparse``, ``global_header``, ``unsupported_type``,
    ``header_too_large``, ``nonfile_data``, ``too_many_members``, ``bytes_budget``,
    ``time_budget``, ``zstd_window``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Malformed(Exception):
    """Not a readable tar: bad checksum, bad number, truncated, bad zstd stream."""


class Stopped(Exception):
    """The reader was told to stop (the request it served has ended)."""


class Budget:
    """A deadline and a stop flag, shared by every pass one request makes over an archive."""

    def __init__(self, limits: Limits, cancel: threading.Event | None = None) -> None:
        self.limits = limits
        self.cancel = cancel or threading.Event()
        seconds = limits.max_seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        """Raise Stopped or Refused("time_budget") when the reading must end now."""
        if self.cancel.is_set():
            raise Stopped("told to stop")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Refused(
                "time_budget", f"reading the archive took over {self.limits.max_seconds} s"
            )

    def lift_deadline(self) -> None:
        """From now on only the byte budget and the stop flag apply (a member is streaming)."""
        self.deadline = None
