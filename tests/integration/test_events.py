"""Carve events against the real servers: one event per transition, on the topic exchange, as
CloudEvents; none lost when the process that changed the state dies before publishing."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cloudevents.core.formats.json import JSONFormat

from clients.osquery_sim import build_archive, carve, carve_member_name, start_body
from devstack import ROOT
from devstack.vault import POLICY, VaultAdmin
from services.janitor.main import run_sweep
from shared.failpoints import EXIT_CODE
from tests.events import Listener, Received, listening
from tests.stack import Stack
from tests.uploads import Upload, random_bytes

KiB = 1024
ADMIN = "osquery-file-carve-admin"
NODE_KEY = "node-key-that-must-never-leave-the-server"
MEMBERS = {"/var/log/auth.log": random_bytes(20_000, seed=3), "/etc/hosts": b"127.0.0.1 x\n"}


def listen(stack: Stack) -> Any:
    return listening(stack.env["CARVE_AMQP_URL"], stack.env["CARVE_EVENTS_EXCHANGE"])


def check_envelope(received: Received, carve_id: str, kind: str) -> dict[str, Any]:
    """What every event must be: a CloudEvent 1.0 in structured JSON, routed by its type."""
    event = received.event
    raw = json.loads(event.body)
    assert set(raw) == {
        "specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"
    }  # fmt: skip
    assert raw["specversion"] == "1.0"
    assert (raw["type"], received.routing_key, raw["subject"]) == (kind, kind, carve_id)
    assert raw["source"] == "urn:osquery-carve-server"
    assert raw["datacontenttype"] == "application/json"
    assert raw["time"].endswith("Z") and datetime.fromisoformat(raw["time"]).tzinfo is not None
    assert uuid.UUID(raw["id"]).version == 4 and received.message_id == raw["id"]
    assert received.content_type == "application/cloudevents+json" and received.persistent
    # The CloudEvents SDK reads it back as the same event.
    parsed = JSONFormat().read(None, event.body)
    assert parsed.get_attributes()["id"] == raw["id"] and parsed.get_data() == raw["data"]
    assert NODE_KEY not in event.body.decode()
    data: dict[str, Any] = raw["data"]
    assert data["carve_id"] == carve_id
    return data


async def settle(listener: Listener, seconds: float = 1.5) -> None:
    """Give a duplicate (a second publish of anything) the time to show up."""
    await asyncio.sleep(seconds)


async def test_a_carve_s_life_is_one_event_per_transition(
    stack: Stack, vault: VaultAdmin, tmp_path: Path
) -> None:
    download = await stack.start_download(vault_cache_ttl=0.5)
    vault.client.sys.create_or_update_policy(
        ADMIN, (ROOT / "deploy" / "vault" / f"{ADMIN}.hcl").read_text()
    )
    admin = vault.token(POLICY, ADMIN).token
    guid = str(uuid.uuid4())
    archive = build_archive(MEMBERS, tmp_path, carve_guid=guid)
    async with listen(stack) as events, aiohttp.ClientSession() as http:
        result = await carve(
            http, stack.ingest_url, archive, block_size=4 * KiB, node_key=NODE_KEY, carve_id=guid
        )
        assert result.ok, result
        doc = await stack.wait_complete(guid)
        completed = check_envelope(
            await events.wait_type(guid, "carve.completed"), guid, "carve.completed"
        )
        started = check_envelope(events.of(guid)[0], guid, "carve.started")
        assert session_never_in(events, doc)
        async with http.delete(
            f"{download.url}/api/v1/carves/{guid}", headers={"X-Vault-Token": admin}
        ) as resp:
            assert resp.status == 200
        deleted = check_envelope(
            await events.wait_type(guid, "carve.deleted"), guid, "carve.deleted"
        )
        await settle(events)
    kinds = [r.event.type for r in events.of(guid)]
    assert kinds == ["carve.started", "carve.completed", "carve.deleted"]
    assert len({r.event.id for r in events.of(guid)}) == 3
    size = archive.stat().st_size
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert started["status"] == "receiving" and started["sha256"] is None
    assert (started["carve_size"], started["block_size"]) == (size, 4 * KiB)
    assert started["block_count"] == -(-size // (4 * KiB)) and started["created_at"].endswith("Z")
    assert (completed["status"], completed["sha256"], completed["compression"]) == (
        "complete",
        sha256,
        "none",
    )
    assert completed["blocks_received"] == completed["block_count"]
    assert completed["manifest"] == {
        "members": 2,
        "truncated": False,
        "paths": ["/var/log/auth.log", "/etc/hosts"],
    }
    assert completed["completed_at"].endswith("Z") and completed["host"].startswith("nk:")
    assert (deleted["status"], deleted["deleted_by"], deleted["sha256"]) == (
        "deleted",
        "token-token",
        sha256,
    )
    # Published and pulled: nothing is left pending on the carve.
    assert (await stack.carve_doc(guid) or {}).get("outbox") == []


def session_never_in(events: Listener, doc: dict[str, Any]) -> bool:
    """Neither the session id (cleared once complete, so taken from its hash) nor the node key
    appears in any event."""
    bodies = b"".join(r.event.body for r in events.received).decode()
    assert doc["session_sha256"] not in bodies and "session_id" not in bodies
    return "node_key" not in bodies


async def test_idle_and_expired_carves_are_announced(stack: Stack) -> None:
    janitor = await stack.start_janitor(session_idle_timeout=0.5, finalize_grace=0)
    async with listen(stack) as events, aiohttp.ClientSession() as http:
        idle = Upload(stack, random_bytes(6 * 4 * KiB, seed=1), 4 * KiB)
        await idle.start(http)
        await idle.send_all(http, [0, 2])
        await stack.wait_for(idle.carve_id, lambda d: d["blocks_received"] == 2)
        await asyncio.sleep(0.8)
        report = await run_sweep(janitor.app)
        assert report.actions["failed"] == 1
        failed = check_envelope(
            await events.wait_type(idle.carve_id, "carve.failed"), idle.carve_id, "carve.failed"
        )
        done = Upload(stack, random_bytes(3 * 4 * KiB, seed=2), 4 * KiB)
        await done.start(http)
        await done.send_all(http, range(done.count))
        await stack.wait_complete(done.carve_id)
        later = await stack.start_janitor(lambda: datetime.now(UTC) + timedelta(days=31))
        report = await run_sweep(later.app)
        assert (report.actions["expired"], report.actions["failed_purged"]) == (1, 1)
        expired = check_envelope(
            await events.wait_type(done.carve_id, "carve.expired"), done.carve_id, "carve.expired"
        )
        await settle(events)
    assert [r.event.type for r in events.of(idle.carve_id)] == [
        "carve.started",
        "carve.failed",
        "carve.expired",  # failed carves expire too (sooner: CARVE_FAILED_RETENTION)
    ]
    assert failed["failure_reason"] == "idle: no block for 0.5 s; 2 of 6 blocks stored"
    assert (failed["status"], failed["blocks_received"]) == ("failed", 2)
    assert failed["failed_at"].endswith("Z")
    assert [r.event.type for r in events.of(done.carve_id)] == [
        "carve.started",
        "carve.completed",
        "carve.expired",
    ]
    assert (expired["status"], expired["expired_at"] is not None) == ("expired", True)
    assert expired["sha256"] == done.sha256


async def test_an_assembler_killed_right_after_completing_a_carve_loses_no_event(
    ingest_only: Stack,
) -> None:
    stack = ingest_only
    async with listen(stack) as events, aiohttp.ClientSession() as http:
        upload = Upload(stack, random_bytes(5 * 4 * KiB, seed=4), 4 * KiB)
        await upload.start(http)
        await upload.send_all(http, range(upload.count))
        assembler = stack.launch("assembler", CARVE_FAILPOINTS="events.after_change")
        # It completes the carve, then dies before it publishes: the event waits in the outbox.
        assert await asyncio.to_thread(assembler.proc.wait, 60) == EXIT_CODE
        doc = await stack.wait_complete(upload.carve_id, timeout=5)
        pending = [(e["id"], e["type"]) for e in doc["outbox"]]
        assert [kind for _, kind in pending] == ["carve.completed"]
        await settle(events, 1.0)
        assert [r.event.type for r in events.of(upload.carve_id)] == ["carve.started"]
        # Any relay's sweep publishes it (here the janitor's), with the id written with the change.
        janitor = await stack.start_janitor(events_sweep_grace=0.1)
        await run_sweep(janitor.app)
        received = await events.wait_type(upload.carve_id, "carve.completed")
        await settle(events)
    check_envelope(received, upload.carve_id, "carve.completed")
    assert received.event.id == pending[0][0]
    assert [r.event.type for r in events.of(upload.carve_id)] == [
        "carve.started",
        "carve.completed",
    ]
    assert (await stack.carve_doc(upload.carve_id) or {})["outbox"] == []


async def test_an_ingest_killed_right_after_a_start_loses_no_event(stack: Stack) -> None:
    carve_id, request_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = start_body(
        block_count=2, block_size=4 * KiB, carve_size=6 * KiB, carve_id=carve_id,
        request_id=request_id, node_key=NODE_KEY,
    )  # fmt: skip
    async with listen(stack) as events, aiohttp.ClientSession() as http:
        doomed = await stack.spawn("ingest", CARVE_FAILPOINTS="events.after_change")
        with pytest.raises(aiohttp.ClientError):
            async with http.post(doomed.url + "/start_uploads", data=body) as resp:
                await resp.read()
        assert await asyncio.to_thread(doomed.proc.wait, 30) == EXIT_CODE
        doc = await stack.wait_for(carve_id, lambda d: True, timeout=5)
        outbox_id = doc["outbox"][0]["id"]
        # osquery retries the start (it never got a reply): the same session, no second event.
        fresh = await stack.start_ingest(events_sweep_grace=0.1, events_sweep_interval=0.2)
        async with http.post(fresh.url + "/start_uploads", data=body) as resp:
            assert (await resp.json())["session_id"] == doc["session_id"]
        received = await events.wait_type(carve_id, "carve.started")
        await settle(events)
    assert received.event.id == outbox_id
    assert [r.event.type for r in events.of(carve_id)] == ["carve.started"]


def hostile_tar(guid: str) -> bytes:
    """Member names a compromised host would pick: markup, chat syntax, control characters,
    and a 10 KB name (a pax header carries it)."""
    names = [
        "/tmp/<img src=x onerror=alert(1)>.txt",
        "/tmp/<!channel> *bold* <https://evil.example|click me>.txt",
        "/tmp/\x1b[31mred\r\nforged: line\x07.log",
        "/tmp/" + "A" * 10_000,
        "/tmp/\u2028line\u2029sep.txt",
    ]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(carve_member_name(guid, name))
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
    return buffer.getvalue()


async def test_hostile_member_names_stay_bounded_and_inert(stack: Stack, tmp_path: Path) -> None:
    guid = str(uuid.uuid4())
    path = tmp_path / f"{guid}.tar"
    path.write_bytes(hostile_tar(guid))
    async with listen(stack) as events, aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, path, block_size=4 * KiB, carve_id=guid)
        assert result.ok, result
        received = await events.wait_type(guid, "carve.completed")
    data = check_envelope(received, guid, "carve.completed")
    paths = data["manifest"]["paths"]
    assert data["manifest"]["members"] == 5 and len(paths) == 5
    assert len(received.event.body) < 4 * KiB  # a 10 KB name became 256 characters
    assert all(len(p) <= 256 for p in paths)
    assert paths[3] == "/tmp/" + "A" * 250 + "\u2026"
    assert paths[2] == "/tmp/\\x1b[31mred\\x0d\\x0aforged: line\\x07.log"
    assert paths[4] == "/tmp/\\u2028line\\u2029sep.txt"
    assert not any(c in "".join(paths) for c in "\r\n\x1b\x07\u2028\u2029")
    # Markup is kept as text: escaping it is the job of whoever renders it (Slack, HTML).
    assert paths[0] == "/tmp/<img src=x onerror=alert(1)>.txt"
