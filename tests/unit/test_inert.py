"""shared.inert: host text made inert for events, chat messages and logs."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from shared.inert import inert

ESCAPED = {"Cc", "Cf", "Zl", "Zp", "Cs"}


def test_every_control_format_and_separator_character_is_escaped() -> None:
    missed = [
        f"U+{cp:04X}"
        for cp in range(sys.maxunicode + 1)
        if unicodedata.category(chr(cp)) in ESCAPED and inert(chr(cp), 20) == chr(cp)
    ]
    assert missed == []


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("report\u202etxt.exe", "report\\u202etxt.exe"),  # right-to-left override
        ("a\u2066b\u2069", "a\\u2066b\\u2069"),  # isolates
        ("zero\u200bwidth\u200d", "zero\\u200bwidth\\u200d"),
        ("\ufeffbom", "\\ufeffbom"),
        ("soft\xadhyphen", "soft\\xadhyphen"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("lone\ud800", "lone\\ud800"),
        ("line\r\nbreak\x1b[31m", "line\\x0d\\x0abreak\\x1b[31m"),
        ("caf\u00e9 \u65e5\u672c \U0001f600 \ue000", "caf\u00e9 \u65e5\u672c \U0001f600 \ue000"),
    ],
)
def test_escapes_what_reorders_or_hides_text_and_keeps_the_rest(text: str, shown: str) -> None:
    assert inert(text) == shown


def test_bounds_the_escaped_text() -> None:
    assert inert("\u202e" * 100, 13) == "\\u202e\\u202e" + "\u2026"
    assert inert("x" * 10, 10) == "x" * 10
