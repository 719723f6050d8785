"""A session's re-sent blocks: published again up to a budget, then looked up first.

osquery sends a block again only when it lost the reply, so an honest carve has a
few duplicates. A block is normally published without asking Redis whether it is
stored already (that would cost every block a round trip); a duplicate is then
stored once and answered as usual. A hostile host could re-send a block of its
carve for ever, each time through RabbitMQ, an assembler and MongoDB (an 8 MiB
block each time). So this process counts, per session, the blocks that turned out
to be duplicates; past ``allowed`` of them, a block of that session is first looked
up in the session's bitmap, and one already confirmed is answered success without
being published (the answer a duplicate always gets). The count is per process:
with N ingest replicas a session gets at most N x ``allowed`` duplicates published.
"""

from __future__ import annotations

from cachetools import TTLCache


class DuplicateBudget:
    def __init__(self, allowed: int, *, sessions: int = 65_536, ttl: float = 3600.0) -> None:
        self._allowed = allowed
        # Bounded: the sessions with duplicates lately, not every session ever seen.
        self._counts: TTLCache[str, int] = TTLCache(maxsize=sessions, ttl=ttl)

    def spent(self, session_id: str) -> bool:
        """Whether blocks of this session are to be looked up before they are published."""
        return self._counts.get(session_id, 0) >= self._allowed

    def count(self, session_id: str) -> None:
        """One more block of this session was published and found to be a duplicate."""
        self._counts[session_id] = self._counts.get(session_id, 0) + 1
