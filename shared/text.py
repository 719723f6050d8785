"""Free text people type (a hold's reason, a download's justification): plain, one line.

Control characters (C0, DEL, C1), format characters (bidirectional overrides, zero-width
joiners: they make an audit line read other than it is) and line or paragraph separators
are refused rather than escaped, so what is stored is what the person typed.
"""

from __future__ import annotations

import unicodedata

_REFUSED = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def check_plain(text: str) -> str:
    """``text`` stripped of surrounding spaces; ValueError if it holds a refused character
    or nothing but spaces."""
    for char in text:
        if unicodedata.category(char) in _REFUSED:
            raise ValueError(f"character U+{ord(char):04X} is not allowed (control or format)")
    stripped = text.strip()
    if not stripped:
        raise ValueError("must not be empty")
    return stripped
