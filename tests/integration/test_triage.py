"""carve-triage against the real servers: real YARA-X, rules and hash sets the test writes,
carves uploaded the way osquery does; verdicts on the carve and as carve.triaged events."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import aiohttp
import pytest

from clients.osquery_sim import build_archive, carve
from tests.events import listening
from tests.stack import Stack
from tests.triage import KNOWN_BAD, MARKER, wait_triaged, write_library
from tests.uploads import random_bytes

KiB = 1024


async def upload(stack: Stack, members: dict[str, bytes], tmp_path: Path, *, compress: bool) -> str:
    guid = str(uuid.uuid4())
    archive = build_archive(members, tmp_path, carve_guid=guid, compress=compress)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=8 * KiB, carve_id=guid)
    assert result.ok, result
    return guid


@pytest.mark.parametrize("compress", [False, True], ids=["tar", "tar.zst"])
async def test_a_rule_hit_and_a_known_bad_hash_flag_the_carve_a_clean_one_is_clean(
    stack: Stack, tmp_path: Path, compress: bool
) -> None:
    library = write_library(tmp_path / "lib", bad=(KNOWN_BAD,))
    await stack.start_triage(**library)
    evil = random_bytes(30_000, seed=1) + MARKER + random_bytes(5_000, seed=2)
    members = {
        "/etc/hosts": b"127.0.0.1 localhost\n",
        "/tmp/.x/payload.bin": evil,
        "/usr/local/bin/helper": KNOWN_BAD,
    }
    exchange = stack.env["CARVE_EVENTS_EXCHANGE"]
    async with listening(stack.env["CARVE_AMQP_URL"], exchange, "carve.triaged") as events:
        flagged_id = await upload(stack, members, tmp_path, compress=compress)
        clean_id = await upload(
            stack, {"/etc/hosts": b"127.0.0.1 localhost\n"}, tmp_path, compress=compress
        )
        flagged = await wait_triaged(stack, flagged_id)
        clean = await wait_triaged(stack, clean_id)
        event = await events.wait_type(flagged_id, "carve.triaged")
        await events.wait_type(clean_id, "carve.triaged")
    assert (flagged["status"], flagged["verdict"]) == ("done", "flagged")
    assert (clean["status"], clean["verdict"], clean["hits"]) == ("done", "clean", [])
    rules_version = flagged["rules_version"]
    assert len(rules_version) == 64 and clean["rules_version"] == rules_version
    hits = {(h["member"], h["kind"]): h for h in flagged["hits"]}
    assert set(hits) == {
        ("/tmp/.x/payload.bin", "yara"),
        ("/usr/local/bin/helper", "hashset"),
    }
    rule_hit = hits[("/tmp/.x/payload.bin", "yara")]
    assert (rule_hit["rule"], rule_hit["namespace"], rule_hit["tags"]) == (
        "test_marker", "test", ["demo", "test"]
    )  # fmt: skip
    assert rule_hit["metadata"] == {"author": "<b>tests</b>", "severity": 3}
    assert rule_hit["sha256"] == hashlib.sha256(evil).hexdigest()
    set_hit = hits[("/usr/local/bin/helper", "hashset")]
    assert (set_hit["set"], set_hit["sha256"]) == (
        "known-bad",
        hashlib.sha256(KNOWN_BAD).hexdigest(),
    )
    assert flagged["hit_count"] == 2 and flagged["skipped"] == [] and flagged["members"] >= 3
    assert flagged["scanned_bytes"] == sum(len(v) for v in members.values())
    assert list(flagged["hashsets"]) == ["known-bad"]
    assert "claim" not in flagged or flagged["claim"]["token"]  # internal, never shown by the API
    data = event.event.data
    assert data["carve_id"] == flagged_id and data["status"] == "complete"
    assert data["triage"]["verdict"] == "flagged" and data["triage"]["hit_count"] == 2
    assert data["triage"]["rules_version"] == rules_version
    assert {h["member"] for h in data["triage"]["hits"]} == {m for m, _ in hits}
    assert len(events.of(flagged_id)) == 1  # one result, one event
