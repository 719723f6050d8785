"""carve-triage against the real servers: real YARA-X, rules and hash sets the test writes,
carves uploaded the way osquery does; verdicts on the carve and as carve.triaged events."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from clients.osquery_sim import build_archive, carve
from devstack import ROOT
from devstack.vault import POLICY, VaultAdmin
from services.triage import keys as triage_keys
from services.triage.store import TriageStore
from shared.failpoints import EXIT_CODE
from shared.triage import rescan_update
from tests import hostile
from tests.events import listening
from tests.stack import Stack
from tests.triage import KNOWN_BAD, MARKER, RULE, wait_triaged, write_library
from tests.uploads import random_bytes

KiB = 1024
ADMIN = "osquery-file-carve-admin"
RULE_OK = 'rule nothing_here { strings: $a = "never-in-a-test-carve-91" condition: $a }\n'


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


def peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes (its peak resident set so far)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


async def upload_raw(stack: Stack, data: bytes, tmp_path: Path) -> str:
    guid = str(uuid.uuid4())
    archive = tmp_path / f"{guid}.bin"
    archive.write_bytes(data)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=8 * KiB, carve_id=guid)
    assert result.ok, result
    return guid


async def test_hostile_archives_cost_their_budgets_and_end_incomplete_while_others_are_served(
    stack: Stack, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "lib", bad=(KNOWN_BAD,))
    app = (
        await stack.start_triage(
            **library,
            triage_workers=2,
            triage_max_member_bytes=1024 * KiB,
            triage_max_carve_bytes=256 * 1024 * KiB,
        )
    ).app
    started = time.monotonic()
    # 64 GiB of zeros in 2 MB of zstd; a GNU sparse map of a million entries; a member whose
    # marker lies past the member cap.
    bomb = await upload_raw(stack, hostile.zero_bomb_zstd(64 << 30), tmp_path)
    sparse = await upload_raw(stack, hostile.sparse_10_bomb(1_000_000), tmp_path)
    big = await upload(
        stack,
        {"/var/big.bin": bytes(2048 * KiB) + MARKER, "/etc/hosts": b"127.0.0.1 x\n"},
        tmp_path,
        compress=True,
    )
    clean = await upload(stack, {"/etc/motd": b"hello\n"}, tmp_path, compress=False)
    results = {
        name: await wait_triaged(stack, carve_id, timeout=120)
        for name, carve_id in {"bomb": bomb, "sparse": sparse, "big": big, "clean": clean}.items()
    }
    elapsed = time.monotonic() - started
    assert results["clean"]["verdict"] == "clean"
    for name in ("bomb", "sparse", "big"):
        assert results[name]["verdict"] == "incomplete", (name, results[name])
        assert results[name]["hits"] == []
    reasons = {n: {s["reason"] for s in r["skipped"]} for n, r in results.items()}
    assert reasons["bomb"] == {"bytes_budget"}
    assert reasons["sparse"] == {"sparse"}
    assert reasons["big"] == {"member_too_large"}
    big_skip = results["big"]["skipped"][0]
    assert (
        big_skip["member"] == "/var/big.bin" and "the first 1048576 scanned" in big_skip["detail"]
    )
    assert results["big"]["scanned_bytes"] == 1024 * KiB + len(b"127.0.0.1 x\n")
    # Bounded: the workers held at most a member cap and the zstd window beyond Python and
    # the rules, however large the bomb claims to be; and it took seconds, not 64 GiB's worth.
    peaks = [peak_rss(pid) for pid in app[triage_keys.POOL].pids()]
    assert peaks and max(peaks) < 150 * 1024 * KiB, peaks
    assert elapsed < 60, elapsed
    print(f"hostile: {elapsed:.1f} s for four carves, worker peak RSS {max(peaks) / 2**20:.0f} MiB")


def process_env(library: dict[str, str], **more: str) -> dict[str, str]:
    env = {f"CARVE_{k.upper()}": v for k, v in library.items()}
    return {**env, "CARVE_TRIAGE_LEASE": "2", "CARVE_TRIAGE_SWEEP_INTERVAL": "0.5", **more}


async def test_a_replica_killed_mid_scan_leaves_the_carve_to_be_scanned_once_after_restart(
    stack: Stack, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "lib")
    env = process_env(library)
    doomed = await stack.spawn("triage", **env, CARVE_FAILPOINTS="triage.before_result")
    exchange = stack.env["CARVE_EVENTS_EXCHANGE"]
    async with listening(stack.env["CARVE_AMQP_URL"], exchange, "carve.triaged") as events:
        carve_id = await upload(stack, {"/tmp/x.bin": MARKER}, tmp_path, compress=True)
        await asyncio.to_thread(doomed.proc.wait, 60)
        assert doomed.proc.returncode == EXIT_CODE  # died with its scan done, nothing written
        doc = await stack.carve_doc(carve_id)
        assert doc is not None and doc["triage"]["status"] == "running"
        await stack.spawn("triage", **env)
        triage = await wait_triaged(stack, carve_id)
        await events.wait_type(carve_id, "carve.triaged")
        await asyncio.sleep(3)  # a second result or event would show up by now
    assert (triage["status"], triage["verdict"], triage["hit_count"]) == ("done", "flagged", 1)
    assert len(events.of(carve_id)) == 1
    doc = await stack.carve_doc(carve_id)
    assert doc is not None and doc["triage"]["finished"] == triage["finished"]
    assert "claim" not in doc["triage"] and "triage_history" not in doc


async def test_a_rules_file_that_does_not_compile_is_named_and_the_service_is_not_ready(
    stack: Stack, tmp_path: Path
) -> None:
    bad = "rule ok { condition: true }\n\nrule broken {\n  condition: no_such_thing\n}\n"
    library = write_library(tmp_path / "lib", rules={"good.yar": RULE_OK, "broken.yar": bad})
    running = await stack.start_triage(**library, triage_reload_interval=0.2)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{running.url}/readyz") as resp:
            body = await resp.json()
        assert resp.status == 503
        assert (
            "broken.yar:4:" in body["checks"]["rules"]
            and "no_such_thing" in body["checks"]["rules"]
        )
        carve_id = await upload(stack, {"/tmp/x.bin": MARKER}, tmp_path, compress=False)
        await asyncio.sleep(1.0)
        doc = await stack.carve_doc(carve_id)
        assert doc is not None and "triage" not in doc  # no scan without rules: it waits
        Path(library["triage_rules"], "broken.yar").unlink()  # fixed: reloaded on change
        triage = await wait_triaged(stack, carve_id)
        async with http.get(f"{running.url}/readyz") as resp:
            assert resp.status == 200
    assert triage["verdict"] == "clean"  # only good.yar's rule, which matches nothing


async def test_sighup_brings_new_rules_and_an_admin_re_scan_applies_them_to_an_old_carve(
    stack: Stack, vault: VaultAdmin, tmp_path: Path
) -> None:
    download = await stack.start_download(vault_cache_ttl=0.5, triage_rescan_max=2)
    vault.client.sys.create_or_update_policy(
        ADMIN, (ROOT / "deploy" / "vault" / f"{ADMIN}.hcl").read_text()
    )
    admin = {"X-Vault-Token": vault.token(POLICY, ADMIN).token}
    reader = {"X-Vault-Token": vault.token(POLICY).token}
    library = write_library(tmp_path / "lib", rules={"first.yar": RULE_OK})
    triage = await stack.spawn("triage", **process_env(library, CARVE_TRIAGE_RELOAD_INTERVAL="0"))
    old = await upload(stack, {"/tmp/x.bin": MARKER}, tmp_path, compress=False)
    before = await wait_triaged(stack, old)
    assert before["verdict"] == "clean"
    Path(library["triage_rules"], "second.yar").write_text(RULE)
    triage.proc.send_signal(signal.SIGHUP)  # no directory polling here: only the signal
    new = await upload(stack, {"/tmp/y.bin": MARKER}, tmp_path, compress=False)
    after = await wait_triaged(stack, new)
    assert after["verdict"] == "flagged" and after["rules_version"] != before["rules_version"]
    api = f"{download.url}/api/v1"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{api}/carves?verdict=flagged", headers=reader) as resp:
            listed = [c["carve_id"] for c in (await resp.json())["carves"]]
        assert listed == [new]
        async with http.post(f"{api}/carves/{old}/triage", headers=reader, json={}) as resp:
            assert resp.status == 403  # reading carves is not enough
        async with http.post(f"{api}/carves/{old}/triage", headers=admin, json={}) as resp:
            assert resp.status == 202
            assert (await resp.json())["triage"]["status"] == "pending"
        rescanned = await stack.wait_for(
            old, lambda d: d["triage"].get("rules_version") == after["rules_version"]
            and d["triage"]["status"] == "done",
        )  # fmt: skip
        async with http.get(f"{api}/carves/{old}", headers=reader) as resp:
            view = await resp.json()
        async with http.post(
            f"{api}/triage", headers=admin, json={"since": "2000-01-01T00:00:00Z"}
        ) as resp:
            assert resp.status == 202
            assert await resp.json() == {"since": "2000-01-01T00:00:00Z", "requested": 2}
        async with http.post(f"{api}/triage", headers=admin, json={"since": "yesterday"}) as resp:
            assert resp.status == 400
        stack_third = await upload(stack, {"/etc/motd": b"hi\n"}, tmp_path, compress=False)
        await wait_triaged(stack, stack_third)
        async with http.post(
            f"{api}/triage", headers=admin, json={"since": "2000-01-01T00:00:00Z"}
        ) as resp:
            refused = await resp.json()
            assert resp.status == 400 and "more than 2 carves" in refused["error"]
        async with http.get(f"{api}/audit?carve_id={old}", headers=admin) as resp:
            actions = [(e["action"], e["outcome"]) for e in (await resp.json())["entries"]]
    assert rescanned["triage"]["verdict"] == "flagged"
    assert view["triage"]["verdict"] == "flagged" and "claim" not in view["triage"]
    assert view["triage"]["requested_by"]
    assert [h["verdict"] for h in view["triage_history"]] == ["clean"]
    assert view["triage_history"][0]["rules_version"] == before["rules_version"]
    assert ("triage", "allowed") in actions and ("triage", "denied") in actions


def metric_sum(lines: list[str], prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


async def test_two_replicas_share_the_carves_and_each_carve_gets_one_result(
    stack: Stack, tmp_path: Path
) -> None:
    library = write_library(tmp_path / "lib")
    replicas = [await stack.start_triage(**library, triage_workers=1) for _ in range(2)]
    exchange = stack.env["CARVE_EVENTS_EXCHANGE"]
    async with listening(stack.env["CARVE_AMQP_URL"], exchange, "carve.triaged") as events:
        ids = [
            await upload(
                stack, {f"/tmp/{n}.bin": MARKER if n % 2 else b"x"}, tmp_path, compress=bool(n % 3)
            )
            for n in range(6)
        ]
        results = [await wait_triaged(stack, carve_id) for carve_id in ids]
        await asyncio.sleep(2)  # a second result or event would show up by now
    assert [r["verdict"] for r in results] == ["clean", "flagged"] * 3
    assert all(len(events.of(carve_id)) == 1 for carve_id in ids)
    scans = hits = 0.0
    async with aiohttp.ClientSession() as http:
        for running in replicas:
            async with http.get(f"{running.url}/metrics") as resp:
                lines = (await resp.text()).splitlines()
            scans += metric_sum(lines, "carve_triage_scans_total{")
            hits += metric_sum(lines, 'carve_triage_hits_total{kind="yara",name="test_marker"}')
    assert hits == 3
    assert scans == 6  # every carve scanned once, by one replica or the other


async def test_a_re_scan_asked_for_mid_scan_takes_the_claim_away(stack: Stack) -> None:
    carves = stack.db["carves"]
    now = datetime.now(UTC)
    geometry = {"block_count": 1, "block_size": 1024, "carve_size": 10, "blocks_received": 1}
    await carves.insert_one(
        {"_id": "c1", "carve_id": "c1", "request_id": "r1", "status": "complete",
         "created_at": now, "completed_at": now, **geometry}
    )  # fmt: skip
    store = TriageStore(stack.db, "replica-a", lease=60)
    claimed = await store.claim("c1", "v1", now)
    assert claimed is not None
    doc, token = claimed
    assert await store.claim("c1", "v1", now) is None  # the other replica: not while held
    await carves.update_one({"_id": "c1"}, rescan_update(now, "ann"))
    assert not await store.renew("c1", token, now)  # the running scan learns it lost it
    assert await store.write(doc, token, {"status": "done", "verdict": "clean"}, now) is None
    after = await carves.find_one({"_id": "c1"})
    assert after is not None and after["triage"]["status"] == "pending"
    assert "outbox" not in after  # no event for a result that was not written
    later = now + timedelta(seconds=120)  # a lapsed lease is another replica's to take
    again = await store.claim("c1", "v2", now)
    assert again is not None and await store.claim("c1", "v2", now) is None
    assert await store.claim("c1", "v2", later) is not None
