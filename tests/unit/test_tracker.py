"""The assembler's tracker: a failed re-check is not forgotten, a bug does not stop it."""

from __future__ import annotations

import asyncio

import pytest

from services.assembler.tracker import CarveTracker
from shared.errors import Unavailable
from shared.finalize import Outcome, Result


class Progress:
    async def add_received(self, counts: dict[str, int]) -> None:
        pass


class Finalizer:
    """Fails as told, then finalizes; records every call."""

    def __init__(self, failures: dict[str, list[BaseException]]) -> None:
        self.failures = failures
        self.calls: list[str] = []

    async def maybe_finalize(self, carve_id: str) -> Result:
        self.calls.append(carve_id)
        pending = self.failures.get(carve_id)
        if pending:
            raise pending.pop(0)
        return Result(Outcome.FINALIZED)


async def test_a_transient_error_keeps_the_carve_due_and_the_others_are_still_checked() -> None:
    finalizer = Finalizer({"a": [Unavailable("MongoDB", "away")]})
    tracker = CarveTracker(Progress(), finalizer, idle=0)
    tracker.note("a", new_chunk=True)
    tracker.note("b", new_chunk=True)
    with pytest.raises(Unavailable):
        await tracker.sweep()
    assert finalizer.calls == ["a", "b"]  # b was not made to wait a round
    assert tracker.tracked() == 1
    await tracker.sweep()  # the next round checks "a" again and finishes it
    assert finalizer.calls == ["a", "b", "a"]
    assert tracker.tracked() == 0


async def test_a_note_during_the_re_check_keeps_the_carve_due() -> None:
    tracker: CarveTracker

    class NotReady:
        calls = 0

        async def maybe_finalize(self, carve_id: str) -> Result:
            NotReady.calls += 1
            tracker.note(carve_id, new_chunk=True)  # a chunk lands meanwhile
            return Result(Outcome.NOT_READY)

    tracker = CarveTracker(Progress(), NotReady(), idle=0)
    tracker.note("a", new_chunk=True)
    await tracker.sweep()
    await tracker.sweep()
    assert NotReady.calls == 2


async def test_an_unexpected_error_does_not_end_the_re_checks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    finalizer = Finalizer({"a": [RuntimeError("a bug")]})
    tracker = CarveTracker(Progress(), finalizer, interval=0.01, idle=0)
    tracker.note("a", new_chunk=True)
    tracker.start()
    try:
        for _ in range(200):
            await asyncio.sleep(0.01)
            if tracker.tracked() == 0:
                break
    finally:
        await tracker.stop()
    assert finalizer.calls == ["a", "a"]
    assert tracker.tracked() == 0
    assert "tracker sweep failed" in caplog.text
