"""carve-triage's pure parts: hash-set files, rules loading, the worker's walk over hostile
tars (real YARA-X, no servers), the verdict."""

from __future__ import annotations

import hashlib
import io
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest
import yara_x

from services.triage import frames
from services.triage.hashsets import HashSetError, load_hashsets, load_set, matches
from services.triage.result import verdict_of
from services.triage.rules import RulesError, load_rules, version_of
from services.triage.worker import FrameInput, ScanJob, scan_archive
from shared.triage import event_data, rescan_update, triage_view

RULE = 'rule m : t { meta: note = "<b>x</b>\\x07" strings: $a = "MARK" condition: $a }'


def job(**changes: object) -> ScanJob:
    base = {"zstd": False, "max_member_bytes": 1 << 20, "max_carve_bytes": 1 << 30,
            "max_seconds": 60.0, "scan_timeout": 10.0, "hash_from": 0}  # fmt: skip
    return ScanJob(**{**base, **changes})  # type: ignore[arg-type]


def compiled(tmp_path: Path, text: str = RULE) -> yara_x.Rules:
    (tmp_path / "r.yar").write_text(text)
    return yara_x.Rules.deserialize_from(io.BytesIO(load_rules(str(tmp_path)).blob))


def tar_of(members: dict[str, bytes]) -> io.RawIOBase:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return cast(io.RawIOBase, io.BytesIO(out.getvalue()))


def test_a_hash_set_file_takes_comments_sha256sum_lines_and_either_case(tmp_path: Path) -> None:
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    path = tmp_path / "known-bad.txt"
    path.write_text(f"# bad\n\n{a.upper()}  /bin/a\n  {b}\n# end")
    loaded = load_set(path)
    assert (loaded.name, len(loaded)) == ("known-bad", 2)
    assert loaded.version == hashlib.sha256(path.read_bytes()).hexdigest()
    keys = [hashlib.sha256(x).digest() for x in (b"a", b"b", b"c")] + [b"\xff" * 32]
    assert loaded.contains(keys) == [True, True, False, False]
    assert matches([loaded], keys[:1]) == [["known-bad"]]


def test_a_line_that_is_not_a_digest_is_named_with_its_number(tmp_path: Path) -> None:
    good = hashlib.sha256(b"a").hexdigest()
    (tmp_path / "iocs").write_text(f"# x\n{good}\n\n{good[:-1]}\n")
    with pytest.raises(HashSetError, match=r"^iocs:4: not a SHA-256"):
        load_hashsets(str(tmp_path))


def test_a_large_set_parses_in_blocks_the_same_as_line_by_line(tmp_path: Path) -> None:
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200_000)]
    (tmp_path / "big").write_text("\n".join(digests) + "\n# trailer\n" + digests[0])
    loaded = load_set(tmp_path / "big")  # over several 2 MiB blocks: both parser paths
    assert len(loaded) == 200_001
    probe = [bytes.fromhex(digests[i]) for i in (0, 99_999, 199_999)]
    assert loaded.contains(probe) == [True, True, True]


def test_rules_errors_name_the_file_and_line_and_the_version_covers_every_source(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yar").write_text(RULE)
    first = load_rules(str(tmp_path))
    assert first.count == 1 and first.files == ("a.yar",)
    assert first.version == version_of([("a.yar", RULE.encode())])
    (tmp_path / "b.yara").write_text("rule b {\n condition:\n  nope\n}\n")
    with pytest.raises(RulesError, match=r"b\.yara:3:"):
        load_rules(str(tmp_path))
    (tmp_path / "b.yara").write_text('include "/etc/passwd"\n')
    with pytest.raises(RulesError, match=r"b\.yara"):
        load_rules(str(tmp_path))
    (tmp_path / "b.yara").write_text("rule b { condition: false }")
    assert load_rules(str(tmp_path)).version != first.version


def test_hits_carry_bounded_inert_metadata_and_the_member_s_path(tmp_path: Path) -> None:
    found = scan_archive(tar_of({"x/a.bin": b"..MARK..", "x/b.txt": b"none"}),
                         compiled(tmp_path), job())  # fmt: skip
    assert found.files == 2 and found.hit_count == 1 and found.stopped is None
    (hit,) = found.hits
    assert hit["member"] == "/x/a.bin" and hit["tags"] == ["t"]
    assert hit["metadata"] == {"note": "<b>x</b>\\x07"}  # control characters escaped
    assert [h[1] for h in found.hashed] == ["/x/a.bin", "/x/b.txt"]
    assert found.hashed[0][2] == hashlib.sha256(b"..MARK..").hexdigest()


def test_the_manifest_s_members_are_not_hashed_again(tmp_path: Path) -> None:
    found = scan_archive(tar_of({"a": b"1", "b": b"2"}), compiled(tmp_path), job(hash_from=1))
    assert [h[0] for h in found.hashed] == [1]


def test_a_member_past_the_cap_is_scanned_in_part_and_reported(tmp_path: Path) -> None:
    data = bytes(2048) + b"MARK"
    found = scan_archive(tar_of({"big": data}), compiled(tmp_path), job(max_member_bytes=1024))
    assert found.hit_count == 0 and found.scanned_bytes == 1024
    assert [s["reason"] for s in found.skipped] == ["member_too_large"]
    assert found.hashed[0][2] == hashlib.sha256(data).hexdigest()  # hashed whole all the same


def test_the_time_budget_stops_the_walk_with_the_member_it_was_in(tmp_path: Path) -> None:
    found = scan_archive(tar_of({"a": b"x" * 100}), compiled(tmp_path), job(max_seconds=1e-9))
    assert found.stopped == "time_budget"


def test_the_worker_drains_what_is_left_of_an_archive_after_answering() -> None:
    stream = io.BytesIO(
        frames.frame(frames.DATA, b"x" * 10) + frames.frame(frames.DATA, b"y") +
        frames.frame(frames.END) + frames.frame(frames.JOB, b"{}")
    )  # fmt: skip
    raw = FrameInput(stream)
    assert raw.read(4) == b"xxxx"
    raw.drain()
    assert frames.read_frame(stream) == (frames.JOB, b"{}")  # the next job is intact


def test_verdicts_and_what_the_api_and_events_show() -> None:
    assert verdict_of(0, False) == "clean"
    assert verdict_of(0, True) == "incomplete"
    assert verdict_of(3, True) == "flagged"
    hit = {"member": "/a", "kind": "yara", "rule": "r", "metadata": {"k": 1}}
    stored = {"status": "done", "verdict": "flagged", "claim": {"token": "t"}, "attempts": 1,
              "hits": [hit] * 12}  # fmt: skip
    view = triage_view(stored)
    assert view is not None and "claim" not in view and "attempts" not in view
    data = event_data({"carve_id": "c"}, stored)
    assert len(data["triage"]["hits"]) == 10 and "metadata" not in data["triage"]["hits"][0]
    update = rescan_update(datetime(2026, 1, 1, tzinfo=UTC), "ann")
    assert update["$set"]["triage.status"] == "pending" and "triage.claim" in update["$unset"]
