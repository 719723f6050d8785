"""The backend servers of one stack, by role, started at once and always stopped."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from devstack.servers import BaoServer, RabbitServer, RedisServer, SecantusServer, Server, running

T = TypeVar("T", bound=Server)


@dataclass(frozen=True)
class Role:
    server: Callable[[Path], Server]  # the class that plays it
    folder: str  # its directory under a stack's root
    setting: str  # the services' setting that holds its URL


# In start order.
ROLES = {
    "redis": Role(RedisServer, "redis", "CARVE_REDIS_URL"),
    "rabbit": Role(RabbitServer, "rabbitmq", "CARVE_AMQP_URL"),
    "mongo": Role(SecantusServer, "mongo", "CARVE_MONGO_URL"),  # SecantusDB, the MongoDB stand-in
    "vault": Role(BaoServer, "openbao", "CARVE_VAULT_ADDR"),  # OpenBao's dev server
}


@dataclass
class Backends:
    """Some or all of the four backends (``ROLES``), each reached by its role's property."""

    by_role: dict[str, Server]

    @classmethod
    def create(cls, root: Path, roles: Sequence[str] = tuple(ROLES), **given: Server) -> Backends:
        """Servers for ``roles`` (not started yet), each in its own directory under ``root``;
        a server in ``given`` (by role) plays its role instead of the default one."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"no such backend role: {', '.join(sorted(unknown))}")
        chosen = [role for role in ROLES if role in roles]
        return cls({role: given.get(role) or _new(role, root) for role in chosen})

    def only(self, *roles: str) -> Backends:
        """The same servers, seen through fewer roles (nothing is started or stopped)."""
        return Backends({role: s for role, s in self.by_role.items() if role in roles})

    @property
    def servers(self) -> list[Server]:
        return list(self.by_role.values())

    @property
    def redis(self) -> RedisServer:
        return self._role("redis", RedisServer)

    @property
    def rabbit(self) -> RabbitServer:
        return self._role("rabbit", RabbitServer)

    @property
    def mongo(self) -> SecantusServer:
        return self._role("mongo", SecantusServer)

    @property
    def vault(self) -> BaoServer:
        return self._role("vault", BaoServer)

    def _role(self, role: str, kind: type[T]) -> T:
        server = self.by_role.get(role)
        if not isinstance(server, kind):
            raise LookupError(f"this stack has no {role} backend")
        return server

    def env(self) -> dict[str, str]:
        """The services' CARVE_* settings that point at these backends."""
        return {ROLES[role].setting: server.url for role, server in self.by_role.items()}


def _new(role: str, root: Path) -> Server:
    return ROLES[role].server(root / ROLES[role].folder)


@contextlib.contextmanager
def running_backends(
    root: Path, roles: Sequence[str] = tuple(ROLES), **given: Server
) -> Iterator[Backends]:
    """The backends of ``roles`` started at once; always stopped (their data is thrown away)."""
    backends = Backends.create(root, roles, **given)
    with running(backends.servers):
        yield backends
