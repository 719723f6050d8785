"""Unit tests for carvectl's safe extraction, on hand-built tars (no servers)."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from clients.carvectl import (
    extract_archive,
    stripped_path,
)
from clients.osquery_sim import build_archive
from shared.protocol import ZSTD_MAGIC
from tests.unit.carvectl_support import GUID, PREFIX, add_member, files_under, write_tar

# --------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------


def test_extract_writes_members_at_their_stripped_paths(tmp_path: Path) -> None:
    archive = build_archive(
        {"/var/log/auth.log": b"auth\n", "/etc/hosts": b"127.0.0.1 localhost\n"},
        tmp_path / "src",
        carve_guid=GUID,
    )
    report = extract_archive(archive, tmp_path / "out")
    assert files_under(tmp_path / "out") == {
        "etc/hosts": b"127.0.0.1 localhost\n",
        "var/log/auth.log": b"auth\n",
    }
    assert sorted(report.extracted) == ["etc/hosts", "var/log/auth.log"]
    assert report.refused == [] and report.unmatched == []
    # data_filter keeps owner read/write and drops group/other write.
    assert stat.S_IMODE((tmp_path / "out/etc/hosts").stat().st_mode) == 0o644


@pytest.mark.parametrize("flag", [False, True])
def test_extract_zstd_archive(tmp_path: Path, flag: bool) -> None:
    archive = build_archive(
        {"/var/log/syslog": b"x" * 300_000}, tmp_path / "src", carve_guid=GUID, compress=True
    )
    assert archive.read_bytes()[:4] == ZSTD_MAGIC
    # Detected by its magic number, or told by the carve's compression field.
    report = extract_archive(archive, tmp_path / "out", zstd=flag)
    assert report.extracted == ["var/log/syslog"]
    assert (tmp_path / "out/var/log/syslog").read_bytes() == b"x" * 300_000


def test_extract_selects_exact_paths_and_directories(tmp_path: Path) -> None:
    archive = build_archive(
        {"/var/log/auth.log": b"a", "/var/log/kern.log": b"k", "/etc/hosts": b"h"},
        tmp_path / "src",
        carve_guid=GUID,
    )
    report = extract_archive(archive, tmp_path / "out", ["/etc/hosts", "var/log/", "/nope"])
    assert sorted(report.extracted) == ["etc/hosts", "var/log/auth.log", "var/log/kern.log"]
    assert report.unmatched == ["/nope"]
    report = extract_archive(archive, tmp_path / "one", ["/var/log/kern.log"])
    assert files_under(tmp_path / "one") == {"var/log/kern.log": b"k"}


def test_extract_refuses_unsafe_members(tmp_path: Path) -> None:
    def fill(tar: tarfile.TarFile) -> None:
        add_member(tar, f"{PREFIX}/ok/file.txt", b"fine")
        add_member(tar, f"{PREFIX}/../../escape.txt", b"dotdot")
        add_member(tar, f"{PREFIX}/ok/../../escape2.txt", b"dotdot")
        add_member(tar, f"{PREFIX}//{tmp_path}/absolute.txt", b"abs")
        add_member(tar, f"{PREFIX}/ok/nul\x00.txt", b"nul")
        add_member(tar, f"{PREFIX}/ok/abs-link", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        add_member(tar, f"{PREFIX}/ok/rel-link", kind=tarfile.SYMTYPE, linkname="../../../outside")
        add_member(tar, f"{PREFIX}/ok/hard", kind=tarfile.LNKTYPE, linkname="/etc/passwd")
        add_member(tar, f"{PREFIX}/dev/sda", kind=tarfile.BLKTYPE)
        add_member(tar, f"{PREFIX}/dev/fifo", kind=tarfile.FIFOTYPE)
        add_member(tar, f"{PREFIX}/ok/suid", b"#!/bin/sh\n", mode=0o4755)

    out = tmp_path / "deep" / "out"
    report = extract_archive(write_tar(tmp_path / "evil.tar", fill), out)

    refused = {stripped_path(name): reason for name, reason in report.refused}
    assert refused.keys() == {
        "/../../escape.txt",
        "/ok/../../escape2.txt",
        f"//{tmp_path}/absolute.txt",
        "/ok/nul\x00.txt",
        "/ok/abs-link",
        "/ok/rel-link",
        "/ok/hard",
        "/dev/sda",
        "/dev/fifo",
    }
    assert refused["/../../escape.txt"] == "'..' in its path"
    assert refused[f"//{tmp_path}/absolute.txt"] == "absolute path"
    assert refused["/ok/nul\x00.txt"] == "NUL byte in its name"
    assert "absolute path" in refused["/ok/abs-link"]
    assert "outside the destination" in refused["/ok/rel-link"]
    assert "special file" in refused["/dev/sda"]
    assert sorted(report.extracted) == ["ok/file.txt", "ok/suid"]
    # Nothing was written anywhere but the two safe files under out/.
    assert files_under(tmp_path) == {
        "evil.tar": (tmp_path / "evil.tar").read_bytes(),
        "deep/out/ok/file.txt": b"fine",
        "deep/out/ok/suid": b"#!/bin/sh\n",
    }
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert stat.S_IMODE((out / "ok/suid").stat().st_mode) == 0o755  # setuid bit dropped


def test_extract_never_writes_through_a_symlink(tmp_path: Path) -> None:
    def fill(tar: tarfile.TarFile) -> None:
        add_member(tar, f"{PREFIX}/inside", kind=tarfile.DIRTYPE, mode=0o755)
        add_member(tar, f"{PREFIX}/alias", kind=tarfile.SYMTYPE, linkname="inside")
        add_member(tar, f"{PREFIX}/alias/planted", b"through the link")
        add_member(tar, f"{PREFIX}/alias", b"overwrite the link's target")

    out = tmp_path / "out"
    report = extract_archive(write_tar(tmp_path / "links.tar", fill), out)
    assert sorted(report.extracted) == ["alias", "inside"]
    assert [(stripped_path(n), r) for n, r in report.refused] == [
        ("/alias/planted", "its path goes through a symbolic link"),
        ("/alias", "its path goes through a symbolic link"),
    ]
    assert (out / "alias").is_symlink() and os.readlink(out / "alias") == "inside"
    assert list((out / "inside").iterdir()) == []


def test_extract_symlink_outside_a_preexisting_directory_link_is_refused(tmp_path: Path) -> None:
    # A link left in DIR by an earlier run must not redirect a later member's write.
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "var").symlink_to(outside)

    def fill(tar: tarfile.TarFile) -> None:
        add_member(tar, f"{PREFIX}/var/log/auth.log", b"redirected?")

    report = extract_archive(write_tar(tmp_path / "a.tar", fill), out)
    assert report.extracted == []
    assert len(report.refused) == 1
    assert list(outside.iterdir()) == []


def test_extract_hard_link_to_an_extracted_member(tmp_path: Path) -> None:
    def fill(tar: tarfile.TarFile) -> None:
        add_member(tar, f"{PREFIX}/data/a", b"same inode")
        add_member(tar, f"{PREFIX}/data/b", kind=tarfile.LNKTYPE, linkname=f"{PREFIX}/data/a")
        add_member(tar, f"{PREFIX}/data/c", kind=tarfile.LNKTYPE, linkname=f"{PREFIX}/data/missing")

    out = tmp_path / "out"
    archive = write_tar(tmp_path / "hard.tar", fill)
    report = extract_archive(archive, out)
    assert report.extracted == ["data/a", "data/b"]
    assert [r for _, r in report.refused] == ["hard link to a member that was not extracted"]
    assert (out / "data/b").stat().st_ino == (out / "data/a").stat().st_ino
    # A second run over the same directory replaces the link instead of failing.
    assert extract_archive(archive, out).extracted == ["data/a", "data/b"]


def test_extract_prints_hostile_names_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def fill(tar: tarfile.TarFile) -> None:
        add_member(tar, f"{PREFIX}/../\x1b]0;owned\x07", b"x")

    extract_archive(write_tar(tmp_path / "esc.tar", fill), tmp_path / "out")
    err = capsys.readouterr().err
    assert "refused" in err and "\\x1b]0;owned\\x07" in err
    assert "\x1b" not in err
