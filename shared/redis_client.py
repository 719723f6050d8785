"""The Redis client of a service: one server, a Sentinel-watched primary, or a Redis Cluster.

* ``CARVE_REDIS_URL`` alone: one server (or a managed Redis behind one address).
* ``CARVE_REDIS_SENTINELS=host:port,host:port,...`` and ``CARVE_REDIS_SENTINEL_MASTER``: the
  primary the Sentinels name, found again after a failover. The URL still gives the
  password, user and database of the data nodes (its host is not used).
* ``CARVE_REDIS_CLUSTER=1``: a Redis Cluster; ``CARVE_REDIS_URL`` names one or more of its
  nodes (comma-separated URLs) to discover it from.

Every Lua script the services run touches keys of one hash slot only (``shared.keyspace``),
which is what a cluster requires. The rest of the code sees one ``Redis``-like client; the
few places that must know a cluster (scanning every primary, splitting a batch by slot)
ask ``is_cluster``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from shared.settings import RedisSettings

# What a Redis outage or a failover in progress looks like to a caller: the server is
# unreachable or slow, Sentinel names no primary yet, the primary was just demoted (READONLY),
# or the cluster has a slot without a primary for a moment (CLUSTERDOWN is a ClusterError;
# a slot no node serves yet, redis-py's SlotNotCoveredError, is not a RedisError at all).
# Callers turn these into "try again" (503 to a host), never into "stored" nor "failed".
REDIS_OUTAGE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterError,
    SlotNotCoveredError,
    TryAgainError,
    ReadOnlyError,
)


def parse_sentinels(value: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` as pairs; ValueError naming the bad entry."""
    pairs: list[tuple[str, int]] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"CARVE_REDIS_SENTINELS: {part!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def make_redis(settings: RedisSettings) -> Redis:
    """The client ``settings`` describe (see the module doc), with short socket timeouts."""
    timeouts: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
    }
    urls = [u.strip() for u in settings.redis_url.get_secret_value().split(",") if u.strip()]
    if settings.redis_cluster:
        first = URL(urls[0])
        nodes = [ClusterNode(URL(u).host or "127.0.0.1", URL(u).port or 6379) for u in urls]
        cluster = RedisCluster(
            startup_nodes=nodes,
            username=first.user,
            password=first.password,
            ssl=first.scheme == "rediss",
            **timeouts,
        )
        # Same commands as a Redis client for everything the services use (scripts,
        # pipelines, hashes, bitmaps); ``is_cluster`` tells the rest.
        return cast(Redis, cluster)
    if settings.redis_sentinels:
        url = URL(urls[0])
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parse_sentinels(settings.redis_sentinels),
            sentinel_kwargs=dict(timeouts),
            username=url.user,
            password=url.password,
            db=int(url.path.strip("/") or 0),
            ssl=url.scheme == "rediss",
            **timeouts,
        )
        return cast(
            Redis, sentinel.master_for(settings.redis_sentinel_master, health_check_interval=30)
        )
    return Redis.from_url(urls[0], health_check_interval=30, **timeouts)


async def close_redis(redis: Redis) -> None:
    """Close the client and, for a Sentinel-watched primary, its connections to the
    Sentinels (closing the client alone leaves those open)."""
    await redis.aclose()
    pool = getattr(redis, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def is_cluster(redis: Redis) -> bool:
    """True for a Redis Cluster client (``make_redis`` with ``CARVE_REDIS_CLUSTER=1``)."""
    return isinstance(redis, RedisCluster)


async def scan_keys(redis: Redis, pattern: str, count: int) -> AsyncIterator[list[bytes]]:
    """Every key matching ``pattern``, about ``count`` at a time (on every primary of a
    cluster: redis-py's cluster client runs SCAN on each)."""
    if is_cluster(redis):
        batch: list[bytes] = []
        async for key in cast(RedisCluster, redis).scan_iter(match=pattern, count=count):
            batch.append(key if isinstance(key, bytes) else str(key).encode())
            if len(batch) >= count:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    cursor = 0
    while True:
        cursor, keys = await redis.scan(cursor, match=pattern, count=count)
        if keys:
            yield [k if isinstance(k, bytes) else k.encode() for k in keys]
        if cursor == 0:
            return
