"""Upload throughput on the highly available backends against single nodes, in one run.

For each block size (8 KiB, 1 MiB) and each backend set, the same hosts each carve once
(no fault), through the same services as the drills; the figure is the hosts' upload rate
(bytes of the carves over the time from the first start to the last host's last reply)
and the time until every carve was complete. Sets: one RabbitMQ node and one Redis (the
single-node stack); the three-node RabbitMQ with that Redis; one RabbitMQ node with the
Redis Cluster; the three-node RabbitMQ with the Redis Cluster. Each ratio is against the
single-node set at the same block size.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench.drill_hosts import Fleet, KiB, MiB, settle
from bench.drill_stack import services
from devstack.backends import running_backends
from devstack.ha import HaBackends

# Blocks per carve: about 3 MB per host at 8 KiB, 12 MB at 1 MiB.
BLOCKS = {8 * KiB: 400, MiB: 12}


async def measure(
    env: dict[str, str], root: Path, hosts: int, block_size: int, replicas: int
) -> dict[str, Any]:
    fleet = Fleet(hosts, BLOCKS[8 * KiB], BLOCKS[MiB], root / "archives", only=block_size)
    async with services(env, root, replicas) as front:
        started = time.monotonic()
        await fleet.run(front, asyncio.Event(), once=True)
        uploaded = time.monotonic() - started
        mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            env["CARVE_MONGO_URL"], tz_aware=True
        )
        try:
            ids = [c.result.carve_id for c in fleet.carves]
            await settle(mongo[env["CARVE_MONGO_DB"]], ids, timeout=300)
            complete = await mongo[env["CARVE_MONGO_DB"]]["carves"].count_documents(
                {"_id": {"$in": ids}, "status": "complete"}
            )
        finally:
            await mongo.close()
        assembled = time.monotonic() - started
    size = sum(c.result.size for c in fleet.carves)
    return {
        "block_size": block_size,
        "hosts": hosts,
        "bytes": size,
        "blocks": sum(c.result.block_count for c in fleet.carves),
        "upload_seconds": round(uploaded, 2),
        "upload_mb_s": round(size / uploaded / 1e6, 1),
        "blocks_s": round(sum(c.result.block_count for c in fleet.carves) / uploaded),
        "complete_seconds": round(assembled, 2),
        "complete": complete,
        "host_success": sum(c.result.status == "SUCCESS" for c in fleet.carves),
    }


async def compare(
    ha: HaBackends, root: Path, hosts: int, replicas: int, base: dict[str, str]
) -> list[dict[str, Any]]:
    """Every set at both block sizes, printed as measured; ``base``: the drills' settings."""
    rows: list[dict[str, Any]] = []
    with running_backends(root / "single", ("redis", "rabbit")) as single:
        one = single.env()
        cluster = ha.env("cluster")
        sets = {
            "single nodes": {**one},
            "rabbitmq x3": {**one, "CARVE_AMQP_URL": ha.rabbit.url},
            "redis cluster": {**cluster, "CARVE_AMQP_URL": one["CARVE_AMQP_URL"]},
            "rabbitmq x3 + redis cluster": {**cluster},
        }
        for block_size in sorted(BLOCKS):
            baseline = 0.0
            for n, (name, backend) in enumerate(sets.items()):
                tag = f"tp{block_size}x{n}"
                env = {
                    **base,
                    "CARVE_MONGO_URL": ha.mongo.url,
                    "CARVE_VAULT_ADDR": ha.vault.url,
                    **backend,
                    "CARVE_MONGO_DB": tag,
                    "CARVE_AMQP_QUEUE": f"carve.blocks.{tag}",
                    "CARVE_EVENTS_EXCHANGE": f"carve.events.{tag}",
                    "CARVE_REDIS_KEY_PREFIX": f"{tag}:",
                }
                row = {"set": name, **await measure(env, root / tag, hosts, block_size, replicas)}
                baseline = baseline or row["upload_mb_s"]
                row["ratio"] = round(row["upload_mb_s"] / baseline, 2)
                print(
                    f"throughput {block_size // KiB:>5} KiB  {name:<28} "
                    f"{row['upload_mb_s']:>7} MB/s {row['blocks_s']:>6} blocks/s "
                    f"ratio {row['ratio']:.2f}  complete {row['complete']}/{hosts} "
                    f"in {row['complete_seconds']} s",
                    flush=True,
                )
                rows.append(row)
    return rows
