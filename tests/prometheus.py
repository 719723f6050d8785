"""A private Prometheus (Debian's ``prometheus`` package) on a free loopback port, scraping
services of a test and evaluating rule files, with its HTTP API's queries."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from devstack.ports import HOST
from devstack.servers import Server


class PrometheusServer(Server):
    name = "prometheus"

    def __init__(self, workdir: Path, targets: list[str], rule_files: list[Path]) -> None:
        super().__init__(workdir)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {"job_name": "carve", "static_configs": [{"targets": targets}]},
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))

    def command(self) -> list[str]:
        return [
            "prometheus",
            "--config.file", str(self.workdir / "prometheus.yml"),
            "--storage.tsdb.path", str(self.workdir / "data"),
            "--web.listen-address", f"{HOST}:{self.port}",
            "--log.level", "warn",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def ready(self, timeout: float = 30.0) -> None:
        """Once its TSDB and rules are loaded (``/-/ready``; the API answers 503 before)."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with aiohttp.ClientSession() as http:
            while asyncio.get_running_loop().time() < deadline:
                async with http.get(f"{self.url}/-/ready") as resp:
                    if resp.status == 200:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout} s")

    async def api(self, path: str, **params: str) -> Any:
        """``data`` of a successful API answer (an error fails with Prometheus' message)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.url}/api/v1/{path}", params=params) as resp,
        ):
            body = await resp.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        data = await self.api("query", query=expr)
        assert data["resultType"] in ("vector", "scalar"), data
        return data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]

    async def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """The result of ``expr`` once it is not empty."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            if result := await self.query(expr):
                return result
            await asyncio.sleep(0.5)
        raise AssertionError(f"{expr} still empty after {timeout} s")
