"""A real HTTP receiver for webhook tests: records every request, answers as each path is told."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from devstack.ports import HOST, free_port


@dataclass
class Hit:
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float  # monotonic seconds


@dataclass
class Receiver:
    url: str
    hits: list[Hit] = field(default_factory=list)
    # path -> answers in turn (an int status, or "hang", or "stream"); the last one repeats.
    script: dict[str, list[int | str]] = field(default_factory=dict)

    def at(self, path: str) -> list[Hit]:
        return [h for h in self.hits if h.path == path]

    async def wait(self, path: str, count: int = 1, timeout: float = 30.0) -> list[Hit]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.at(path)) >= count:
                return self.at(path)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{path}: {len(self.at(path))} of {count} requests in {timeout} s")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.hits.append(Hit(request.path, request.headers.copy(), body, time.monotonic()))
        answers = self.script.get(request.path, [200])
        seen = len(self.at(request.path))
        answer = answers[min(seen, len(answers)) - 1]
        if answer == "hang":
            await asyncio.sleep(3600)
        if answer == "stream":  # an answer far larger than anyone should read
            response = web.StreamResponse(status=200)
            await response.prepare(request)
            for _ in range(100 * 1024):
                await response.write(b"x" * 1024)
            return response
        if answer == 302:
            raise web.HTTPFound("/followed")
        return web.Response(status=int(answer), text="ok" if answer == 200 else "no")


@asynccontextmanager
async def receiving(tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    port = free_port()
    receiver = Receiver(f"{'https' if tls else 'http'}://{HOST}:{port}")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, HOST, port, ssl_context=tls).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()
