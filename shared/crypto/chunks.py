"""The sealed chunk format: pure functions, no I/O.

A sealed chunk's ``data`` (the GridFS chunk field) is::

    version (1 byte, 0x01) | nonce (12 bytes) | AES-256-GCM ciphertext | tag (16 bytes)

so it is exactly ``OVERHEAD`` bytes longer than its plaintext. The associated data binds the
chunk to its place: the format version, the carve id and the chunk number. A chunk moved to
another position or another carve, or altered in any bit, fails authentication.

Nonces are 96 random bits from the OS for every encryption, never derived from the chunk
number: a hostile host may send block n twice with different bytes and two assemblers may
each encrypt their copy before the unique index keeps one, so a nonce fixed by n would
encrypt two plaintexts under one (key, nonce). With random nonces the number of encryptions
under one key is what bounds the risk: a carve's key encrypts each of its chunks once per
write attempt (at most 2^24 chunks for the largest carve, a few times over with redelivery),
far below the 2^32 NIST SP 800-38D allows for random nonces; the chance that two of them
collide is below 2^-48.

Sealing writes version, nonce, ciphertext and tag into one scratch buffer (AESGCM's
``encrypt_into``, per thread, kept and reused) and copies that once into the stored bytes:
``encrypt`` and then concatenating would allocate two fresh chunk-sized buffers a chunk, and
with 1 MiB chunks fresh memory (page faults) costs more than AES itself. Opening reads any
buffer (a memoryview into a MongoDB reply will do) and returns new bytes only once the tag
has authenticated: ``decrypt`` raises before it hands anything out. (Not ``decrypt_into``:
with cryptography 50 it leaves the unauthenticated plaintext in the caller's buffer when
the tag fails.)
"""

from __future__ import annotations

import os
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.utils import Buffer

from shared.errors import CorruptArchive

VERSION = 1
_VERSION_BYTE = bytes([VERSION])
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES
KEY_BYTES = 32
_AAD_PREFIX = b"osquery-carve-chunk\x00"


_HEADER = 1 + NONCE_BYTES  # version and nonce, before the ciphertext


class _Scratch(threading.local):
    """Each thread's sealing buffer: as large as the largest chunk it sealed, and kept."""

    def __init__(self) -> None:
        self.buf = bytearray()  # per thread: __init__ runs again in each thread


_scratch = _Scratch()


class ChunkIntegrityError(CorruptArchive):
    """A stored chunk failed authentication: altered, moved, or sealed under another key.
    Never served; the download answers 500 ``integrity_error`` and counts it."""


def associated_data(carve_id: str, n: int) -> bytes:
    """What binds a sealed chunk to its carve and position (and to this format)."""
    return _AAD_PREFIX + _VERSION_BYTE + n.to_bytes(8, "big") + carve_id.encode("ascii")


def new_data_key() -> bytes:
    """A random 256-bit key (tests and benchmarks; services get theirs from Transit)."""
    return AESGCM.generate_key(bit_length=256)


class ChunkCipher:
    """AES-256-GCM over one carve's chunks, under that carve's data key."""

    __slots__ = ("_aead", "carve_id")

    def __init__(self, carve_id: str, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("a data key is 32 bytes")
        self.carve_id = carve_id
        self._aead = AESGCM(key)

    def seal(self, n: int, plaintext: Buffer) -> bytes:
        """Chunk ``n``'s stored form."""
        nonce = os.urandom(NONCE_BYTES)
        size = _HEADER + memoryview(plaintext).nbytes + TAG_BYTES
        if len(_scratch.buf) < size:
            _scratch.buf = bytearray(size)  # replaced, never resized: no view is ever stale
        out = memoryview(_scratch.buf)[:size]
        out[0] = VERSION
        out[1:_HEADER] = nonce
        self._aead.encrypt_into(nonce, plaintext, associated_data(self.carve_id, n), out[_HEADER:])
        return out.tobytes()

    def open(self, n: int, stored: Buffer) -> bytes:
        """Chunk ``n``'s plaintext; ChunkIntegrityError when it does not authenticate."""
        if len(stored) < OVERHEAD or stored[0] != VERSION:
            raise ChunkIntegrityError(f"chunk {n} is not a sealed chunk of format {VERSION}")
        view = memoryview(stored)
        try:
            return self._aead.decrypt(
                view[1 : 1 + NONCE_BYTES], view[1 + NONCE_BYTES :],
                associated_data(self.carve_id, n),
            )  # fmt: skip
        except InvalidTag:
            raise ChunkIntegrityError(f"chunk {n} failed authentication") from None
