"""bench.cli.work_root: a benchmark's own directory, kept only when the caller named it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import work_root


def test_a_temporary_root_is_removed_also_after_an_error() -> None:
    with pytest.raises(RuntimeError), work_root(None, "carve-test-") as root:
        (root / "data").write_bytes(b"x")
        assert root.name.startswith("carve-test-")
        raise RuntimeError("drill failed")
    assert not root.exists()


def test_a_named_root_is_created_and_kept(tmp_path: Path) -> None:
    keep = tmp_path / "runs" / "one"
    with work_root(keep, "carve-test-") as root:
        (root / "data").write_bytes(b"x")
    assert root == keep
    assert (keep / "data").read_bytes() == b"x"
