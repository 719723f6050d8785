"""Who is asking: a Vault token, checked for the download policy, cached briefly.

The cache is keyed by a SHA-256 of the token (never by its accessor, which is
not secret) and holds both answers, "this identity" and "unknown token", for
``CARVE_VAULT_CACHE_TTL`` seconds. Concurrent requests with the same token
share one lookup. Vault being unreachable is never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

from cachetools import TTLCache

from services.download.metrics import DownloadMetrics
from shared.errors import Forbidden, Unauthorized
from shared.vault import InvalidToken


@dataclass(frozen=True)
class Identity:
    """The responder behind a token, as Vault describes it (all of it fit for the audit log)."""

    display_name: str
    entity_id: str
    accessor: str
    policies: frozenset[str]

    @classmethod
    def from_lookup(cls, data: dict[str, Any]) -> Identity:
        policies = [*(data.get("policies") or []), *(data.get("identity_policies") or [])]
        return cls(
            display_name=str(data.get("display_name") or ""),
            entity_id=str(data.get("entity_id") or ""),
            accessor=str(data.get("accessor") or ""),
            policies=frozenset(str(p) for p in policies),
        )


class TokenLookup(Protocol):
    async def lookup_self(self, token: str) -> dict[str, Any]: ...


_UNKNOWN = "unknown-token"
_Answer = Identity | str


class Authorizer:
    """Turns a token into an Identity holding ``policy``, or raises Unauthorized/Forbidden."""

    def __init__(
        self,
        lookup: TokenLookup,
        policy: str,
        *,
        cache_ttl: float,
        metrics: DownloadMetrics,
        max_entries: int = 10_000,
    ) -> None:
        self._lookup = lookup
        self.policy = policy
        self._metrics = metrics
        self._cache: TTLCache[bytes, _Answer] | None = (
            TTLCache(max_entries, cache_ttl) if cache_ttl > 0 else None
        )
        self._inflight: dict[bytes, asyncio.Future[_Answer]] = {}

    async def authenticate(self, token: str | None) -> Identity:
        """The token's identity; Unauthorized when there is none or Vault does not know it."""
        if not token:
            self._metrics.auth_failures.labels("missing").inc()
            raise Unauthorized("a Vault token is required (X-Vault-Token or Authorization: Bearer)")
        answer = await self._answer(hashlib.sha256(token.encode()).digest(), token)
        if isinstance(answer, Identity):
            return answer
        self._metrics.auth_failures.labels("invalid").inc()
        raise Unauthorized("the Vault token is unknown, expired or revoked")

    def require_policy(self, identity: Identity, policy: str | None = None) -> None:
        wanted = policy or self.policy
        if wanted not in identity.policies:
            self._metrics.auth_failures.labels("policy").inc()
            raise Forbidden(f"the Vault token does not carry the policy {wanted!r}")

    async def _answer(self, key: bytes, token: str) -> _Answer:
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return hit
        if (pending := self._inflight.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._ask_vault(token)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody shared it
            raise
        finally:
            del self._inflight[key]
        future.set_result(answer)
        if self._cache is not None:
            self._cache[key] = answer
        return answer

    async def _ask_vault(self, token: str) -> _Answer:
        started = time.monotonic()
        try:
            data = await self._lookup.lookup_self(token)
        except InvalidToken:
            return _UNKNOWN
        finally:
            self._metrics.vault_latency.observe(time.monotonic() - started)
        return Identity.from_lookup(data)
