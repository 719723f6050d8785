"""carvectl's custody commands against the real download service, OpenBao Transit and uploads:
holds, case tags, expiry, --reason where justifications are required, and custody records
fetched, then verified offline (no server, no token)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.carvectl.errors import EXIT_HELD, EXIT_INTEGRITY, EXIT_USAGE
from devstack.vault import POLICY, VaultAdmin
from tests.audit_rows import settled_rows
from tests.carvectl_run import run_carvectl
from tests.integration.test_download import Carved, Responder
from tests.stack import Stack

ADMIN = "osquery-file-carve-admin"


@dataclass
class Cli:
    responder: Responder
    home: Path
    admin: str

    async def run(self, *argv: str, token: str | None = None) -> tuple[int, str, str]:
        env = {"XDG_CONFIG_HOME": str(self.home), "VAULT_TOKEN": token or self.admin}
        return await run_carvectl(self.responder.url, env, *argv)


@pytest.fixture
async def cli(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Cli]:
    key = f"custody-{uuid.uuid4().hex[:8]}"
    download = await stack.start_download(
        vault_cache_ttl=0.5,
        download_justification="required",
        custody_key=key,
        **_identity(vault, key),
    )
    async with aiohttp.ClientSession() as http:
        responder = Responder(stack, download.url, vault, vault.token(POLICY), http)
        yield Cli(responder, tmp_path / "home", vault.token(POLICY, ADMIN).token)


async def test_get_needs_a_reason_and_keeps_it(cli: Cli, tmp_path: Path) -> None:
    carved: Carved = await cli.responder.upload(tmp_path)
    out = tmp_path / "evidence.tar"
    code, _, err = await cli.run("get", carved.carve_id, "-o", str(out))
    assert code == EXIT_USAGE
    assert "justification" in err and "--reason" in err
    assert not out.exists()
    code, _, err = await cli.run("get", carved.carve_id, "-o", str(out), "--reason", "IR-9 copy")
    assert code == 0, err
    assert out.read_bytes() == carved.data
    rows = await settled_rows(cli.responder.stack.db, {"carve_id": carved.carve_id})
    reasons = [r.get("justification") for r in rows if r["action"] == "archive"]
    assert reasons.count("IR-9 copy") >= 1 and None in reasons  # the refused one had none


async def test_holds_cases_and_expiry_from_the_command_line(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    cid = carved.carve_id
    code, out, err = await cli.run("hold", cid, "--case", "IR-2026-0042", "--reason", "court")
    assert code == 0, err
    assert "legal hold" in out and "IR-2026-0042: court" in out
    code, out, _ = await cli.run("cases", cid, "--add", "IR-7", "--add", "IR-8")
    assert (code, out.split()) == (0, ["IR-7", "IR-8"])
    code, out, _ = await cli.run("expiry", cid, "2030-01-01T00:00:00Z")
    assert code == 0 and "2030-01-01T00:00:00Z" in out
    code, out, _ = await cli.run("--json", "list", "--held")
    assert (code, [c["carve_id"] for c in json.loads(out)]) == (0, [cid])
    code, out, _ = await cli.run("--json", "list", "--case", "IR-7")
    assert (code, [c["carve_id"] for c in json.loads(out)]) == (0, [cid])
    code, out, _ = await cli.run("show", cid, token=cli.responder.token.token)
    assert "IR-2026-0042: court" in out and "IR-7, IR-8" in out and "2030-01-01" in out
    # A responder without the admin policy cannot release it; the admin can.
    code, _, err = await cli.run(
        "release", cid, "--case", "IR-2026-0042", token=cli.responder.token.token
    )
    assert code == 4, err
    async with cli.responder.http.delete(
        f"{cli.responder.url}/api/v1/carves/{cid}", headers={"X-Vault-Token": cli.admin}
    ) as resp:
        assert resp.status == 409
    code, out, _ = await cli.run("--json", "release", cid, "--case", "IR-2026-0042")
    assert code == 0 and json.loads(out)["holds"] == []
    assert EXIT_HELD == 10


async def test_custody_record_fetched_then_verified_offline(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    record, keys = tmp_path / "record.json", tmp_path / "keys.json"
    archive = tmp_path / "a.tar"
    archive.write_bytes(carved.data)
    assert (await cli.run("custody", carved.carve_id, "--out", str(record)))[0] == 0
    assert (await cli.run("custody-keys", "--out", str(keys)))[0] == 0
    # Offline: no token, and a server that is not there.
    offline = ["--server", "http://127.0.0.1:9"]
    code, out, err = await cli.run(
        *offline, "verify", str(record), str(archive), "--keys", str(keys)
    )
    assert code == 0, err
    assert f"verified: custody record of carve {carved.carve_id}" in out
    assert "and the archive matches it" in out
    # The wrong archive, and an altered record, are told apart clearly.
    other = tmp_path / "other.tar"
    other.write_bytes(carved.data[:-1] + b"\x01")
    code, _, err = await cli.run(*offline, "verify", str(record), str(other), "--keys", str(keys))
    assert code == EXIT_INTEGRITY and "NOT VERIFIED" in err and "SHA-256" in err
    document = json.loads(record.read_bytes())
    document["record"]["archive"]["size"] += 1
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(document))
    code, _, err = await cli.run(*offline, "verify", str(tampered), "--keys", str(keys))
    assert code == EXIT_INTEGRITY
    assert "NOT VERIFIED: the signature does not match the record" in err


def _identity(vault: VaultAdmin, key: str) -> dict[str, Any]:
    """The download service's settings of an AppRole that signs with ``key`` only."""
    return dict(vault.custody_role(key))
