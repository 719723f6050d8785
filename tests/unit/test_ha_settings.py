"""The HA settings: several AMQP URLs, Sentinels, a Redis Cluster (parsing only; the
failovers themselves are in tests/integration/test_ha.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from shared.amqp_hosts import MultiHostConnection, split_urls
from shared.redis_client import is_cluster, make_redis, parse_sentinels
from shared.settings import RedisSettings


def test_amqp_urls_are_split_on_commas_and_must_all_be_amqp() -> None:
    assert split_urls(" amqp://a:1/ , amqps://b:2/vh ,") == ["amqp://a:1/", "amqps://b:2/vh"]
    with pytest.raises(ValueError, match="names no broker"):
        split_urls(" , ")
    with pytest.raises(ValueError, match="amqp://"):
        split_urls("amqp://a/,http://b/")


async def test_each_connection_attempt_takes_the_next_url() -> None:
    urls = ["amqp://u:p@127.0.0.1:1/", "amqp://u:p@127.0.0.1:2/", "amqp://u:p@127.0.0.1:3/"]
    connection = MultiHostConnection(urls, start=1)
    seen = []
    for _ in range(4):
        connection.transport = None  # what aio-pika does before every attempt
        seen.append(connection.url.port)
    assert seen == [2, 3, 1, 2]
    assert connection.transport is None


def test_sentinels_are_host_port_pairs() -> None:
    assert parse_sentinels("a:26379, [::1]:26380,") == [("a", 26379), ("::1", 26380)]
    for bad in ("a", "a:", ":1", "a:x", "a:70000"):
        with pytest.raises(ValueError, match="host:port"):
            parse_sentinels(bad)


def test_a_key_prefix_with_braces_is_refused() -> None:
    with pytest.raises(ValidationError, match="must not contain"):
        RedisSettings(redis_key_prefix="carve{x}:")


async def test_the_client_follows_the_settings() -> None:
    plain = make_redis(RedisSettings(redis_url="redis://127.0.0.1:1/0"))
    assert type(plain) is Redis and not is_cluster(plain)
    cluster = make_redis(
        RedisSettings(redis_url="redis://127.0.0.1:1/0,redis://127.0.0.1:2/0", redis_cluster=True)
    )
    assert isinstance(cluster, RedisCluster) and is_cluster(cluster)
    sentinel = make_redis(
        RedisSettings(
            redis_url="redis://:pw@ignored:1/3",
            redis_sentinels="127.0.0.1:1,127.0.0.1:2",
            redis_sentinel_master="m",
        )
    )
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "m"
    assert pool.connection_kwargs["password"] == "pw" and pool.connection_kwargs["db"] == 3
    for client in (plain, cluster, sentinel):
        await client.aclose()
