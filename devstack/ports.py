"""Loopback ports: a free one, whether one is open, waiting for one to open."""

from __future__ import annotations

import socket
import subprocess
import time

HOST = "127.0.0.1"

_handed_out: set[int] = set()


def free_port() -> int:
    """A port nobody listens on, and never the same one twice in this process.

    (The kernel may offer a just-closed port again; two services given the same
    one would make a readiness probe answer for the wrong process.)
    """
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def port_open(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_port(
    port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, host: str = HOST
) -> None:
    """Return once ``port`` accepts connections; raise if ``proc`` exits first or time is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {timeout} s")
