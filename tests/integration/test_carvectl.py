"""carvectl against the real download service, OpenBao and uploads: the responder's view."""

from __future__ import annotations

import asyncio
import json
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from clients import carvectl
from devstack.vault import POLICY, VaultAdmin
from tests.carvectl_run import run_carvectl
from tests.integration.test_download import MEMBERS, Carved, Responder
from tests.stack import Stack
from tests.uploads import Upload, random_bytes


@dataclass
class Cli:
    responder: Responder
    home: Path

    async def run(self, *argv: str, token: str | None = "default") -> tuple[int, str, str]:
        """carvectl in a thread (it is synchronous), with its own environment."""
        env = {"XDG_CONFIG_HOME": str(self.home), "VAULT_ADDR": self.responder.vault.url}
        if token is not None:
            env["VAULT_TOKEN"] = self.responder.token.token if token == "default" else token
        return await run_carvectl(self.responder.url, env, *argv)


@pytest.fixture
async def cli(stack: Stack, vault: VaultAdmin, tmp_path: Path) -> AsyncIterator[Cli]:
    download = await stack.start_download(vault_cache_ttl=0.5)
    async with aiohttp.ClientSession() as http:
        responder = Responder(stack, download.url, vault, vault.token(POLICY), http)
        yield Cli(responder, tmp_path / "home")


async def test_login_with_userpass_then_list_with_the_saved_token(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    cli.responder.vault.client.auth.userpass.create_or_update_user(
        "ann", "pw-of-ann", policies=[POLICY]
    )
    env = {
        "XDG_CONFIG_HOME": str(cli.home),
        "VAULT_ADDR": cli.responder.vault.url,
        "CARVECTL_PASSWORD": "pw-of-ann",
    }
    code = await asyncio.to_thread(
        carvectl.run, ["--quiet", "login", "--username", "ann"], None, env
    )
    assert code == 0
    saved = cli.home / "carvectl" / "token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    code, out, _ = await cli.run("--json", "list", token=None)  # no VAULT_TOKEN: the file
    assert code == 0
    assert [c["carve_id"] for c in json.loads(out)] == [carved.carve_id]


async def test_get_resumes_an_interrupted_download(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    out_file = tmp_path / "evidence.tar"
    # What an interrupted `carvectl get` leaves behind: the first part of the archive.
    part = Path(str(out_file) + ".part")
    part.write_bytes(carved.data[:10_000])
    code, out, err = await cli.run("get", carved.carve_id, "-o", str(out_file))
    assert code == 0, err
    assert out_file.read_bytes() == carved.data
    assert not part.exists()
    assert carved.sha256 in out
    rows = await cli.responder.audit(carved.carve_id)
    # Only the missing bytes crossed the wire the second time.
    assert [(r["action"], r["bytes_sent"]) for r in rows if r["action"] == "archive"] == [
        ("archive", len(carved.data) - 10_000)
    ]


async def test_get_refuses_a_part_that_does_not_match(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    out_file = tmp_path / "evidence.tar"
    part = Path(str(out_file) + ".part")
    part.write_bytes(b"\0" * 5_000)  # not the archive's first bytes
    code, _, err = await cli.run("get", carved.carve_id, "-o", str(out_file))
    assert code == 7, err
    assert not out_file.exists() and not part.exists()
    # Run again: a clean download.
    code, _, err = await cli.run("get", carved.carve_id, "-o", str(out_file))
    assert code == 0, err
    assert out_file.read_bytes() == carved.data


async def test_expect_sha256_from_the_hosts_carves_table(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    good = tmp_path / "good.tar"
    code, _, err = await cli.run(
        "get", carved.carve_id, "-o", str(good), "--expect-sha256", carved.sha256.upper()
    )
    assert (code, good.read_bytes()) == (0, carved.data), err
    bad = tmp_path / "bad.tar"
    code, _, err = await cli.run(
        "get", carved.carve_id, "-o", str(bad), "--expect-sha256", "0" * 64
    )
    assert code == 7
    assert "sha" in err.lower()
    assert not bad.exists()


@pytest.mark.parametrize("compress", [False, True])
async def test_files_and_extract(cli: Cli, tmp_path: Path, compress: bool) -> None:
    carved: Carved = await cli.responder.upload(tmp_path, compress=compress)
    code, out, err = await cli.run("--json", "files", carved.carve_id)
    assert code == 0, err
    assert {m["path"] for m in json.loads(out)["members"]} == set(MEMBERS)
    dest = tmp_path / "all"
    code, _, err = await cli.run("extract", carved.carve_id, "-d", str(dest))
    assert code == 0, err
    for path, content in MEMBERS.items():
        assert (dest / path.lstrip("/")).read_bytes() == content
    one = tmp_path / "one"
    code, _, err = await cli.run("extract", carved.carve_id, "/etc/hosts", "-d", str(one))
    assert code == 0, err
    assert [p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file()] == ["etc/hosts"]


async def test_clear_errors_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    carved = await cli.responder.upload(tmp_path)
    no_policy = cli.responder.vault.token("default")
    code, _, err = await cli.run("show", carved.carve_id, token=no_policy.token)
    assert code == 4 and POLICY in err
    code, _, err = await cli.run("show", carved.carve_id, token="s.bogus")
    assert code == 3 and "login" in err
    code, _, err = await cli.run("show", "no-such-carve")
    assert code == 5
    pending = Upload(cli.responder.stack, random_bytes(3 * 4096, seed=1), 4096)
    await pending.start(cli.responder.http)
    code, _, err = await cli.run("get", pending.carve_id, "-o", str(tmp_path / "x.tar"))
    assert code == 6 and "not complete" in err and "0/3" in err
