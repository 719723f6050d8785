#!/opt/standins/bin/python
"""STAND-IN FOR LOCAL TESTS ONLY: ``mongod`` as compose.yaml runs it, served by SecantusDB.

Understands ``--replSet NAME``, ``--bind_ip_all``, ``--port N`` and ``--dbpath DIR`` (default
/data/db). SecantusDB announces itself as a replica set of one; this names the set as
``--replSet`` says and announces the member as ``$MONGO_ADVERTISE`` (default mongo:27017,
the host init-replica-set.js gives), so drivers in other containers discover ``mongo:27017``.
"""

import argparse
import os
import signal
import sys
from types import FrameType

from secantus.server import SecantusDBServer


class Advertised(SecantusDBServer):
    """Announces a fixed host:port in ``hello`` instead of the bound 0.0.0.0 address."""

    advertise: tuple[str, int] = ("mongo", 27017)

    @property
    def address(self) -> tuple[str, int]:
        if self._socket is None:
            raise RuntimeError("server is not started")
        return self.advertise


def main() -> int:
    parser = argparse.ArgumentParser(prog="mongod (SecantusDB stand-in)")
    parser.add_argument("--replSet", default="rs0")
    parser.add_argument("--bind_ip_all", action="store_true")
    parser.add_argument("--bind_ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--dbpath", default="/data/db")
    args = parser.parse_args()
    host, _, port = os.environ.get("MONGO_ADVERTISE", f"mongo:{args.port}").rpartition(":")
    Advertised.advertise = (host, int(port))
    os.makedirs(args.dbpath, exist_ok=True)
    server = Advertised(
        host="0.0.0.0" if args.bind_ip_all else args.bind_ip,
        port=args.port,
        storage_path=args.dbpath,
        replica_set_name=args.replSet,
        enable_test_commands=False,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.start()
    print(f"mongod stand-in: SecantusDB, replica set {args.replSet}, as {host}:{port}", flush=True)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
