"""The persistent OpenBao of ``scripts/run.sh``: its config, first-start init, unseal.

A dev server (``bao server -dev``) keeps everything in memory, so each restart lost every
Transit key while the carves in ``.run/`` stayed: all of them answered 410 "shredded". This
server keeps its data under ``DIR/data`` instead. On its first start it is initialized with a
single unseal key, and that key and the root token are saved in ``DIR/secrets`` (a 0700
directory, 0600 files) so that every later start can unseal it without asking anyone.

That is a local development convenience and never a way to run Vault in production: whoever
reads those files holds every key the server keeps. Production Vaults are unsealed by their
operators (Shamir shares) or by auto-unseal; see docs/security.md.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import hvac
import requests

from devstack.ports import HOST

CONFIG_NAME = "openbao.hcl"
INIT_NAME = "init.json"  # what `bao operator init -format=json` answers: keys and root token
TOKEN_NAME = "root-token"


def secrets_dir(directory: Path) -> Path:
    return directory / "secrets"


def write_config(directory: Path, port: int, cluster_port: int | None = None) -> Path:
    """``DIR/openbao.hcl``: a single-node Raft storage in ``DIR/data``, the API on loopback
    ``port`` and Raft's cluster listener on ``cluster_port`` (default ``port + 1``).

    No TLS on the API: it listens on loopback only, for local development."""
    cluster = port + 1 if cluster_port is None else cluster_port
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    config = directory / CONFIG_NAME
    config.write_text(
        "# Written by python -m devstack bao-config for scripts/run.sh (local development).\n"
        f'storage "raft" {{\n  path = {json.dumps(str(data))}\n  node_id = "run"\n}}\n'
        f'listener "tcp" {{\n  address = "{HOST}:{port}"\n'
        f'  cluster_address = "{HOST}:{cluster}"\n  tls_disable = true\n}}\n'
        f'api_addr = "http://{HOST}:{port}"\n'
        f'cluster_addr = "https://{HOST}:{cluster}"\n'
        "ui = false\n"
    )
    return config


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    path.chmod(0o600)  # also when the file was already there


def _wait_answering(client: hvac.Client, timeout: float) -> None:
    """Until the server answers its API (the port opens a moment before)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.sys.read_init_status()
            return
        except (requests.RequestException, hvac.exceptions.VaultError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_active(url: str, timeout: float) -> None:
    """Until the server is unsealed and active (Raft elects its single node a leader)."""
    deadline = time.monotonic() + timeout
    while requests.get(f"{url}/v1/sys/health", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the OpenBao at {url} is not active after {timeout:g} s")
        time.sleep(0.2)


def init_and_unseal(url: str, directory: Path, init: bool, timeout: float = 30.0) -> str:
    """Unseal the OpenBao at ``url`` with the key saved under ``DIR/secrets``; with ``init``,
    first initialize it if it never was (one key share), saving the key and root token there.

    Answers what was done: "initialized", "unsealed" or "unsealed already"."""
    client = hvac.Client(url=url)
    _wait_answering(client, timeout)
    secrets = secrets_dir(directory)
    saved = secrets / INIT_NAME
    done = "unsealed"
    if not client.sys.is_initialized():
        if not init:
            raise RuntimeError(f"the OpenBao at {url} was never initialized")
        if saved.exists():
            raise RuntimeError(
                f"the OpenBao at {url} is not initialized but {saved} exists: its data "
                f"directory is gone or another server answers; move {saved} away to start over"
            )
        secrets.mkdir(mode=0o700, parents=True, exist_ok=True)
        secrets.chmod(0o700)
        answer = client.sys.initialize(secret_shares=1, secret_threshold=1)
        _write_secret(saved, json.dumps(answer, indent=2) + "\n")
        _write_secret(secrets / TOKEN_NAME, answer["root_token"] + "\n")
        done = "initialized"
    if not client.sys.is_sealed():
        _wait_active(url, timeout)
        return "unsealed already" if done == "unsealed" else done
    if not saved.exists():
        raise RuntimeError(f"the OpenBao at {url} is sealed and {saved} does not exist")
    key = json.loads(saved.read_text())["keys_base64"][0]
    if client.sys.submit_unseal_key(key=key)["sealed"]:
        raise RuntimeError(f"the OpenBao at {url} stayed sealed with the key in {saved}")
    _wait_active(url, timeout)
    return done


def root_token(directory: Path) -> str:
    return (secrets_dir(directory) / TOKEN_NAME).read_text().strip()
