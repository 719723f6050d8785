"""The scan workers, from the service's side: at most ``size`` scans at once, each in its own
process (``services.triage.worker``), fed over a pipe without blocking the event loop.

A worker is started on first use and kept for the next scans; it is sent the rules again
when they changed since its last scan. A worker that does not answer within the job's time
budget plus a grace is killed (hostile input cannot hold a worker for ever), as is one that
answers with anything but a result; either way the scan's findings say why (``stopped``) and
the next scan gets a fresh worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict

import orjson

from services.triage import frames
from services.triage.rules import RuleSet
from services.triage.worker import Findings, ScanJob

log = logging.getLogger(__name__)

GRACE_SECONDS = 30.0  # past the job's time budget before a worker is killed


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.rules_version: str | None = None

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def read_result(self) -> Findings:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            kind, length = frames.parse_header(await stdout.readexactly(frames.HEADER.size))
            payload = await stdout.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise frames.FrameError("the worker closed its pipe") from exc
        if kind != frames.RESULT:
            raise frames.FrameError(f"the worker answered {kind!r}")
        return Findings(**orjson.loads(payload))


class ScanPool:
    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # a slot whose worker is not started yet
        self.started = 0  # workers started (a test sees a killed one replaced)

    async def warm(self, rules: RuleSet) -> None:
        """Start the idle slots' workers now and give them ``rules`` (a worker takes about
        a second to start: better before the first carve than during it)."""
        ready: list[_Worker | None] = []
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            try:
                if worker is None or not worker.alive:
                    worker = await self._start()
                stdin = worker.process.stdin
                assert stdin is not None
                if worker.rules_version != rules.version:
                    stdin.write(frames.frame(frames.RULES, rules.blob))
                    await stdin.drain()
                    worker.rules_version = rules.version
            except (OSError, ConnectionError) as exc:
                log.warning("a scan worker did not start: %s", exc)
                worker = None
            ready.append(worker)
        for worker in ready:
            self._idle.put_nowait(worker)

    async def close(self) -> None:
        """End every idle worker (a scan still running ends with its own task)."""
        while not self._idle.empty():
            worker = self._idle.get_nowait()
            if worker is not None:
                await worker.kill()

    def pids(self) -> list[int]:
        """The process ids of the idle workers (tests read their peak RSS)."""
        queue = self._idle._queue  # type: ignore[attr-defined]
        return [w.process.pid for w in queue if w is not None and w.alive]

    async def _start(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.triage.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.started += 1
        return _Worker(process)

    async def scan(self, chunks: AsyncIterator[bytes], job: ScanJob, rules: RuleSet) -> Findings:
        """Scan the archive ``chunks`` yields; waits for a free worker first."""
        worker = await self._idle.get()
        try:
            if worker is None or not worker.alive:
                worker = await self._start()
            found = await self._run(worker, chunks, job, rules)
        except BaseException:
            if worker is not None:
                await worker.kill()
            self._idle.put_nowait(None)
            raise
        self._idle.put_nowait(worker if worker.alive else None)
        return found

    async def _run(
        self, worker: _Worker, chunks: AsyncIterator[bytes], job: ScanJob, rules: RuleSet
    ) -> Findings:
        stdin = worker.process.stdin
        assert stdin is not None
        if worker.rules_version != rules.version:
            stdin.write(frames.frame(frames.RULES, rules.blob))
            worker.rules_version = rules.version
        stdin.write(frames.frame(frames.JOB, orjson.dumps(asdict(job))))
        answer = asyncio.ensure_future(worker.read_result())
        feeding = asyncio.ensure_future(_feed(stdin, chunks, answer))
        try:
            async with asyncio.timeout(job.max_seconds + GRACE_SECONDS):
                await asyncio.wait({answer, feeding}, return_when=asyncio.FIRST_EXCEPTION)
                if feeding.done() and feeding.exception() is not None:
                    raise feeding.exception()  # type: ignore[misc]  # reading the carve failed
                found = await answer
                await feeding
        except TimeoutError:
            log.warning("a scan worker ran past its time budget: killed")
            await worker.kill()
            return _stopped("worker_timeout", f"no answer within {job.max_seconds:g} s")
        except (frames.FrameError, ConnectionError, OSError) as exc:
            with contextlib.suppress(TimeoutError):  # its exit status, if it is ending
                await asyncio.wait_for(worker.process.wait(), 2.0)
            code = worker.process.returncode
            log.warning("a scan worker failed (%s, exit %s): restarted", exc, code)
            await worker.kill()
            return _stopped("worker_died", f"the scan worker ended (exit status {code})")
        finally:
            for task in (answer, feeding):
                task.cancel()
        return found


def _stopped(reason: str, detail: str) -> Findings:
    return Findings(stopped=reason, stopped_detail=detail)


async def _feed(
    stdin: asyncio.StreamWriter, chunks: AsyncIterator[bytes], answer: asyncio.Future[Findings]
) -> None:
    """Write the archive to the worker, frame by frame, until it ends or the worker has
    answered (it stopped reading early); then END."""
    async for chunk in chunks:
        for at in range(0, len(chunk), frames.MAX_DATA):
            if answer.done():
                break
            stdin.write(frames.frame(frames.DATA, chunk[at : at + frames.MAX_DATA]))
            await stdin.drain()
        if answer.done():
            break
    stdin.write(frames.frame(frames.END))
    await stdin.drain()
