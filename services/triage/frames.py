"""The pipe between ``carve-triage`` and its scan workers: typed, length-prefixed frames.

``kind (1 byte) | length (u32, little-endian) | payload``. The service writes a worker's
stdin, the worker answers on its stdout (nothing else is written there)::

    RULES   serialized YARA-X rules (sent when a worker's rules are not the current ones)
    JOB     JSON: the scan's budgets (``ScanJob``)
    DATA    bytes of the archive, in order (at most ``MAX_DATA`` each)
    END     the archive ends
    RESULT  JSON: what the scan found (worker -> service)

A worker that stops reading early (a budget, a refused archive) answers RESULT at once and
then discards DATA until END, so the service never blocks on a full pipe.
"""

from __future__ import annotations

import struct
from typing import IO

RULES, JOB, DATA, END, RESULT = b"R", b"J", b"D", b"E", b"S"
KINDS = frozenset({RULES, JOB, DATA, END, RESULT})
HEADER = struct.Struct("<cI")
MAX_DATA = 1024 * 1024
MAX_FRAME = 256 * 1024 * 1024  # serialized rules and results stay far below


class FrameError(Exception):
    """The other side wrote something that is not a frame (or closed the pipe mid-frame)."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


def parse_header(header: bytes) -> tuple[bytes, int]:
    if len(header) != HEADER.size:
        raise FrameError("pipe closed")
    kind, length = HEADER.unpack(header)
    if kind not in KINDS or length > MAX_FRAME:
        raise FrameError(f"bad frame header {header!r}")
    return kind, length


def read_frame(stream: IO[bytes]) -> tuple[bytes, bytes]:
    """The next frame from a blocking stream (the worker's side)."""
    kind, length = parse_header(stream.read(HEADER.size))
    payload = stream.read(length)
    if len(payload) != length:
        raise FrameError("pipe closed inside a frame")
    return kind, payload
