"""The highly available stack on loopback: a three-node RabbitMQ, Redis with Sentinel, a Redis
Cluster, SecantusDB and OpenBao, started at once and always stopped (data thrown away).

``python -m devstack up --ha`` prints its settings (Redis through the Sentinels; with
``--redis-cluster``, through the Redis Cluster); ``bench.drills`` and the HA tests break it.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devstack.cluster import RabbitCluster, RedisClusterSet, RedisSentinelSet
from devstack.servers import BaoServer, SecantusServer

RedisMode = Literal["sentinel", "cluster"]


@dataclass
class HaBackends:
    rabbit: RabbitCluster
    sentinel: RedisSentinelSet
    cluster: RedisClusterSet | None
    mongo: SecantusServer
    vault: BaoServer

    def env(self, redis: RedisMode = "sentinel") -> dict[str, str]:
        """The services' CARVE_* settings for this stack, Redis by ``redis``."""
        if redis == "cluster":
            if self.cluster is None:
                raise LookupError("this stack has no Redis Cluster")
            redis_env = self.cluster.env()
        else:
            redis_env = self.sentinel.env()
        return {
            "CARVE_AMQP_URL": self.rabbit.url,
            **redis_env,
            "CARVE_MONGO_URL": self.mongo.url,
            "CARVE_VAULT_ADDR": self.vault.url,
        }

    def stop(self) -> None:
        self.rabbit.stop()
        self.sentinel.stop()
        if self.cluster is not None:
            self.cluster.stop()
        self.mongo.stop()
        self.vault.stop()
        self.rabbit.remove()


@contextlib.contextmanager
def running_ha(root: Path, *, redis_cluster: bool = True) -> Iterator[HaBackends]:
    """Every HA backend started at once (RabbitMQ's cluster takes the longest, ~15 s)."""
    backends = HaBackends(
        rabbit=RabbitCluster(root / "rabbit"),
        sentinel=RedisSentinelSet(root / "sentinel"),
        cluster=RedisClusterSet(root / "redis-cluster") if redis_cluster else None,
        mongo=SecantusServer(root / "mongo"),
        vault=BaoServer(root / "openbao"),
    )
    starts = [backends.rabbit.start, backends.sentinel.start, backends.mongo.start]
    starts.append(backends.vault.start)
    if backends.cluster is not None:
        starts.append(backends.cluster.start)
    try:
        with ThreadPoolExecutor(len(starts)) as pool:
            for future in [pool.submit(start) for start in starts]:
                future.result()
        yield backends
    finally:
        backends.stop()
        shutil.rmtree(root, ignore_errors=True)
