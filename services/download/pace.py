"""The slowest a download may go: a client that reads too slowly is cut off.

Without a floor, a client that reads a few bytes now and then keeps its stream slot (and a
socket, and a buffered piece) for as long as it likes: 64 such connections took every slot.
A stream must move at least ``min_rate`` bytes a second, judged over each ``window`` seconds
from its first byte: a watch on the event loop looks, at the end of every window, how many
bytes the client acknowledged in it (queued, less the transport's buffer, less the socket's
unacknowledged bytes: a piece half taken counts for its half), and resets the connection when
they fall short of ``min_rate * window`` (``cut_off``: a plain close would wait for the
client to read what is buffered). A client that stops reading altogether is also cut after
``write_timeout``, whatever the rate. Only the client's own receive buffer can make a
window look faster than the client reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import Iterator

from aiohttp import web

from services.download import keys
from services.download.audit import AUDIT


class TooSlow(ConnectionResetError):
    """The client read slower than the floor, or not at all: its connection was reset."""


def cut_off(request: web.Request) -> None:
    """Drop the connection now, with a reset: closing would wait for the client to read what
    is buffered, and even a plain close of the socket leaves the kernel sending it
    (megabytes, at the client's pace) to a client that has shown it does not read."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _unacknowledged(transport: asyncio.BaseTransport) -> int:
    """Bytes in the socket's send queue not yet acknowledged by the client (Linux's
    SIOCOUTQ); 0 where the kernel cannot say."""
    sock = transport.get_extra_info("socket")
    if sock is None or not hasattr(termios, "TIOCOUTQ"):
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


class Pace:
    """The floor's watch over one response (see the module's docstring)."""

    def __init__(
        self, request: web.Request, min_rate: int, window: float, write_timeout: float
    ) -> None:
        self.request = request
        self.min_rate = min_rate  # bytes a second; 0: no floor, only write_timeout
        self.window = window
        self.write_timeout = write_timeout
        self.cut = False
        self._queued = 0
        self._mark = 0  # bytes sent when the current window started
        self._timer: asyncio.TimerHandle | None = None
        self._done = False

    def queue(self, count: int) -> None:
        """``count`` more bytes handed to the response; the first ones start the watch."""
        self._queued += count
        if self._timer is None and self.min_rate and not self._done:
            self._timer = asyncio.get_running_loop().call_later(self.window, self._check)

    def sent(self) -> int:
        """Bytes the client has taken: queued, less what the transport still buffers, less
        what the kernel holds unacknowledged (its send buffer grows to MiBs and takes more
        only in large gulps, so without it a slow client would look stalled)."""
        transport = self.request.transport
        if transport is None:
            return self._queued
        return self._queued - transport.get_write_buffer_size() - _unacknowledged(transport)

    def _check(self) -> None:
        sent = self.sent()
        if sent - self._mark < self.min_rate * self.window:
            self.cut = True
            self.request[AUDIT].code = "too_slow"
            self.request.app[keys.METRICS].too_slow.inc()
            cut_off(self.request)
            return
        self._mark = sent
        self._timer = asyncio.get_running_loop().call_later(self.window, self._check)

    def stop(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()


@contextlib.contextmanager
def paced(request: web.Request) -> Iterator[Pace]:
    """The floor for one response, from the settings (CARVE_DOWNLOAD_MIN_RATE and friends),
    watched until the block ends."""
    settings = request.app[keys.SETTINGS]
    pace = Pace(
        request,
        settings.download_min_rate,
        settings.download_rate_window,
        settings.download_write_timeout,
    )
    try:
        yield pace
    finally:
        pace.stop()


async def write_piece(
    request: web.Request, response: web.StreamResponse, piece: bytes | memoryview, pace: Pace
) -> None:
    """Write ``piece``; TooSlow when the floor's watch cut the connection meanwhile, or when
    the client took more than ``write_timeout`` to take it."""
    pace.queue(len(piece))
    # asyncio.timeout, not wait_for: no extra task per piece (measured: wait_for cost 10 %).
    try:
        async with asyncio.timeout(pace.write_timeout):
            await response.write(piece)
    except TimeoutError as exc:
        request[AUDIT].code = "too_slow"
        request.app[keys.METRICS].too_slow.inc()
        cut_off(request)
        raise TooSlow(f"the client took no data for {pace.write_timeout} s") from exc
    except OSError:
        if pace.cut:
            raise TooSlow(f"the client read slower than {pace.min_rate} bytes/s") from None
        raise
    if pace.cut:  # the reset woke the write up as if it had gone through
        raise TooSlow(f"the client read slower than {pace.min_rate} bytes/s")
