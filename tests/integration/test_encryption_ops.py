"""Encryption at rest under operations: Vault unreachable mid-upload, key rotation and
re-wrapping under load, sealing carves stored in the clear. Real OpenBao, RabbitMQ and the
MongoDB stand-in."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import hvac.exceptions
import pytest

from devstack.vault import POLICY, VaultAdmin
from services.janitor import keywork
from shared.crypto.context import KEYRING
from shared.crypto.keys import KeyRing
from tests.stack import RunningApp, Stack
from tests.tcp_gate import TcpGate
from tests.uploads import Upload, random_bytes

KiB = 1024
MiB = 1024 * KiB
MARKER = b"CLEAR-TEXT-MARKER-5d0e" * 4


def with_marker(size: int, seed: int) -> bytes:
    data = bytearray(random_bytes(size, seed))
    for at in range(0, size - len(MARKER), 8 * KiB):
        data[at : at + len(MARKER)] = MARKER
    return bytes(data)


async def get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, bytes]:
    async with http.get(url, headers={"X-Vault-Token": token}) as resp:
        return resp.status, await resp.read()


async def archive_ok(
    http: aiohttp.ClientSession, download: RunningApp, token: str, up: Upload
) -> None:
    status, body = await get(http, f"{download.url}/api/v1/carves/{up.carve_id}/archive", token)
    assert status == 200 and hashlib.sha256(body).hexdigest() == up.sha256


async def sealed_count(stack: Stack, up: Upload) -> int:
    """Chunks of ``up`` stored sealed (29 bytes longer than the block)."""
    rows = await stack.db["archives.chunks"].find({"files_id": up.carve_id}).to_list()
    return sum(
        1
        for r in rows
        if len(r["data"])
        == len(up.data[r["n"] * up.block_size : (r["n"] + 1) * up.block_size]) + 29
    )


# --- Vault unreachable --------------------------------------------------------------------


async def test_vault_unreachable_during_uploads_loses_nothing(
    sealed_env: dict[str, str],
    transit_roles: dict[str, dict[str, str]],
    gate: TcpGate,
    vault: VaultAdmin,
    tmp_path: Path,
) -> None:
    # The assembler reads its AppRole secret id from a file, as in compose and run.sh.
    secret_file = tmp_path / "assembler.secret-id"
    secret_file.write_text(transit_roles["assembler"]["CARVE_VAULT_SECRET_ID"])
    roles = {
        **transit_roles,
        "assembler": {
            "CARVE_VAULT_ROLE_ID": transit_roles["assembler"]["CARVE_VAULT_ROLE_ID"],
            "CARVE_VAULT_SECRET_ID_FILE": str(secret_file),
        },
    }
    env = {**sealed_env, "CARVE_VAULT_ADDR": gate.url}
    async with Stack(env, tmp_path, assembler=False, service_env=roles) as stack:
        await stack.start_assembler(vault_timeout=1.0, retry_max_delay=0.5)
        download = await stack.start_download(vault_timeout=1.0, vault_cache_ttl=120)
        token = vault.token(POLICY).token
        done = Upload(stack, with_marker(20 * 8 * KiB, 1), 8 * KiB)
        early = Upload(stack, with_marker(30 * 8 * KiB - 5, 2), 8 * KiB)
        late = Upload(stack, with_marker(25 * 8 * KiB + 7, 3), 8 * KiB)
        async with aiohttp.ClientSession() as http:
            await done.start(http)
            await done.send_all(http, range(done.count))
            await stack.wait_complete(done.carve_id)
            await early.start(http)
            await early.send_all(http, range(10))
            await stack.wait_for(early.carve_id, lambda d: bool(d.get("encryption")))
            # The download service checks (and caches) the responder's token before Vault goes.
            assert (await get(http, f"{download.url}/api/v1/carves", token))[0] == 200
            await gate.close()
            await late.start(http)  # the ingest needs no Vault: every block is accepted
            await late.send_all(http, range(late.count))
            await early.send_all(http, range(10, early.count))
            await asyncio.sleep(3)
            # No key for the carve that started during the outage: none of its blocks is
            # stored, in the clear or otherwise; they wait in the queue.
            assert await stack.chunk_count(late.carve_id) == 0
            late_doc = await stack.carve_doc(late.carve_id)
            assert late_doc is not None and late_doc["status"] == "receiving"
            assert "encryption" not in late_doc
            # A download that needs a data key it has not unwrapped yet: 503, nothing sent.
            status, body = await get(
                http, f"{download.url}/api/v1/carves/{done.carve_id}/archive", token
            )
            assert status == 503 and MARKER not in body
            await gate.open()
            for up in (done, early, late):
                doc = await stack.wait_complete(up.carve_id, timeout=90)
                assert doc["sha256"] == up.sha256
                assert doc["encryption"]["sealed"] == "all"
                assert await sealed_count(stack, up) == up.count
                await archive_ok(http, download, token, up)


# --- rotation and re-wrapping ---------------------------------------------------------------


async def send_rest(http: aiohttp.ClientSession, uploads: list[Upload], first: int) -> None:
    """The rest of each upload's blocks, interleaved, a little at a time (load)."""
    for i in range(first, max(up.count for up in uploads)):
        for up in uploads:
            if i < up.count:
                await up.send_all(http, [i])
        await asyncio.sleep(0.01)


async def janitor_keyring(stack: Stack) -> KeyRing:
    janitor = await stack.start_janitor()
    return janitor.app[KEYRING]


async def test_rewrap_under_load_loses_nothing_and_resumes(
    sealed_stack: Stack, vault: VaultAdmin
) -> None:
    stack = sealed_stack
    download = await stack.start_download()
    token = vault.token(POLICY).token
    stored = [Upload(stack, random_bytes(12 * 4 * KiB + k, 10 + k), 4 * KiB) for k in range(4)]
    arriving = [Upload(stack, random_bytes(40 * 4 * KiB - k, 20 + k), 4 * KiB) for k in range(3)]
    async with aiohttp.ClientSession() as http:
        for up in stored:
            await up.start(http)
            await up.send_all(http, range(up.count))
        for up in stored:
            await stack.wait_complete(up.carve_id)
        before = {
            up.carve_id: (await stack.carve_doc(up.carve_id) or {})["encryption"] for up in stored
        }
        for up in arriving:
            await up.start(http)
            await up.send_all(http, range(5))

        keyring = await janitor_keyring(stack)
        load = asyncio.create_task(send_rest(http, arriving, 5))
        # A run that stopped after the second carve (by id) resumes after it.
        ids = sorted([up.carve_id for up in stored + arriving])
        await stack.db["locks"].replace_one(
            {"_id": "rewrap"}, {"after": ids[1], "done": False}, upsert=True
        )
        first = await keywork.rewrap(stack.db, keyring, batch=2, retire=False)
        assert first == {"rewrapped": len(ids) - 2}
        second = await keywork.rewrap(stack.db, keyring, batch=2, retire=True)
        assert second == {"rewrapped": len(ids), "retired": len(ids)}
        await load
        for up in arriving:
            await stack.wait_complete(up.carve_id)
        fresh = await stack.start_download()  # no data key cached: unwraps the new ones
        for up in stored + arriving:
            doc = await stack.carve_doc(up.carve_id)
            assert doc is not None and doc["encryption"]["wrapped"].startswith("vault:v")
            await archive_ok(http, fresh, token, up)
        await archive_ok(http, download, token, stored[0])
    # Retired: the wrapped keys from before (a backup's) no longer unwrap.
    for carve_id, sealing in before.items():
        assert not (await stack.carve_doc(carve_id) or {})["encryption"]["wrapped"].startswith(
            "vault:v1:"
        )
        with pytest.raises(hvac.exceptions.InvalidRequest):
            vault.client.secrets.transit.decrypt_data(sealing["key"], ciphertext=sealing["wrapped"])


# --- sealing carves stored in the clear ------------------------------------------------------


async def test_encrypt_seals_clear_carves_in_place_and_resumes(
    settings_env: dict[str, str],
    transit_roles: dict[str, dict[str, str]],
    vault: VaultAdmin,
    tmp_path: Path,
) -> None:
    # Stored before encryption: CARVE_ENCRYPTION is none (the services can still sign in).
    async with Stack(settings_env, tmp_path, service_env=transit_roles) as stack:
        clear = [
            Upload(stack, with_marker(16 * 8 * KiB - 3 * k, 30 + k), 8 * KiB) for k in range(3)
        ]
        async with aiohttp.ClientSession() as http:
            for up in clear:
                await up.start(http)
                await up.send_all(http, range(up.count))
            for up in clear:
                doc = await stack.wait_complete(up.carve_id)
                assert "encryption" not in doc and await sealed_count(stack, up) == 0
            download = await stack.start_download()
            token = vault.token(POLICY).token
            await archive_ok(http, download, token, clear[0])  # read in the clear (mixed mode)
            keyring = await janitor_keyring(stack)
            # A run that stopped after sealing 3 chunks of the first carve: it is mixed now,
            # and still served byte for byte.
            cipher = await keyring.for_encrypting(clear[0].carve_id)
            assert cipher is not None
            chunks = stack.db["archives.chunks"]
            for n in range(3):
                row = await chunks.find_one({"files_id": clear[0].carve_id, "n": n})
                assert row is not None
                await chunks.update_one(
                    {"_id": row["_id"]}, {"$set": {"data": cipher.seal(n, bytes(row["data"]))}}
                )
            mixed: dict[str, Any] = (await stack.carve_doc(clear[0].carve_id) or {})["encryption"]
            assert mixed["sealed"] == "partial"
            await archive_ok(http, download, token, clear[0])
            done = await keywork.encrypt(
                stack.db, "archives", keyring, batch_bytes=32 * KiB, limit=100
            )
            total = sum(up.count for up in clear)
            assert done == {"carves_sealed": 3, "chunks_sealed": total - 3}
            assert (
                await keywork.encrypt(
                    stack.db, "archives", keyring, batch_bytes=32 * KiB, limit=100
                )
                == {}
            )
            fresh = await stack.start_download()
            for up in clear:
                after = await stack.carve_doc(up.carve_id)
                assert after is not None and after["encryption"]["sealed"] == "all"
                assert await sealed_count(stack, up) == up.count
                rows = await chunks.find({"files_id": up.carve_id}).to_list()
                assert not any(MARKER[:22] in bytes(r["data"]) for r in rows)
                await archive_ok(http, fresh, token, up)


async def test_a_carve_assembled_half_in_the_clear_during_a_rollout_completes_mixed(
    sealed_env: dict[str, str],
    transit_roles: dict[str, dict[str, str]],
    vault: VaultAdmin,
    tmp_path: Path,
) -> None:
    """Encryption switched on while a carve is assembled (a rolling update): the chunks
    written before stay clear, the later ones are sealed, the carve completes readable and
    ``sealed: partial`` (not failed), and ``encrypt`` finishes it."""
    async with Stack(sealed_env, tmp_path, assembler=False, service_env=transit_roles) as stack:
        up = Upload(stack, with_marker(20 * 8 * KiB - 9, 40), 8 * KiB)
        async with aiohttp.ClientSession() as http:
            old = await stack.start_assembler(encryption="none")
            await up.start(http)
            await up.send_all(http, range(8))
            while await stack.chunk_count(up.carve_id) < 8:
                await asyncio.sleep(0.05)
            await old.stop()
            await stack.start_assembler()
            await up.send_all(http, range(8, up.count))
            doc = await stack.wait_complete(up.carve_id)
            assert doc["sha256"] == up.sha256
            assert doc["encryption"]["sealed"] == "partial"
            assert await sealed_count(stack, up) == up.count - 8
            download = await stack.start_download()
            token = vault.token(POLICY).token
            await archive_ok(http, download, token, up)
            keyring = await janitor_keyring(stack)
            done = await keywork.encrypt(stack.db, "archives", keyring, batch_bytes=MiB, limit=10)
            assert done == {"carves_sealed": 1, "chunks_sealed": 8}
            assert await sealed_count(stack, up) == up.count
            assert (await stack.carve_doc(up.carve_id) or {})["encryption"]["sealed"] == "all"
            await archive_ok(http, download, token, up)


async def test_the_key_commands_run_from_the_command_line(
    sealed_stack: Stack, transit_roles: dict[str, dict[str, str]]
) -> None:
    """``carve-janitor rewrap`` and ``carve-janitor encrypt`` as an operator runs them: the
    janitor's own AppRole, JSON on stdout, exit 0."""
    stack = sealed_stack
    up = Upload(stack, random_bytes(9 * 4 * KiB, 60), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await up.start(http)
        await up.send_all(http, range(up.count))
    before = (await stack.wait_complete(up.carve_id))["encryption"]["wrapped"]
    env = {**os.environ, **stack.env, **transit_roles["janitor"], "CARVE_LOG_LEVEL": "WARNING"}
    for command, key in (("rewrap", "rewrapped"), ("encrypt", None)):
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "services.janitor", command],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)[command]
        assert report == ({key: 1} if key else {}), report
    after = (await stack.carve_doc(up.carve_id) or {})["encryption"]["wrapped"]
    assert before.startswith("vault:v1:") and after.startswith("vault:v2:")
