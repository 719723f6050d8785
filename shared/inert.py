"""Host-controlled text made small and inert: control and format characters escaped, length
bounded."""

from __future__ import annotations

import re

MAX_TEXT = 256  # characters of a host-controlled string in a summary or an event

# Control (Cc), format (Cf: bidirectional overrides, zero-width joiners, the BOM...), line and
# paragraph separators (Zl, Zp) and lone surrogates (Cs) of Unicode 14 (Python 3.11's table):
# a host's path or name must not reorder or hide the text around it in a chat message or a
# log line (``tests/unit/test_inert.py`` checks this against unicodedata).
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    r"\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ud800-\udfff\ufeff\ufff9-\ufffb"
    r"\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    r"\U000e0001\U000e0020-\U000e007f]"
)


def inert(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` with control and format characters as ``\\xNN`` (``\\uNNNN``, ``\\UNNNNNNNN``),
    at most ``limit`` characters (a cut one ends with an ellipsis)."""
    value = _CONTROL.sub(lambda m: _escape(m.group()), str(text))
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
