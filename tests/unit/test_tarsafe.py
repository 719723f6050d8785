"""shared.tarsafe on hostile archives built in memory: every refusal, by name, bounded."""

from __future__ import annotations

import io
import tarfile
import threading
import time
import tracemalloc

import pytest
import zstandard

from shared import tarsafe
from shared.tarsafe import Budget, Limits
from tests import hostile
from tests.hostile import PREFIX


def walk(
    data: bytes, *, zstd: bool = False, limits: Limits | None = None
) -> list[tuple[str, str, int]]:
    budget = Budget(limits or Limits())
    with tarsafe.open_tar(io.BytesIO(data), zstd=zstd, budget=budget) as tar:
        return [(m.name, m.kind, m.size) for m in tar]


def refusal(data: bytes, **kwargs: object) -> str:
    with pytest.raises(tarsafe.Refused) as caught:
        walk(data, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_what_osquery_writes_is_read_with_its_bytes() -> None:
    def fill(tar: tarfile.TarFile) -> None:
        hostile.add(tar, f"{PREFIX}/var/log/auth.log", b"auth\n" * 1000)
        hostile.add(tar, f"{PREFIX}/" + "d" * 150 + "/long-name", b"long")  # pax path
        hostile.add(tar, f"{PREFIX}/dir", type=tarfile.DIRTYPE)

    data = hostile.pax_tar(fill)
    for zstd, raw in ((False, data), (True, hostile.zstd(data))):
        budget = Budget(Limits())
        with tarsafe.open_tar(io.BytesIO(raw), zstd=zstd, budget=budget) as tar:
            got = [(m.name, m.kind, b"".join(tar.data())) for m in tar]
        assert got == [
            (f"{PREFIX}/var/log/auth.log", "file", b"auth\n" * 1000),
            (f"{PREFIX}/" + "d" * 150 + "/long-name", "file", b"long"),
            (f"{PREFIX}/dir", "dir", b""),
        ]


def test_gnu_long_names_are_read() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        hostile.add(tar, f"{PREFIX}/" + "g" * 200, b"gnu")
    assert walk(out.getvalue()) == [(f"{PREFIX}/" + "g" * 200, "file", 3)]


@pytest.mark.parametrize(
    "build",
    [
        lambda: hostile.sparse_10_bomb(1000),
        hostile.sparse_pax_00,
        hostile.sparse_pax_01,
        lambda: hostile.old_gnu_sparse(0),
        lambda: hostile.old_gnu_sparse(50),
    ],
    ids=["pax-1.0", "pax-0.0", "pax-0.1", "old-gnu-S", "old-gnu-S-extended"],
)
def test_every_gnu_sparse_format_is_refused(build: object) -> None:
    data = build()  # type: ignore[operator]
    assert refusal(data) == "sparse"
    assert refusal(hostile.zstd(data), zstd=True) == "sparse"


def test_a_sparse_bomb_is_refused_before_its_map_is_read() -> None:
    # CPython's tarfile holds ~110 bytes per map entry: ~440 MB for this 1.5 KB zstd carve.
    data = hostile.zstd(hostile.sparse_10_bomb(4_000_000), level=19)
    tracemalloc.start()
    try:
        assert refusal(data, zstd=True) == "sparse"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, peak


def test_global_headers_and_unknown_types_are_refused() -> None:
    out = io.BytesIO()
    with tarfile.open(
        fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"path": "/etc/x"}
    ) as tar:
        hostile.add(tar, f"{PREFIX}/a", b"a")
    assert refusal(out.getvalue()) == "global_header"
    for flag in (b"V", b"M", b"D", b"N", b"Z"):
        info = tarfile.TarInfo(f"{PREFIX}/odd")
        info.type = flag
        data = info.tobuf(tarfile.USTAR_FORMAT) + bytes(1024)
        assert refusal(data) == "unsupported_type", flag


def test_oversized_and_chained_extended_headers_are_refused() -> None:
    def big(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(f"{PREFIX}/a")
        info.pax_headers = {"comment": "x" * 2_000_000}
        tar.addfile(info)

    assert refusal(hostile.pax_tar(big)) == "header_too_large"
    record = b"20 comment=xxxxxxxx\n"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, len(record)
    one = pax.tobuf(tarfile.USTAR_FORMAT) + record + bytes(512 - len(record))
    member = tarfile.TarInfo(f"{PREFIX}/a").tobuf(tarfile.USTAR_FORMAT)
    assert walk(one * 4 + member + bytes(1024)) == [(f"{PREFIX}/a", "file", 0)]
    assert refusal(one * 5 + member + bytes(1024)) == "header_too_large"


def test_data_on_a_non_file_is_refused() -> None:
    info = tarfile.TarInfo(f"{PREFIX}/dir")
    info.type, info.size = tarfile.DIRTYPE, 512
    data = info.tobuf(tarfile.USTAR_FORMAT) + bytes(512) + bytes(1024)
    assert refusal(data) == "nonfile_data"


def test_member_count_limit() -> None:
    def fill(tar: tarfile.TarFile) -> None:
        for i in range(11):
            hostile.add(tar, f"{PREFIX}/{i}")

    data = hostile.pax_tar(fill)
    assert len(walk(data, limits=Limits(max_members=11))) == 11
    assert refusal(data, limits=Limits(max_members=10)) == "too_many_members"


def test_byte_budget_refuses_a_zero_bomb_from_its_declared_size() -> None:
    bomb = hostile.zero_bomb_zstd(60 << 30)
    started = time.monotonic()
    assert refusal(bomb, zstd=True) == "bytes_budget"
    assert time.monotonic() - started < 0.5  # nothing was decompressed
    small = hostile.zero_bomb_zstd(4 << 20)
    assert walk(small, zstd=True, limits=Limits(max_bytes=5 << 20))[0][2] == 4 << 20
    assert refusal(small, zstd=True, limits=Limits(max_bytes=4 << 20)) == "bytes_budget"
    # An uncompressed tar is read with seeks: its size costs nothing.
    plain = hostile.pax_tar(lambda t: hostile.add(t, f"{PREFIX}/big", bytes(8 << 20)))
    assert walk(plain, limits=Limits(max_bytes=1 << 20)) == [(f"{PREFIX}/big", "file", 8 << 20)]


def test_time_budget_and_stop_flag() -> None:
    bomb = hostile.zero_bomb_zstd(60 << 30)
    started = time.monotonic()
    assert refusal(bomb, zstd=True, limits=Limits(max_bytes=1 << 40, max_seconds=0.3)) == (
        "time_budget"
    )
    assert time.monotonic() - started < 2
    stop = threading.Event()
    budget = Budget(Limits(max_bytes=1 << 40, max_seconds=None), cancel=stop)
    threading.Timer(0.2, stop.set).start()
    with (
        pytest.raises(tarsafe.Stopped),
        tarsafe.open_tar(io.BytesIO(bomb), zstd=True, budget=budget) as tar,
    ):
        list(tar)
    assert time.monotonic() - started < 3


def test_zstd_window_over_the_limit_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    # Streamed (no content size in the frame), so the 16 MiB window is kept.
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj()
    tar = hostile.pax_tar(lambda t: hostile.add(t, f"{PREFIX}/a", b"a"))
    data = stream.compress(tar) + stream.flush()
    assert zstandard.get_frame_parameters(data).window_size == 16 << 20
    assert refusal(data, zstd=True, limits=Limits(zstd_max_window=8 << 20)) == "zstd_window"
    assert walk(data, zstd=True, limits=Limits(zstd_max_window=16 << 20))[0][1] == "file"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:100] + b"X" + d[101:],  # checksum
        lambda d: d[:700],  # inside a member
        lambda d: d[: 512 * 3],  # no end-of-archive block
        lambda d: b"",
    ],
)
def test_malformed_archives(damage: object) -> None:
    data = hostile.pax_tar(lambda t: hostile.add(t, f"{PREFIX}/a", b"a" * 600))
    with pytest.raises(tarsafe.Malformed):
        walk(damage(data))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kind", "name", "link", "reason"),
    [
        ("file", f"{PREFIX}/etc/hosts", "", None),
        ("file", f"{PREFIX}/../x", "", "'..' in its path"),
        ("file", f"{PREFIX}//etc/passwd", "", "absolute path"),
        ("file", f"{PREFIX}/a\x00b", "", "NUL byte in its name"),
        ("symlink", f"{PREFIX}/a/l", "/etc/shadow", "symbolic link to an absolute path"),
        ("symlink", f"{PREFIX}/a/l", "../../x", "symbolic link pointing outside the carve"),
        ("symlink", f"{PREFIX}/a/l", "../b", "symbolic link (osquery writes none)"),
        ("hardlink", f"{PREFIX}/a", f"{PREFIX}/../../x", "hard link to a member outside the carve"),
        ("hardlink", f"{PREFIX}/a", f"{PREFIX}/b", "hard link (osquery writes none)"),
        ("other", f"{PREFIX}/dev/sda", "", "device or FIFO (osquery writes none)"),
    ],
)
def test_unsafe_reasons(kind: str, name: str, link: str, reason: str | None) -> None:
    assert tarsafe.unsafe_reason(kind, name, link) == reason
    assert tarsafe.extractable(kind, name, link) == (
        reason is None or (reason.endswith("(osquery writes none)") and kind != "other")
    )
