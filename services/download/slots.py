"""A cap on downloads streaming at once: each holds about a chunk of memory and a socket."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from shared.errors import Unavailable


class StreamSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """A slot for one stream, or Unavailable (503, Retry-After) when all are taken."""
        if self.used >= self.limit:
            raise Unavailable("download", f"{self.limit} downloads already streaming")
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1
