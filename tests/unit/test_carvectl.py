"""Unit tests for carvectl's commands, run through main()/run() over a requests.Session whose
transport adapter is a fake download service (no servers), and for its login (hvac replaced)."""

from __future__ import annotations

import hashlib
import http
import io
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import hvac
import pytest
import requests
import urllib3
import zstandard
from requests.structures import CaseInsensitiveDict

from clients import carvectl
from clients.carvectl import (
    EXIT_ERROR,
    EXIT_FORBIDDEN,
    EXIT_INTEGRITY,
    EXIT_NOT_COMPLETE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAUTHORIZED,
    EXIT_USAGE,
    extract_archive,
)
from clients.osquery_sim import build_archive
from shared import tarsafe
from tests import hostile as hostile_tars
from tests.unit.carvectl_support import GUID, PREFIX, TOKEN, add_member, files_under, write_tar

REDIRECT_TARGET = "http://elsewhere.invalid/collect"


# --------------------------------------------------------------------------------------------
# Commands over a fake transport (a requests adapter mounted on a real Session)
# --------------------------------------------------------------------------------------------


def _response(
    status: int, body: bytes | dict[str, Any] = b"", headers: dict[str, str] | None = None
) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.reason = http.HTTPStatus(status).phrase
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    extra = {"Content-Type": "application/json"} if isinstance(body, dict) else {}
    response.headers = CaseInsensitiveDict({**extra, **(headers or {})})
    response.raw = io.BytesIO(data)
    return response


class _BrokenRaw(io.BytesIO):
    """A body that drops the connection after ``cut`` bytes, the way urllib3 reports it."""

    def __init__(self, data: bytes, cut: int) -> None:
        super().__init__(data[:cut])

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        yield self.read()
        raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")


@dataclass
class FakeService:
    """Answers like docs/api.md, with switches for the misbehaviours tests need."""

    archive: bytes
    carve_id: str = GUID
    compression: str = "none"
    honour_ranges: bool = True
    advertised_sha256: str | None = None
    cut_after: int | None = None
    errors: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    pages: list[dict[str, Any]] = field(default_factory=list)
    seen: list[requests.PreparedRequest] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.archive).hexdigest()

    def carve(self) -> dict[str, Any]:
        suffix = ".tar.zst" if self.compression == "zstd" else ".tar"
        return {
            "carve_id": self.carve_id,
            "status": "complete",
            "block_count": 3,
            "block_size": 1024,
            "carve_size": len(self.archive),
            "blocks_received": 3,
            "progress": 1.0,
            "compression": self.compression,
            "sha256": self.sha256,
            "filename": f"carve_{self.carve_id}{suffix}",
            "failure_reason": None,
            "created_at": "2026-11-27T10:00:00+00:00",
        }

    def __call__(self, request: requests.PreparedRequest) -> requests.Response:
        self.seen.append(request)
        path = urllib.parse.urlsplit(request.url or "").path
        for suffix, (status, body) in self.errors.items():
            if path.endswith(suffix):
                # A redirect points at another host: following it would be a request there.
                elsewhere = {"Location": REDIRECT_TARGET} if 300 <= status < 400 else {}
                return _response(status, body, elsewhere)
        if path == "/api/v1/carves":
            return _response(200, self._page(request))
        if path == f"/api/v1/carves/{self.carve_id}":
            return _response(200, self.carve())
        if path == f"/api/v1/carves/{self.carve_id}/archive":
            return self._archive(request)
        return _response(404, {"error": "no such carve", "code": "not_found"})

    def _page(self, request: requests.PreparedRequest) -> dict[str, Any]:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.url or "").query)
        index = int(query.get("cursor", ["0"])[0])
        return self.pages[index]

    def _archive(self, request: requests.PreparedRequest) -> requests.Response:
        size = len(self.archive)
        headers = {
            "ETag": f'"{self.sha256}"',
            "X-Carve-SHA256": self.sha256,
            "Content-Disposition": f'attachment; filename="carve_{self.carve_id}.tar"',
            "Accept-Ranges": "bytes",
        }
        wanted = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        start = 0
        if wanted and self.honour_ranges and if_range == f'"{self.sha256}"':
            start = int(wanted.removeprefix("bytes=").rstrip("-"))
            if start >= size:
                return _response(
                    416,
                    {"error": "range not satisfiable", "code": "range_not_satisfiable"},
                    {"Content-Range": f"bytes */{size}"},
                )
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        body = self.archive[start:]
        headers["Content-Length"] = str(len(body))
        response = _response(206 if start else 200, body, headers)
        if self.cut_after is not None:
            response.raw = _BrokenRaw(body, self.cut_after)
        return response


class FakeTransport(requests.adapters.BaseAdapter):
    """The wire, as a transport adapter mounted on a real requests.Session: every request
    carvectl sends is answered by ``service``, with the options requests hands down kept."""

    def __init__(self, service: Callable[[requests.PreparedRequest], requests.Response]):
        super().__init__()
        self.service = service
        self.options: list[dict[str, Any]] = []

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        self.options.append({"stream": stream, "timeout": timeout, "verify": verify})
        response = self.service(request)
        response.request, response.url = request, request.url or ""
        return response

    def close(self) -> None:
        pass


def fake_session(
    service: Callable[[requests.PreparedRequest], requests.Response],
) -> tuple[requests.Session, FakeTransport]:
    """A requests.Session whose every request goes to ``service`` (the seam run() takes)."""
    session = requests.Session()
    transport = FakeTransport(service)
    session.mount("http://", transport)
    session.mount("https://", transport)
    return session, transport


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"VAULT_TOKEN": TOKEN, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def _run(argv: list[str], service: FakeService, env: dict[str, str]) -> tuple[int, FakeTransport]:
    session, transport = fake_session(service)
    code = carvectl.run(["--server", "http://127.0.0.1:8082", *argv], session=session, env=env)
    return code, transport


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["list", "--limit", "0"],
        ["list", "--limit", "1001"],
        ["list", "--status", "done"],
        ["list", "--since", "yesterday"],
        ["get"],
        ["get", GUID, "--expect-sha256", "abc"],
        ["extract", GUID],
        ["login", "--method", "password"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert carvectl.main(argv) == EXIT_USAGE
    assert "usage: carvectl" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert carvectl.main(["--help"]) == EXIT_OK
    assert "extract" in capsys.readouterr().out


def test_options_work_before_and_after_the_command(env: dict[str, str]) -> None:
    args = carvectl.build_parser(env).parse_args(["--json", "get", GUID, "-q", "--server", "x"])
    assert (args.json, args.quiet, args.server) == (True, True, "x")
    args = carvectl.build_parser({"CARVECTL_SERVER": "https://s"}).parse_args(["list"])
    assert (args.json, args.quiet, args.server) == (False, False, "https://s")


def test_expect_sha256_accepts_uppercase_and_minus_one(env: dict[str, str]) -> None:
    parser = carvectl.build_parser(env)
    assert parser.parse_args(["get", GUID, "--expect-sha256", "AB" * 32]).expect_sha256 == (
        "ab" * 32
    )
    assert parser.parse_args(["get", GUID, "--expect-sha256", "-1"]).expect_sha256 == "-1"


def test_no_token_exits_3_without_a_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service = FakeService(b"")
    code, _ = _run(["show", GUID], service, {"XDG_CONFIG_HOME": str(tmp_path)})
    assert code == EXIT_UNAUTHORIZED
    assert service.seen == []
    assert "carvectl login" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("status", "body", "code", "message"),
    [
        (401, {"error": "bad token", "code": "unauthorized"}, EXIT_UNAUTHORIZED, "carvectl login"),
        (403, {"error": "missing policy", "code": "forbidden"}, EXIT_FORBIDDEN, "lacks the policy"),
        (404, {"error": "no such carve", "code": "not_found"}, EXIT_NOT_FOUND, "no such carve"),
        (
            409,
            {
                "error": "x",
                "code": "not_complete",
                "status": "receiving",
                "blocks_received": 3,
                "block_count": 12,
            },
            EXIT_NOT_COMPLETE,
            "carve not complete yet: receiving, 3/12 blocks",
        ),
        (400, {"error": "bad carve id", "code": "invalid_request"}, EXIT_USAGE, "bad carve id"),
        (503, {"error": "vault sealed", "code": "unavailable"}, EXIT_ERROR, "vault sealed"),
        (500, {}, EXIT_ERROR, "HTTP 500"),
        (302, {}, EXIT_ERROR, "not following"),
    ],
)
def test_http_errors_map_to_exit_codes(
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    status: int,
    body: dict[str, Any],
    code: int,
    message: str,
) -> None:
    service = FakeService(b"", errors={"/archive": (status, body)})
    assert (
        _run(["get", GUID, "-o", str(Path(env["XDG_CONFIG_HOME"]) / "f")], service, env)[0] == code
    )
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert TOKEN not in err
    assert all(urllib.parse.urlsplit(r.url or "").hostname == "127.0.0.1" for r in service.seen)


def test_connection_errors_exit_1(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(request: requests.PreparedRequest) -> requests.Response:
        raise requests.ConnectionError("[Errno 111] Connection refused")

    code = carvectl.run(["list"], session=fake_session(refuse)[0], env=env)
    assert code == EXIT_ERROR
    assert "cannot reach http://127.0.0.1:8082" in capsys.readouterr().err


def test_get_downloads_verifies_and_names_the_file(
    tmp_path: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    archive = os.urandom(3 * 1024 * 1024 + 17)
    service = FakeService(archive)
    code, transport = _run(["get", GUID], service, env)
    assert code == EXIT_OK
    path = tmp_path / f"carve_{GUID}.tar"
    assert path.read_bytes() == archive
    assert not path.with_name(path.name + ".part").exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out, err = capsys.readouterr()
    assert out == f"{hashlib.sha256(archive).hexdigest()}  carve_{GUID}.tar\n"
    assert TOKEN not in out + err
    request = service.seen[-1]
    assert request.headers["X-Vault-Token"] == TOKEN
    assert "Range" not in request.headers
    # True, or REQUESTS_CA_BUNDLE when the environment sets it: never False. (That redirects
    # are never followed, the 302 case of test_http_errors_map_to_exit_codes shows.)
    assert all(o["verify"] for o in transport.options)
    assert all(
        o["stream"]
        for o, r in zip(transport.options, service.seen, strict=True)
        if "archive" in (r.url or "")
    )


def test_cacert_is_used_for_every_request(tmp_path: Path, env: dict[str, str]) -> None:
    cacert = tmp_path / "ca.pem"
    cacert.write_text("-----BEGIN CERTIFICATE-----\n")
    service = FakeService(b"archive")
    code, transport = _run(
        ["--cacert", str(cacert), "get", GUID, "-o", str(tmp_path / "a")], service, env
    )
    assert code == EXIT_OK
    assert [o["verify"] for o in transport.options] == [str(cacert), str(cacert)]
    missing = ["--cacert", str(tmp_path / "nope.pem"), "list"]
    assert _run(missing, service, env)[0] == EXIT_USAGE


def test_get_resumes_a_partial_download(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive = os.urandom(100_000)
    target = tmp_path / "evidence.tar"
    (tmp_path / "evidence.tar.part").write_bytes(archive[:40_000])
    service = FakeService(archive)
    code, _ = _run(["--json", "get", GUID, "-o", str(target)], service, env)
    assert code == EXIT_OK
    assert target.read_bytes() == archive
    request = service.seen[-1]
    assert request.headers["Range"] == "bytes=40000-"
    assert request.headers["If-Range"] == f'"{hashlib.sha256(archive).hexdigest()}"'
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "path": str(target),
        "sha256": hashlib.sha256(archive).hexdigest(),
        "size": 100_000,
        "resumed_from": 40_000,
    }


def test_get_starts_over_when_the_server_answers_200(tmp_path: Path, env: dict[str, str]) -> None:
    archive = os.urandom(50_000)
    target = tmp_path / "evidence.tar"
    (tmp_path / "evidence.tar.part").write_bytes(b"stale bytes of another archive" * 100)
    service = FakeService(archive, honour_ranges=False)
    assert _run(["get", GUID, "-o", str(target)], service, env)[0] == EXIT_OK
    assert service.seen[-1].headers["Range"] == "bytes=3000-"
    assert target.read_bytes() == archive


def test_get_finishes_a_complete_part_answered_416(tmp_path: Path, env: dict[str, str]) -> None:
    archive = os.urandom(10_000)
    target = tmp_path / "evidence.tar"
    (tmp_path / "evidence.tar.part").write_bytes(archive)
    assert _run(["get", GUID, "-o", str(target)], FakeService(archive), env)[0] == EXIT_OK
    assert target.read_bytes() == archive


def test_get_restarts_when_the_part_is_longer_than_the_archive(
    tmp_path: Path, env: dict[str, str]
) -> None:
    archive = os.urandom(10_000)
    target = tmp_path / "evidence.tar"
    (tmp_path / "evidence.tar.part").write_bytes(archive + b"junk")
    service = FakeService(archive)
    assert _run(["get", GUID, "-o", str(target)], service, env)[0] == EXIT_OK
    assert target.read_bytes() == archive
    assert "Range" not in service.seen[-1].headers


def test_get_sha256_mismatch_deletes_the_part_and_exits_7(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "evidence.tar"
    service = FakeService(b"tampered archive", advertised_sha256="ab" * 32)
    assert _run(["get", GUID, "-o", str(target)], service, env)[0] == EXIT_INTEGRITY
    assert list(tmp_path.glob("evidence*")) == []
    assert "SHA-256 mismatch" in capsys.readouterr().err


def test_get_resumed_onto_a_corrupt_prefix_is_caught(tmp_path: Path, env: dict[str, str]) -> None:
    archive = os.urandom(20_000)
    target = tmp_path / "evidence.tar"
    part = tmp_path / "evidence.tar.part"
    part.write_bytes(b"\x00" * 5_000)  # right length, wrong bytes: only the re-hash can tell
    assert _run(["get", GUID, "-o", str(target)], FakeService(archive), env)[0] == EXIT_INTEGRITY
    assert not part.exists() and not target.exists()


def test_get_expect_sha256(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive = b"carved bytes"
    digest = hashlib.sha256(archive).hexdigest()
    target = str(tmp_path / "a.tar")
    assert (
        _run(
            ["get", GUID, "-o", target, "--expect-sha256", digest.upper()],
            FakeService(archive),
            env,
        )[0]
        == EXIT_OK
    )
    assert (
        _run(["get", GUID, "-o", target, "--expect-sha256", "-1"], FakeService(archive), env)[0]
        == EXIT_OK
    )
    assert "osquery did not hash" in capsys.readouterr().err
    assert (
        _run(["get", GUID, "-o", target, "--expect-sha256", "0" * 64], FakeService(archive), env)[0]
        == EXIT_INTEGRITY
    )
    assert not Path(target + ".part").exists()


def test_get_interrupted_keeps_the_part_for_resuming(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    archive = os.urandom(30_000)
    target = tmp_path / "evidence.tar"
    service = FakeService(archive, cut_after=12_345)
    assert _run(["get", GUID, "-o", str(target)], service, env)[0] == EXIT_ERROR
    err = capsys.readouterr().err
    assert "download interrupted: Connection broken: IncompleteRead" in err
    assert "run the same command again to resume" in err
    assert (tmp_path / "evidence.tar.part").read_bytes() == archive[:12_345]
    assert _run(["get", GUID, "-o", str(target)], FakeService(archive), env)[0] == EXIT_OK
    assert target.read_bytes() == archive


def test_get_never_writes_through_a_planted_part_symlink(
    tmp_path: Path, env: dict[str, str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "evidence.tar.part").symlink_to(victim)
    target = tmp_path / "evidence.tar"
    assert _run(["get", GUID, "-o", str(target)], FakeService(b"archive"), env)[0] == EXIT_ERROR
    assert victim.read_bytes() == b"precious"
    assert not target.exists()


def test_list_table_and_json_with_all_pages(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    first = FakeService(b"").carve()
    second = {
        **first,
        "carve_id": "b" * 8,
        "status": "receiving",
        "blocks_received": 1,
        "block_count": 3,
        "carve_size": 12_000_000,
        "compression": None,
    }
    service = FakeService(
        b"",
        pages=[
            {"carves": [first], "next_cursor": "1"},
            {"carves": [second], "next_cursor": None},
        ],
    )
    assert _run(["list", "--all", "--status", "complete", "--limit", "1"], service, env)[0] == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATUS",
        "PROGRESS",
        "SIZE",
        "HOST",
        "CARVED",
        "CREATED",
        "VERDICT",
    ]
    assert lines[1].split() == [
        GUID,
        "complete",
        "3/3",
        "100%",
        "0",
        "B",
        "-",  # no host known (no device certificate, an older server)
        "-",  # nothing carved known
        "2026-11-27T10:00:00+00:00",
        "-",  # never scanned
    ]
    assert lines[2].split()[:6] == ["bbbbbbbb", "receiving", "1/3", "33%", "11.4", "MiB"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(service.seen[0].url or "").query)
    assert query == {"status": ["complete"], "limit": ["1"]}

    assert _run(["--json", "list"], service, env)[0] == EXIT_OK
    out, err = capsys.readouterr()
    assert json.loads(out) == [first]
    assert "--all" in err


def test_show_and_files(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    service = FakeService(b"x" * 2048)
    assert _run(["show", GUID], service, env)[0] == EXIT_OK
    out = capsys.readouterr().out
    assert re.search(rf"^carve: +{GUID}  \(complete\)$", out, re.MULTILINE)
    assert re.search(r"^size: +2\.0 KiB \(2,048 bytes\) in 3 blocks of 1\.0 KiB, none$", out, re.M)
    assert re.search(r"^progress: +3/3 100%$", out, re.MULTILINE)
    assert re.search(r"^created: +2026-11-27T10:00:00\+00:00 \(\d+ d ago\)$", out, re.M)
    assert "failed" not in out and "{" not in out  # no raw JSON

    listing = {
        "carve_id": GUID,
        "members": [
            {
                "path": "/var/log/auth.log",
                "name": f"{PREFIX}/var/log/auth.log",
                "type": "file",
                "size": 1234,
                "mode": 420,
                "mtime": "2026-11-27T10:00:00+00:00",
                "index": 3,
            },
        ],
        "truncated": True,
    }
    service.errors["/files"] = (200, listing)
    assert _run(["files", GUID], service, env)[0] == EXIT_OK
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split() == [
        "/var/log/auth.log",
        "file",
        "1.2",
        "KiB",
        "0644",
        "2026-11-27T10:00:00+00:00",
        "3",  # the member's position, for carvectl member
        "-",  # no SHA-256: a listing read from the tar, not a manifest
    ]
    assert "only the first 1 members" in err
    assert _run(["--json", "files", GUID], service, env)[0] == EXIT_OK
    assert json.loads(capsys.readouterr().out) == listing


def test_extract_command_downloads_verifies_and_extracts(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    source = build_archive(
        {"/var/log/auth.log": b"auth", "/etc/hosts": b"hosts"},
        tmp_path / "src",
        carve_guid=GUID,
        compress=True,
    )
    service = FakeService(source.read_bytes(), compression="zstd")
    out = tmp_path / "case" / "out"
    code, _ = _run(["extract", GUID, "/var/log", "-d", str(out)], service, env)
    assert code == EXIT_OK
    assert files_under(out) == {"var/log/auth.log": b"auth"}
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == ["out"]  # temp file gone
    assert "extracted 1 member(s)" in capsys.readouterr().out


def test_extract_command_exit_codes(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    evil = write_tar(tmp_path / "evil.tar", lambda tar: add_member(tar, f"{PREFIX}/../../x", b"x"))
    code, _ = _run(
        ["extract", GUID, "-d", str(tmp_path / "a")], FakeService(evil.read_bytes()), env
    )
    assert code == EXIT_INTEGRITY
    good = build_archive({"/etc/hosts": b"h"}, tmp_path / "src", carve_guid=GUID)
    code, _ = _run(
        ["extract", GUID, "/etc/shadow", "-d", str(tmp_path / "b")],
        FakeService(good.read_bytes()),
        env,
    )
    assert code == EXIT_NOT_FOUND
    assert "no member matches /etc/shadow" in capsys.readouterr().err
    tampered = FakeService(good.read_bytes(), advertised_sha256="cd" * 32)
    code, _ = _run(["extract", GUID, "-d", str(tmp_path / "c")], tampered, env)
    assert code == EXIT_INTEGRITY
    assert list((tmp_path / "c").iterdir()) == []  # nothing extracted from a bad download


def test_extract_command_unreadable_archive_exits_1(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = zstandard.ZstdCompressor().compress(b"not a tar" * 100)[:-10]
    code, _ = _run(["extract", GUID, "-d", str(tmp_path / "a")], FakeService(broken), env)
    assert code == EXIT_ERROR
    assert "cannot be read" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# login (hvac replaced by a stand-in)
# --------------------------------------------------------------------------------------------


class _FakeVault:
    logins: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, url: str, token: str, verify: object, timeout: int) -> None:
        self.url, self.token, self.verify = url, token, verify
        vault = self

        class UserPass:
            def login(self, username: str, password: str) -> dict[str, Any]:
                _FakeVault.logins.append((username, password))
                return {"auth": {"client_token": TOKEN}}

        class Token:
            def lookup_self(self) -> dict[str, Any]:
                assert vault.token == TOKEN
                return {
                    "data": {
                        "display_name": "userpass-alice",
                        "policies": ["default", carvectl.DEFAULT_POLICY],
                        "expire_time": "2026-11-28T10:00:00Z",
                    }
                }

        self.auth = type("Auth", (), {"userpass": UserPass(), "token": Token()})()


def test_login_userpass_saves_the_token_and_never_prints_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hvac, "Client", _FakeVault)
    env = {"XDG_CONFIG_HOME": str(tmp_path), "CARVECTL_PASSWORD": "hunter2"}
    code = carvectl.run(["login", "--username", "alice", "--vault-addr", "https://v:8200"], env=env)
    assert code == EXIT_OK
    assert _FakeVault.logins[-1] == ("alice", "hunter2")
    path = tmp_path / "carvectl" / "token"
    assert path.read_text() == TOKEN + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out, err = capsys.readouterr()
    assert "logged in as userpass-alice" in out
    assert carvectl.DEFAULT_POLICY in out
    assert TOKEN not in out + err and "hunter2" not in out + err


def test_login_without_a_terminal_or_password_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hvac, "Client", _FakeVault)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    code = carvectl.run(["login", "-u", "alice"], env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert code == EXIT_USAGE
    assert "set CARVECTL_PASSWORD" in capsys.readouterr().err
    assert not (tmp_path / "carvectl" / "token").exists()


def test_login_with_a_token_on_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(hvac, "Client", _FakeVault)
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN + "\n"))
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert carvectl.run(["--json", "login", "--method", "token"], env=env) == EXIT_OK
    assert (tmp_path / "carvectl" / "token").read_text() == TOKEN + "\n"
    out = capsys.readouterr().out
    assert json.loads(out)["display_name"] == "userpass-alice"
    assert TOKEN not in out


def test_extract_refuses_a_hostile_archive_before_writing_anything(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # A good member first, then a sparse one: the validating pass refuses before any write.
    sparse = hostile_tars.zstd(hostile_tars.sparse_10_bomb(100_000), level=19)
    code, _ = _run(
        ["extract", GUID, "-d", str(tmp_path / "a")], FakeService(sparse, compression="zstd"), env
    )
    assert code == EXIT_INTEGRITY
    assert "refused (sparse)" in capsys.readouterr().err
    assert list((tmp_path / "a").iterdir()) == []
    bomb = hostile_tars.zero_bomb_zstd(64 << 20)
    out = tmp_path / "b"
    with pytest.raises(tarsafe.Refused) as caught:
        extract_archive(_file(tmp_path / "bomb.zst", bomb), out, limits=tarsafe.Limits(1 << 20))
    assert caught.value.reason == "bytes_budget"
    assert list(out.iterdir()) == []
    argv = ["extract", GUID, "-d", str(tmp_path / "c"), "--max-bytes", str(65 << 20)]
    code, _ = _run(argv, FakeService(bomb, compression="zstd"), env)
    assert code == EXIT_OK
    assert (tmp_path / "c/var/zeros.bin").stat().st_size == 64 << 20


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
