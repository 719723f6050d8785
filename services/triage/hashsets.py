"""Hash sets: every file of ``CARVE_TRIAGE_HASHSETS`` is a set of SHA-256 digests.

One digest a line, in hex (either case); blank lines and lines starting with ``#`` are
ignored, as is anything after the first whitespace of a line (``sha256sum`` output works).
The file's name is the set's name (``known-bad``, ``allowlist.txt`` -> ``allowlist``), its
version the SHA-256 of its bytes. A line that is not a digest is an error naming the file
and line: a typo must not silently drop an indicator.

A set is held as one sorted array of 32-byte records (numpy ``S32``) and looked up by
binary search: 32 bytes a hash, about 320 MB for 10 million, where a Python ``set`` of
``bytes`` would take over 100 bytes a hash. ``bench/triage_hashsets.py`` measures it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

DIGEST = 32
MAX_SETS = 256
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BLOCK = 2 * 1024 * 1024
# A block of nothing but digests, one a line: parsed by one bytes.fromhex (100x a line loop).
_PLAIN = re.compile(rb"(?:[0-9a-fA-F]{64}\r?\n)*")


class HashSetError(Exception):
    """A hash-set file cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class HashSet:
    name: str
    version: str  # SHA-256 of the file, hex (the first 16 digits are shown)
    digests: npt.NDArray[np.bytes_]  # sorted, dtype S32

    def __len__(self) -> int:
        return int(self.digests.shape[0])

    def contains(self, digests: list[bytes]) -> list[bool]:
        """Whether each of ``digests`` (32 bytes each) is in the set."""
        if not digests or not len(self):
            return [False] * len(digests)
        keys = np.array(digests, dtype="S32")
        at = np.searchsorted(self.digests, keys)
        at = np.minimum(at, len(self) - 1)
        return [bool(v) for v in self.digests[at] == keys]


def set_name(path: Path) -> str:
    return path.stem if path.suffix in (".txt", ".sha256") else path.name


def load_set(path: Path) -> HashSet:
    """One set from its file (read in blocks: the text is never held whole).

    The array is allocated once, for as many digests as the file could hold (a digest line
    takes at least 65 bytes), so 10 million take 320 MB and no growing copy of them.
    """
    digest = hashlib.sha256()
    capacity = path.stat().st_size // (2 * DIGEST + 1) + 1
    records = np.empty(capacity, dtype="S32")
    raw = records.view(np.uint8)
    count = number = 0  # digests stored, lines before the current block
    with path.open("rb") as handle:
        rest = b""
        while block := handle.read(_BLOCK):
            digest.update(block)
            block = rest + block
            cut = block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
            parsed = _parse(block, path, number)
            number += block.count(b"\n")
            count = _store(raw, count, parsed)
        if rest:
            count = _store(raw, count, _parse(rest + b"\n", path, number))
    digests = records[:count]
    digests.sort()  # in place
    return HashSet(set_name(path), digest.hexdigest(), digests)


def _store(raw: npt.NDArray[np.uint8], count: int, parsed: bytes) -> int:
    if len(parsed) > len(raw) - count * DIGEST:  # the file grew while it was read
        raise HashSetError("a hash-set file changed while it was read: reload again")
    raw[count * DIGEST : count * DIGEST + len(parsed)] = np.frombuffer(parsed, np.uint8)
    return count + len(parsed) // DIGEST


# The first word of each line that is not blank or a comment.
_WORDS = re.compile(rb"^[ \t]*([^\s#]\S*)", re.MULTILINE)


def _parse(block: bytes, path: Path, number: int) -> bytes:
    """The digests of ``block`` (whole lines), 32 bytes each, back to back."""
    words = block
    if not _PLAIN.fullmatch(words):
        words = b"".join(word + b"\n" for word in _WORDS.findall(block))
        if not _PLAIN.fullmatch(words):
            _raise_at(block, path, number)
    return bytes.fromhex(words.decode("ascii"))


def _raise_at(block: bytes, path: Path, number: int) -> None:
    for offset, line in enumerate(block.splitlines(), 1):
        word = line.split(None, 1)[0] if line.strip() else b""
        if word and not word.startswith(b"#"):
            if len(word) != 2 * DIGEST or not _HEX.issuperset(word):
                raise HashSetError(f"{path.name}:{number + offset}: not a SHA-256 in hex")
    raise HashSetError(f"{path.name}: not one SHA-256 in hex a line")


def load_hashsets(directory: str) -> list[HashSet]:
    """Every set of the directory, by name (a missing directory: no sets)."""
    root = Path(directory)
    if not root.is_dir():
        return []
    paths = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if len(paths) > MAX_SETS:
        raise HashSetError(f"{directory}: more than {MAX_SETS} hash-set files")
    sets = [load_set(p) for p in paths]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise HashSetError(f"{directory}: two files give the same set name")
    return sets


def matches(sets: Iterable[HashSet], digests: list[bytes]) -> list[list[str]]:
    """For each digest, the names of the sets holding it."""
    found: list[list[str]] = [[] for _ in digests]
    for one in sets:
        for index, hit in enumerate(one.contains(digests)):
            if hit:
                found[index].append(one.name)
    return found
