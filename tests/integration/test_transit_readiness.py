"""The ``transit`` readiness check (alert CarveVaultUnavailable, docs/runbooks.md) against a
real OpenBao: with encryption at rest each service that uses Transit reports, in ``/readyz``
and in ``carve_check_up{check="transit"}``, whether Transit answers it: Vault stopped, the
mount missing for its identity, and back again."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from tests.stack import RunningApp, Stack
from tests.tcp_gate import TcpGate
from tests.triage import write_library

CHECK_UP = re.compile(r'^carve_check_up\{check="transit"\} (\S+)$', re.MULTILINE)


async def readiness(http: aiohttp.ClientSession, app: RunningApp) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{app.url}/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def transit_up(http: aiohttp.ClientSession, app: RunningApp) -> float:
    """``carve_check_up{check="transit"}`` as a scrape of the service's /metrics sees it."""
    async with http.get(f"{app.url}/metrics") as resp:
        found = CHECK_UP.search(await resp.text())
    assert found is not None, "no transit check in the metrics"
    return float(found.group(1))


async def test_transit_readiness_follows_vault(
    sealed_env: dict[str, str],
    transit_roles: dict[str, dict[str, str]],
    gate: TcpGate,
    tmp_path: Path,
) -> None:
    env = {**sealed_env, "CARVE_VAULT_ADDR": gate.url}
    async with Stack(env, tmp_path, assembler=False, service_env=transit_roles) as stack:
        library = write_library(tmp_path / "lib")
        apps = {
            "assembler": await stack.start_assembler(vault_timeout=1.0),
            "download": await stack.start_download(vault_timeout=1.0),
            "triage": await stack.start_triage(vault_timeout=1.0, **library),
            "janitor": await stack.start_janitor(vault_timeout=1.0),
        }
        async with aiohttp.ClientSession() as http:
            for name, app in apps.items():
                status, body = await readiness(http, app)
                assert (status, body["checks"]["transit"]) == (200, "ok"), (name, body)
                assert await transit_up(http, app) == 1.0, name

            await gate.close()  # Vault unreachable
            for name, app in apps.items():
                status, body = await readiness(http, app)
                assert status == 503, (name, body)
                assert body["checks"]["transit"].startswith("error"), (name, body)
                assert body["checks"]["mongodb"] == "ok", (name, body)
                assert await transit_up(http, app) == 0.0, name

            await gate.open()  # back: ready again, nothing restarted
            for name, app in apps.items():
                status, body = await readiness(http, app)
                assert (status, body["checks"]["transit"]) == (200, "ok"), (name, body)
                assert await transit_up(http, app) == 1.0, name


async def test_a_mount_the_service_cannot_use_is_not_ready(
    sealed_env: dict[str, str], transit_roles: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    """Vault answers, but not on this Transit mount for this identity (no such mount, its
    policy names another): not ready, where a bare health call would say ready."""
    async with Stack(sealed_env, tmp_path, assembler=False, service_env=transit_roles) as stack:
        assembler = await stack.start_assembler(transit_mount="transit-elsewhere")
        async with aiohttp.ClientSession() as http:
            status, body = await readiness(http, assembler)
            assert status == 503, body
            assert body["checks"]["transit"] == "error: Unavailable", body
            assert await transit_up(http, assembler) == 0.0


async def test_no_transit_check_without_encryption(
    settings_env: dict[str, str], transit_roles: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    async with Stack(settings_env, tmp_path, assembler=False, service_env=transit_roles) as stack:
        assembler = await stack.start_assembler()
        async with aiohttp.ClientSession() as http:
            status, body = await readiness(http, assembler)
            assert status == 200 and "transit" not in body["checks"], body
