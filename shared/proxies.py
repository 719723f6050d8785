"""Trusted reverse proxies: whose forwarded headers a service believes.

Both HTTP services sit behind NGINX or an ingress controller. What those add
to a request (``X-Forwarded-For``, the verified client certificate) is only
believed when the TCP peer is one of ``CARVE_TRUSTED_PROXIES``; from anyone
else the same headers are attacker text and ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from aiohttp import web

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: str) -> tuple[Network, ...]:
    """Comma-separated addresses or CIDRs; ValueError names a bad entry."""
    items = filter(None, (v.strip() for v in value.split(",")))
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def within(address: str | None, networks: Iterable[Network]) -> bool:
    """True when ``address`` is an IP address inside one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The peer, or, behind trusted proxies, the first X-Forwarded-For hop that is not one."""
    peer = request.remote or ""
    if not within(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not within(hop, trusted):
            return hop
    return hops[0] if hops else peer
