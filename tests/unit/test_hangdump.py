"""The teardown watchdog of the suite (tests/hangdump.py): a block still running past its
limit prints every task and where it waits; a quick block prints nothing."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from tests import hangdump


async def _stuck_forever(gate: asyncio.Event) -> None:
    await gate.wait()


async def test_a_slow_block_dumps_every_task_and_what_it_awaits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = tmp_path / "dump.txt"
    monkeypatch.setenv("CARVE_HANG_DUMP", str(sink))
    gate = asyncio.Event()
    stuck = asyncio.create_task(_stuck_forever(gate), name="the-stuck-one")
    try:
        async with hangdump.watchdog("slow block", after=0.05):
            await asyncio.sleep(0.3)
    finally:
        gate.set()
        await stuck
    err = capsys.readouterr().err
    assert "slow block still running after 0.05 s" in err
    assert "the-stuck-one" in err
    assert "_stuck_forever at" in err and "Event.wait at" in err
    assert sink.read_text(encoding="utf-8") in err


async def test_a_quick_block_dumps_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    async with hangdump.watchdog("quick block", after=0.2):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    assert capsys.readouterr().err == ""
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("watchdog")]


def test_the_dump_is_text_with_one_section_per_task() -> None:
    async def main() -> str:
        out = io.StringIO()
        gate = asyncio.Event()
        task = asyncio.create_task(_stuck_forever(gate), name="waiter")
        await asyncio.sleep(0)
        text = hangdump.dump_tasks("now", file=out)
        gate.set()
        await task
        return text

    text = asyncio.run(main())
    assert text.startswith("\n===== now: 2 asyncio tasks =====")
    assert text.count("--- <Task") == 1 and "name='waiter'" in text
