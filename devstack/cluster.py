"""Highly available backends on loopback: a three-node RabbitMQ cluster, a Redis primary and
replica watched by three Sentinels, and a Redis Cluster of three primaries and three replicas.

Every node is a real server of its own (Debian's rabbitmq-server and redis-server), with its
own name, ports and data directory, so drills can kill, pause and restart one node while
the others serve. A stopped node keeps its data directory: started again, it rejoins with
its quorum-queue membership (RabbitMQ) or its replication state (Redis).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import signal
import subprocess
import time
from pathlib import Path

from devstack.ports import HOST, free_port, wait_port
from devstack.servers import RabbitServer, RedisServer, Server, start_all


class Pausable(Server):
    """A node that can be frozen (SIGSTOP): its sockets stay open, nothing answers (a
    partition, or a process stalled), until resumed."""

    def pause(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)


class RabbitNode(RabbitServer, Pausable):
    """One node of a cluster: the cluster's Erlang cookie, so the nodes and rabbitmqctl talk."""

    def __init__(self, workdir: Path, cookie: str) -> None:
        super().__init__(workdir)
        cookie_file = self.workdir / ".erlang.cookie"
        cookie_file.write_text(cookie)
        cookie_file.chmod(0o400)
        if os.geteuid() == 0:
            user = pwd.getpwnam("rabbitmq")
            os.chown(cookie_file, user.pw_uid, user.pw_gid)


class RabbitCluster:
    """Three RabbitMQ nodes joined into one cluster; ``url`` lists all three (comma-separated,
    as ``CARVE_AMQP_URL`` takes it)."""

    size = 3

    def __init__(self, root: Path) -> None:
        cookie = secrets.token_hex(16).upper()
        self.nodes = [RabbitNode(root / f"rabbit{i}", cookie) for i in range(self.size)]

    @property
    def url(self) -> str:
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        start_all(list(self.nodes))
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
            wait_port(node.port, node.start_timeout)
        for node in self.nodes:
            node.ctl("await_startup")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError, AssertionError):
                node.resume()  # a paused node would not die of SIGTERM
            node.stop(sig)

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()

    def running_nodes(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def leader(self, queue: str) -> RabbitNode:
        """The node that leads quorum queue ``queue`` now (asked of a running node)."""
        for asking in self.running_nodes():
            try:
                out = asking.ctl("list_queues", "name", "leader", "--formatter", "json", "-q")
            except (subprocess.SubprocessError, OSError):
                continue
            for row in json.loads(out or "[]"):
                if row.get("name") == queue:
                    for node in self.nodes:
                        if node.node == row.get("leader"):
                            return node
        raise LookupError(f"no leader known for {queue}")

    def queue_state(self, queue: str) -> dict[str, object]:
        """Messages, unacknowledged messages, consumers and online members of ``queue``."""
        out = self.running_nodes()[0].ctl(
            "list_queues", "name", "messages", "messages_unacknowledged", "consumers",
            "online", "--formatter", "json", "-q",
        )  # fmt: skip
        for row in json.loads(out or "[]"):
            if row.get("name") == queue:
                return {k: v for k, v in row.items() if k != "name"}
        return {}

    def members(self, queue: str) -> list[str]:
        """The nodes holding a replica of quorum queue ``queue``."""
        out = self.running_nodes()[0].ctl(
            "list_queues", "name", "members", "--formatter", "json", "-q"
        )
        for row in json.loads(out or "[]"):
            if row.get("name") == queue:
                return list(row.get("members") or [])
        raise LookupError(f"no queue {queue}")


class RedisNode(RedisServer, Pausable):
    """A Redis data node with extra options (replication, cluster mode). Not durable, like
    the single-node stack's: a restarted node resynchronises from its new primary."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        super().__init__(workdir)
        self.extra = list(extra)

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(self.port), *args],
            capture_output=True,
            timeout=30,
            check=True,
        )
        return done.stdout.decode()

    def role(self) -> str:
        return self.cli("role").split("\n", 1)[0].strip()


class SentinelServer(Server):
    """One Redis Sentinel watching the primary named ``master``."""

    name = "sentinel"

    def __init__(self, workdir: Path, master: str, primary_port: int) -> None:
        super().__init__(workdir)
        self.config = workdir / "sentinel.conf"
        self.config.write_text(
            f"port {self.port}\nbind {HOST}\ndir {workdir}\n"
            f"sentinel monitor {master} {HOST} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {master} 1000\n"
            f"sentinel failover-timeout {master} 5000\n"
            f"sentinel parallel-syncs {master} 1\n"
        )

    def command(self) -> list[str]:
        return ["redis-server", str(self.config), "--sentinel"]

    @property
    def url(self) -> str:
        return f"{HOST}:{self.port}"


class RedisSentinelSet:
    """A primary, one replica and three Sentinels (quorum 2), named ``master``."""

    master = "carve"

    def __init__(self, root: Path) -> None:
        self.primary = RedisNode(root / "redis-a")
        self.replica = RedisNode(root / "redis-b")
        self.replica.extra = ["--replicaof", HOST, str(self.primary.port)]
        self.data = [self.primary, self.replica]
        self.sentinels = [
            SentinelServer(root / f"sentinel{i}", self.master, self.primary.port) for i in range(3)
        ]

    def env(self) -> dict[str, str]:
        return {
            "CARVE_REDIS_URL": f"redis://{HOST}:{self.primary.port}/0",
            "CARVE_REDIS_SENTINELS": ",".join(s.url for s in self.sentinels),
            "CARVE_REDIS_SENTINEL_MASTER": self.master,
        }

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        start_all(list(self.sentinels))
        _until(lambda: "connected_slaves:1" in self.primary.cli("info", "replication"), 30)
        _until(lambda: all(self._sentinels_know(s) for s in self.sentinels), 30)

    def _sentinels_know(self, sentinel: SentinelServer) -> bool:
        out = subprocess.run(
            ["redis-cli", "-h", HOST, "-p", str(sentinel.port), "sentinel", "master", self.master],
            capture_output=True,
            timeout=10,
        ).stdout.decode()
        lines = out.split("\n")
        fields = dict(zip(lines[::2], lines[1::2], strict=False))
        return fields.get("num-other-sentinels") == "2" and fields.get("num-slaves") == "1"

    def _sentinel_cli(self, i: int) -> list[str]:
        return ["redis-cli", "-h", HOST, "-p", str(self.sentinels[i].port)]

    def current_primary(self) -> RedisNode:
        """The data node the Sentinels name as primary now."""
        out = subprocess.run(
            [*self._sentinel_cli(0), "sentinel", "get-master-addr-by-name", self.master],
            capture_output=True,
            timeout=10,
        ).stdout.decode()
        port = int(out.split()[1])
        return next(n for n in self.data if n.port == port)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        for server in [*self.sentinels, *self.data]:
            server.stop(sig)


class RedisClusterSet:
    """A Redis Cluster of three primaries and three replicas (``redis-cli --cluster create``)."""

    def __init__(self, root: Path) -> None:
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        options += ["--cluster-node-timeout", "1500"]
        # The bus port of its own (by default port + 10000, which a free port may exceed).
        self.nodes = [
            RedisNode(root / f"cluster{i}", *options, "--cluster-port", str(free_port()))
            for i in range(6)
        ]

    def env(self) -> dict[str, str]:
        return {
            "CARVE_REDIS_URL": ",".join(f"redis://{HOST}:{n.port}/0" for n in self.nodes[:3]),
            "CARVE_REDIS_CLUSTER": "1",
        }

    def start(self) -> None:
        start_all(list(self.nodes))
        addresses = [f"{HOST}:{n.port}" for n in self.nodes]
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *addresses,
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        _until(lambda: all(self.healthy(n) for n in self.nodes), 60)

    @staticmethod
    def healthy(node: RedisNode) -> bool:
        try:
            return "cluster_state:ok" in node.cli("cluster", "info")
        except subprocess.SubprocessError:
            return False

    def primaries(self) -> list[RedisNode]:
        return [n for n in self.running() if n.role() == "master"]

    def running(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop(self, sig: int = signal.SIGKILL) -> None:
        for node in self.nodes:
            node.stop(sig)


def _until(check: object, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("the cluster did not settle in time")
        time.sleep(0.2)


__all__ = ["RabbitCluster", "RedisClusterSet", "RedisSentinelSet"]
