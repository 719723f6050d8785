"""The download service signs in to Vault once per process: unwrapping carve keys, signing
custody records and reading the custody key share one AppRole login and its token. Counted
by OpenBao itself (a secret id's remaining uses go down by one per login) and by the
service's ``carve_transit_calls_total{op="login"}``."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path

import aiohttp

from clients.osquery_sim import build_archive, carve
from devstack.vault import POLICY, VaultAdmin
from tests.stack import Stack

ADMIN = "osquery-file-carve-admin"
ROLE = "carve-download"  # devstack.vault.provision_transit's role of the download service
USES = 10
LOGINS = re.compile(r'^carve_transit_calls_total\{op="login"\} (\S+)$', re.MULTILINE)


def remaining_uses(vault: VaultAdmin, secret_id: str) -> int:
    answer = vault.client.write_data(
        f"auth/approle/role/{ROLE}/secret-id/lookup", data={"secret_id": secret_id}
    )
    return int(answer["data"]["secret_id_num_uses"])


async def test_unwrapping_and_custody_signing_share_one_login(
    sealed_stack: Stack,
    transit_roles: dict[str, dict[str, str]],
    vault: VaultAdmin,
    tmp_path: Path,
) -> None:
    # A secret id of its own, so that only this service's logins use it up.
    secret_id = vault.client.write_data(
        f"auth/approle/role/{ROLE}/secret-id", data={"num_uses": USES}
    )["data"]["secret_id"]
    download = await sealed_stack.start_download(
        vault_role_id=transit_roles["download"]["CARVE_VAULT_ROLE_ID"],
        vault_secret_id=secret_id,
    )
    guid = str(uuid.uuid4())
    archive = build_archive(
        {"/etc/hosts": b"127.0.0.1 localhost\n"}, tmp_path / guid, carve_guid=guid
    )
    headers = {"X-Vault-Token": vault.token(POLICY, ADMIN).token}
    async with aiohttp.ClientSession(headers=headers) as http:
        result = await carve(http, sealed_stack.ingest_url, archive, block_size=4096)
        assert result.ok, result
        doc = await sealed_stack.wait_complete(result.carve_id)
        assert doc["encryption"]["sealed"] == "all"
        base = f"{download.url}/api/v1"
        # The carve's data key (decrypt), then a custody record (sign) and the public keys
        # (read): three uses of the service's identity.
        async with http.get(f"{base}/carves/{result.carve_id}/archive") as resp:
            assert resp.status == 200
            assert hashlib.sha256(await resp.read()).hexdigest() == doc["sha256"]
        async with http.get(f"{base}/carves/{result.carve_id}/custody") as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{base}/custody/keys") as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(f"{download.url}/metrics") as resp:
            logins = LOGINS.search(await resp.text())
    assert USES - remaining_uses(vault, secret_id) == 1
    assert logins is not None and float(logins.group(1)) == 1.0
