"""Archives a hostile host wrote, against the real download service (and carvectl).

Every archive is built in the test (tests/hostile.py), small: a 1.5 KB zstd carve whose GNU
sparse map CPython's tarfile would read into ~500 MB, a 2 MB zstd carve holding 60 GiB of
zeros. Bounds are measured on the service process itself (VmHWM from /proc).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from clients.osquery_sim import carve
from devstack import ROOT
from devstack.services import scrape
from devstack.vault import POLICY, VaultAdmin
from tests import hostile
from tests.hostile import PREFIX
from tests.stack import Stack

GiB = 1 << 30
# Entries of the sparse map: CPython's tarfile holds ~110 bytes per entry (measured: +220 MB
# for 2 M entries), so the old download service peaked near 500 MB on this 1.5 KB carve.
SPARSE_ENTRIES = 4_000_000
RSS_BOUND_KB = 200 * 1024


async def upload(stack: Stack, http: aiohttp.ClientSession, tmp_path: Path, data: bytes) -> str:
    path = tmp_path / f"{uuid.uuid4()}.bin"
    path.write_bytes(data)
    result = await carve(http, stack.ingest_url, path, block_size=256 * 1024)
    assert result.ok, result
    await stack.wait_complete(result.carve_id)
    return result.carve_id


async def get(
    http: aiohttp.ClientSession, url: str, token: str, **headers: str
) -> tuple[int, bytes]:
    async with http.get(url, headers={"X-Vault-Token": token, **headers}) as resp:
        return resp.status, await resp.read()


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def audit_rows(stack: Stack, carve_id: str) -> list[dict[str, Any]]:
    await asyncio.sleep(0.3)  # rows are written just after the answer
    return await stack.db["audit"].find({"carve_id": carve_id}).to_list()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# --- sparse maps: refused before they are parsed ---------------------------------------------


async def test_sparse_bomb_listing_is_refused_in_bounded_memory(
    stack: Stack, vault: VaultAdmin, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = hostile.zstd(hostile.sparse_10_bomb(SPARSE_ENTRIES), level=19)
    assert len(data) < 8 * 1024  # a few KB on the wire
    carve_id = await upload(stack, http, tmp_path, data)
    download = await stack.spawn("download")
    token = vault.token(POLICY).token
    base = f"{download.url}/api/v1/carves/{carve_id}"
    before = vm_hwm_kb(download.proc.pid)
    status, body = await get(http, base + "/files", token)
    hwm = vm_hwm_kb(download.proc.pid)
    assert status == 422, body[:300]
    answer = orjson.loads(body)
    assert (answer["code"], answer["reason"]) == ("archive_sparse", "sparse")
    assert hwm < RSS_BOUND_KB, f"VmHWM {hwm} kB (was {before} kB before the listing)"
    # The member before the sparse one is not served either: the whole archive is refused.
    status, body = await get(http, base + "/files/etc/hosts", token)
    assert (status, orjson.loads(body)["code"]) == (422, "archive_sparse")
    # And the archive itself is still there, byte for byte.
    status, raw = await get(http, base + "/archive", token)
    assert (status, raw) == (200, data)
    rows = await audit_rows(stack, carve_id)
    assert sorted((r["action"], r["status"], r["outcome"], r["code"]) for r in rows) == [
        ("archive", 200, "allowed", None),
        ("file", 422, "refused", "archive_sparse"),
        ("files", 422, "refused", "archive_sparse"),
    ]
    metrics = await scrape(download.url)
    assert metrics['carve_tar_refusals_total{reason="archive_sparse"}'] == 2
    print(f"sparse bomb: {len(data)} B zstd, VmHWM {before} kB before, {hwm} kB after listing")


# --- a 60 GiB member of zeros in a 2 MB carve ----------------------------------------------------


@pytest.fixture(scope="module")
def zero_bomb() -> bytes:
    data = hostile.zero_bomb_zstd(60 * GiB)
    assert len(data) < 2_100_000
    return data


async def test_zero_bomb_is_refused_by_the_byte_budget(
    stack: Stack, vault: VaultAdmin, http: aiohttp.ClientSession, tmp_path: Path, zero_bomb: bytes
) -> None:
    carve_id = await upload(stack, http, tmp_path, zero_bomb)
    download = await stack.start_download()  # the default budget: 16 GiB
    token = vault.token(POLICY).token
    base = f"{download.url}/api/v1/carves/{carve_id}"
    started = time.monotonic()
    async with asyncio.timeout(20):
        listing = await get(http, base + "/files", token)
        member = await get(http, base + "/files/var/zeros.bin", token)
    elapsed = time.monotonic() - started
    for status, body in (listing, member):
        assert status == 422, body[:300]
        assert orjson.loads(body)["code"] == "archive_bytes_budget"
    # Refused from the member's declared size, before decompressing it.
    assert elapsed < 5, elapsed
    print(f"zero bomb: {len(zero_bomb)} B zstd, listing + member refused in {elapsed:.2f} s")


async def test_time_budget_stops_a_slow_listing(
    stack: Stack, vault: VaultAdmin, http: aiohttp.ClientSession, tmp_path: Path, zero_bomb: bytes
) -> None:
    carve_id = await upload(stack, http, tmp_path, zero_bomb)
    download = await stack.start_download(tar_max_bytes=1 << 40, tar_timeout=1.0)
    started = time.monotonic()
    status, body = await get(
        http, f"{download.url}/api/v1/carves/{carve_id}/files", vault.token(POLICY).token
    )
    elapsed = time.monotonic() - started
    assert (status, orjson.loads(body)["code"]) == (422, "archive_time_budget"), body[:300]
    assert 1.0 <= elapsed < 4.0, elapsed


async def _jobs(url: str) -> float:
    return (await scrape(url)).get("carve_tar_jobs", -1.0)


async def _wait_jobs(url: str, want: float, within: float) -> float:
    deadline = time.monotonic() + within
    while (jobs := await _jobs(url)) != want and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return jobs


async def test_bombs_never_hold_every_worker_and_stop_when_abandoned(
    stack: Stack,
    vault: VaultAdmin,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    zero_bomb: bytes,
) -> None:
    """8 bomb listings by one responder; another responder's listing answers within 1 s."""
    bombs = [await upload(stack, http, tmp_path, zero_bomb) for _ in range(2)]
    small = await upload(
        stack, http, tmp_path, hostile.pax_tar(lambda t: hostile.add(t, f"{PREFIX}/a", b"a"))
    )
    # A budget large enough that the bombs really are decompressed, for as long as 30 s.
    download = await stack.start_download(tar_max_bytes=1 << 40, tar_timeout=30.0)
    attacker, other = vault.token(POLICY).token, vault.token(POLICY).token

    async def bomb_listing(carve_id: str) -> int:
        async with aiohttp.ClientSession() as own:  # its own connection, to abandon it
            status, _ = await get(own, f"{download.url}/api/v1/carves/{carve_id}/files", attacker)
            return status

    tasks = [asyncio.create_task(bomb_listing(bombs[i % 2])) for i in range(8)]
    try:
        # Two per carve, four for the responder: 4 run, the other 4 wait without a worker.
        assert await _wait_jobs(download.url, 4, within=10) == 4
        started = time.monotonic()
        status, body = await get(http, f"{download.url}/api/v1/carves/{small}/files", other)
        elapsed = time.monotonic() - started
        assert status == 200, body
        assert [m["path"] for m in orjson.loads(body)["members"]] == ["/a"]
        assert elapsed < 1.0, f"small listing took {elapsed:.2f} s"
        assert await _jobs(download.url) == 4  # the bombs were still being read meanwhile
        assert not any(t.done() for t in tasks)
    finally:
        for task in tasks:
            task.cancel()  # the clients go away
        await asyncio.gather(*tasks, return_exceptions=True)
    abandoned_at = time.monotonic()
    assert await _wait_jobs(download.url, 0, within=5) == 0
    stopped_in = time.monotonic() - abandoned_at
    assert stopped_in < 1.0, f"workers took {stopped_in:.2f} s to stop"
    metrics = await scrape(download.url)
    assert metrics["carve_tar_abandoned_total"] == 8  # the waiting ones too, never run
    rows = await audit_rows(stack, bombs[0]) + await audit_rows(stack, bombs[1])
    assert [(r["outcome"], r["code"]) for r in rows] == [("aborted", "client_gone")] * 8
    print(f"small listing in {elapsed:.3f} s under 4 bombs; workers stopped in {stopped_in:.3f} s")
    # A member download abandoned while the member is being looked for stops as well.
    member = asyncio.create_task(
        get(http, f"{download.url}/api/v1/carves/{bombs[0]}/files/var/zeros.bin", other)
    )
    assert await _wait_jobs(download.url, 1, within=5) == 1
    await asyncio.sleep(0.3)
    member.cancel()
    await asyncio.gather(member, return_exceptions=True)
    assert await _wait_jobs(download.url, 0, within=1) == 0
    assert (await scrape(download.url))["carve_tar_abandoned_total"] == 9


# --- names ---------------------------------------------------------------------------------------


def _unsafe_tar() -> bytes:
    import tarfile

    def fill(tar: tarfile.TarFile) -> None:
        hostile.add(tar, f"{PREFIX}/etc/hosts", b"first\n")
        hostile.add(tar, f"{PREFIX}/../../escape.txt", b"dotdot")
        hostile.add(tar, f"{PREFIX}//etc/passwd", b"root::0:0::/:/bin/sh\n")
        hostile.add(tar, f"{PREFIX}/var/abs-link", type=tarfile.SYMTYPE, linkname="/etc/shadow")
        hostile.add(tar, f"{PREFIX}/var/out-link", type=tarfile.SYMTYPE, linkname="../../../x")
        hostile.add(tar, f"{PREFIX}/var/in-link", type=tarfile.SYMTYPE, linkname="../etc/hosts")
        hostile.add(tar, f"{PREFIX}/var/hard", type=tarfile.LNKTYPE, linkname="/etc/passwd")
        hostile.add(tar, f"{PREFIX}/etc/hosts", b"second, the one extraction leaves\n")
        hostile.add(tar, f"{PREFIX}/var/log", b"a file first")
        hostile.add(tar, f"{PREFIX}/var/log", type=tarfile.SYMTYPE, linkname="../etc")

    return hostile.pax_tar(fill)


async def test_unsafe_names_are_flagged_and_the_last_duplicate_is_served(
    stack: Stack, vault: VaultAdmin, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    carve_id = await upload(stack, http, tmp_path, _unsafe_tar())
    download = await stack.start_download()
    token = vault.token(POLICY).token
    base = f"{download.url}/api/v1/carves/{carve_id}"
    status, body = await get(http, base + "/files", token)
    assert status == 200, body
    listed = [
        (m["path"], m["type"], m["unsafe"], m["reason"], m["superseded"])
        for m in orjson.loads(body)["members"]
    ]
    assert listed == [
        ("/etc/hosts", "file", False, None, True),
        ("/../../escape.txt", "file", True, "'..' in its path", False),
        ("//etc/passwd", "file", True, "absolute path", False),
        ("/var/abs-link", "symlink", True, "symbolic link to an absolute path", False),
        ("/var/out-link", "symlink", True, "symbolic link pointing outside the carve", False),
        ("/var/in-link", "symlink", True, "symbolic link (osquery writes none)", False),
        ("/var/hard", "hardlink", True, "hard link (osquery writes none)", False),
        ("/etc/hosts", "file", False, None, False),
        ("/var/log", "file", False, None, True),
        ("/var/log", "symlink", True, "symbolic link (osquery writes none)", False),
    ]
    status, got = await get(http, base + "/files/etc/hosts", token)
    assert (status, got) == (200, b"second, the one extraction leaves\n")
    # //etc/passwd is not /etc/passwd: an unsafe member is never served under a clean path.
    status, got = await get(http, base + "/files/etc/passwd", token)
    assert status == 404, got
    # Extraction leaves a link at /var/log, so the file before it is not served.
    status, got = await get(http, base + "/files/var/log", token)
    assert status == 404, got


# --- carvectl ------------------------------------------------------------------------------------


# carvectl's own peak: VmHWM of its process, read at exit (wait4's ru_maxrss would include
# the test process's pages from before the exec).
_RUN_CARVECTL = """
import atexit, os, sys
def report():
    status = open("/proc/self/status").read()
    hwm = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    open(os.environ["HWM_FILE"], "w").write(hwm)
atexit.register(report)
from clients.carvectl import main
sys.exit(main(sys.argv[1:]))
"""


def _carvectl(url: str, token: str, vault_url: str, *argv: str) -> tuple[int, int, str]:
    """carvectl as its own process: exit code, peak RSS (VmHWM, kB) and stderr."""
    hwm_file = Path(f"/tmp/carvectl-hwm-{uuid.uuid4().hex}")
    env = {
        **os.environ,
        "VAULT_TOKEN": token,
        "VAULT_ADDR": vault_url,
        "XDG_CONFIG_HOME": "/nonexistent",
        "HWM_FILE": str(hwm_file),
    }
    done = subprocess.run(
        [sys.executable, "-c", _RUN_CARVECTL, "--server", url, "--quiet", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    try:
        return done.returncode, int(hwm_file.read_text()), done.stderr.decode()
    finally:
        hwm_file.unlink(missing_ok=True)


async def test_carvectl_extract_of_a_sparse_bomb_is_refused_in_bounded_memory(
    stack: Stack, vault: VaultAdmin, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data = hostile.zstd(hostile.sparse_10_bomb(SPARSE_ENTRIES), level=19)
    carve_id = await upload(stack, http, tmp_path, data)
    download = await stack.start_download()
    case = tmp_path / "case"
    out = case / "out"
    out.mkdir(parents=True)
    code, peak_kb, err = await asyncio.to_thread(
        _carvectl, download.url, vault.token(POLICY).token, vault.url,
        "extract", carve_id, "-d", str(out),
    )  # fmt: skip
    assert code == 7, err
    assert "refused (sparse)" in err and "nothing written" in err
    assert peak_kb < RSS_BOUND_KB, f"carvectl peak RSS {peak_kb} kB"
    assert list(out.iterdir()) == []
    assert [p.name for p in case.iterdir()] == ["out"]  # its temporary download is gone too
    print(f"carvectl extract of the sparse bomb: exit {code}, peak RSS {peak_kb} kB")


# --- /file_request -------------------------------------------------------------------------


async def _raw_post(
    port: int, body_part: bytes, declared: int, path: str = "/file_request"
) -> tuple[Any, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    writer.write(head.encode() + body_part)
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize(
    ("path", "start"),
    [
        ("/file_request", b'{"file_carve_guid": '),
        # Unauthenticated: anyone who reaches the service could hold connections with it.
        ("/api/v1/login", b'{"username": "someone", '),
    ],
)
async def test_slow_json_body_times_out(stack: Stack, path: str, start: bytes) -> None:
    download = await stack.start_download(request_body_timeout=1.0)
    port = int(download.url.rsplit(":", 1)[1])
    reader, writer = await _raw_post(port, start, 200, path)
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):
            raw = await reader.read()  # the server answers, then closes
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    assert orjson.loads(rest.split(b"\r\n\r\n", 1)[1])["code"] == "request_timeout"
    assert 0.9 <= elapsed < 3.0, elapsed


async def test_file_request_client_gone_is_one_line_without_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    download = await stack.start_download()
    port = int(download.url.rsplit(":", 1)[1])
    caplog.set_level("DEBUG")
    caplog.clear()
    _, writer = await _raw_post(port, b'{"file_carve_guid": "x", ', 200)
    await asyncio.sleep(0.2)
    writer.close()  # the client goes away in the middle of its body
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    lines = [r for r in caplog.records if r.levelno >= 20 and not r.name.startswith("pymongo")]
    assert [r.name for r in lines] == ["carve.audit"], [r.getMessage() for r in lines]
    assert not any(r.exc_info for r in caplog.records)
    row = orjson.loads(lines[0].getMessage())
    assert (row["action"], row["outcome"], row["code"]) == (
        "file_request",
        "aborted",
        "client_gone",
    )
