"""What a host can make the ingest do for nothing, counted so that it stops paying for it.

Re-sent blocks, per session (``CARVE_MAX_DUPLICATES_PER_SESSION``)
-----------------------------------------------------------------
osquery sends a block again only when it lost the reply, so an honest carve has a
few duplicates. A block is normally published without asking Redis whether it is
stored already (that would cost every block a round trip); a duplicate is then
stored once and answered as usual. A hostile host could re-send a block of its
carve for ever, each time through RabbitMQ, an assembler and MongoDB (an 8 MiB
block each time). So this process counts, per session, the blocks that turned out
to be duplicates; past the setting's number of them, a block of that session is first looked
up in the session's bitmap, and one already confirmed is answered success without
being published (the answer a duplicate always gets). The count is per process:
with N ingest replicas a session gets at most N times that many duplicates published.

Session ids nobody issued, per device (``CARVE_MAX_UNKNOWN_SESSIONS_PER_DEVICE``)
------------------------------------------------------------------------------
A block naming a session this process does not hold costs a Redis round trip and an
indexed MongoDB query before it can be refused (the session may be one Redis lost, or
one another replica cached). A hostile enrolled host can send such blocks without end.
So this process counts, per verified device certificate, the blocks refused for
naming a session id no carve ever had (not those of a carve that ended: osquery 5.21
and older go on sending the rest of such a carve, each block refused); past the
setting's number of them within a minute (the minute starts again with each one
counted), that device's blocks for sessions not in the cache are refused the same way,
without a lookup.

Only a device certificate a trusted proxy verified counts as who sent it: a node key
header is whatever the host writes (a new one per request would dodge any count), and
hosts behind one address (NAT) are many hosts. Without a verified certificate every
unknown session is looked up, as before. An honest host never gets here: it only names
sessions it was given.
"""

from __future__ import annotations

from cachetools import TTLCache


class Tally:
    """Counts per key, each forgotten ``ttl`` seconds after its last count (so a key that
    keeps being counted is never forgotten), at most ``keys`` of them (the least recently
    used go first); ``reached`` once a key's count is ``allowed``."""

    def __init__(self, allowed: int, *, ttl: float, keys: int = 16_384) -> None:
        self._allowed = allowed
        self._counts: TTLCache[str, int] = TTLCache(maxsize=keys, ttl=ttl)

    def reached(self, key: str) -> bool:
        return self._counts.get(key, 0) >= self._allowed

    def count(self, key: str) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1
