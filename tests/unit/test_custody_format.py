"""Pure logic of custody records and typed text: the canonical form (RFC 8785), offline
verification with a locally made ed25519 key, and what free text refuses."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.custody import (
    FORMAT,
    CustodyError,
    archive_matches,
    canonical,
    load_keys,
    manifest_sha256,
    public_key_pem,
    verify,
)
from shared.text import check_plain


def test_canonical_form_is_rfc_8785() -> None:
    # Keys sorted by UTF-16 code units (U+1F600 is the surrogates D83D DE00, which sort
    # before U+E000, unlike the code points), no whitespace, minimal escapes, UTF-8.
    value = {"b": [1, True, None], "a": 'é\n\u0001"', "\U0001f600": 1, "\ue000": 2}
    assert canonical(value) == (
        b'{"a":"\xc3\xa9\\n\\u0001\\"","b":[1,true,null],"\xf0\x9f\x98\x80":1,"\xee\x80\x80":2}'
    )
    when = datetime(2026, 12, 6, 22, 0, 0, 911000, tzinfo=UTC)
    assert canonical({"t": when}) == b'{"t":"2026-12-06T22:00:00.911Z"}'


def test_manifest_digest_covers_members_in_order() -> None:
    one = [{"path": "/a", "sha256": "00"}, {"path": "/b", "sha256": "11"}]
    digest = manifest_sha256("c1", one, False)
    assert (
        digest
        == hashlib.sha256(
            b'{"carve_id":"c1","members":[{"path":"/a","sha256":"00"},'
            b'{"path":"/b","sha256":"11"}],"truncated":false}'
        ).hexdigest()
    )
    assert manifest_sha256("c1", list(reversed(one)), False) != digest
    assert manifest_sha256("c1", one, True) != digest


def _signed(key: Ed25519PrivateKey, version: int = 1) -> dict[str, Any]:
    record = {
        "format": FORMAT,
        "signed_with": {"key": "k", "version": version, "algorithm": "ed25519"},
        "archive": {"sha256": "ab" * 32, "size": 10},
    }
    value = base64.b64encode(key.sign(canonical(record))).decode()
    return {"record": record, "signature": {"algorithm": "ed25519", "value": value}}


def _keys_json(*keys: tuple[int, Ed25519PrivateKey]) -> str:
    rows = []
    for version, key in keys:
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        pem = public_key_pem(base64.b64encode(raw).decode())
        rows.append({"version": version, "public_key_pem": pem})
    return json.dumps({"keys": rows})


def test_verify_offline_by_version_and_refusals() -> None:
    v1, v2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = load_keys(_keys_json((1, v1), (2, v2)))
    old, new = _signed(v1, 1), _signed(v2, 2)
    assert verify(old, keys)["signed_with"]["version"] == 1
    verify(new, keys)
    with pytest.raises(CustodyError, match="no public key for version 2"):
        verify(new, load_keys(_keys_json((1, v1))))
    forged = _signed(v2, 1)  # claims version 1, signed by another key
    with pytest.raises(CustodyError, match="does not match"):
        verify(forged, keys)
    bad_shapes: list[Any] = [
        [],
        {"record": old["record"]},
        {**old, "extra": 1},
        {"record": {**old["record"], "format": "x"}, "signature": old["signature"]},
        {"record": old["record"], "signature": {**old["signature"], "algorithm": "rsa"}},
        {"record": old["record"], "signature": {"algorithm": "ed25519", "value": "!!"}},
    ]
    for bad in bad_shapes:
        with pytest.raises(CustodyError):
            verify(bad, keys)
    archive_matches(old["record"], "ab" * 32, 10)
    with pytest.raises(CustodyError, match="11 bytes, the record says 10"):
        archive_matches(old["record"], "ab" * 32, 11)


def test_key_files_that_are_neither_pem_nor_keys_json_are_refused() -> None:
    for text in ("", "{}", "not a key", '{"keys": [{"version": 1}]}'):
        with pytest.raises(CustodyError):
            load_keys(text)


@pytest.mark.parametrize(
    "text", ["", "  ", "a\tb", "a\nb", "a\x7fb", "a\x85b", "\u202eevil", "z\u200bw", "a\u2028b"]
)
def test_plain_text_refuses_control_and_format_characters(text: str) -> None:
    with pytest.raises(ValueError):
        check_plain(text)


def test_plain_text_keeps_what_people_type() -> None:
    assert check_plain("  Prüfung für Fall 7 \u2013 ok ✓ ") == "Prüfung für Fall 7 \u2013 ok ✓"
