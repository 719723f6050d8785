"""Finding carves by what a responder remembers: the host, a carved path, an id.

A carve's display host (``display_host``) is its device certificate's CN, else a short
fingerprint of its node key: osquery's carve protocol carries no host name. Its carved
paths are the first regular files of its manifest (``shared.manifest.summary``).

Substring search is indexed with trigrams: the ``search`` field of a carve holds the
lowercased three-character pieces of its host and paths (at most ``MAX_GRAMS``), under a
multikey index. A query of three characters or more asks for up to ``QUERY_GRAMS`` of its
own trigrams (``$all``, one index scan) and then matches the exact substring, escaped, on
the few carves that have them. Shorter queries match id and request id prefixes only. The
host's text never becomes a pattern: queries are escaped, names are data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MAX_GRAMS = 2048  # per carve: ten paths of up to 256 characters and a host, mostly
QUERY_GRAMS = 8  # asked of the index per query; the regular expression checks the rest
MAX_QUERY = 128
GRAM = 3
SHORT_FINGERPRINT = 8  # hex digits of the node key's SHA-256 shown as a host


def display_host(doc: Mapping[str, Any]) -> str | None:
    """The host a responder recognises: the device CN, else ``nk:`` and 8 hex digits of the
    node key's SHA-256 (the key itself is never stored), else None."""
    if name := doc.get("host_name"):
        return str(name)
    device = doc.get("device") or {}
    if common_name := device.get("common_name"):
        return str(common_name)[:256]
    if node_key := doc.get("node_key_sha256"):
        return "nk:" + str(node_key)[:SHORT_FINGERPRINT]
    return None


def grams(text: str) -> list[str]:
    """The lowercased trigrams of ``text``, in order, without repeats."""
    lowered = text.lower()
    seen: dict[str, None] = {}
    for at in range(len(lowered) - GRAM + 1):
        seen.setdefault(lowered[at : at + GRAM], None)
    return list(seen)


def search_terms(host: str | None, paths: Iterable[str]) -> list[str]:
    """The ``search`` field of a carve: the trigrams of its host and paths, bounded."""
    found: dict[str, None] = {}
    for text in [host or "", *paths]:
        for gram in grams(text):
            found.setdefault(gram, None)
            if len(found) >= MAX_GRAMS:
                return list(found)
    return list(found)


def _spread(items: list[str], count: int) -> list[str]:
    """Up to ``count`` items spread over ``items`` (the first and last included)."""
    if len(items) <= count:
        return items
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def query_filter(q: str) -> dict[str, Any]:
    """The MongoDB filter of ``?q=``: carve id prefix, request id prefix, host or path
    substring (case-insensitive, three characters or more). ``q`` is checked by the caller."""
    prefix = {"$regex": "^" + re.escape(q)}
    clauses: list[dict[str, Any]] = [{"_id": prefix}, {"request_id": prefix}]
    if len(q) >= GRAM:
        substring = {"$regex": re.escape(q), "$options": "i"}
        clauses.append(
            {
                "search": {"$all": _spread(grams(q), QUERY_GRAMS)},
                "$or": [{"host_name": substring}, {"manifest.paths": substring}],
            }
        )
    return {"$or": clauses}
