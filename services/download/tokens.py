"""Who is asking: a Vault token, checked for the download policy, cached briefly.

The cache is keyed by a SHA-256 of the token (never by its accessor, which is
not secret) and holds both answers, "this identity" and "unknown token", for
``CARVE_VAULT_CACHE_TTL`` seconds. Concurrent requests with the same token
share one lookup. Vault being unreachable is never cached.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
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

    @property
    def share_key(self) -> str:
        """Whose share of the workers and streams a request uses: the Vault entity (all its
        tokens together), or the token itself when it has none (a token-store token)."""
        return self.entity_id or self.accessor

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
# Vault tokens are printable ASCII without spaces (hvs./s./b. prefixes, base62, dots).
_TOKEN = re.compile(r"[\x21-\x7e]{1,1024}")
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
        self._inflight: dict[bytes, asyncio.Task[_Answer]] = {}

    async def authenticate(self, token: str | None) -> Identity:
        """The token's identity; Unauthorized when there is none or Vault does not know it."""
        if not token:
            self._metrics.auth_failures.labels("missing").inc()
            raise Unauthorized("a Vault token is required (X-Vault-Token or Authorization: Bearer)")
        if not _TOKEN.fullmatch(token):
            # Not something Vault issues: refused without asking it (and never echoed).
            self._metrics.auth_failures.labels("invalid").inc()
            raise Unauthorized("the Vault token is malformed")
        answer = await self._answer(hashlib.sha256(token.encode()).digest(), token)
        if isinstance(answer, Identity):
            return answer
        self._metrics.auth_failures.labels("invalid").inc()
        raise Unauthorized("the Vault token is unknown, expired or revoked")

    def forget(self, token: str) -> None:
        """Drop a token's cached answer (it was just revoked: it must stop working here now)."""
        if self._cache is not None:
            self._cache.pop(hashlib.sha256(token.encode()).digest(), None)

    def require_policy(self, identity: Identity, policy: str | None = None) -> None:
        wanted = policy or self.policy
        if wanted not in identity.policies:
            self._metrics.auth_failures.labels("policy").inc()
            raise Forbidden(f"the Vault token does not carry the policy {wanted!r}")

    async def _answer(self, key: bytes, token: str) -> _Answer:
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return hit
        task = self._inflight.get(key)
        if task is None:
            # Its own task: a cancelled request does not cancel the others waiting on it.
            task = asyncio.create_task(self._ask_vault(token))
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._settle, key))
        return await asyncio.shield(task)

    def _settle(self, key: bytes, task: asyncio.Task[_Answer]) -> None:
        del self._inflight[key]
        if task.cancelled() or task.exception() is not None:
            return  # outages are not cached (the exception reaches every waiter)
        if self._cache is not None:
            self._cache[key] = task.result()

    async def _ask_vault(self, token: str) -> _Answer:
        started = time.monotonic()
        try:
            data = await self._lookup.lookup_self(token)
        except InvalidToken:
            return _UNKNOWN
        finally:
            self._metrics.vault_latency.observe(time.monotonic() - started)
        return Identity.from_lookup(data)
