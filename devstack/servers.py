"""Real backend servers, each a child process on a free loopback port.

Redis, RabbitMQ, SecantusDB (MongoDB wire protocol) and OpenBao are started fresh (for a
test session, a benchmark, ``python -m devstack up``), so nothing needs to run beforehand
and fault drills may stop and restart them without touching anything else on the machine.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from devstack.ports import HOST, free_port, port_open, wait_port


class Server:
    """A child process serving one port; stop() and start() again for fault drills."""

    name = "server"
    start_timeout = 30.0

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Where clients reach it."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def after_stop(self) -> None:
        """Hook for cleanup once the process is gone."""

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        try:
            wait_port(self.port, self.start_timeout, self.proc)
        except Exception as exc:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.name} failed to start: {exc}\n{tail}") from exc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.after_stop()
        # Wait until the port is really free before anyone restarts the server.
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)


class RedisServer(Server):
    name = "redis"
    # True: an append-only file fsynced on every write, so the data survives a restart.
    durable = False

    def command(self) -> list[str]:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else [
            "--appendonly", "no"]  # fmt: skip
        return [
            "redis-server",
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            *persistence,
            "--dir", str(self.workdir),
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"


class SecantusServer(Server):
    name = "secantus"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "secantus",
            "--host", HOST,
            "--port", str(self.port),
            "--storage-path", str(self.workdir / "data"),
            "--log-level", "WARNING",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"mongodb://{HOST}:{self.port}/?directConnection=true"


class RabbitServer(Server):
    """A private RabbitMQ node (its own node name, ports and data dir)."""

    name = "rabbitmq"
    start_timeout = 90.0

    def __init__(self, workdir: Path) -> None:
        # Its own directory outside pytest's (0700, root's): Debian's rabbitmq-server
        # runs as the rabbitmq user when started by root and must reach its files.
        workdir = Path(tempfile.mkdtemp(prefix="carve-rabbitmq-"))
        super().__init__(workdir)
        self.dist_port = free_port()
        self.node = f"carvetest{os.getpid()}x{self.port}@localhost"
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {HOST}:{self.port}\nloopback_users = none\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n"
        )
        (workdir / "enabled_plugins").write_text("[].\n")
        if os.geteuid() == 0:
            # Debian's rabbitmq-server drops to the rabbitmq user when started as root.
            user = pwd.getpwnam("rabbitmq")
            for path in [workdir, *workdir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)

    def command(self) -> list[str]:
        # The real script, not Debian's /usr/sbin wrapper: the wrapper's `su` starts a new
        # session, and stop() could then not reach the Erlang VM through the process group.
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if os.geteuid() == 0:
            return ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups", server]
        return [server]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbit.pid"),
            HOME=str(self.workdir),  # its own Erlang cookie
        )
        return env

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node (same user and Erlang cookie as the node)."""
        ctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
        prefix = self.command()[:-1]  # setpriv ... when root
        done = subprocess.run(
            [*prefix, ctl, "-n", self.node, *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            timeout=60,
            check=True,
        )
        return done.stdout.decode()

    def persist(self) -> None:
        """Write to disk what the node would write on its own within about 5 s.

        A quorum queue is a Ra server, registered in DETS tables (``ra_directory_reverse``,
        saved 500 ms after a change; ``ra_log_meta``, its term and vote, 5 s after). A node
        SIGKILLed before then comes back with the queue declared but its Ra server unable
        to recover ("names.dets not properly closed, repairing"): no publish to it is ever
        confirmed. A drill that kills the broker soon after a test declared its queue must
        call this first, or it tests that, not the services.
        """
        self.ctl("eval", "ok = mnesia:sync_log(), [ok = dets:sync(T) || T <- dets:all()], ok.")

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/"


class BaoServer(Server):
    """OpenBao's dev server (the Vault API, in memory, unsealed, root token ``root``)."""

    name = "openbao"
    root_token = "root"

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).parent / "bao"), "server", "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address={HOST}:{self.port}",
        ]  # fmt: skip

    def env(self) -> dict[str, str]:
        # A dev server writes the root token to ~/.vault-token unless told otherwise.
        return {**os.environ, "HOME": str(self.workdir), "BAO_ADDR": self.url}

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def start_all(servers: list[Server]) -> None:
    """Start several servers at once (RabbitMQ alone takes seconds); raise if any fails."""
    with ThreadPoolExecutor(len(servers)) as pool:
        for future in [pool.submit(server.start) for server in servers]:
            future.result()


@contextlib.contextmanager
def running(servers: list[Server]) -> Iterator[None]:
    """The servers started at once, and always killed on the way out: their data is thrown
    away, RabbitMQ's node directory included."""
    try:
        start_all(servers)
        yield
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        for server in servers:
            if isinstance(server, RabbitServer):
                server.remove()
