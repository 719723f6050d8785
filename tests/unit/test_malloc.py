"""shared.malloc: glibc's thresholds fixed at start-up, unless the operator set them."""

from __future__ import annotations

import platform

import pytest

from shared import malloc

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")


@glibc_only
def test_tune_fixes_the_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*malloc._OPERATOR_SET, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)
    assert malloc.tune() is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "1048576"),
        ("MALLOC_MMAP_THRESHOLD_", "131072"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
    ],
)
def test_the_operators_settings_win(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert malloc.tune() is False
