"""The failover drills' faults on the highly available stack (``devstack.ha``).

Each fault breaks one node, waits until the backend has recovered on its own (a promoted
replica, a new quorum-queue leader), then brings the node back with its data directory, so
the next drill starts from a whole cluster again. Each returns a line saying what it did.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from devstack.cluster import RabbitCluster, RabbitNode, RedisNode
from devstack.ha import HaBackends
from devstack.ports import HOST


@dataclass(frozen=True)
class Drill:
    name: str
    redis: str  # "sentinel" or "cluster": which Redis the services use
    fault: Callable[[HaBackends, str, float], Awaitable[str]]  # (stack, queue, seconds)
    about: str


async def _wait(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``check()`` (run in a thread) holds; TimeoutError naming ``what``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if await asyncio.to_thread(check):
                return time.monotonic() - started
        except Exception:  # a node still starting answers with errors: look again
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what} not within {timeout:g} s")


async def kill_redis_primary(ha: HaBackends, queue: str, seconds: float) -> str:
    """SIGKILL the primary the Sentinels name; they promote the replica; the old one returns
    as a replica of the new primary (started as one, as an operator's restart script does:
    Sentinel itself would demote it only after some 40 s)."""
    sentinel = ha.sentinel
    old = await asyncio.to_thread(sentinel.current_primary)
    await asyncio.to_thread(old.stop, signal.SIGKILL)
    promoted = await _wait(lambda: sentinel.current_primary() is not old, 60, "promotion")
    new = await asyncio.to_thread(sentinel.current_primary)
    old.extra = ["--replicaof", HOST, str(new.port)]
    await asyncio.to_thread(old.start)
    try:
        await _wait(lambda: "master_link_status:up" in old.cli("info", "replication"), 90, "rejoin")
    except TimeoutError as exc:
        # Say what each side saw (a run under load once timed out here, cause unknown).
        seen = await asyncio.to_thread(_replication, old, new)
        raise TimeoutError(f"{exc}: {seen}") from exc
    return f"redis primary :{old.port} SIGKILL; Sentinel promoted the replica in {promoted:.1f} s"


def _replication(*nodes: RedisNode) -> str:
    views = []
    for node in nodes:
        try:
            info = node.cli("info", "replication").replace("\r", "").split("\n")
        except Exception as exc:  # a node that does not answer: that is the news
            info = [f"no answer: {exc!r}"]
        keep = [
            line
            for line in info
            if line.split(":")[0] in _REPLICATION_FIELDS or "no answer" in line
        ]
        views.append(f":{node.port} " + ", ".join(keep))
    return "; ".join(views)


_REPLICATION_FIELDS = {
    "role", "master_port", "master_link_status", "master_sync_in_progress",
    "master_link_down_since_seconds", "connected_slaves", "slave0", "master_repl_offset",
}  # fmt: skip


async def kill_cluster_primary(ha: HaBackends, queue: str, seconds: float) -> str:
    """SIGKILL one Redis Cluster primary; its replica takes over its slots."""
    cluster = ha.cluster
    assert cluster is not None
    victim = (await asyncio.to_thread(cluster.primaries))[0]
    await asyncio.to_thread(victim.stop, signal.SIGKILL)

    def whole() -> bool:
        running = cluster.running()
        return len(cluster.primaries()) == 3 and all(cluster.healthy(n) for n in running)

    promoted = await _wait(whole, 60, "the cluster's failover")
    await asyncio.to_thread(victim.start)
    await _wait(lambda: victim.role() == "slave" and cluster.healthy(victim), 60, "rejoin")
    return f"redis cluster primary :{victim.port} SIGKILL; replica promoted in {promoted:.1f} s"


async def _node_back(rabbit: RabbitCluster, node: RabbitNode, queue: str) -> None:
    await asyncio.to_thread(node.start)
    await asyncio.to_thread(node.ctl, "await_startup")
    await _wait(lambda: _online(rabbit, queue) == rabbit.size, 90, f"{node.node} in {queue}")


def _online(rabbit: RabbitCluster, queue: str) -> int:
    """How many members of ``queue`` are online (a node back, caught up or catching up)."""
    out = rabbit.running_nodes()[0].ctl(
        "list_queues", "name", "online", "--formatter", "json", "-q"
    )
    for row in json.loads(out or "[]"):
        if row.get("name") == queue:
            return len(row.get("online") or [])
    return 0


async def kill_rabbit_leader(ha: HaBackends, queue: str, seconds: float) -> str:
    """SIGKILL the node that leads the block queue; the other two elect a new leader."""
    rabbit = ha.rabbit
    leader = await asyncio.to_thread(rabbit.leader, queue)
    await asyncio.to_thread(leader.stop, signal.SIGKILL)
    elected = await _wait(lambda: rabbit.leader(queue) is not leader, 60, "a new leader")
    await asyncio.sleep(seconds)
    await _node_back(rabbit, leader, queue)
    return f"rabbitmq leader {leader.node} SIGKILL; new leader in {elected:.1f} s; restarted"


async def pause_rabbit_node(ha: HaBackends, queue: str, seconds: float) -> str:
    """SIGSTOP the block queue's leader for ``seconds`` (its peers and clients hear nothing),
    then SIGCONT: a partition without closing a socket."""
    rabbit = ha.rabbit
    node = await asyncio.to_thread(rabbit.leader, queue)
    node.pause()
    try:
        await asyncio.sleep(seconds)
    finally:
        node.resume()
    await _wait(lambda: _online(rabbit, queue) == rabbit.size, 90, "the paused node's return")
    return f"rabbitmq node {node.node} (leader) SIGSTOP for {seconds:g} s, SIGCONT"


async def rolling_restart(ha: HaBackends, queue: str, seconds: float) -> str:
    """Each node in turn stopped (SIGTERM: a graceful shutdown) and started again, the next
    one only once the queue has all three members online (a rolling upgrade)."""
    rabbit = ha.rabbit
    for node in rabbit.nodes:
        await asyncio.to_thread(node.stop, signal.SIGTERM)
        await asyncio.sleep(seconds)
        await _node_back(rabbit, node, queue)
    return f"rolling restart of {rabbit.size} rabbitmq nodes (SIGTERM, {seconds:g} s down each)"


DRILLS = {
    d.name: d
    for d in (
        Drill("redis_sentinel_failover", "sentinel", kill_redis_primary, "kill the Redis primary"),
        Drill("redis_cluster_failover", "cluster", kill_cluster_primary, "kill a Cluster primary"),
        Drill("rabbit_kill_leader", "sentinel", kill_rabbit_leader, "kill the queue's leader"),
        Drill("rabbit_partition", "sentinel", pause_rabbit_node, "pause the leader's process"),
        Drill("rabbit_rolling_restart", "sentinel", rolling_restart, "restart all, one by one"),
    )
}
