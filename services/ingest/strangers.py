"""Session ids nobody issued, per device: a host guessing them stops costing lookups.

A block naming a session this process does not hold costs a Redis round trip and an
indexed MongoDB query before it can be refused (the session may be one Redis lost, or
one another replica cached). A hostile enrolled host can send such blocks without end.
So this process counts, per verified device certificate, the blocks refused as an
unknown session; past ``allowed`` of them within ``window`` seconds (the window starts
again with each refusal, so a host that keeps guessing stays refused), that device's
blocks for sessions not in the cache are refused the same way, without a lookup.

Only a device certificate a trusted proxy verified counts as who sent it: a node key
header is whatever the host writes (a new one per request would dodge any count), and
hosts behind one address (NAT) are many hosts. Without a verified certificate every
unknown session is looked up, as before. An honest host never gets here: osquery stops
a carve at the first refused block.
"""

from __future__ import annotations

from cachetools import TTLCache


class UnknownSessions:
    def __init__(self, allowed: int, *, window: float = 60.0, devices: int = 65_536) -> None:
        self._allowed = allowed
        self._counts: TTLCache[str, int] = TTLCache(maxsize=devices, ttl=window)

    def spent(self, device: str) -> bool:
        """Whether this device's blocks for sessions not in the cache are refused unlooked."""
        return self._counts.get(device, 0) >= self._allowed

    def count(self, device: str) -> None:
        """One more block of this device was refused as naming an unknown session."""
        self._counts[device] = self._counts.get(device, 0) + 1
