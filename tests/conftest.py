"""Fixtures: real servers for the session, a fresh database and queue per test."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devstack.backends import Backends, running_backends
from devstack.vault import VaultAdmin, provision_transit
from shared.tasks import cancel_and_wait
from tests.hangdump import thread_watchdog
from tests.stack import Stack
from tests.tcp_gate import TcpGate


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    root = tmp_path_factory.mktemp("backends")
    try:
        with running_backends(root) as found:
            yield found
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def names() -> dict[str, str]:
    """Per-test database, queue and Redis key prefix, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:10]
    return {
        "mongo_db": f"t_{tag}",
        "amqp_queue": f"carve.blocks.{tag}",
        "events_exchange": f"carve.events.{tag}",
        "triage_queue": f"carve.triage.{tag}",
        "redis_key_prefix": f"t{tag}:",
    }


@pytest.fixture
def settings_env(backends: Backends, names: dict[str, str]) -> dict[str, str]:
    """The CARVE_* environment a service process of this test would get."""
    return {
        **backends.env(),
        "CARVE_MONGO_DB": names["mongo_db"],
        "CARVE_AMQP_QUEUE": names["amqp_queue"],
        "CARVE_EVENTS_EXCHANGE": names["events_exchange"],
        "CARVE_TRIAGE_QUEUE": names["triage_queue"],
        "CARVE_REDIS_KEY_PREFIX": names["redis_key_prefix"],
        "CARVE_LOG_LEVEL": "INFO",
    }


@pytest.fixture
async def stack(settings_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Stack]:
    async with Stack(settings_env, tmp_path) as running:
        yield running


@pytest.fixture
async def ingest_only(settings_env: dict[str, str], tmp_path: Path) -> AsyncIterator[Stack]:
    """Ingest without an assembler: blocks wait in the queue until a test starts one."""
    async with Stack(settings_env, tmp_path, assembler=False) as running:
        yield running


@pytest.fixture(scope="session")
def transit_roles(backends: Backends) -> dict[str, dict[str, str]]:
    """Transit and AppRole on the session's OpenBao: each service's own role (its
    CARVE_VAULT_ROLE_ID and CARVE_VAULT_SECRET_ID), with the policies of deploy/vault/."""
    admin = VaultAdmin(backends.vault.url, backends.vault.root_token)
    return provision_transit(admin.client)


@pytest.fixture
def sealed_env(settings_env: dict[str, str]) -> dict[str, str]:
    """This test's environment with encryption at rest on."""
    return {**settings_env, "CARVE_ENCRYPTION": "vault-transit"}


@pytest.fixture
async def sealed_stack(
    sealed_env: dict[str, str], transit_roles: dict[str, dict[str, str]], tmp_path: Path
) -> AsyncIterator[Stack]:
    """Ingest and assembler with encryption at rest on (Vault Transit, each service signed
    in with its own AppRole)."""
    async with Stack(sealed_env, tmp_path, service_env=transit_roles) as running:
        yield running


@pytest.fixture(scope="session")
def vault(backends: Backends) -> VaultAdmin:
    """Root access to the session's OpenBao, with the download policy and userpass set up."""
    return VaultAdmin.provisioned(backends.vault)


@pytest.fixture(scope="session", autouse=True)
async def _no_task_left_behind() -> AsyncIterator[None]:
    """Torn down last of the session's fixtures, before pytest-asyncio closes the loop: that
    cancels what is left once and waits, for ever when a task lost its cancel (Python 3.11's
    wait_for, shared.tasks); here they are cancelled until they end."""
    yield
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    async with asyncio.timeout(60):
        await cancel_and_wait(*left)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    # A teardown that hangs (a task ignoring its cancellation) prints every task at 60 s.
    with thread_watchdog(f"teardown after {item.nodeid}"):
        return (yield)


def pytest_configure(config: pytest.Config) -> None:
    # Fail early and clearly when the system packages the suite needs are missing.
    for tool in ("redis-server", "rabbitmq-server", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise pytest.UsageError(f"{tool} is not installed: run scripts/test.sh")


@pytest.fixture
async def gate(backends: Backends) -> AsyncIterator[TcpGate]:
    """The session's OpenBao behind a gate the test closes (Vault refused, cut, unreachable)
    and opens again."""
    opened = TcpGate(backends.vault.port)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
