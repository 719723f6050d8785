"""Safe extraction of a carve's archive under a directory, at the members' original paths.

tarsafe parses the archive (refusing what osquery never writes, within a byte and time
budget) in a first pass that writes nothing; the second pass writes each member that
``tarfile.data_filter`` accepts, never through a symbolic link.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from clients.carvectl.render import one_line, printable, warn
from shared import tarsafe


def stripped_path(name: str) -> str:
    """The member name without everything up to and including its ``osquery_carve_*`` component.

    ``/tmp/osquery_carve_<guid>/var/log/auth.log`` -> ``/var/log/auth.log`` (the original path
    on the host); a name without such a component is returned unchanged.
    """
    return tarsafe.stripped_path(name)


def relative_path(stripped: str) -> str:
    """Where a stripped path goes under the destination: without its one leading slash."""
    return tarsafe.relative_path(stripped)


def unsafe_reason(stripped: str) -> str | None:
    """Why a member with this stripped path must not be extracted, or None if its name is fine.

    A second leading slash (``//etc/passwd``) would still be absolute once the first is gone;
    tarfile would quietly strip it, but a carve that names such a path is not to be trusted.
    """
    return tarsafe.path_reason(stripped)


def normalize_selector(path: str) -> str:
    return path.strip("/")


def matching_selector(rel: str, selectors: Sequence[str]) -> str | None:
    """The selector choosing ``rel`` (exact path or a directory above it), or None.

    With no selectors everything is chosen, reported as the empty selector.
    """
    if not selectors:
        return ""
    clean = rel.strip("/")
    for selector in selectors:
        wanted = normalize_selector(selector)
        if not wanted or clean == wanted or clean.startswith(wanted + "/"):
            return selector
    return None


@dataclasses.dataclass
class ExtractReport:
    extracted: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unmatched: list[str] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)  # regular files written


def is_zstd(fh: IO[bytes]) -> bool:
    return tarsafe.is_zstd(fh)


def _through_symlink(dest: Path, rel: str, *, final: bool) -> bool:
    """Whether writing ``dest/rel`` would go through a symlink already on disk.

    data_filter checks paths with realpath, which long symlink chains defeat on Pythons before
    3.11.13 (CVE-2025-4517); never writing through a link at all closes that whole class.
    """
    path = dest
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        path = path / part
        if (final or index < len(parts) - 1) and path.is_symlink():
            return True
    return False


_TARINFO_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "other": tarfile.CHRTYPE,  # a device or FIFO: data_filter refuses it either way
}


def _tarinfo(member: tarsafe.Member, rel: str, linkname: str) -> tarfile.TarInfo:
    """The member as a TarInfo, for tarfile.data_filter's checks (nothing else uses it)."""
    info = tarfile.TarInfo(rel)
    info.type = _TARINFO_TYPES[member.kind]
    info.size, info.mode, info.mtime = member.size, member.mode, member.mtime
    info.linkname = linkname
    return info


class _Extraction:
    """Writes the members of one pass; tarsafe parsed them, tarfile.data_filter vets each."""

    def __init__(self, tar: tarsafe.TarReader, dest: Path, selectors: Sequence[str]) -> None:
        self.tar = tar
        self.dest = dest
        self.selectors = selectors
        self.report = ExtractReport()
        self.matched: set[str] = set()
        # Regular files written by this run: the only targets a hard link may point at.
        self.files: set[str] = set()

    def member(self, member: tarsafe.Member) -> None:
        stripped = stripped_path(member.name)
        rel = relative_path(stripped)
        selector = matching_selector(rel, self.selectors)
        if selector is None:
            return
        self.matched.add(selector)
        reason = unsafe_reason(stripped)
        if reason is None and posixpath.normpath(rel) == ".":
            return  # the osquery_carve_<guid> directory itself, that is DIR
        if reason is None:
            reason = self._problem(member, rel)
        if reason is None:
            reason = self._extract(member, rel)
        if reason is not None:
            self.report.refused.append((member.name, reason))
            warn(f"refused {printable(member.name)}: {reason}")

    def _problem(self, member: tarsafe.Member, rel: str) -> str | None:
        if "\x00" in member.linkname:
            return "NUL byte in its link target"
        if _through_symlink(self.dest, rel, final=member.kind != "symlink"):
            return "its path goes through a symbolic link"
        if member.kind == "hardlink":
            target = stripped_path(member.linkname)
            if unsafe_reason(target) or _key(relative_path(target)) not in self.files:
                return "hard link to a member that was not extracted"
        return None

    def _extract(self, member: tarsafe.Member, rel: str) -> str | None:
        linkname = member.linkname
        if member.kind == "hardlink":
            # A hard link names another member, so its target carries the prefix too.
            linkname = relative_path(stripped_path(member.linkname))
        try:
            info = tarfile.data_filter(_tarinfo(member, rel, linkname), str(self.dest))
        except tarfile.FilterError as exc:
            return one_line(str(exc))
        target = self.dest / info.name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if member.kind == "dir":
                target.mkdir(mode=0o700, exist_ok=True)
            else:
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()  # a later member replaces an earlier one, as tar does
                self._write(member, info, target)
        except (OSError, OverflowError, ValueError) as exc:  # a host can write any mtime
            return one_line(f"cannot write it: {getattr(exc, 'strerror', None) or exc}")
        self.report.extracted.append(_key(rel))
        if member.kind == "file":
            self.files.add(_key(rel))
        else:
            self.files.discard(_key(rel))  # a later hard link to this path is no file of ours
        return None

    def _write(self, member: tarsafe.Member, info: tarfile.TarInfo, target: Path) -> None:
        if member.kind == "symlink":
            os.symlink(info.linkname, target)
            return
        if member.kind == "hardlink":
            # Never through a symlink: link the entry itself, and touch nothing it points at.
            os.link(self.dest / info.linkname, target, follow_symlinks=False)
            if target.is_symlink():
                return
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_EXCL
            with os.fdopen(os.open(target, flags, 0o600), "wb") as out:
                for piece in self.tar.data():
                    out.write(piece)
        if info.mode is not None:
            os.chmod(target, info.mode)
        os.utime(target, (member.mtime, member.mtime), follow_symlinks=False)


def _key(rel: str) -> str:
    return posixpath.normpath(rel).strip("/")


def extract_archive(
    archive: Path,
    dest: Path,
    selectors: Sequence[str] = (),
    *,
    zstd: bool = False,
    limits: tarsafe.Limits | None = None,
) -> ExtractReport:
    """Extract ``archive`` (a carve's tar, maybe zstd) under ``dest`` at stripped paths.

    The whole archive is read once first, writing nothing: a refused feature (sparse member,
    budget exceeded, ...) raises tarsafe.Refused before any file exists. Members whose names
    are unsafe, or that ``tarfile.data_filter`` rejects (links leaving ``dest``, device
    files), are refused and listed; ``selectors`` limit what is extracted.
    """
    limits = limits or tarsafe.Limits()
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    with archive.open("rb") as fh:
        zstd = zstd or is_zstd(fh)
        budget = tarsafe.Budget(limits)
        with tarsafe.open_tar(fh, zstd=zstd, budget=budget) as tar:
            for _ in tar:
                pass
        fh.seek(0)
        # The check pass has met the time budget: writing must not be cut short by it halfway
        # ("nothing written" holds only for the check); the byte budget still applies.
        budget.lift_deadline()
        with tarsafe.open_tar(fh, zstd=zstd, budget=budget) as tar:
            extraction = _Extraction(tar, dest, selectors)
            for member in tar:
                extraction.member(member)
    report = extraction.report
    report.unmatched = [s for s in selectors if s not in extraction.matched]
    report.files = sorted(extraction.files)
    return report
