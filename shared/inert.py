"""Host-controlled text made small and inert: control characters escaped, length bounded."""

from __future__ import annotations

import re

MAX_TEXT = 256  # characters of a host-controlled string in a summary or an event

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def inert(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` with control characters as ``\\xNN`` (``\\uNNNN``), at most ``limit`` characters
    (a cut one ends with an ellipsis)."""
    value = _CONTROL.sub(lambda m: _escape(m.group()), str(text))
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
