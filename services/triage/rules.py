"""The rules: every ``*.yar`` / ``*.yara`` file of ``CARVE_TRIAGE_RULES``, compiled by YARA-X.

Each file is compiled into its own namespace (its file name without the suffix), so two
files may name a rule alike. ``include`` is refused: what the version covers is exactly the
directory's files. ``version`` is the SHA-256 over the sorted (name, source) pairs: the same
sources give the same version on every replica. A file that does not compile is a
``RulesError`` naming the file and line (YARA-X's own message), never a partial rule set.
The compiled rules travel to the worker processes serialized (``blob``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import yara_x

SUFFIXES = (".yar", ".yara")
MAX_FILES = 10_000
MAX_SOURCE_BYTES = 64 * 1024 * 1024  # of all files together


class RulesError(Exception):
    """The rules directory cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class RuleSet:
    version: str  # hex SHA-256 over the sources
    files: tuple[str, ...]
    count: int  # rules compiled
    blob: bytes  # the compiled rules, serialized (yara_x.Rules.serialize_into)


def _sources(directory: Path) -> list[tuple[str, bytes]]:
    if not directory.is_dir():
        raise RulesError(f"rules directory {directory} does not exist")
    paths = sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if len(paths) > MAX_FILES:
        raise RulesError(f"{directory}: more than {MAX_FILES} rule files")
    sources: list[tuple[str, bytes]] = []
    total = 0
    for path in paths:
        data = path.read_bytes()
        total += len(data)
        if total > MAX_SOURCE_BYTES:
            raise RulesError(f"{directory}: rule files over {MAX_SOURCE_BYTES} bytes in all")
        sources.append((path.name, data))
    return sources


def version_of(sources: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in sources:
        for part in (name.encode(), data):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


def load_rules(directory: str) -> RuleSet:
    """Compile the directory's rules (an empty directory gives an empty, valid rule set)."""
    sources = _sources(Path(directory))
    blob, count, error = _compile(sources)
    if error is not None:
        raise RulesError(error)
    return RuleSet(version_of(sources), tuple(n for n, _ in sources), count, blob)


def _compile(sources: list[tuple[str, bytes]]) -> tuple[bytes, int, str | None]:
    """(serialized rules, rule count, None) or (b"", 0, the error). YARA-X's compiler must
    be dropped on the thread that made it: no exception (and so no traceback holding it)
    leaves this function."""
    compiler = yara_x.Compiler()
    compiler.enable_includes(False)
    error: str | None = None
    for name, data in sources:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            error = f"{name}: not UTF-8 (byte {exc.start})"
            break
        compiler.new_namespace(Path(name).stem)
        try:
            compiler.add_source(text, origin=name)
        except yara_x.CompileError as exc:
            error = _first_lines(str(exc))
            break
    if error is not None:
        del compiler
        return b"", 0, error
    rules = compiler.build()
    del compiler
    blob = io.BytesIO()
    rules.serialize_into(blob)
    return blob.getvalue(), sum(1 for _ in rules), None


def _first_lines(message: str) -> str:
    """YARA-X's error: 'error[E009]: ...' then ' --> file:line:col'; keep those two."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines[:2])
