#!/opt/standins/bin/python
"""STAND-IN FOR LOCAL TESTS ONLY: the two ``mongosh`` calls compose.yaml makes, in PyMongo.

It runs no JavaScript. It knows:
- ``mongosh --quiet --eval "...ping..."`` (the healthcheck): exit 0 if the server answers ping;
- ``mongosh --quiet URL .../init-replica-set.js`` (mongo-init): what that script ends with,
  waiting up to 60 s for a writable primary of the replica set ``rs0`` announced as
  ``mongo:27017`` (SecantusDB needs no ``rs.initiate``: it starts as that replica set).
Anything else exits 2, so a new mongosh call in compose.yaml cannot pass unnoticed.
"""

import sys
import time

from pymongo import MongoClient
from pymongo.errors import PyMongoError

DEFAULT_URL = "mongodb://127.0.0.1:27017/?directConnection=true"


def client(url: str) -> MongoClient:  # type: ignore[type-arg]
    return MongoClient(url, serverSelectionTimeoutMS=3000, directConnection=True)


def ping(url: str) -> int:
    try:
        return 0 if client(url).admin.command("ping").get("ok") == 1 else 1
    except PyMongoError as exc:
        print(f"mongosh stand-in: ping failed: {exc}", file=sys.stderr)
        return 1


def init_replica_set(url: str) -> int:
    for _ in range(60):
        try:
            hello = client(url).admin.command("hello")
        except PyMongoError:
            hello = {}
        if hello.get("isWritablePrimary") and hello.get("setName") == "rs0":
            if hello.get("me") != "mongo:27017":
                print(f"mongo-init: the member announces {hello.get('me')!r}", file=sys.stderr)
                return 1
            print("mongo-init: mongo:27017 is primary (replica set rs0)")
            return 0
        time.sleep(1)
    print("mongo-init: no primary after 60 s")
    return 1


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--quiet"]
    url = next((a for a in args if a.startswith("mongodb://")), DEFAULT_URL)
    if len(args) >= 2 and args[0] == "--eval" and "ping" in args[1]:
        return ping(url)
    if args and args[-1].endswith("/init-replica-set.js"):
        return init_replica_set(url)
    print(f"mongosh stand-in: cannot run {argv!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
