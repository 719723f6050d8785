"""Who may try a password now: the console's login limits, built so nobody can lock another out.

A limit per user name alone (the first version) let anyone deny a named user: ten wrong
passwords a minute for ``admin`` from anywhere, and the right one from ``admin``'s own desk was
refused. These limits never refuse an address for what other addresses did, except to take
away the retries of addresses that have already failed:

- **per address**: at most ``per_address`` attempts (any user name, right or wrong) in any
  60 s. This bounds one machine's guessing, and a credential-stuffing run from one address.
- **per user name, under attack**: when a user name collects ``user_failures`` failures in
  60 s (from all addresses), it is *guarded*: an address that has already failed for that
  name in the last 60 s is refused until that failure is a minute old. An address that has
  not failed for it (the user at their own desk) still tries, and the right password gets
  in. A distributed guesser gets one guess per address per minute instead of
  ``per_address``.
- **everywhere, under attack**: when this replica sees ``total_failures`` failures in 60 s
  (credential stuffing over many names), every address that failed in the last 60 s gets
  no further try until that failure is a minute old; clean addresses still try.

Addresses are the client as ``shared.proxies.client_address`` finds it (behind a trusted
proxy, its X-Forwarded-For); an IPv6 address counts as its /64, which one host usually holds
whole. Counts live in this replica's memory, bounded by ``max_keys`` per table (least
recently used go first). Limitations: clients behind one NAT share their address's budget,
and a guarded user who mistypes waits out the minute.
"""

from __future__ import annotations

import ipaddress
import time

from aiohttp import web
from cachetools import TTLCache

WINDOW = 60.0


class _Recent:
    """Per key, the times of its events in the last WINDOW seconds (at most ``cap`` kept)."""

    def __init__(self, cap: int, max_keys: int) -> None:
        self.cap = cap
        self._times: TTLCache[str, list[float]] = TTLCache(max_keys, WINDOW)

    def recent(self, key: str, now: float) -> list[float]:
        return [t for t in self._times.get(key, []) if now - t < WINDOW]

    def wait(self, key: str, now: float, limit: int) -> float:
        """0 while ``key`` has fewer than ``limit`` events in the window; else the seconds until
        one of them is old enough that it has."""
        times = self.recent(key, now)
        if len(times) < limit:
            return 0.0
        return max(1.0, WINDOW - (now - times[len(times) - limit]))

    def add(self, key: str, now: float) -> None:
        # Re-set: the entry lives WINDOW seconds past its last event.
        self._times[key] = [*self.recent(key, now), now][-self.cap :]


def address_key(address: str) -> str:
    """The address a limit counts: an IPv6 address as its /64, anything else as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginLimiter:
    """The three limits of the module's docstring, for one replica."""

    def __init__(
        self,
        per_address: int,
        user_failures: int,
        total_failures: int,
        max_keys: int = 100_000,
    ) -> None:
        self.per_address = per_address
        self.user_failures = user_failures
        self.total_failures = total_failures
        self._attempts = _Recent(per_address, max_keys)
        self._pair_failures = _Recent(1, max_keys)  # only the latest counts
        self._address_failures = _Recent(1, max_keys)
        self._user_failures = _Recent(user_failures, max_keys)
        self._all_failures = _Recent(total_failures, 1)

    def attempt(self, address: str, username: str | None = None, now: float | None = None) -> float:
        """0 when ``address`` may try (the try is counted); else the seconds to wait."""
        now = time.monotonic() if now is None else now
        where = address_key(address)
        waits = [self._attempts.wait(where, now, self.per_address)]
        if self._all_failures.wait("", now, self.total_failures):
            waits.append(self._address_failures.wait(where, now, 1))
        if username is not None:
            user = username.lower()
            if self._user_failures.wait(user, now, self.user_failures):
                waits.append(self._pair_failures.wait(f"{where} {user}", now, 1))
        wait = max(waits)
        if not wait:
            self._attempts.add(where, now)
        return wait

    def failed(self, address: str, username: str, now: float | None = None) -> None:
        """Count a refused password of ``username`` from ``address``."""
        now = time.monotonic() if now is None else now
        where, user = address_key(address), username.lower()
        self._pair_failures.add(f"{where} {user}", now)
        self._address_failures.add(where, now)
        self._user_failures.add(user, now)
        self._all_failures.add("", now)

    def guarded(self, username: str, now: float | None = None) -> bool:
        """Whether ``username`` is under attack (for the metrics and the tests)."""
        now = time.monotonic() if now is None else now
        return bool(self._user_failures.wait(username.lower(), now, self.user_failures))


LIMITER = web.AppKey("login_limiter", LoginLimiter)
