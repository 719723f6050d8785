"""Signed custody records against real OpenBao Transit (ed25519), SecantusDB and uploads: a
record verifies offline with the public key alone, any altered field fails, and a rotated
signing key still verifies the records its old version signed."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.osquery_sim import build_archive, carve
from devstack.vault import POLICY, VaultAdmin
from shared.custody import (
    CustodyError,
    archive_matches,
    canonical,
    load_keys,
    manifest_sha256,
    verify,
)
from tests.audit_rows import settled_rows
from tests.stack import Stack

ADMIN = "osquery-file-carve-admin"
MEMBERS = {"/etc/hosts": b"127.0.0.1 localhost\n", "/var/log/auth.log": b"sshd: ok\n" * 500}


@dataclass
class Custody:
    stack: Stack
    vault: VaultAdmin
    key: str
    url: str
    token: str  # read and admin policies
    http: aiohttp.ClientSession
    carve_id: str
    data: bytes

    async def call(
        self, method: str, path: str, body: Any = None, **headers: str
    ) -> tuple[int, bytes]:
        headers = {"X-Vault-Token": self.token, **headers}
        kwargs: dict[str, Any] = {"headers": headers}
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, self.url + path, **kwargs) as resp:
            return resp.status, await resp.read()

    async def record(self) -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/v1/carves/{self.carve_id}/custody")
        assert status == 200, body
        parsed: dict[str, Any] = json.loads(body)
        assert canonical(parsed) == body  # the body is itself canonical JSON
        return parsed

    async def keys_text(self) -> str:
        status, body = await self.call("GET", "/api/v1/custody/keys")
        assert status == 200, body
        return body.decode()


@pytest.fixture
async def custody(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Custody]:
    key = f"custody-{uuid.uuid4().hex[:8]}"  # each test its own key: it may rotate it
    download = await stack.start_download(
        vault_cache_ttl=0.5, custody_key=key, **_identity(vault, key)
    )
    guid = str(uuid.uuid4())
    archive = build_archive(MEMBERS, tmp_path / guid, carve_guid=guid)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=4096)
        assert result.ok, result
        await stack.wait_complete(result.carve_id)
        token = vault.token(POLICY, ADMIN).token
        yield Custody(
            stack, vault, key, download.url, token, http, result.carve_id, archive.read_bytes()
        )


def now() -> datetime:
    return datetime.now(UTC)


def leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every scalar inside ``value``."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, (*path, i))
    else:
        yield path


def altered(document: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    *parents, last = path
    holder = changed
    for step in parents:
        holder = holder[step]
    value = holder[last]
    if isinstance(value, bool):
        holder[last] = not value
    elif isinstance(value, int):
        holder[last] = value + 1
    elif isinstance(value, str):
        holder[last] = value[:-1] + ("A" if not value.endswith("A") else "B") if value else "x"
    else:
        holder[last] = "x"
    return changed


async def test_a_record_verifies_offline_and_says_what_happened(custody: Custody) -> None:
    cid = custody.carve_id
    why = "IR-2026-0042 evidence"
    status, data = await custody.call(
        "GET", f"/api/v1/carves/{cid}/archive", **{"X-Carve-Justification": why}
    )
    assert (status, data) == (200, custody.data)
    assert (
        await custody.call("PUT", f"/api/v1/carves/{cid}/hold", {"case": "IR-1", "reason": "r"})
    )[0] == 201
    assert (await custody.call("DELETE", f"/api/v1/carves/{cid}/hold/IR-1"))[0] == 200
    # What carve-triage leaves on the carve when it has scanned it.
    scanned = {"status": "done", "verdict": "clean", "rules_version": "r1", "finished": now()}
    await custody.stack.db["carves"].update_one({"_id": cid}, {"$set": {"triage": scanned}})
    document = await custody.record()
    keys = load_keys(await custody.keys_text())
    record = verify(document, keys)  # offline: the public key only
    sha = hashlib.sha256(custody.data).hexdigest()
    archive_matches(record, sha, len(custody.data))
    assert record["signed_with"] == {"key": custody.key, "version": 1, "algorithm": "ed25519"}
    assert record["carve"]["carve_id"] == cid
    assert record["archive"] == {
        "sha256": sha,
        "size": len(custody.data),
        "compression": "none",
        "filename": f"carve_{cid}.tar",
    }
    stored = await custody.stack.db["manifests"].find_one({"_id": cid})
    assert stored is not None
    assert record["manifest"]["sha256"] == manifest_sha256(cid, stored["members"], False)
    assert record["manifest"]["members"] == len(stored["members"]) >= 2
    events = [e["event"] for e in record["timeline"]]
    assert events[:2] == ["started", "completed"]
    assert "hold.placed" in events and "hold.released" in events
    triaged = [e for e in record["timeline"] if e["event"] == "triaged"]
    assert [(t["verdict"], t["rules_version"]) for t in triaged] == [("clean", "r1")]
    assert events.index("hold.placed") < events.index("hold.released")
    downloads = [e for e in record["timeline"] if e.get("action") == "archive"]
    assert [(d["outcome"], d["justification"], d["bytes_sent"]) for d in downloads] == [
        ("allowed", why, len(custody.data))
    ]
    assert downloads[0]["who"] == "token-token"
    times = [e["time"] for e in record["timeline"]]
    assert times == sorted(times, key=lambda t: t.replace("Z", ".000Z")[:23])
    assert record["accesses"]["truncated"] is False
    # The wrong archive is told apart.
    with pytest.raises(CustodyError, match="SHA-256"):
        archive_matches(record, hashlib.sha256(b"other").hexdigest(), len(custody.data))


async def test_any_altered_field_fails_verification(custody: Custody) -> None:
    document = await custody.record()
    keys = load_keys(await custody.keys_text())
    verify(document, keys)
    paths = list(leaves(document))
    assert len(paths) > 30
    for path in paths:
        with pytest.raises(CustodyError):
            verify(altered(document, path), keys)
    extra = copy.deepcopy(document)
    extra["record"]["note"] = "added later"
    with pytest.raises(CustodyError, match="altered"):
        verify(extra, keys)
    fewer = copy.deepcopy(document)
    del fewer["record"]["timeline"][-1]
    with pytest.raises(CustodyError, match="altered"):
        verify(fewer, keys)


async def test_a_rotated_key_still_verifies_old_records(custody: Custody, tmp_path: Path) -> None:
    old = await custody.record()
    old_keys_text = await custody.keys_text()
    custody.vault.client.secrets.transit.rotate_key(custody.key)
    new = await custody.record()
    assert new["record"]["signed_with"]["version"] == 2
    keys_text = await custody.keys_text()
    keys = load_keys(keys_text)
    assert sorted(k for k in keys if k is not None) == [1, 2]
    verify(old, keys)
    verify(new, keys)
    # The keys saved before the rotation check the old record, and say why not the new one.
    verify(old, load_keys(old_keys_text))
    with pytest.raises(CustodyError, match="no public key for version 2"):
        verify(new, load_keys(old_keys_text))
    # One version's PEM alone: its records pass, the other version's fail.
    pems = {k["version"]: k["public_key_pem"] for k in json.loads(keys_text)["keys"]}
    verify(old, load_keys(pems[1]))
    with pytest.raises(CustodyError, match=r"another key"):
        verify(new, load_keys(pems[1]))


async def test_custody_needs_a_token_and_the_service_identity(
    custody: Custody, stack: Stack
) -> None:
    async with custody.http.get(custody.url + "/api/v1/custody/keys") as resp:
        assert resp.status == 401
    nobody = await stack.start_download()  # no AppRole: no identity to sign with
    async with custody.http.get(
        f"{nobody.url}/api/v1/carves/{custody.carve_id}/custody",
        headers={"X-Vault-Token": custody.token},
    ) as resp:
        assert resp.status == 503
    rows = await settled_rows(stack.db, {"action": "custody"})
    assert [(r["carve_id"], r["status"]) for r in rows] == [(custody.carve_id, 503)]


async def test_a_wrong_secret_id_signs_nothing_and_is_never_echoed(
    custody: Custody, stack: Stack
) -> None:
    role = custody.vault.custody_role(custody.key)
    secret = role["vault_secret_id"]
    wrong = await stack.start_download(
        custody_key=custody.key, vault_role_id=role["vault_role_id"], vault_secret_id="x" + secret
    )
    async with custody.http.get(
        f"{wrong.url}/api/v1/carves/{custody.carve_id}/custody",
        headers={"X-Vault-Token": custody.token},
    ) as resp:
        assert resp.status == 503
        assert secret not in await resp.text()
    # The right one signs (each test's download service signs as its own AppRole).
    assert (await custody.record())["record"]["signed_with"]["key"] == custody.key


def _identity(vault: VaultAdmin, key: str) -> dict[str, Any]:
    """The download service's settings of an AppRole that signs with ``key`` only."""
    return dict(vault.custody_role(key))
