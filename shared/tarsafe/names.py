"""Member names as a responder sees them: the host's path, and why a member is unsafe."""

from __future__ import annotations

import posixpath

CARVE_DIR_COMPONENT = "osquery_carve_"


def display_name(name: str) -> str:
    """A member name as valid UTF-8: bytes that are not UTF-8 (common on Linux) as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def stripped_path(name: str) -> str:
    """The name without everything up to and including its first ``osquery_carve_*`` component.

    ``/tmp/osquery_carve_<guid>/var/log/auth.log`` -> ``/var/log/auth.log`` (the path on the
    host); a name without such a component is returned unchanged. Nothing is normalised:
    ``//etc/passwd`` or ``/../x`` stay as they are, for ``unsafe_reason`` to see.
    """
    parts = name.split("/")
    for index, part in enumerate(parts):
        if part.startswith(CARVE_DIR_COMPONENT):
            return "/" + "/".join(parts[index + 1 :])
    return name


def relative_path(stripped: str) -> str:
    """Where a stripped path goes under an extraction directory: without its one leading slash."""
    return stripped[1:] if stripped.startswith("/") else stripped


def path_reason(stripped: str) -> str | None:
    """Why a member at this stripped path must not be extracted, or None if its name is fine.

    A second leading slash (``//etc/passwd``) would still be absolute once the first is gone.
    """
    if "\x00" in stripped:
        return "NUL byte in its name"
    rel = relative_path(stripped)
    if rel.startswith("/"):
        return "absolute path"
    if ".." in rel.split("/"):
        return "'..' in its path"
    return None


def _leaves(base_rel: str, target: str) -> bool:
    """Whether ``target``, relative to the directory ``base_rel``, climbs out of the root."""
    depth = 0
    for part in [*base_rel.split("/"), *target.split("/")]:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def link_escape(kind: str, stripped: str, linkname: str) -> str | None:
    """Why a link member would lead out of the extraction directory, or None if it stays in."""
    what = "symbolic link" if kind == "symlink" else "hard link"
    if "\x00" in linkname:
        return f"{what} target has a NUL byte"
    if kind == "hardlink":
        if path_reason(stripped_path(linkname)) is not None:
            return f"{what} to a member outside the carve"
        return None
    if linkname.startswith("/"):
        return f"{what} to an absolute path"
    if _leaves(posixpath.dirname(relative_path(stripped)), linkname):
        return f"{what} pointing outside the carve"
    return None


def extractable(kind: str, name: str, linkname: str) -> bool:
    """Whether a safe extraction writes this member (and so replaces one at the same path)."""
    stripped = stripped_path(name)
    if path_reason(stripped) is not None or kind == "other":
        return False
    return kind not in ("symlink", "hardlink") or link_escape(kind, stripped, linkname) is None


def unsafe_reason(kind: str, name: str, linkname: str) -> str | None:
    """Why a listed member is unsafe: its path, a link, or a device/FIFO; None if it is fine."""
    stripped = stripped_path(name)
    if (reason := path_reason(stripped)) is not None:
        return reason
    if kind == "other":
        return "device or FIFO (osquery writes none)"
    if kind in ("symlink", "hardlink"):
        what = "symbolic link" if kind == "symlink" else "hard link"
        return link_escape(kind, stripped, linkname) or f"{what} (osquery writes none)"
    return None


def original_path(name: str) -> str:
    """The path on the host of a safe member: its stripped name, normalised, from ``/``."""
    stripped = stripped_path(name).strip("/")
    return "/" + "/".join(p for p in stripped.split("/") if p not in ("", ".")) if stripped else "/"
