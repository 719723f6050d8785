"""The persistent OpenBao of scripts/run.sh (devstack.localbao), run the way run.sh runs it
(the same ``python -m devstack`` commands and ``bao server -config``) on private ports: a
carve's Transit key made before a restart still unwraps its data key after it."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from devstack.ports import HOST, free_port, wait_port
from shared.crypto.transit import Transit
from shared.settings import EncryptionSettings, VaultSettings

BIN = Path(sys.executable).parent


def devstack(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devstack", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


class LocalBao:
    """``bao server`` with the config run.sh writes, started and stopped like run.sh does."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port, cluster = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        made = devstack("bao-config", str(directory), "--port", str(self.port),
                        "--cluster-port", str(cluster))  # fmt: skip
        assert made.returncode == 0, made.stderr
        self.config = Path(made.stdout.strip())
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "openbao.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "bao"), "server", f"-config={self.config}"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(self.dir)},
            )  # fmt: skip
        wait_port(self.port, 30)

    def unseal(self, *flags: str) -> subprocess.CompletedProcess[str]:
        return devstack("bao-unseal", str(self.dir), *flags, env={"BAO_ADDR": self.url})

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)  # as run.sh's cleanup does
            self.proc.wait(30)
            self.proc = None


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[LocalBao]:
    server = LocalBao(tmp_path / "openbao")
    try:
        yield server
    finally:
        if server.proc is not None:
            server.proc.kill()
            server.proc.wait(30)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def transit(bao: LocalBao, roles: Path, service: str) -> Transit:
    return Transit(
        VaultSettings(vault_addr=bao.url),
        EncryptionSettings(
            encryption="vault-transit",
            vault_role_id=f"carve-{service}",
            vault_secret_id_file=str(roles / f"{service}.secret-id"),
        ),
    )


async def test_transit_keys_survive_a_restart(bao: LocalBao, tmp_path: Path) -> None:
    config = bao.config.read_text()
    assert f'address = "{HOST}:{bao.port}"' in config and 'storage "raft"' in config
    bao.start()
    first = bao.unseal("--init")
    assert first.returncode == 0, first.stderr
    assert "initialized" in first.stdout
    secrets = bao.dir / "secrets"
    saved = json.loads((secrets / "init.json").read_text())
    token = (secrets / "root-token").read_text().strip()
    assert token == saved["root_token"] and len(saved["keys_base64"]) == 1
    assert mode(secrets) == 0o700
    assert mode(secrets / "init.json") == mode(secrets / "root-token") == 0o600
    assert token not in first.stdout + first.stderr and saved["keys_base64"][0] not in first.stdout

    # run.sh's provisioning with the saved root token: policies, AppRoles, the custody key.
    roles = tmp_path / "vault"
    roles.mkdir(mode=0o700)
    env = {"BAO_ADDR": bao.url, "BAO_TOKEN": token}
    provisioned = devstack("transit-roles", str(roles), env=env)
    assert provisioned.returncode == 0, provisioned.stderr
    assembler = transit(bao, roles, "assembler")
    name = assembler.key_name("0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9")
    try:
        plain, wrapped = await assembler.new_data_key(name)
    finally:
        assembler.close()
    assert len(plain) == 32

    # Restarted: sealed until run.sh unseals it with the saved key, then the same keys.
    bao.stop()
    bao.start()
    assert hvac.Client(url=bao.url).sys.is_sealed()
    again = bao.unseal("--init")  # what run.sh runs on every start: no second init
    assert again.returncode == 0, again.stderr
    assert "unsealed" in again.stdout and "initialized" not in again.stdout
    assert json.loads((secrets / "init.json").read_text()) == saved
    provisioned = devstack("transit-roles", str(roles), env=env)  # idempotent, as run.sh
    assert provisioned.returncode == 0, provisioned.stderr
    download = transit(bao, roles, "download")
    try:
        assert await download.unwrap(name, wrapped) == plain
    finally:
        download.close()
    assert bao.unseal().stdout.strip().endswith("unsealed already")


async def test_refuses_to_init_over_saved_secrets(bao: LocalBao) -> None:
    """A fresh server next to secrets of an earlier one (its data removed): never a silent
    second init that would overwrite the saved key of the data that was there."""
    secrets = bao.dir / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "init.json").write_text('{"keys_base64": ["x"], "root_token": "y"}')
    bao.start()
    answer = bao.unseal("--init")
    assert answer.returncode == 1
    assert "not initialized" in answer.stderr and "init.json" in answer.stderr
    assert (secrets / "init.json").read_text() == '{"keys_base64": ["x"], "root_token": "y"}'
    assert not hvac.Client(url=bao.url).sys.is_initialized()
