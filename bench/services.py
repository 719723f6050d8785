"""The upload path's backends and service processes, as one benchmark scenario runs them."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from devstack.backends import Backends
from devstack.backends import running_backends as running_roles
from devstack.services import ServiceProcess

SERVICES = ("ingest", "assembler")
UPLOAD_ROLES = ("redis", "rabbit", "mongo")


@contextlib.contextmanager
def running_backends(root: Path) -> Iterator[Backends]:
    """Start the three servers at once; always stop them (their data is thrown away)."""
    with running_roles(root, UPLOAD_ROLES) as backends:
        yield backends


# Extra environment for the services under test (--service-env), e.g. LD_PRELOAD.
EXTRA_ENV: dict[str, str] = {}


def service_env(backends: Backends, tag: str) -> dict[str, str]:
    """The CARVE_* settings of one scenario's services (own database, queue and key prefix)."""
    return {
        **backends.env(),
        "CARVE_MONGO_DB": f"bench_{tag}",
        "CARVE_AMQP_QUEUE": f"bench.blocks.{tag}",
        "CARVE_EVENTS_EXCHANGE": f"bench.events.{tag}",
        "CARVE_REDIS_KEY_PREFIX": f"bench{tag}:",
        "CARVE_LOG_LEVEL": "WARNING",
        **EXTRA_ENV,
    }


def stop_service(service: ServiceProcess) -> None:
    try:
        service.kill(signal.SIGTERM)
    except subprocess.TimeoutExpired:
        service.kill(signal.SIGKILL)


def replica_labels(replicas: dict[str, int]) -> list[tuple[str, str]]:
    """(label, service) of each process: "ingest", "ingest-2", ..., "assembler", ..."""
    return [
        (name if i == 0 else f"{name}-{i + 1}", name)
        for name, count in replicas.items()
        for i in range(count)
    ]


@contextlib.asynccontextmanager
async def running_services(
    env: dict[str, str], logdir: Path, replicas: dict[str, int] | None = None
) -> AsyncIterator[dict[str, ServiceProcess]]:
    """Fresh ingest and assembler processes (CARVE_HTTP_PORT is picked by ServiceProcess)."""
    procs: dict[str, ServiceProcess] = {}
    try:
        for label, name in replica_labels(replicas or dict.fromkeys(SERVICES, 1)):
            procs[label] = ServiceProcess(name, env, logdir / f"{label}.log")
        for proc in procs.values():
            await proc.wait_ready(60.0)
        yield procs
    finally:
        for proc in procs.values():
            stop_service(proc)


def log_summary(path: Path) -> dict[str, Any]:
    """Services log at WARNING here, so any line at all is worth a look."""
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return {"lines": len(lines), "tail": lines[-5:]}
