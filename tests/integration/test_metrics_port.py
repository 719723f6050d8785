"""CARVE_METRICS_PORT: /metrics on a port of its own, serving nothing else (shared/health.py).

The Kubernetes example lets the monitoring namespace reach that port only; this checks, on a
real ingest process, that the port answers /metrics and none of the ingest's endpoints (where
a pod of the trusted proxy range could claim any device certificate), while the service's own
port goes on serving them.
"""

from __future__ import annotations

import aiohttp

from clients.osquery_sim import start_body
from devstack.ports import HOST, free_port
from tests.console import DEVICE, cert_headers
from tests.stack import Stack


async def test_the_metrics_port_serves_metrics_and_nothing_else(stack: Stack) -> None:
    metrics_port = free_port()
    ingest = await stack.spawn(
        "ingest", CARVE_METRICS_PORT=str(metrics_port), CARVE_TRUSTED_PROXIES="127.0.0.1/32"
    )
    metrics = f"http://{HOST}:{metrics_port}"
    body = start_body(
        block_count=1,
        block_size=1024,
        carve_size=10,
        carve_id="c1",
        request_id="r1",
        node_key="nk-metrics",
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(metrics + "/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            text = await resp.text()
            assert "# TYPE carve_starts_total counter" in text
            # The scrape ran the readiness checks here too (shared.metrics' scrape hooks).
            assert 'carve_check_up{check="mongodb"} 1.0' in text
        # What a pod of the trusted range could try, with a certificate it claims.
        for path in ("/start_uploads", "/upload_blocks", "/api/v1/osquery/carve/begin"):
            async with http.post(metrics + path, data=body, headers=cert_headers(DEVICE[0])) as r:
                assert r.status == 404, path
        for path in ("/readyz", "/healthz", "/"):
            async with http.get(metrics + path) as resp:
                assert resp.status == 404, path
        # The service's own port is unchanged: its metrics, and the osquery endpoint.
        async with http.get(ingest.url + "/metrics") as resp:
            assert resp.status == 200
        async with http.post(
            ingest.url + "/start_uploads", data=body, headers=cert_headers(DEVICE[0])
        ) as resp:
            assert resp.status == 200
            assert "session_id" in await resp.json()
