"""What one host, and all hosts together, may hold open at once: admission of carve starts.

A host we carve from may be the attacker's, with a valid certificate and node
key. Each start it makes reserves a share of the service: one receiving carve,
its declared bytes, and the Redis memory its session may reach (a bitmap of
one bit per declared block, whatever order the blocks come in: see
``session_bytes``). Admission refuses a start that would take a host, or the
whole fleet, past a configured share, so a flood degrades into clear refusals
and Redis memory stays bounded by the sum of the sessions admitted.

State lives in Redis, shared by every ingest replica, in one atomic script per
start:

(every key below is ``<prefix>{q}:...``: one Redis Cluster slot, see ``QUOTA_TAG``)

* ``q:h:<host>`` sorted set: the host's admitted carve ids, scored by the time
  after which the reservation lapses on its own (a safety net: a carve nobody
  ends still frees its share after the session lifetime);
* ``q:hb:<host>`` hash: carve id -> "declared bytes:session bytes";
* ``q:g`` and ``q:gb`` the same for all hosts, with running totals in
  ``q:gt`` (carves are counted by ZCARD);
* ``q:r:<host>:<minute>``: starts this minute.

A share is given back when its carve stops receiving: explicitly by the
janitor when it fails or sweeps a carve, and lazily by the ingest, which asks
MongoDB which of a host's carves still receive whenever that host is at a
limit (so a carve that completed frees its share for the very next start).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from redis.asyncio import Redis


class Refusal(StrEnum):
    """Why admission refused a start; also the JSON error code and the metric label."""

    HOST_ACTIVE = "host_active_carves"
    HOST_RATE = "host_start_rate"
    HOST_BYTES = "host_inflight_bytes"
    GLOBAL_ACTIVE = "global_active_carves"
    GLOBAL_BYTES = "global_inflight_bytes"
    GLOBAL_SESSIONS = "global_session_memory"
    TAKEN = "carve_id_taken"  # another host holds a share for this carve id


@dataclass(frozen=True)
class Limits:
    host_active: int
    host_starts_per_minute: int
    host_bytes: int
    global_active: int
    global_bytes: int
    global_session_bytes: int
    # A reservation nobody gives back lapses after this long.
    lifetime_seconds: int


def session_bytes(block_count: int) -> int:
    """Redis memory a session can reach at most: its hash, and its bitmap of received blocks
    (one bit per block), which Redis grows by doubling (by 1 MiB past 1 MiB) as the highest
    block id comes in, whatever order the blocks arrive in."""
    bitmap = -(-block_count // 8)
    return 2 * bitmap + 1024


# Every quota key carries the hash tag {q}: the admission script reads a host's keys and the
# fleet-wide ones together, so in a Redis Cluster they must share one slot. The cost: all
# quota state lives on one shard, touched once per carve start and once per carve end,
# never per block (docs/deployment.md, key layout).
QUOTA_TAG = "{q}"


def _keys(prefix: str, host: str) -> list[str]:
    q = prefix + QUOTA_TAG
    return [f"{q}:h:{host}", f"{q}:hb:{host}", f"{q}:g", f"{q}:gb"]


def _totals(prefix: str) -> str:
    return f"{prefix}{QUOTA_TAG}:gt"


def _rate(prefix: str, host: str, minute: int) -> str:
    return f"{prefix}{QUOTA_TAG}:r:{host}:{minute}"


# One reservation out of a set and its hash (and out of the totals, when given); true when
# the set held it. Shared by both scripts below.
_DROP = """
local function drop(z, h, member, totals)
  local held = redis.call('ZREM', z, member) == 1
  if held and totals then
    local v = redis.call('HGET', h, member)
    if v then
      local b, m = string.match(v, '(%d+):(%d+)')
      redis.call('HINCRBY', totals, 'bytes', -tonumber(b))
      redis.call('HINCRBY', totals, 'bits', -tonumber(m))
    end
  end
  redis.call('HDEL', h, member)
  return held
end
"""

# KEYS: host set, host hash, global set, global hash, global totals, rate key.
# ARGV: carve id, declared bytes, bitmap bytes, now ms, deadline ms, the six limits, then 1 to
# count this start against the host's rate (0 for a second try after giving back stale shares).
# Returns "ok", "again" (already admitted: a retried start) or a Refusal value.
_ADMIT = (
    _DROP
    + """
local hz, hh, gz, gh, gt, rate = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, bytes, bits, now, deadline = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5]
local host_active, host_rate, host_bytes = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local g_active, g_bytes, g_bits = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])

-- Lapsed reservations, a bounded number per call.
for _, m in ipairs(redis.call('ZRANGEBYSCORE', hz, '-inf', now, 'LIMIT', 0, 64)) do
  drop(hz, hh, m, nil)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', gz, '-inf', now, 'LIMIT', 0, 64)) do
  drop(gz, gh, m, gt)
end

if redis.call('ZSCORE', hz, id) then return 'again' end
-- Held by another host: the start will be a conflict; never count one carve twice.
if redis.call('ZSCORE', gz, id) then return 'carve_id_taken' end
local starts = tonumber(redis.call('GET', rate) or '0')
if ARGV[12] == '1' then
  starts = redis.call('INCR', rate)
  if starts == 1 then redis.call('EXPIRE', rate, 120) end
end
if starts > host_rate then return 'host_start_rate' end
if redis.call('ZCARD', hz) >= host_active then return 'host_active_carves' end
local held = 0
for _, v in ipairs(redis.call('HVALS', hh)) do
  held = held + tonumber(string.match(v, '(%d+):'))
end
if held + bytes > host_bytes then return 'host_inflight_bytes' end
if redis.call('ZCARD', gz) >= g_active then return 'global_active_carves' end
local totals = redis.call('HMGET', gt, 'bytes', 'bits')
if (tonumber(totals[1]) or 0) + bytes > g_bytes then return 'global_inflight_bytes' end
if (tonumber(totals[2]) or 0) + bits > g_bits then return 'global_session_memory' end

local value = bytes .. ':' .. bits
redis.call('ZADD', hz, deadline, id)
redis.call('HSET', hh, id, value)
redis.call('PEXPIREAT', hz, deadline)
redis.call('PEXPIREAT', hh, deadline)
if redis.call('ZADD', gz, deadline, id) == 1 then
  redis.call('HSET', gh, id, value)
  redis.call('HINCRBY', gt, 'bytes', bytes)
  redis.call('HINCRBY', gt, 'bits', bits)
end
return 'ok'
"""
)

# KEYS: host set, host hash, global set, global hash, global totals. ARGV: the "host not
# known" flag, then carve ids.
# Returns how many of them were held (by the host, or in the totals).
_RELEASE = (
    _DROP
    + """
local hz, hh, gz, gh, gt = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local freed = 0
-- ARGV[1] = '1': the host is not known (older carve documents): drop from the totals anyway.
local anyone = ARGV[1] == '1'
for i = 2, #ARGV do
  local id = ARGV[i]
  -- Only the host that holds a share gives it back, so nobody frees another host's.
  if drop(hz, hh, id, nil) or anyone then
    if drop(gz, gh, id, gt) or not anyone then freed = freed + 1 end
  end
end
return freed
"""
)


class Quotas:
    """Admission of carve starts against per-host and global shares (see the module doc)."""

    def __init__(self, redis: Redis, prefix: str, limits: Limits | None = None) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limits = limits
        self._admit = redis.register_script(_ADMIT)
        self._release = redis.register_script(_RELEASE)

    async def admit(
        self,
        host: str,
        carve_id: str,
        declared_bytes: int,
        block_count: int,
        *,
        again: bool = False,
    ) -> Refusal | None:
        """Reserve a share for a new carve of ``host``; the reason when it does not fit.

        ``again``: a second try of the same start, not counted against the host's rate.
        """
        limits = self._limits
        assert limits is not None, "a Quotas without limits only releases"
        now_ms = int(time.time() * 1000)
        minute = now_ms // 60_000
        keys = [*_keys(self._prefix, host), _totals(self._prefix)]
        keys.append(_rate(self._prefix, host, minute))
        args: list[str | int] = [
            carve_id,
            declared_bytes,
            session_bytes(block_count),
            now_ms,
            now_ms + limits.lifetime_seconds * 1000,
            limits.host_active,
            limits.host_starts_per_minute,
            limits.host_bytes,
            limits.global_active,
            limits.global_bytes,
            limits.global_session_bytes,
            0 if again else 1,
        ]
        answer = await self._admit(keys=keys, args=args)
        answer = answer.decode() if isinstance(answer, bytes) else str(answer)
        return None if answer in ("ok", "again") else Refusal(answer)

    async def release(self, host: str, carve_ids: Iterable[str]) -> int:
        """Give back the shares of carves that stopped receiving; returns how many were held."""
        ids = list(carve_ids)
        if not ids:
            return 0
        keys = [*_keys(self._prefix, host), _totals(self._prefix)]
        return int(await self._release(keys=keys, args=["0" if host else "1", *ids]))

    async def held_by(self, host: str) -> list[tuple[str, float]]:
        """The carve ids ``host`` holds a share for, with when each was admitted (epoch s)."""
        assert self._limits is not None
        key = _keys(self._prefix, host)[0]
        members = cast(
            "list[tuple[Any, Any]]", await self._redis.zrange(key, 0, -1, withscores=True)
        )
        lifetime = self._limits.lifetime_seconds
        return [(_text(m), float(score) / 1000 - lifetime) for m, score in members]

    async def oldest(self, count: int) -> list[str]:
        """The ``count`` oldest reservations of all hosts, as carve ids."""
        members = await self._redis.zrange(_keys(self._prefix, "")[2], 0, count - 1)
        return [_text(m) for m in members]


def _text(member: Any) -> str:
    return member.decode() if isinstance(member, bytes) else str(member)
