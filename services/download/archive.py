"""A carve's archive as bytes: HTTP ranges and chunk streaming from GridFS.

Block ``i`` of a carve is GridFS chunk ``n = i`` and every chunk but the last
is ``block_size`` bytes of plaintext, so any byte range maps to a run of chunks without a
lookup. Chunks are read through ``shared.crypto.reader.CarveReader`` (which opens sealed
ones), fetched a bounded number of bytes per round trip and
handed out one at a time: a download holds about ``batch_bytes`` at most.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from shared.crypto.reader import CarveReader
from shared.errors import ClientError

_RANGE = re.compile(r"bytes=([0-9]{0,19})-([0-9]{0,19})", re.IGNORECASE)
# Largest piece handed to the socket at once.
PIECE_BYTES = 256 * 1024


class RangeNotSatisfiable(ClientError):
    status = 416
    code = "range_not_satisfiable"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """The single byte range asked for, or None for the whole file.

    Syntax that is not one ``bytes=`` range (several ranges, other units,
    garbage) is ignored, as RFC 9110 allows: the whole file is sent. A range
    that starts past the end raises RangeNotSatisfiable.
    """
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix: the last N bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range", size=size)
        return ByteRange(max(0, size - suffix), size - 1)
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, past {size} bytes", size=size)
    return ByteRange(start, end)


async def stream_chunks(
    reader: CarveReader,
    *,
    byte_range: ByteRange,
    batch_bytes: int,
    piece_bytes: int = PIECE_BYTES,
) -> AsyncGenerator[memoryview, None]:
    """The bytes of ``byte_range`` in pieces, checked and (when sealed) decrypted.

    One short query per window of chunks (``batch_bytes`` worth), not one cursor
    over the whole range: nothing stays open on the server while a slow client
    reads (no cursor timeout, no server-side buffering of a whole archive), and
    the next window is fetched only once the last one is written. Only the chunks the
    range touches are read and opened. Pieces are at most ``piece_bytes``, so the
    socket's buffer never holds a whole chunk.
    """
    chunk_size = reader.chunk_size
    first, last = byte_range.start // chunk_size, byte_range.end // chunk_size
    window = max(1, batch_bytes // chunk_size)
    for start in range(first, last + 1, window):
        datas = await reader.window(start, min(start + window, last + 1))
        for n in range(start, start + len(datas)):
            data = memoryview(datas[n - start])
            datas[n - start] = b""  # let each chunk go as soon as it is sent
            lo = byte_range.start - n * chunk_size if n == first else 0
            hi = byte_range.end - n * chunk_size + 1 if n == last else len(data)
            for at in range(lo, hi, piece_bytes):
                yield data[at : min(at + piece_bytes, hi)]
            del data
