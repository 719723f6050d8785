"""What a Redis outage or failover looks like to the ingest: every form of it becomes
Unavailable (a text/plain 503, which osquery retries), never an unexpected error (a 500
and a traceback per block)."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MaxConnectionsError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.ingest.sessions import _backend
from shared.errors import Unavailable


@pytest.mark.parametrize(
    "exc",
    [
        RedisConnectionError("refused"),
        RedisTimeoutError("slow"),
        BusyLoadingError("loading"),
        MaxConnectionsError("pool"),
        ReadOnlyError("READONLY demoted"),
        ClusterDownError("CLUSTERDOWN"),
        MasterDownError("MASTERDOWN"),
        TryAgainError("TRYAGAIN"),
        SlotNotCoveredError('Slot "42" is not covered by the cluster.'),
    ],
)
async def test_a_redis_outage_is_unavailable(exc: Exception) -> None:
    with pytest.raises(Unavailable) as raised:
        async with _backend("redis"):
            raise exc
    assert raised.value.backend == "redis"
    assert raised.value.reason == type(exc).__name__


async def test_a_script_error_is_not_an_outage() -> None:
    with pytest.raises(ResponseError):
        async with _backend("redis"):
            raise ResponseError("ERR Error running script")
