"""The services as their own OS processes (``python -m services.<name>``), and their metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from devstack import ROOT
from devstack.ports import HOST, free_port


async def scrape(url: str) -> dict[str, float]:
    """A service's /metrics as {sample with its labels: value}."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    samples = (line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    return {name: float(value) for name, value in samples}


class ServiceProcess:
    """A service started as its own OS process (``python -m services.<name>``)."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **env, "CARVE_HTTP_PORT": str(self.port)}
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                env=full_env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log_path.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            service = (await resp.json())["service"]
                            assert service == f"carve-{self.name}", f"{self.url} is {service}"
                            return
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(60)
