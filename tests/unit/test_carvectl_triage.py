"""carvectl and triage: ``list --verdict`` asks the server for it and prints the verdict;
``show`` prints the hits, skipped members and history; ``--json`` carries them whole."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from clients.carvectl import EXIT_OK
from tests.unit.carvectl_support import GUID
from tests.unit.test_carvectl import FakeService, _run, env

__all__ = ["env"]
TRIAGE = {
    "status": "done",
    "verdict": "flagged",
    "rules_version": "ab" * 32,
    "hashsets": {"known-bad": "0123456789abcdef"},
    "hits": [
        {"member": "/tmp/\x1b[31mred", "kind": "yara", "rule": "evil", "namespace": "lab",
         "tags": ["t1"], "metadata": {"sev": 3}, "sha256": "cd" * 32},
        {"member": "/bin/x", "kind": "hashset", "set": "known-bad", "sha256": "ef" * 32},
    ],
    "hit_count": 2,
    "skipped": [{"member": "/var/big", "reason": "member_too_large", "detail": "3 GiB"}],
    "skipped_count": 1,
    "scanned_bytes": 4096,
}  # fmt: skip


class TriagedService(FakeService):
    def carve(self) -> dict[str, Any]:
        history = [{"rules_version": "12" * 32, "verdict": "clean", "hit_count": 0}]
        return {**super().carve(), "triage": TRIAGE, "triage_history": history}


def test_list_asks_for_the_verdict_and_prints_it(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service = TriagedService(b"", pages=[{"carves": [TriagedService(b"").carve()]}])
    code, _ = _run(["list", "--verdict", "flagged"], service, env)
    assert code == EXIT_OK
    query = urllib.parse.urlsplit(service.seen[-1].url or "").query
    assert urllib.parse.parse_qs(query)["verdict"] == ["flagged"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "VERDICT" and lines[1].split()[-1] == "flagged"


def test_a_verdict_that_is_not_one_is_refused_before_any_request(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service = TriagedService(b"")
    code, _ = _run(["list", "--verdict", "evil"], service, env)
    assert code != EXIT_OK and service.seen == [] and "invalid choice" in capsys.readouterr().err


def test_show_prints_hits_skipped_members_and_history_and_json_carries_them(
    env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    service = TriagedService(b"x" * 10)
    assert _run(["show", GUID], service, env)[0] == EXIT_OK
    out = capsys.readouterr().out
    assert "triage: flagged (done), 2 hits, 1 skipped, 4.0 KiB scanned" in out
    assert f"rules version: {'ab' * 32}" in out
    assert "hit  /tmp/\\x1b[31mred: rule lab:evil [t1] (sev=3)" in out  # no escape reaches the tty
    assert "hit  /bin/x: hash set known-bad" in out
    assert "skipped  /var/big: member_too_large: 3 GiB" in out
    assert "before: clean with rules 1212121212121212" in out
    assert "\x1b" not in out and not any(line.startswith("triage:  {") for line in out.splitlines())
    assert _run(["--json", "show", GUID], service, env)[0] == EXIT_OK
    assert json.loads(capsys.readouterr().out)["triage"] == TRIAGE
