"""carvectl run in a thread (it is synchronous) with its own environment, its output caught."""

from __future__ import annotations

import asyncio
import contextlib
import io

from clients import carvectl


async def run_carvectl(server: str, env: dict[str, str], *argv: str) -> tuple[int, str, str]:
    """``carvectl --server SERVER --quiet ARGV...``: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return carvectl.run(["--server", server, "--quiet", *argv], env=env)

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()
