"""The manifest's name budget counts what an entry stores of the host's text: link targets
too. A host can put a long pax linkpath on every symlink (zstd shrinks it to nothing)."""

from __future__ import annotations

import io
import tarfile

from shared import manifest
from shared.tarsafe import Limits
from tests.hostile import raw_reader


def symlinks(count: int, target_size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(count):
            info = tarfile.TarInfo(f"/tmp/osquery_carve_x/link{i}")
            info.type = tarfile.SYMTYPE
            info.linkname = "/" + "a" * target_size
            tar.addfile(info)
    return out.getvalue()


def test_link_targets_count_against_the_name_budget() -> None:
    raw = raw_reader(symlinks(40, 100_000))
    built = manifest.build(raw, zstd=False, limits=Limits(), max_name_bytes=1_000_000)
    kept = built["members"]
    assert built["truncated"] is True
    assert sum(manifest.text_bytes(view) for view in kept) <= 1_000_000
    assert 5 <= len(kept) < 10  # about 100 KB of link each: ten would pass the budget
    assert all(view["link"].startswith("/aaa") for view in kept)
