"""Unit tests for carvectl's pure helpers (names, headers, hashes, tables) and its token file."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from clients import carvectl
from clients.carvectl import (
    check_sha256,
    content_disposition_filename,
    format_progress,
    format_table,
    human_size,
    load_token,
    matching_selector,
    parse_content_range,
    safe_basename,
    save_token,
    stripped_path,
    token_file,
    unsafe_reason,
)
from tests.unit.carvectl_support import GUID, PREFIX, TOKEN

# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"{PREFIX}/var/log/auth.log", "/var/log/auth.log"),
        (f"tmp/osquery_carve_{GUID}/etc/hosts", "/etc/hosts"),
        (PREFIX, "/"),
        (f"{PREFIX}/", "/"),
        (f"{PREFIX}//etc/passwd", "//etc/passwd"),
        # Only the first osquery_carve_ component is the prefix: a carved path may hold another.
        (f"{PREFIX}/tmp/osquery_carve_old/x", "/tmp/osquery_carve_old/x"),
        ("etc/hosts", "etc/hosts"),
        ("/etc/hosts", "/etc/hosts"),
    ],
)
def test_stripped_path(name: str, expected: str) -> None:
    assert stripped_path(name) == expected


@pytest.mark.parametrize(
    ("stripped", "reason"),
    [
        ("/var/log/auth.log", None),
        ("var/log/auth.log", None),
        ("/var/log/..hidden", None),
        ("//etc/passwd", "absolute path"),
        ("/../etc/passwd", "'..' in its path"),
        ("/var/../../etc/passwd", "'..' in its path"),
        ("..", "'..' in its path"),
        ("/etc/a\x00b", "NUL byte in its name"),
    ],
)
def test_unsafe_reason(stripped: str, reason: str | None) -> None:
    assert unsafe_reason(stripped) == reason


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (None, "-"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (12_000_000, "11.4 MiB"),
        (1024**2 - 1, "1.0 MiB"),  # 1023.999 KiB must not print as "1024.0 KiB"
        (5 * 1024**3, "5.0 GiB"),
        (3 * 1024**5, "3.0 PiB"),
    ],
)
def test_human_size(size: int | None, text: str) -> None:
    assert human_size(size) == text


def test_format_progress_floors_the_percentage() -> None:
    assert format_progress(12, 12) == "12/12 100%"
    assert format_progress(999, 1000) == "999/1000 99%"
    assert format_progress(0, 0) == "0/0"
    assert format_progress(None, None) == "0/?"


def test_format_table_aligns_and_escapes_control_characters() -> None:
    table = format_table(
        ("PATH", "SIZE"), [["/a", "1 B"], ["/evil\x1b[2Jname", "10.0 KiB"]], right={1}
    )
    lines = table.splitlines()
    assert lines[0] == "PATH" + " " * 18 + "SIZE"
    assert lines[1] == "/a" + " " * 21 + "1 B"
    assert lines[2] == "/evil\\x1b[2Jname  10.0 KiB"
    assert "\x1b" not in table


def test_format_table_with_no_rows_prints_the_header() -> None:
    assert format_table(("ID", "STATUS"), []) == "ID  STATUS"


@pytest.mark.parametrize(
    ("header", "name"),
    [
        (f'attachment; filename="carve_{GUID}.tar"', f"carve_{GUID}.tar"),
        (f"attachment; filename=carve_{GUID}.tar.zst", f"carve_{GUID}.tar.zst"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('attachment; filename="C:\\\\Windows\\\\evil.tar"', "evil.tar"),
        ('attachment; filename=".."', None),
        ('attachment; filename=".bashrc"', "bashrc"),
        ('attachment; filename="a\\"b.tar"', 'a"b.tar'),
        ("attachment; filename=\"x.tar\"; filename*=UTF-8''%C3%A9t%C3%A9.tar", "été.tar"),
        ("attachment; filename*=UTF-8''..%2F..%2Fx.tar", "x.tar"),
        ('attachment; filename="a\x07b.tar"', "ab.tar"),
        ("attachment", None),
        ("", None),
        (None, None),
    ],
)
def test_content_disposition_filename(header: str | None, name: str | None) -> None:
    assert content_disposition_filename(header) == name


def test_safe_basename_never_leaves_the_directory() -> None:
    for hostile in ("/etc/passwd", "../../x", "a/b/../../c", "..\\..\\c"):
        result = safe_basename(hostile)
        assert result is not None
        assert "/" not in result and "\\" not in result and not result.startswith(".")


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("bytes 10-99/100", (10, 99, 100)),
        ("bytes */100", (None, None, 100)),
        ("bytes 0-9/*", (0, 9, None)),
        ("items 0-9/100", (None, None, None)),
        (None, (None, None, None)),
    ],
)
def test_parse_content_range(
    header: str | None, parsed: tuple[int | None, int | None, int | None]
) -> None:
    assert parse_content_range(header) == parsed


def test_check_sha256() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert check_sha256(digest, {"record": digest.upper()}, None) == ([], [])
    assert check_sha256(digest, {"ETag": f'"{digest}"'}, digest.upper()) == ([], [])
    mismatches, _ = check_sha256(digest, {"record": "0" * 64}, None)
    assert mismatches == ["record says " + "0" * 64]
    mismatches, _ = check_sha256(digest, {"record": digest}, "f" * 64)
    assert mismatches == ["--expect-sha256 says " + "f" * 64]
    mismatches, warnings = check_sha256(digest, {"record": digest}, "-1")
    assert mismatches == [] and "not hash" in warnings[0]
    mismatches, warnings = check_sha256(digest, {"record": None}, None)
    assert mismatches == [] and "not verified" in warnings[0]


def test_matching_selector() -> None:
    assert matching_selector("var/log/auth.log", []) == ""
    assert matching_selector("var/log/auth.log", ["/var/log/auth.log"]) == "/var/log/auth.log"
    assert matching_selector("var/log/auth.log", ["/var/log/"]) == "/var/log/"
    assert matching_selector("var/log/auth.log", ["/var/lo"]) is None
    assert matching_selector("var/log", ["/var/log/auth.log"]) is None


# --------------------------------------------------------------------------------------------
# Token file
# --------------------------------------------------------------------------------------------


def test_token_file_is_created_0600_in_a_0700_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("VAULT_TOKEN", raising=False)
    path = token_file()
    assert path == tmp_path / "config" / "carvectl" / "token"
    save_token(TOKEN, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_token() == TOKEN
    assert [p.name for p in path.parent.iterdir()] == ["token"]  # no temporary file left


def test_saving_over_a_world_readable_token_file_makes_it_0600(tmp_path: Path) -> None:
    path = tmp_path / "carvectl" / "token"
    path.parent.mkdir(mode=0o755)
    path.write_text("old\n")
    path.chmod(0o644)
    save_token(TOKEN, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == TOKEN + "\n"


def test_vault_token_env_wins_over_the_file_and_relative_xdg_is_ignored(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    save_token("from-file", token_file(env))
    assert load_token(env) == "from-file"
    assert load_token({**env, "VAULT_TOKEN": "from-env"}) == "from-env"
    assert token_file({"XDG_CONFIG_HOME": "relative/dir"}) == (
        Path.home() / ".config" / "carvectl" / "token"
    )


def test_files_table_marks_unsafe_and_superseded_members() -> None:
    unsafe = {"path": "//etc/passwd", "type": "file", "unsafe": True, "reason": "absolute path"}
    old = {"path": "/etc/hosts", "type": "file", "unsafe": False, "superseded": True}
    assert carvectl.file_row(unsafe)[0] == "//etc/passwd  [unsafe: absolute path]"
    assert carvectl.file_row(old)[0] == "/etc/hosts  [superseded by a later member]"
    assert carvectl.file_row({"path": "/etc/hosts", "unsafe": False})[0] == "/etc/hosts"
