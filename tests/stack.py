"""The services under test: in-process apps (same factories as production) or real processes
(``devstack.services``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from gridfs import AsyncGridFSBucket
from pydantic_settings import BaseSettings
from pymongo import AsyncMongoClient
from pymongo.monitoring import CommandListener

from devstack.ports import HOST, free_port
from devstack.services import ServiceProcess
from services.assembler.main import create_app as create_assembler
from services.assembler.settings import AssemblerSettings
from services.download.main import create_app as create_download
from services.download.settings import DownloadSettings
from services.events.main import create_app as create_events
from services.events.settings import EventsServiceSettings
from services.ingest.main import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.janitor.main import create_app as create_janitor
from services.janitor.settings import JanitorSettings
from services.janitor.sweep import Clock, utc_now
from services.triage.main import create_app as create_triage
from services.triage.settings import TriageSettings
from shared.resources import MONGO_LISTENERS
from tests.hangdump import watchdog

S = TypeVar("S", bound=BaseSettings)

# A teardown still running this long prints every asyncio task (pytest-timeout is 120 s).
TEARDOWN_DUMP_AFTER = 60.0


def fields(env: dict[str, str]) -> dict[str, Any]:
    """CARVE_FOO=bar environment entries as settings keyword arguments (foo="bar")."""
    return {k.removeprefix("CARVE_").lower(): v for k, v in env.items() if k.startswith("CARVE_")}


@dataclass
class RunningApp:
    app: web.Application
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


class Stack:
    """Ingest and assembler wired to this test's backends, plus helpers to inspect results."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: Path,
        *,
        assembler: bool = True,
        service_env: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.env = env
        # Settings one service gets on top of ``env`` (its own Vault identity).
        self.service_env = service_env or {}
        self.with_assembler = assembler
        self.workdir = workdir
        self.apps: list[RunningApp] = []
        self.processes: list[ServiceProcess] = []
        kw = fields(env)
        self.mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            kw["mongo_url"], tz_aware=True
        )
        self.db = self.mongo[kw["mongo_db"]]
        self.ingest_url = ""

    async def __aenter__(self) -> Stack:
        ingest = await self.start_ingest()
        self.ingest_url = ingest.url
        if self.with_assembler:
            await self.start_assembler()
        return self

    async def __aexit__(self, *exc: object) -> None:
        async with watchdog("Stack teardown", TEARDOWN_DUMP_AFTER):
            await self._teardown()

    async def _teardown(self) -> None:
        for proc in self.processes:
            proc.kill(signal.SIGTERM)
        for app in reversed(self.apps):
            await app.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):  # a MongoDB a test stopped must not hang teardown
                await self.mongo.drop_database(self.db.name)
        await self.mongo.close()

    async def _serve(self, app: web.Application, port: int | None = None) -> RunningApp:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        port = port or free_port()
        await web.TCPSite(runner, HOST, port).start()
        running = RunningApp(app, runner, f"http://{HOST}:{port}")
        self.apps.append(running)
        return running

    def _settings(self, cls: type[S], overrides: dict[str, Any], service: str = "") -> S:
        """This test's settings for a service (any port), with ``overrides`` on top."""
        own = fields(self.service_env.get(service, {}))
        return cls(**{**fields(self.env), **own, "http_port": 0, **overrides})

    async def start_ingest(self, **overrides: Any) -> RunningApp:
        return await self._serve(create_ingest(self._settings(IngestSettings, overrides)))

    async def start_assembler(self, **overrides: Any) -> RunningApp:
        return await self._serve(
            create_assembler(self._settings(AssemblerSettings, overrides, "assembler"))
        )

    async def start_download(
        self,
        port: int | None = None,
        *,
        mongo_listeners: Sequence[CommandListener] = (),
        **overrides: Any,
    ) -> RunningApp:
        """A download service (on ``port`` when its URL must be known before it starts;
        ``mongo_listeners`` see every command its MongoDB client sends)."""
        settings = self._settings(DownloadSettings, overrides, "download")
        app = create_download(settings)
        if mongo_listeners:
            app[MONGO_LISTENERS] = list(mongo_listeners)
        return await self._serve(app, port)

    async def start_events(self, **overrides: Any) -> RunningApp:
        """``carve-events`` (webhook deliveries) with ``overrides`` (its endpoints, timeouts)."""
        return await self._serve(create_events(self._settings(EventsServiceSettings, overrides)))

    async def start_triage(self, **overrides: Any) -> RunningApp:
        """``carve-triage`` (its rules and hash-set directories in ``overrides``)."""
        return await self._serve(create_triage(self._settings(TriageSettings, overrides, "triage")))

    async def start_janitor(
        self, clock: Clock = utc_now, *, loop: bool = False, **overrides: Any
    ) -> RunningApp:
        """A janitor; without ``loop`` it sweeps only when a test calls ``run_sweep(app)``."""
        settings = self._settings(JanitorSettings, overrides, "janitor")
        return await self._serve(create_janitor(settings, loop=loop, clock=clock))

    async def spawn(self, name: str, **env: str) -> ServiceProcess:
        """A service as its own process, once it is ready."""
        proc = self.launch(name, **env)
        await proc.wait_ready()
        return proc

    def launch(self, name: str, **env: str) -> ServiceProcess:
        """A service as its own process, not waited for (one a test expects to exit early)."""
        log = self.workdir / f"{name}-{len(self.processes)}.log"
        own = self.service_env.get(name, {})
        proc = ServiceProcess(name, {**self.env, **own, **env}, log)
        self.processes.append(proc)
        return proc

    async def carve_doc(self, carve_id: str) -> dict[str, Any] | None:
        return await self.db["carves"].find_one({"_id": carve_id})

    async def wait_for(
        self, carve_id: str, done: Callable[[dict[str, Any]], bool], timeout: float = 60.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            doc = await self.carve_doc(carve_id)
            if doc is not None and done(doc):
                return doc
            await asyncio.sleep(0.05)
        raise TimeoutError(f"carve {carve_id} not done in {timeout} s: {doc}")

    async def wait_complete(self, carve_id: str, timeout: float = 60.0) -> dict[str, Any]:
        return await self.wait_for(carve_id, lambda d: d["status"] == "complete", timeout)

    async def stored_sha256(self, carve_id: str) -> str:
        """SHA-256 of the archive as GridFS serves it (read back through the GridFS API)."""
        bucket = AsyncGridFSBucket(self.db, bucket_name="archives")
        stream = await bucket.open_download_stream(carve_id)
        digest = hashlib.sha256()
        while chunk := await stream.readchunk():
            digest.update(chunk)
        return digest.hexdigest()

    async def chunk_count(self, carve_id: str) -> int:
        return await self.db["archives.chunks"].count_documents({"files_id": carve_id})
