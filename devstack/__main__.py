"""``python -m devstack``: the backends on loopback, and the port helpers the scripts use.

python -m devstack up [--only redis,mongo] [--env-file PATH]
    start private backends on free loopback ports, print their URLs and the services'
    CARVE_* settings, and stop them (their data thrown away) on Ctrl-C or SIGTERM
python -m devstack up --ha [--redis-cluster] [--env-file PATH]
    the highly available backends instead (devstack.ha): a three-node RabbitMQ, Redis
    with three Sentinels (or a Redis Cluster of 3 primaries and 3 replicas), SecantusDB, OpenBao
python -m devstack free-port [COUNT]
    COUNT loopback ports nobody listens on, on one line
python -m devstack port-open PORT
    exit 0 if something listens on PORT, 1 if not
python -m devstack transit-roles DIR
    on the Vault at BAO_ADDR (token BAO_TOKEN): Transit and AppRole enabled, the services'
    policies written, and each service's AppRole secret id in DIR/<service>.secret-id
python -m devstack bao-config DIR [--port PORT] [--cluster-port PORT]
    write DIR/openbao.hcl for a persistent OpenBao on loopback PORT (data in DIR/data) and
    print its path: the server scripts/run.sh starts
python -m devstack bao-unseal DIR [--init]
    unseal the OpenBao at BAO_ADDR with the key saved in DIR/secrets; with --init, first
    initialize it if it never was, saving its unseal key and root token there (0600 files in
    a 0700 directory: a local development convenience, never for production)
python -m devstack wait-port PORT... [--timeout S] [--name NAME] [--log PATH]
    wait until every PORT accepts connections; exit 1 (saying which) when time is up
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import hvac

from devstack.backends import ROLES, running_backends
from devstack.ha import RedisMode, running_ha
from devstack.localbao import init_and_unseal, write_config
from devstack.ports import HOST, free_port, port_open, wait_port
from devstack.vault import provision_transit


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def up(roles: Sequence[str], env_file: Path | None, ha: RedisMode | None = None) -> int:
    root = Path(tempfile.mkdtemp(prefix="carve-devstack-"))
    signal.signal(signal.SIGTERM, _stop)
    try:
        what = f"the HA backends (Redis: {ha})" if ha else ", ".join(roles)
        print(f"devstack: starting {what} under {root}", file=sys.stderr, flush=True)
        with contextlib.ExitStack() as stack:
            if ha:
                env = stack.enter_context(running_ha(root, redis_cluster=ha == "cluster")).env(ha)
            else:
                backends = stack.enter_context(running_backends(root, roles))
                env = backends.env()
                for role, server in backends.by_role.items():
                    print(f"devstack: {role:<6} {server.name:<9} {server.url}", file=sys.stderr)
            lines = [f"export {key}={value}" for key, value in env.items()]
            if env_file is not None:
                env_file.write_text("\n".join(lines) + "\n")
            print("\n".join(lines), flush=True)
            print("devstack: up; stop with Ctrl-C", file=sys.stderr, flush=True)
            threading.Event().wait()  # until a signal raises KeyboardInterrupt
    except KeyboardInterrupt:
        print("devstack: stopped", file=sys.stderr)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if env_file is not None:
            env_file.unlink(missing_ok=True)
    return 0


def wait_ports(ports: Sequence[int], timeout: float, name: str, log: str) -> int:
    for port in ports:
        try:
            wait_port(port, timeout)
        except TimeoutError:
            where = f"; see {log}" if log else ""
            print(
                f"{name}: nothing listens on {HOST}:{port} after {timeout:g} s{where}",
                file=sys.stderr,
            )
            return 1
    return 0


def transit_roles(directory: Path) -> int:
    client = hvac.Client(url=os.environ["BAO_ADDR"], token=os.environ["BAO_TOKEN"])
    for service, env in provision_transit(client).items():
        path = directory / f"{service}.secret-id"
        path.touch(mode=0o600)
        path.write_text(env["CARVE_VAULT_SECRET_ID"])
        print(f"devstack: approle {env['CARVE_VAULT_ROLE_ID']}: secret id in {path}")
    return 0


def bao_unseal(directory: Path, init: bool) -> int:
    url = os.environ["BAO_ADDR"]
    try:
        done = init_and_unseal(url, directory, init)
    except (RuntimeError, OSError, ValueError, KeyError, hvac.exceptions.VaultError) as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    print(f"devstack: OpenBao at {url}: {done}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=(__doc__ or "").split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start the backends until Ctrl-C")
    start.add_argument(
        "--only", default=",".join(ROLES), help=f"comma-separated roles (default {','.join(ROLES)})"
    )
    start.add_argument(
        "--env-file", type=Path, help="also write the settings there (removed on exit)"
    )
    start.add_argument("--ha", action="store_true", help="the highly available backends")
    start.add_argument(
        "--redis-cluster", action="store_true", help="with --ha: Redis Cluster, not Sentinel"
    )
    free = commands.add_parser("free-port", help="free loopback ports")
    free.add_argument("count", nargs="?", type=int, default=1)
    check = commands.add_parser("port-open", help="exit 0 if something listens on PORT")
    check.add_argument("port", type=int)
    roles = commands.add_parser("transit-roles", help="Transit and the services' AppRoles")
    roles.add_argument("dir", type=Path)
    config = commands.add_parser("bao-config", help="config of a persistent local OpenBao")
    config.add_argument("dir", type=Path)
    config.add_argument("--port", type=int, default=8200, help="its port (default 8200)")
    config.add_argument("--cluster-port", type=int, help="Raft's port (default PORT + 1)")
    unseal = commands.add_parser("bao-unseal", help="unseal (and init) the OpenBao at BAO_ADDR")
    unseal.add_argument("dir", type=Path)
    unseal.add_argument("--init", action="store_true", help="initialize it if it never was")
    wait = commands.add_parser("wait-port", help="wait until each PORT accepts connections")
    wait.add_argument("ports", nargs="+", type=int)
    wait.add_argument("--timeout", type=float, default=30.0, help="seconds per port (default 30)")
    wait.add_argument("--name", default="devstack", help="who is waiting, for the message")
    wait.add_argument("--log", default="", help="the log to point at when time is up")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "up":
        roles = [role.strip() for role in args.only.split(",") if role.strip()]
        unknown = sorted(set(roles) - set(ROLES))
        if unknown:
            print(f"devstack: no such role: {', '.join(unknown)}", file=sys.stderr)
            return 2
        ha: RedisMode | None = None
        if args.ha:
            ha = "cluster" if args.redis_cluster else "sentinel"
        return up(roles, args.env_file, ha)
    if args.command == "free-port":
        print(" ".join(str(free_port()) for _ in range(args.count)))
        return 0
    if args.command == "port-open":
        return 0 if port_open(args.port) else 1
    if args.command == "transit-roles":
        return transit_roles(args.dir)
    if args.command == "bao-config":
        print(write_config(args.dir.resolve(), args.port, args.cluster_port))
        return 0
    if args.command == "bao-unseal":
        return bao_unseal(args.dir.resolve(), args.init)
    return wait_ports(args.ports, args.timeout, args.name, args.log)


if __name__ == "__main__":
    sys.exit(main())
