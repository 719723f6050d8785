"""The sealed chunk format and the key cache: pure logic (a fake Transit, no Vault)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.assembler.settings import AssemblerSettings
from shared.crypto.chunks import (
    NONCE_BYTES,
    OVERHEAD,
    ChunkCipher,
    ChunkIntegrityError,
    associated_data,
    new_data_key,
)
from shared.crypto.context import keyring_ctx
from shared.crypto.keys import KeyRing
from shared.crypto.transit import KeyShredded
from shared.errors import CorruptArchive
from shared.settings import EncryptionSettings


def test_a_sealed_chunk_opens_only_at_its_place_under_its_key() -> None:
    key = new_data_key()
    cipher = ChunkCipher("carve-a", key)
    plain = b"evidence" * 1000
    sealed = cipher.seal(7, plain)
    assert len(sealed) == len(plain) + OVERHEAD and sealed[0] == 1
    assert plain[:16] not in sealed
    assert cipher.open(7, sealed) == plain
    with pytest.raises(ChunkIntegrityError, match="chunk 8 failed"):
        cipher.open(8, sealed)  # moved to another position
    with pytest.raises(ChunkIntegrityError):
        ChunkCipher("carve-b", key).open(7, sealed)  # moved to another carve
    with pytest.raises(ChunkIntegrityError):
        ChunkCipher("carve-a", new_data_key()).open(7, sealed)  # another key
    for at in (0, 5, len(sealed) // 2, len(sealed) - 1):
        flipped = bytearray(sealed)
        flipped[at] ^= 0x01
        with pytest.raises(ChunkIntegrityError):
            cipher.open(7, bytes(flipped))
    assert issubclass(ChunkIntegrityError, CorruptArchive)  # never served, never finalized


def test_the_stored_format_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """version 1 | nonce | AES-256-GCM(key, nonce, plain, AAD) | tag, AAD = prefix, version,
    chunk number (8 bytes, big-endian), carve id: chunks stored by any earlier release open."""
    carve_id, key = "6f1c2a9e-0d4b-4f8e-9a57-3c2b1d0e9f88", bytes(range(32))
    nonce = bytes(range(100, 100 + NONCE_BYTES))
    monkeypatch.setattr("shared.crypto.chunks.os.urandom", lambda n: nonce[:n])
    cipher = ChunkCipher(carve_id, key)
    stored = cipher.seal(5, b"evidence of a carve")
    assert stored.hex() == (
        "016465666768696a6b6c6d6e6f2d6db7021c8735fb1e0d39c8bb45099c30b46318beb368c09eb40e15"
        "0e77ea4262923d"
    )
    aad = b"osquery-carve-chunk\x00\x01" + (5).to_bytes(8, "big") + carve_id.encode()
    for plain in (b"", b"x", bytes(range(256)) * 4099):  # small, then larger than before
        stored = cipher.seal(5, plain)
        assert stored == b"\x01" + nonce + AESGCM(key).encrypt(nonce, plain, aad)
        assert cipher.open(5, stored) == cipher.open(5, memoryview(stored)) == plain
    assert cipher.seal(5, memoryview(b"abc")) == cipher.seal(5, bytearray(b"abc"))


def test_a_chunk_that_fails_authentication_yields_no_byte() -> None:
    cipher = ChunkCipher("carve-a", new_data_key())
    stored = bytearray(cipher.seal(0, b"secret" * 100))
    stored[-1] ^= 1
    with pytest.raises(ChunkIntegrityError, match="failed authentication"):
        cipher.open(0, memoryview(stored))


def test_the_same_block_sealed_twice_never_reuses_a_nonce() -> None:
    cipher = ChunkCipher("carve-a", new_data_key())
    nonces = {cipher.seal(3, b"same bytes")[1 : 1 + NONCE_BYTES] for _ in range(2000)}
    assert len(nonces) == 2000


def test_associated_data_tells_carves_and_positions_apart() -> None:
    seen = {associated_data(c, n) for c in ("a", "ab", "b") for n in (0, 1, 256)}
    assert len(seen) == 9
    assert associated_data("a", 1) != associated_data("a", 256)


def test_short_or_foreign_data_is_an_integrity_error() -> None:
    cipher = ChunkCipher("carve-a", new_data_key())
    with pytest.raises(ChunkIntegrityError):
        cipher.open(0, b"\x01" + b"\0" * 10)
    with pytest.raises(ChunkIntegrityError, match="not a sealed chunk"):
        cipher.open(0, b"\x02" + b"\0" * 40)
    with pytest.raises(ValueError):
        ChunkCipher("carve-a", b"short")


class FakeTransit:
    """Counts unwraps; answers after a pause so concurrent askers overlap."""

    def __init__(self) -> None:
        self.unwraps = 0
        self.key = new_data_key()

    def key_name(self, carve_id: str) -> str:
        return f"k-{carve_id}"

    async def unwrap(self, name: str, wrapped: str) -> bytes:
        self.unwraps += 1
        await asyncio.sleep(0.01)
        return self.key


def ring(transit: FakeTransit, clock: list[float], **settings: Any) -> KeyRing:
    return KeyRing(
        defaultdict(object),  # type: ignore[arg-type]  # not touched when reading
        "archives",
        transit,  # type: ignore[arg-type]
        EncryptionSettings(**settings),
        clock=lambda: clock[0],
    )


def doc(carve_id: str) -> dict[str, Any]:
    return {"_id": carve_id, "encryption": {"key": f"k-{carve_id}", "wrapped": "vault:v1:x"}}


async def test_one_unwrap_per_carve_however_many_ask_then_cached_until_the_ttl() -> None:
    transit, clock = FakeTransit(), [0.0]
    keys = ring(transit, clock, key_cache_ttl=10)
    ciphers = await asyncio.gather(*(keys.for_reading(doc("a")) for _ in range(20)))
    assert transit.unwraps == 1 and len({id(c) for c in ciphers}) == 1
    clock[0] = 9.9
    await keys.for_reading(doc("a"))
    assert transit.unwraps == 1
    clock[0] = 10.0
    await keys.for_reading(doc("a"))
    assert transit.unwraps == 2


async def test_the_cache_is_bounded_and_forgets_the_least_recently_used() -> None:
    transit, clock = FakeTransit(), [0.0]
    keys = ring(transit, clock, key_cache_size=2)
    for carve_id in ("a", "b", "a", "c"):  # "b" is the least recently used when "c" comes
        await keys.for_reading(doc(carve_id))
    assert transit.unwraps == 3
    await keys.for_reading(doc("a"))
    assert transit.unwraps == 3
    await keys.for_reading(doc("b"))
    assert transit.unwraps == 4


async def test_clear_and_shredded_carves() -> None:
    transit, clock = FakeTransit(), [0.0]
    keys = ring(transit, clock)
    assert await keys.for_reading({"_id": "clear"}) is None
    with pytest.raises(KeyShredded):
        await keys.for_reading({"_id": "x", "encryption": {"key": "k-x", "shredded_at": 1}})
    assert transit.unwraps == 0


def test_encryption_without_a_vault_identity_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="CARVE_VAULT_ROLE_ID"):
        keyring_ctx(AssemblerSettings(encryption="vault-transit"))
    keyring_ctx(AssemblerSettings(encryption="vault-transit", vault_role_id="carve-assembler"))
    keyring_ctx(AssemblerSettings())  # off: no identity needed
