"""Signed custody records: their canonical form, and checking one offline.

A custody record (``GET /api/v1/carves/{id}/custody``) is one JSON object::

    {"record": {...what is attested...}, "signature": {"algorithm": "ed25519", "value": b64}}

``record`` names its signing key itself (``record.signed_with``: Vault Transit key name and
version), so every byte that matters, the key's version included, is signed. The signed
bytes are ``canonical(record)``: RFC 8785 (JSON Canonicalization Scheme) as the PyPI
package ``rfc8785`` writes it: keys sorted by their UTF-16 code units, no whitespace,
strings with the minimal escapes, UTF-8. The record holds only strings, integers, booleans,
null, arrays and objects, so any JCS implementation gives the same bytes.

The manifest's digest (``record.manifest.sha256``) is SHA-256 over the same canonical form
of ``manifest_document(...)``: the carve id, the members exactly as the manifest lists them
(archive order) and whether it was cut short.

Checking needs only the public key of that version (``GET /api/v1/custody/keys``, saved
earlier, or a PEM file): no Vault, no server (``carvectl verify``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from shared.timefmt import rfc3339

FORMAT = "osquery-carve-custody/1"
ALGORITHM = "ed25519"


class CustodyError(Exception):
    """A record that does not verify: the message says what is wrong."""


def jsonable(value: Any) -> Any:
    """``value`` with datetimes as RFC 3339 text (how the API writes them), for canonical()."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def canonical(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of ``value`` (the bytes that are signed or hashed)."""
    return rfc8785.dumps(jsonable(value))


def manifest_document(carve_id: str, members: list[Any], truncated: bool) -> dict[str, Any]:
    """What a manifest's digest covers (see the module's docstring)."""
    return {"carve_id": carve_id, "members": members, "truncated": bool(truncated)}


def manifest_sha256(carve_id: str, members: list[Any], truncated: bool) -> str:
    return hashlib.sha256(canonical(manifest_document(carve_id, members, truncated))).hexdigest()


def public_key_pem(raw_b64: str) -> str:
    """The PEM (SubjectPublicKeyInfo) of an ed25519 public key given as Vault gives it."""
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(raw_b64))
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def load_keys(text: str) -> dict[int | None, Ed25519PublicKey]:
    """Public keys from a saved keys document (JSON of ``GET /api/v1/custody/keys``: by
    version) or from a PEM file (one key, version unknown: None)."""
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        return {None: _ed25519(stripped.encode())}
    try:
        doc = json.loads(stripped)
        return {int(k["version"]): _ed25519(str(k["public_key_pem"]).encode()) for k in doc["keys"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise CustodyError(
            "the key file is neither a PEM public key nor a saved GET /api/v1/custody/keys"
        ) from exc


def _ed25519(pem: bytes) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(pem)
    except ValueError as exc:
        raise CustodyError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise CustodyError("the public key is not an ed25519 key")
    return key


def verify(document: Any, keys: Mapping[int | None, Ed25519PublicKey]) -> dict[str, Any]:
    """``document``'s record when its signature holds under ``keys``; CustodyError saying
    why not otherwise."""
    if not isinstance(document, dict) or set(document) != {"record", "signature"}:
        raise CustodyError('not a custody record: want exactly {"record", "signature"}')
    record, signature = document["record"], document["signature"]
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CustodyError(f"not a custody record of format {FORMAT}")
    if not isinstance(signature, dict) or set(signature) != {"algorithm", "value"}:
        raise CustodyError('the signature must be exactly {"algorithm", "value"}')
    if signature["algorithm"] != ALGORITHM or record.get("signed_with", {}).get("algorithm") != (
        ALGORITHM
    ):
        raise CustodyError(f"unsupported signature algorithm (only {ALGORITHM})")
    version = record["signed_with"].get("version")
    key = keys.get(version) if version in keys else keys.get(None)
    if key is None:
        have = ", ".join(str(v) for v in sorted(k for k in keys if k is not None))
        raise CustodyError(
            f"no public key for version {version} of {record['signed_with'].get('key')!r} "
            f"(the key file has versions: {have or 'none'}): fetch the keys again"
        )
    try:
        raw = base64.b64decode(str(signature["value"]), validate=True)
        key.verify(raw, canonical(record))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise CustodyError(
            "the signature does not match the record: it was altered after signing, "
            "or signed with another key"
        ) from exc
    return record


def archive_matches(record: Mapping[str, Any], sha256: str, size: int) -> None:
    """CustodyError unless an archive of this SHA-256 and size is the record's."""
    archive = record.get("archive") or {}
    if archive.get("sha256") != sha256:
        raise CustodyError(
            f"the archive's SHA-256 {sha256} is not the record's {archive.get('sha256')}"
        )
    if archive.get("size") != size:
        raise CustodyError(f"the archive is {size} bytes, the record says {archive.get('size')}")
