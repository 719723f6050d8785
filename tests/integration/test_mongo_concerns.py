"""The MongoDB settings of docs/deployment.md ("MongoDB in production"), on the wire.

The ingest, an assembler and the download service run against SecantusDB reached as a
replica set (``replicaSet=...``, not a direct connection: the driver then sends read
preferences as it would to a production replica set), each with a PyMongo command listener
on its own client. A carve is uploaded, assembled, listed, counted and downloaded; then
every write command must carry ``writeConcern: {w: "majority"}`` (and inserts a
transaction number: retryable writes), the download service's reads ``readConcern:
majority`` with ``$readPreference: primaryPreferred``, and the workers' reads ``readConcern:
local`` from the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic_settings import BaseSettings
from pymongo import AsyncMongoClient
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from clients.osquery_sim import build_synthetic_archive, carve
from devstack.backends import Backends
from devstack.ports import HOST, free_port
from devstack.vault import POLICY, VaultAdmin
from services.assembler.main import create_app as create_assembler
from services.assembler.settings import AssemblerSettings
from services.download.main import create_app as create_download
from services.download.settings import DownloadSettings
from services.ingest.main import create_app as create_ingest
from services.ingest.settings import IngestSettings
from shared.resources import MONGO_LISTENERS
from tests.stack import fields

KiB = 1024
WRITES = {"insert", "update", "delete", "findAndModify", "createIndexes"}
READS = {"find", "aggregate", "count", "distinct"}


class Recorder(CommandListener):
    """Every command one client started: its name and body."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass

    def named(self, names: set[str]) -> list[dict[str, Any]]:
        return [body for name, body in self.commands if name in names]


@pytest.fixture
async def replica_set_env(settings_env: dict[str, str], backends: Backends) -> dict[str, str]:
    """This test's environment with MongoDB reached as the replica set it says it is."""
    probe: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(backends.mongo.url)
    try:
        hello = await probe.admin.command("hello")
    finally:
        await probe.close()
    assert hello["setName"] and hello["isWritablePrimary"]
    url = f"mongodb://{HOST}:{backends.mongo.port}/?replicaSet={hello['setName']}"
    return {**settings_env, "CARVE_MONGO_URL": url}


@contextlib.asynccontextmanager
async def _serve(
    make: Callable[[Any], web.Application], cls: type[BaseSettings], env: dict[str, str]
) -> AsyncIterator[tuple[str, Recorder]]:
    """A service app (the production factory) whose MongoDB client reports to a recorder."""
    recorder = Recorder()
    app = make(cls(**{**fields(env), "http_port": 0}))
    app[MONGO_LISTENERS] = [recorder]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        port = free_port()
        await web.TCPSite(runner, HOST, port).start()
        yield f"http://{HOST}:{port}", recorder
    finally:
        await runner.cleanup()


async def test_writes_are_majority_and_reads_have_the_intended_concerns(
    replica_set_env: dict[str, str], vault: VaultAdmin, tmp_path: Path
) -> None:
    env = replica_set_env
    token = vault.token(POLICY).token
    async with contextlib.AsyncExitStack() as running:
        ingest, ingest_rec = await running.enter_async_context(
            _serve(create_ingest, IngestSettings, env)
        )
        _, assembler_rec = await running.enter_async_context(
            _serve(create_assembler, AssemblerSettings, env)
        )
        download, download_rec = await running.enter_async_context(
            _serve(create_download, DownloadSettings, env)
        )
        archive = build_synthetic_archive(30 * KiB, tmp_path, carve_guid=str(uuid.uuid4()))
        headers = {"X-Vault-Token": token}
        async with aiohttp.ClientSession() as http:
            result = await carve(http, ingest, archive, block_size=4 * KiB)
            assert result.ok
            url = f"{download}/api/v1/carves/{result.carve_id}"
            for _ in range(200):
                async with http.get(url, headers=headers) as resp:
                    if (await resp.json()).get("status") == "complete":
                        break
                await asyncio.sleep(0.05)
            async with http.get(url + "/archive", headers=headers) as resp:
                assert resp.status == 200
                assert len(await resp.read()) == archive.stat().st_size
            async with http.get(f"{download}/api/v1/carves", headers=headers) as resp:
                assert resp.status == 200
            async with http.get(f"{download}/metrics") as resp:
                assert 'carve_carves{status="complete"} 1.0' in await resp.text()

    for recorder in (ingest_rec, assembler_rec, download_rec):
        writes = recorder.named(WRITES)
        assert writes
        for body in writes:
            assert body["writeConcern"] == {"w": "majority", "wtimeout": 10_000}, body
        inserts = recorder.named({"insert"})
        assert inserts and all("txnNumber" in body for body in inserts), "retryable writes"
    chunk_inserts = [b for b in assembler_rec.named({"insert"}) if b["insert"].endswith(".chunks")]
    assert chunk_inserts, "the chunks are written with the rest"

    for recorder in (ingest_rec, assembler_rec):
        reads = recorder.named(READS)
        assert reads
        for body in reads:
            assert body["readConcern"] == {"level": "local"}, body
            assert "$readPreference" not in body, body  # the primary
    reads = download_rec.named(READS)
    chunk_reads = [b for b in reads if b.get("find", "").endswith(".chunks")]
    assert chunk_reads and [b for b in reads if b.get("find") == "carves"]
    assert [b for b in reads if b.get("aggregate") == "carves"], "the census counts"
    for body in reads:
        assert body["readConcern"] == {"level": "majority"}, body
        assert body["$readPreference"] == {"mode": "primaryPreferred"}, body
