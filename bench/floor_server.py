"""The least a block server can do per block, for ``bench.lone_floor``: not a service.

It speaks just enough of osquery's carve protocol for ``clients.osquery_sim``
(``/start_uploads`` answers a session id, ``/upload_blocks`` answers success) and,
per block, does only the steps this project's design cannot skip, with the same
libraries as ``carve-ingest`` (aiohttp on uvloop, orjson, pybase64, aiormq, redis-py
with hiredis), and nothing else: no checks, no sessions, no metrics, no budget.

- ``http``: read the body, answer.
- ``publish``: also parse it, decode the block, publish it persistent to a quorum
  queue and wait for the broker's confirm (the project's rule: a block is answered
  only once RabbitMQ confirmed it).
- ``publish-redis``: also record it with one Lua script call (SETBIT, HINCRBY,
  EXPIRE: what the ingest's mark does, in one round trip).

    python -m bench.floor_server --mode publish --port 8900 --amqp URL --redis URL --queue Q
"""

from __future__ import annotations

import argparse
import secrets
from typing import Any

import aiormq
import aiormq.abc
import orjson
import pybase64
import uvloop
from aiohttp import web
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

MODES = ("http", "publish", "publish-redis")
MARK = """
local old = redis.call('SETBIT', KEYS[1], ARGV[1], 1)
redis.call('HINCRBY', KEYS[2], 'confirmed', 1 - old)
redis.call('EXPIRE', KEYS[1], 3600)
return old
"""
OK = b'{"success":true}'


class Floor:
    """The server's state: a confirming channel and a Redis script, per the mode."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.connection: aiormq.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel | None = None
        self.redis: Redis | None = None
        self.mark: AsyncScript | None = None

    async def setup(self, app: web.Application) -> None:
        if self.args.mode == "http":
            return
        self.connection = await aiormq.connect(self.args.amqp)
        self.channel = channel = await self.connection.channel(publisher_confirms=True)
        quorum: dict[str, Any] = {"x-queue-type": "quorum"}
        await channel.queue_declare(self.args.queue, durable=True, arguments=quorum)
        if self.args.mode == "publish-redis":
            self.redis = Redis.from_url(self.args.redis)
            self.mark = self.redis.register_script(MARK)

    async def cleanup(self, app: web.Application) -> None:
        if self.channel is not None and self.connection is not None:
            await self.channel.queue_delete(self.args.queue)
            await self.connection.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def start(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"session_id": secrets.token_urlsafe(24), "success": True})

    async def block(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.channel is not None:
            fields = orjson.loads(body)
            data = pybase64.b64decode(fields["data"], validate=True)
            await self.channel.basic_publish(
                data,
                routing_key=self.args.queue,
                properties=aiormq.spec.Basic.Properties(delivery_mode=2),
                mandatory=True,
            )
            if self.mark is not None:
                session = fields["session_id"]
                keys = [f"floor:{session}:bits", f"floor:{session}"]
                await self.mark(keys=keys, args=[fields["block_id"]])
        return web.Response(body=OK, content_type="application/json")


def build(args: argparse.Namespace) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    floor = Floor(args)
    app.router.add_post("/start_uploads", floor.start)
    app.router.add_post("/upload_blocks", floor.block)
    app.router.add_get("/readyz", lambda request: _ready())
    app.on_startup.append(floor.setup)
    app.on_cleanup.append(floor.cleanup)
    return app


async def _ready() -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server", description=__doc__)
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp", default="")
    parser.add_argument("--redis", default="")
    parser.add_argument("--queue", default="floor.blocks")
    args = parser.parse_args()
    web.run_app(
        build(args), host="127.0.0.1", port=args.port, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
