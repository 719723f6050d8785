"""A scan worker: a separate process that walks one archive at a time and scans its members.

Started by the service (``python -m services.triage.worker``), fed over its stdin
(``frames``). The archive is walked by ``shared.tarsafe`` (zstd decompressed as it streams,
within the byte and time budgets of the job); each regular file's first
``max_member_bytes`` are scanned by YARA-X (timeout: the job's, or what is left of the
carve's time budget) and its SHA-256 is taken where the manifest has none. Hostile content
only ever reaches this process: if it hangs or dies, the service kills or restarts it and
the carve's verdict is ``incomplete``; the service's event loop is never involved.

Memory: one member's scanned bytes (``max_member_bytes``) at a time, the zstd window
(8 MiB at most) and the rules.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
import yara_x

from services.triage import frames
from shared import tarsafe
from shared.inert import inert
from shared.manifest import entry
from shared.tarsafe import Budget, Limits, Malformed, Refused, Stopped

MAX_HITS = 200  # YARA-X hits reported per carve (all are counted)
MAX_SKIPPED = 200  # skipped members reported per carve (all are counted)
MAX_HASHED = 100_000  # members past the manifest whose SHA-256 is reported
MAX_META = 16  # metadata entries per hit
META_TEXT = 256


@dataclass(frozen=True)
class ScanJob:
    zstd: bool
    max_member_bytes: int
    max_carve_bytes: int
    max_seconds: float
    scan_timeout: float
    hash_from: int  # members below this index have a SHA-256 in the manifest already

    @classmethod
    def from_json(cls, raw: bytes) -> ScanJob:
        return cls(**orjson.loads(raw))


@dataclass
class Findings:
    """What one scan found; ``to_json`` is the RESULT frame."""

    members: int = 0
    files: int = 0
    scanned_bytes: int = 0
    read_bytes: int = 0
    hits: list[dict[str, Any]] = field(default_factory=list)
    hit_count: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    skipped_count: int = 0
    hashed: list[list[Any]] = field(default_factory=list)  # [index, path, sha256 hex]
    stopped: str | None = None  # why the walk ended early (a tarsafe reason), if it did
    stopped_detail: str | None = None

    def skip(self, path: str, reason: str, detail: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPPED:
            self.skipped.append({"member": path, "reason": reason, "detail": detail})

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)


class FrameInput(io.RawIOBase):
    """The archive as a non-seekable file read from DATA frames (END: end of file)."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__()
        self._stream = stream
        self._current = memoryview(b"")
        self.ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._current and not self.ended:
            kind, payload = frames.read_frame(self._stream)
            if kind == frames.END:
                self.ended = True
            elif kind == frames.DATA:
                self._current = memoryview(payload)
            else:
                raise frames.FrameError(f"frame {kind!r} inside an archive")
        view = memoryview(buffer).cast("B")
        count = min(len(view), len(self._current))
        view[:count] = self._current[:count]
        self._current = self._current[count:]
        return count

    def drain(self) -> None:
        """Discard what the service still sends of this archive, up to its END."""
        self._current = memoryview(b"")
        while not self.ended:
            kind, _ = frames.read_frame(self._stream)
            self.ended = kind == frames.END


def member_path(member: tarsafe.Member) -> str:
    """The member's path as the manifest and the console show it, inert (a hit's ``member``)."""
    return inert(entry(member, None)["path"], 1024)


def _meta(value: object) -> object:
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return inert(value, META_TEXT)


def _hits(results: yara_x.ScanResults, path: str, found: Findings) -> None:
    for rule in results.matching_rules:
        found.hit_count += 1
        if len(found.hits) < MAX_HITS:
            found.hits.append(
                {
                    "member": path,
                    "kind": "yara",
                    "rule": inert(rule.identifier, META_TEXT),
                    "namespace": inert(rule.namespace, META_TEXT),
                    "tags": [inert(t, META_TEXT) for t in rule.tags][:MAX_META],
                    "metadata": {inert(k, 64): _meta(v) for k, v in list(rule.metadata)[:MAX_META]},
                }
            )


def _read_member(tar: tarsafe.TarReader, cap: int, hasher: Any | None) -> tuple[bytes, int]:
    """The member's first ``cap`` bytes, and how many were read (all of it when hashing)."""
    held = io.BytesIO()  # getvalue() hands its buffer over without a copy
    read = 0
    for piece in tar.data():
        if read < cap:
            held.write(piece[: cap - read])
        read += len(piece)
        if hasher is not None:
            hasher.update(piece)
        elif read >= cap:
            break  # the rest is neither scanned nor hashed: tarsafe skips it
    data = held.getvalue()
    held.close()
    return data, read


def _scan_member(
    tar: tarsafe.TarReader,
    member: tarsafe.Member,
    scanner: yara_x.Scanner,
    job: ScanJob,
    budget: Budget,
    found: Findings,
) -> None:
    path = member_path(member)
    hasher = hashlib.sha256() if member.index >= job.hash_from else None
    cap = job.max_member_bytes
    data, read = _read_member(tar, cap, hasher)
    found.read_bytes += read
    left = 1e9 if budget.deadline is None else budget.deadline - time.monotonic()
    if left <= 0:
        raise Refused("time_budget", f"scanning took over {job.max_seconds} s")
    scanner.set_timeout(max(1, int(min(job.scan_timeout, left))))
    try:
        _hits(scanner.scan(data), path, found)
        found.scanned_bytes += len(data)
    except yara_x.TimeoutError:
        found.skip(path, "scan_timeout", f"YARA-X gave up after {job.scan_timeout:g} s")
    except yara_x.ScanError as exc:
        found.skip(path, "scan_error", inert(str(exc), META_TEXT))
    del data
    if member.size > cap:
        found.skip(path, "member_too_large", f"{member.size} bytes; the first {cap} scanned")
    if hasher is not None and len(found.hashed) < MAX_HASHED:
        found.hashed.append([member.index, path, hasher.hexdigest()])
    elif hasher is not None:
        found.skip(path, "hash_limit", f"more than {MAX_HASHED} members past the manifest")


def scan_archive(raw: io.RawIOBase, rules: yara_x.Rules, job: ScanJob) -> Findings:
    """Walk and scan one archive (synchronous)."""
    found = Findings()
    limits = Limits(max_bytes=job.max_carve_bytes, max_seconds=job.max_seconds)
    budget = Budget(limits)
    scanner = yara_x.Scanner(rules)
    current: str | None = None  # the member being read, if the walk stops inside one
    try:
        with tarsafe.open_tar(
            io.BufferedReader(raw, tarsafe.PIECE), zstd=job.zstd, budget=budget
        ) as tar:
            for member in tar:
                found.members += 1
                if member.kind == "file":
                    found.files += 1
                    current = member_path(member)
                    _scan_member(tar, member, scanner, job, budget, found)
                    current = None
    except Refused as exc:
        found.stopped, found.stopped_detail = exc.reason, exc.message
    except Malformed as exc:
        found.stopped, found.stopped_detail = "malformed", inert(str(exc), META_TEXT)
    except Stopped:
        found.stopped, found.stopped_detail = "stopped", "the service stopped the scan"
    if found.stopped and current is not None:
        found.skip(current, found.stopped, found.stopped_detail or "")
    return found


def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    rules: yara_x.Rules | None = None
    while True:
        try:
            kind, payload = frames.read_frame(inp)
        except frames.FrameError:
            return  # the service closed the pipe: exit
        if kind == frames.RULES:
            rules = yara_x.Rules.deserialize_from(io.BytesIO(payload))
        elif kind == frames.JOB and rules is not None:
            job = ScanJob.from_json(payload)
            raw = FrameInput(inp)
            found = scan_archive(raw, rules, job)
            out.write(frames.frame(frames.RESULT, found.to_json()))
            out.flush()
            raw.drain()
        else:
            raise frames.FrameError(f"unexpected frame {kind!r}")


def main() -> None:
    # Frames go to the real stdout only; anything else printed (a rule's console module)
    # goes to stderr, where the service's log is.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    _serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    main()
