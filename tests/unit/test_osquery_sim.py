"""Unit tests for the osquery carve client simulator, against a recording in-process server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import ssl
import subprocess
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import zstandard
from aiohttp import web
from aiohttp.test_utils import TestServer

from clients import osquery_sim
from clients.osquery_sim import (
    CarveResult,
    build_archive,
    build_synthetic_archive,
    carve,
    carve_many,
    client_ssl_context,
    judge_reply,
    parse_size,
    parse_version,
    percentile,
    synthetic_pieces,
)
from shared.protocol import ZSTD_MAGIC

GUID = "3f1c0a52-9a4e-4c61-8d1b-2f7e0c9b1a11"
FAST = (0.01, 0.01)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


Handler = Callable[[Recorded, web.Request], Awaitable[web.StreamResponse]]


async def _default_start(rec: Recorded, request: web.Request) -> web.StreamResponse:
    return web.json_response({"session_id": f"sess_{rec.json()['carve_id']}"})


async def _default_block(rec: Recorded, request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


@dataclass
class FakeServer:
    """Records every request verbatim and answers through swappable handlers."""

    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    on_start: Handler = _default_start
    on_block: Handler = _default_block

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(request.path, dict(request.headers), await request.read())
        self.requests.append(rec)
        if request.path == "/start_uploads":
            return await self.on_start(rec, request)
        return await self.on_block(rec, request)

    @property
    def starts(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/start_uploads"]

    @property
    def blocks(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/upload_blocks"]

    def block_ids(self) -> list[int]:
        return [int(str(r.json()["block_id"])) for r in self.blocks]


def _block_data(rec: Recorded) -> bytes:
    return base64.b64decode(str(rec.json()["data"]), validate=True)


async def _serve(fake: FakeServer, ssl_context: ssl.SSLContext | None = None) -> TestServer:
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=ssl_context)
    scheme = "https" if ssl_context else "http"
    fake.base_url = f"{scheme}://127.0.0.1:{server.port}"
    return server


@pytest.fixture
async def server() -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    test_server = await _serve(fake)
    yield fake
    await test_server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    # A 10240-byte tar (one tar record): with block_size 3000 that is 4 blocks, the last 1240.
    return build_archive(
        {"/var/log/auth.log": b"Nov 27 sshd[1]: Accepted publickey\n" * 40},
        tmp_path / "out",
        carve_guid=GUID,
    )


def _fail_blocks(ids: set[int], *, times: int | None = None) -> Handler:
    """A block handler answering text/plain 503 for ``ids`` (the first ``times`` calls each)."""
    seen: dict[int, int] = {}

    async def handler(rec: Recorded, request: web.Request) -> web.StreamResponse:
        block_id = int(str(rec.json()["block_id"]))
        seen[block_id] = seen.get(block_id, 0) + 1
        if block_id in ids and (times is None or seen[block_id] <= times):
            return web.Response(status=503, text="broker down", content_type="text/plain")
        return web.json_response({})

    return handler


# ------------------------------------------------------------------------------------------
# Wire format
# ------------------------------------------------------------------------------------------


async def test_start_body_is_exact_compact_json_in_osquery_key_order(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    result = await carve(
        session,
        server.base_url,
        archive,
        block_size=3000,
        node_key="nk-1",
        carve_id="c-1",
        request_id="r-1",
    )
    expected = (
        b'{"block_count":4,"block_size":3000,"carve_size":10240,'
        b'"carve_id":"c-1","request_id":"r-1","node_key":"nk-1"}'
    )
    assert server.starts[0].body == expected
    assert result.status == "SUCCESS"
    assert result.session_id == "sess_c-1"
    assert (result.size, result.block_size, result.block_count) == (10240, 3000, 4)


async def test_headers_on_523_carry_nodekey_and_no_compression(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    await carve(session, server.base_url, archive, block_size=3000, node_key="nk-1")
    assert len(server.requests) == 5
    for rec in server.requests:
        assert rec.headers["User-Agent"] == "osquery/5.23.0"
        assert rec.headers["Authorization"] == "NodeKey nk-1"
        assert rec.headers["Content-Type"] == "application/json"
        assert rec.headers["Accept"] == "application/json"
        assert rec.headers["Content-Length"] == str(len(rec.body))
        assert "Transfer-Encoding" not in rec.headers
        assert "Content-Encoding" not in rec.headers
        assert "Accept-Encoding" not in rec.headers


async def test_headers_on_521_have_no_authorization(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    result = await carve(
        session, server.base_url, archive, block_size=3000, node_key="nk-1", version=(5, 21, 0)
    )
    assert result.status == "SUCCESS"
    assert [r.headers["User-Agent"] for r in server.requests] == ["osquery/5.21.0"] * 5
    assert all("Authorization" not in r.headers for r in server.requests)
    assert server.starts[0].json()["node_key"] == "nk-1"


async def test_blocks_are_sequential_and_reassemble_the_archive(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    result = await carve(session, server.base_url, archive, block_size=3000, request_id="r-9")
    payload = archive.read_bytes()
    assert server.block_ids() == [0, 1, 2, 3]
    assert [list(r.json()) for r in server.blocks] == [
        ["block_id", "session_id", "request_id", "data"]
    ] * 4
    assert {r.json()["session_id"] for r in server.blocks} == {result.session_id}
    assert {r.json()["request_id"] for r in server.blocks} == {"r-9"}
    assert all("node_key" not in r.json() for r in server.blocks)
    sizes = [len(_block_data(r)) for r in server.blocks]
    assert sizes == [3000, 3000, 3000, 1240]
    assert b"".join(_block_data(r) for r in server.blocks) == payload
    # standard base64 with padding and no newlines, spliced as bytes
    last_b64 = str(server.blocks[-1].json()["data"])
    assert last_b64 == base64.b64encode(payload[9000:]).decode()
    assert b"\n" not in server.blocks[0].body
    assert result.sha256 == hashlib.sha256(payload).hexdigest()
    assert result.requests == 5
    assert len(result.latencies) == 4
    assert all(0 < value < 5 for value in result.latencies)
    assert result.failed_blocks == [] and result.error_replies == []
    assert result.ok


async def test_block_order_hook_sends_blocks_in_the_given_order(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    result = await carve(
        session, server.base_url, archive, block_size=3000, block_order=[2, 0, 3, 1, 1]
    )
    assert server.block_ids() == [2, 0, 3, 1, 1]
    by_id = {int(str(r.json()["block_id"])): _block_data(r) for r in server.blocks}
    assert b"".join(by_id[i] for i in range(4)) == archive.read_bytes()
    assert result.status == "SUCCESS"
    with pytest.raises(ValueError, match="outside"):
        await carve(session, server.base_url, archive, block_size=3000, block_order=[0, 4])


async def test_empty_reply_body_counts_as_success(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    async def empty(rec: Recorded, request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, body=b"")

    server.on_block = empty
    result = await carve(session, server.base_url, archive, block_size=3000)
    assert result.status == "SUCCESS"
    assert result.requests == 5
    assert result.failed_blocks == [] and result.error_replies == []


# ------------------------------------------------------------------------------------------
# Reply judging and retries
# ------------------------------------------------------------------------------------------


async def test_non_json_503_is_retried_three_times_then_data_post_failed(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    server.on_block = _fail_blocks({1})
    result = await carve(session, server.base_url, archive, block_size=3000, retry_sleeps=FAST)
    assert server.block_ids() == [0, 1, 1, 1]
    assert result.status == "DATA POST FAILED"
    assert result.failed_blocks == [1]
    assert result.requests == 1 + 1 + 3
    assert len(result.latencies) == 4
    assert not result.ok


async def test_transient_503_recovers_within_the_three_attempts(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    server.on_block = _fail_blocks({0, 3}, times=2)
    result = await carve(session, server.base_url, archive, block_size=3000, retry_sleeps=FAST)
    assert server.block_ids() == [0, 0, 0, 1, 2, 3, 3, 3]
    assert result.status == "SUCCESS"
    assert result.failed_blocks == []
    assert result.requests == 9


async def test_json_error_reply_is_success_and_not_retried(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    async def reject_block_2(rec: Recorded, request: web.Request) -> web.StreamResponse:
        if rec.json()["block_id"] == 2:
            return web.json_response({"error": "invalid block"}, status=400)
        return web.json_response({})

    server.on_block = reject_block_2
    result = await carve(session, server.base_url, archive, block_size=3000, retry_sleeps=FAST)
    assert server.block_ids() == [0, 1, 2, 3]
    assert result.status == "SUCCESS"
    assert result.failed_blocks == []
    assert result.error_replies == [2]
    assert not result.ok


async def test_521_skips_a_failing_block_and_still_ends_success(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    server.on_block = _fail_blocks({1, 2})
    result = await carve(
        session, server.base_url, archive, block_size=3000, version=(5, 21, 0), retry_sleeps=FAST
    )
    assert server.block_ids() == [0, 1, 2, 3]
    assert result.status == "SUCCESS"
    assert result.failed_blocks == [1, 2]
    assert result.requests == 5
    assert not result.ok


async def test_522_retries_but_sends_no_authorization(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    server.on_block = _fail_blocks({3})
    result = await carve(
        session, server.base_url, archive, block_size=3000, version=(5, 22, 1), retry_sleeps=FAST
    )
    assert server.block_ids() == [0, 1, 2, 3, 3, 3]
    assert result.status == "DATA POST FAILED"
    assert result.failed_blocks == [3]
    assert all("Authorization" not in r.headers for r in server.requests)


@pytest.mark.parametrize(
    "reply",
    [{"status": "ok"}, {"session_id": ""}, {"session_id": 42}, ["session_id"]],
    ids=["missing", "empty", "not-a-string", "not-an-object"],
)
async def test_start_without_usable_session_id_is_start_failed(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path, reply: object
) -> None:
    async def start(rec: Recorded, request: web.Request) -> web.StreamResponse:
        return web.json_response(reply)

    server.on_start = start
    result = await carve(session, server.base_url, archive, block_size=3000, retry_sleeps=FAST)
    assert result.status == "DATA POST FAILED"
    assert result.session_id is None
    # a JSON reply is a transport success: no retry, and no block is sent
    assert len(server.requests) == 1
    assert result.requests == 1
    assert result.latencies == []


async def test_start_non_json_is_retried_then_start_failed(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    async def start(rec: Recorded, request: web.Request) -> web.StreamResponse:
        return web.Response(status=200, text="<html>bad gateway</html>", content_type="text/html")

    server.on_start = start
    result = await carve(session, server.base_url, archive, block_size=3000, retry_sleeps=FAST)
    assert result.status == "DATA POST FAILED"
    assert len(server.starts) == 3
    assert server.blocks == []
    assert result.requests == 3
    # all three attempts carried the identical body
    assert len({r.body for r in server.starts}) == 1


async def test_timeout_is_a_transport_failure(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    async def slow_block_0(rec: Recorded, request: web.Request) -> web.StreamResponse:
        if rec.json()["block_id"] == 0:
            await asyncio.sleep(0.3)
        return web.json_response({})

    server.on_block = slow_block_0
    result = await carve(
        session, server.base_url, archive, block_size=3000, timeout=0.1, version=(5, 21, 0)
    )
    assert result.status == "SUCCESS"
    assert result.failed_blocks == [0]
    assert result.requests == 5
    # a timed-out request got no reply, so it has no latency sample
    assert len(result.latencies) == 3


async def test_dropped_connection_is_resent_once_within_an_attempt(
    server: FakeServer, session: aiohttp.ClientSession, archive: Path
) -> None:
    async def drop_block_1(rec: Recorded, request: web.Request) -> web.StreamResponse:
        if rec.json()["block_id"] == 1:
            assert request.transport is not None
            request.transport.close()
        return web.json_response({})

    server.on_block = drop_block_1
    result = await carve(
        session, server.base_url, archive, block_size=3000, version=(5, 21, 0), retry_sleeps=FAST
    )
    assert server.block_ids() == [0, 1, 1, 2, 3]
    assert result.failed_blocks == [1]
    assert result.requests == 6

    server.requests.clear()
    result = await carve(
        session,
        server.base_url,
        archive,
        block_size=3000,
        retry_sleeps=FAST,
        resend_on_disconnect=False,
    )
    assert server.block_ids() == [0, 1, 1, 1]
    assert result.status == "DATA POST FAILED"


async def test_connection_refused_ends_start_failed(
    session: aiohttp.ClientSession, archive: Path
) -> None:
    # bind then close a socket to get a port nobody listens on
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    result = await carve(
        session, f"http://127.0.0.1:{port}", archive, block_size=3000, retry_sleeps=FAST
    )
    assert result.status == "DATA POST FAILED"
    # 3 attempts, each re-sent once after the socket error
    assert result.requests == 6


async def test_carve_many_uploads_every_host_concurrently(
    server: FakeServer, tmp_path: Path
) -> None:
    guids = [f"guid-{n}" for n in range(3)]
    archives = [
        build_synthetic_archive(30_000, tmp_path / g, carve_guid=g, seed=n)
        for n, g in enumerate(guids)
    ]
    results = await carve_many(
        server.base_url, archives, carve_ids=guids, block_size=4096, concurrency=2
    )
    assert [r.carve_id for r in results] == guids
    assert all(r.ok for r in results)
    for result, path in zip(results, archives, strict=True):
        mine = sorted(
            (r for r in server.blocks if r.json()["session_id"] == result.session_id),
            key=lambda r: int(str(r.json()["block_id"])),
        )
        assert len(mine) == result.block_count == 10  # 40960-byte tar / 4096
        assert b"".join(_block_data(r) for r in mine) == path.read_bytes()
    assert {r.json()["carve_id"] for r in server.starts} == set(guids)
    with pytest.raises(ValueError, match="one id per archive"):
        await carve_many(server.base_url, archives, carve_ids=guids[:1])


# ------------------------------------------------------------------------------------------
# Archives
# ------------------------------------------------------------------------------------------


def test_build_archive_keeps_absolute_carve_prefix_and_pax_format(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 100)
    long_path = "/var/log/" + "d" * 120 + "/x.log"
    path = build_archive(
        {"/var/log/auth.log": b"hello\n", "/tmp/big.bin": source, long_path: b"long"},
        tmp_path / "out",
        carve_guid=GUID,
    )
    assert path.name == f"carve_{GUID}.tar"
    raw = path.read_bytes()
    assert len(raw) % 10240 == 0
    # POSIX ustar magic (pax), not the GNU "ustar  " variant
    assert raw[257:265] == b"ustar\x0000"
    with tarfile.open(path) as tar:
        names = tar.getnames()
        members = {m.name: m for m in tar.getmembers()}
        prefix = f"/tmp/osquery_carve_{GUID}"
        assert names == [prefix + "/var/log/auth.log", prefix + "/tmp/big.bin", prefix + long_path]
        assert members[prefix + long_path].pax_headers["path"] == prefix + long_path
        big = tar.extractfile(prefix + "/tmp/big.bin")
        assert big is not None
        assert big.read() == source.read_bytes()
        assert all(m.mode == 0o644 and m.mtime == 0 and m.isreg() for m in members.values())
    with pytest.raises(ValueError, match="absolute"):
        build_archive({"relative.txt": b""}, tmp_path / "bad", carve_guid=GUID)


def test_compressed_archive_is_zstd_of_the_same_tar(tmp_path: Path) -> None:
    members: dict[str, bytes | Path] = {"/etc/hosts": b"127.0.0.1 localhost\n" * 500}
    plain = build_archive(members, tmp_path / "plain", carve_guid=GUID)
    packed = build_archive(members, tmp_path / "packed", carve_guid=GUID, compress=True)
    assert packed.name == f"carve_{GUID}.tar.zst"
    assert packed.read_bytes()[:4] == ZSTD_MAGIC
    assert packed.stat().st_size < plain.stat().st_size
    with packed.open("rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as reader:
        tar_bytes = reader.read()
    assert tar_bytes == plain.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile(f"/tmp/osquery_carve_{GUID}/etc/hosts")
        assert member is not None
        assert member.read() == members["/etc/hosts"]


def test_synthetic_archive_is_deterministic_per_seed(tmp_path: Path) -> None:
    size = (1 << 20) + 12345  # crosses a 1 MiB piece boundary
    first = build_synthetic_archive(size, tmp_path / "a", carve_guid=GUID, seed=7)
    again = build_synthetic_archive(size, tmp_path / "b", carve_guid=GUID, seed=7)
    other = build_synthetic_archive(size, tmp_path / "c", carve_guid=GUID, seed=8)
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    with tarfile.open(first) as tar:
        (member,) = tar.getmembers()
        assert member.name == f"/tmp/osquery_carve_{GUID}/var/log/evidence.bin"
        assert member.size == size
        content = tar.extractfile(member)
        assert content is not None
        assert content.read() == b"".join(synthetic_pieces(size, 7))
    packed = build_synthetic_archive(size, tmp_path / "d", carve_guid=GUID, seed=7, compress=True)
    assert packed.read_bytes()[:4] == ZSTD_MAGIC
    assert [len(p) for p in synthetic_pieces(size, 0)] == [1 << 20, 12345]


# ------------------------------------------------------------------------------------------
# Helpers and CLI
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("8KiB", 8192),
        ("5MB", 5_000_000),
        ("1GiB", 1 << 30),
        ("2gb", 2_000_000_000),
        ("1.5MiB", 1_572_864),
        ("7B", 7),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "5XB", "MB", "-1KB"])
def test_parse_size_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_parse_version_and_percentile() -> None:
    assert parse_version("5.23.0") == (5, 23, 0)
    assert parse_version("5.21") == (5, 21, 0)
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) == 0.0


def test_client_ssl_context_verifies_and_rejects_key_without_cert() -> None:
    context = client_ssl_context(None, None, None)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ValueError, match="certificate"):
        client_ssl_context(None, None, "/nonexistent.key")


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_mutual_tls_carve(tmp_path: Path, archive: Path) -> None:
    server_cert, server_key = _self_signed(tmp_path, "server")
    client_cert, client_key = _self_signed(tmp_path, "client")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_cert))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(str(server_cert), str(server_key))
    fake = FakeServer()
    test_server = await _serve(fake, server_ctx)
    try:
        async with aiohttp.ClientSession() as client_session:
            good = client_ssl_context(str(server_cert), str(client_cert), str(client_key))
            result = await carve(client_session, fake.base_url, archive, block_size=3000, ssl=good)
            assert result.ok
            assert len(fake.blocks) == 4
            # without a client certificate the handshake is refused: a transport failure
            no_client_cert = client_ssl_context(str(server_cert), None, None)
            refused = await carve(
                client_session,
                fake.base_url,
                archive,
                block_size=3000,
                ssl=no_client_cert,
                retry_sleeps=FAST,
            )
            assert refused.status == "DATA POST FAILED"
            assert len(fake.starts) == 1
    finally:
        await test_server.close()


async def test_cli_json_report_and_exit_codes(
    server: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--url", server.base_url, "--hosts", "2", "--size", "20KB", "--block-size", "8KiB"]
    code = await asyncio.to_thread(osquery_sim.main, [*argv, "--json", "--node-key", "k"])
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert document["summary"]["hosts"] == 2
    assert document["summary"]["ok_hosts"] == 2
    assert document["summary"]["total_bytes"] == 2 * 30720
    assert document["summary"]["blocks"] == 8
    assert [r["status"] for r in document["results"]] == ["SUCCESS", "SUCCESS"]
    assert "latencies" not in document["results"][0]
    # each host carved different content under its own carve id
    assert len({r["sha256"] for r in document["results"]}) == 2
    assert {r.json()["carve_id"] for r in server.starts} == {
        r["carve_id"] for r in document["results"]
    }
    assert {r.headers["Authorization"] for r in server.requests} == {"NodeKey k"}

    server.on_block = _fail_blocks({0})
    code = await asyncio.to_thread(osquery_sim.main, [*argv, "--version", "5.21.0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert len(lines) == 3
    assert lines[0].split()[1] == "SUCCESS"
    assert "failed_blocks=1" in lines[0]
    assert lines[2].startswith("hosts=2 ok=0 bytes=61440 ")


async def test_cli_carves_real_files(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evidence = tmp_path / "evidence.txt"
    evidence.write_bytes(b"x" * 5000)
    argv = ["--url", server.base_url, "--file", str(evidence), "--compress", "--json"]
    code = await asyncio.to_thread(osquery_sim.main, argv)
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    (result,) = document["results"]
    uploaded = b"".join(
        _block_data(r) for r in sorted(server.blocks, key=lambda r: int(str(r.json()["block_id"])))
    )
    assert uploaded[:4] == ZSTD_MAGIC
    assert hashlib.sha256(uploaded).hexdigest() == result["sha256"]
    tar_bytes = zstandard.ZstdDecompressor().decompressobj().decompress(uploaded)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        name = f"/tmp/osquery_carve_{result['carve_id']}{evidence.resolve()}"
        member = tar.extractfile(name)
        assert member is not None
        assert member.read() == b"x" * 5000


def test_carve_result_ok_requires_clean_success() -> None:
    base = CarveResult("c", "r", "s", "SUCCESS", "h", 1, 1, 1)
    assert base.ok
    assert not CarveResult("c", "r", "s", "SUCCESS", "h", 1, 1, 1, failed_blocks=[0]).ok
    assert not CarveResult("c", "r", None, "DATA POST FAILED", "h", 1, 1, 1).ok
    assert "latencies" not in base.summary_dict()


@pytest.mark.parametrize(
    ("body", "ok"),
    [
        (b"", True),  # empty: JSONSerializer::deserialize's own special case
        (b'{"success":true}', True),
        (b"[1,2]", True),  # any value at the root
        (b'"stored"', True),
        (b"null", True),
        (b'{"success":true}\x00<html>', True),  # parsed as a C string: ends at the NUL
        (b'{"error":"\xff\xfe"}', True),  # RapidJSON does not validate UTF-8 by default
        (b" \n", False),  # only whitespace: an empty document
        (b"\x00{}", False),
        (b"refused: unknown_session: unknown or ended session\n", False),
        (b"service unavailable: rabbitmq\n", False),
        (b'{"a":NaN}', False),
        (b'{"a":1e400}', False),  # does not fit a double
        (b'{"a":1,}', False),
        (b"{} {}", False),  # more than one root
        (b"<html>413 Request Entity Too Large</html>", False),
    ],
)
def test_judge_reply_follows_rapidjson_defaults(body: bytes, ok: bool) -> None:
    for status in (200, 400, 404, 503):  # never looked at
        assert judge_reply(status, body).ok is ok


def test_judge_reply_takes_the_first_of_duplicate_keys() -> None:
    reply = judge_reply(200, b'{"session_id":"first","session_id":""}')
    assert reply.payload == {"session_id": "first"}
