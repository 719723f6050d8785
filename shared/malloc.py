"""glibc's malloc, set for a service that allocates and frees chunk-sized buffers all day.

glibc maps buffers above its mmap threshold with ``mmap`` and gives the free top of its heap
back to the kernel once it exceeds the trim threshold. Both thresholds start small (128 KiB)
and follow the largest buffer freed so far, so in the assembler and the download (1 MiB
chunks, a few MiB of them per MongoDB round trip) the trim threshold settles near two chunks
and the top of the heap moves down and up again by a chunk a window (``brk`` in strace):
every page of those chunks is then a fresh page, which the kernel maps and zeroes on first
touch. With encryption on, one more chunk-sized buffer a chunk (the sealed form, the opened
plaintext) tips it over: ~270 page faults per MiB in the download against ~60 with it off,
costing several times what AES-GCM itself does (``python -m bench.encryption`` shows faults
per MiB beside CPU).

``tune()`` fixes both thresholds at start-up: buffers up to ``MMAP_THRESHOLD`` come from the
heap, and up to ``TRIM_THRESHOLD`` of free heap stays mapped for the next window. The price
is that much memory kept after a burst (resident, reused, not leaked). glibc only (Debian
images; anything else: nothing done), and not when the operator set malloc's own variables
(``MALLOC_*_`` or ``GLIBC_TUNABLES=glibc.malloc.*``), which then win.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Above the largest chunk (8 MiB blocks, sealed) and the largest MongoDB round trip of chunks
# (batch_bytes, 8 MiB by default) a service allocates at once; glibc caps it at 32 MiB.
MMAP_THRESHOLD = 32 * MiB
TRIM_THRESHOLD = 64 * MiB
# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_OPERATOR_SET = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune() -> bool:
    """Fix glibc's trim and mmap thresholds (see the module's doc); True when done."""
    if platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _OPERATOR_SET) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        log.info("malloc thresholds left as the environment sets them")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt answers 1 on success, 0 on a value it refuses.
    mmap_set: bool = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_set: bool = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_set and trim_set
