"""The randomized fault run, short: real servers, a few faults, every carve checked."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import pytest

from devstack import ROOT


# Its own servers (RabbitMQ takes seconds to start), 30 s of faults, then the checks.
@pytest.mark.timeout(180)
async def test_a_short_seeded_chaos_run_finds_no_violation() -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.chaos", "--seed", "5", "--minutes", "0.5", "--hosts", "10"],
        cwd=ROOT,
        capture_output=True,
        timeout=170,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out + done.stderr.decode()[-4000:]
    summary = out.strip().splitlines()[-1]
    match = re.fullmatch(
        r"chaos seed=5 minutes=0.5 hosts=10 host_success=(\d+) host_failed=(\d+) "
        r"faults=(\d+) violations=0 seconds=\d+",
        summary,
    )
    assert match, summary
    success, failed, faults = map(int, match.groups())
    assert success + failed == 10
    assert faults >= 1
    assert "faults by kind:" in out and "violations: 0" in out
