"""The observability kit against a real Prometheus scraping real services.

promtool's tests (tests/unit/test_observability.py) feed the rules made-up series; here a
private Prometheus scrapes an ingest, an assembler and two download services while a carve
goes through, so the label names the rules and the dashboard group by must be the ones the
services really export, every rule must evaluate without error, and an alert must fire from
a real outage (a download service whose Vault does not answer) with its runbook link.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from clients.osquery_sim import build_synthetic_archive, carve
from devstack.ports import HOST, free_port
from tests.prometheus import PrometheusServer
from tests.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "observability" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "observability" / "grafana-dashboard.json"
KiB = 1024


def _hostport(url: str) -> str:
    return url.removeprefix("http://")


@pytest.fixture
async def watched(stack: Stack, tmp_path: Path) -> AsyncIterator[tuple[Stack, PrometheusServer]]:
    """The stack with a download service, one whose Vault is away, and a Prometheus
    scraping all four and evaluating the rules (each alert's ``for`` cut to 0 s)."""
    download = await stack.start_download(census_ttl=0)  # the counts the rules see, at once
    nobody = f"http://{HOST}:{free_port()}"
    vaultless = await stack.start_download(vault_addr=nobody, vault_timeout=1.0)
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
    rule_file = tmp_path / "alerts.yaml"
    rule_file.write_text(yaml.safe_dump(rules))
    targets = [_hostport(app.url) for app in stack.apps[:2]] + [
        _hostport(download.url),
        _hostport(vaultless.url),
    ]
    prometheus = PrometheusServer(tmp_path / "prometheus", targets, [rule_file])
    prometheus.start()
    try:
        await prometheus.ready()
        await prometheus.wait_for('count(up{job="carve"} == 1) == 4')
        yield stack, prometheus
    finally:
        prometheus.stop()


async def test_rules_and_panels_work_on_what_the_services_export(
    watched: tuple[Stack, PrometheusServer], tmp_path: Path
) -> None:
    stack, prometheus = watched
    # Two carves: a labelled series appears with its first increment, and rate() needs it
    # scraped before it grows; the second carve makes every rate below move.
    for n in (1, 2):
        archive = build_synthetic_archive(60 * KiB, tmp_path, carve_guid=str(uuid.uuid4()))
        async with aiohttp.ClientSession() as http:
            result = await carve(http, stack.ingest_url, archive, block_size=4 * KiB)
        assert result.ok
        await stack.wait_complete(result.carve_id)
        await prometheus.wait_for(f'max by (status) (carve_carves{{status="complete"}}) == {n}')
        # Every series the rates below read must be scraped once before the second carve
        # grows it (on a loaded machine the first scrape can come after both carves).
        for series in ("carve_blocks_total", "carve_request_seconds_count",
                       "carve_assembler_lag_seconds_count"):  # fmt: skip
            await prometheus.wait_for(f"{series} > 0")

    # The labels the panels group by are the services' own.
    blocks = await prometheus.wait_for("sum by (outcome) (rate(carve_blocks_total[5m])) > 0")
    assert {r["metric"]["outcome"] for r in blocks} == {"accepted"}
    queues = await prometheus.query("max by (queue) (carve_queue_messages)")
    queue = stack.env["CARVE_AMQP_QUEUE"]
    assert {r["metric"]["queue"] for r in queues} == {queue, f"{queue}.dead", f"{queue}.retry"}
    latency = await prometheus.wait_for(
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(carve_request_seconds_bucket[5m])))"
    )
    assert {"start_uploads", "upload_blocks"} <= {r["metric"].get("endpoint") for r in latency}
    lag = await prometheus.wait_for(
        "histogram_quantile(0.99, sum by (le) (rate(carve_assembler_lag_seconds_bucket[5m])))"
    )
    assert 0 < float(lag[0]["value"][1]) <= 5
    checks = await prometheus.query("min by (check) (carve_check_up)")
    assert {r["metric"]["check"]: r["value"][1] for r in checks} == {
        "mongodb": "1",
        "redis": "1",
        "rabbitmq": "1",
        "vault": "0",  # the Vault-less download
    }

    # Every panel's query evaluates (the rate window as Grafana would give it).
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    answered = 0
    for expr in exprs:
        expr = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")  # All
        answered += bool(await prometheus.query(expr))
    assert answered >= len(exprs) // 2, "most panels show data from these three services"

    # Every rule evaluates without error; the Vault outage fires its alert, and only the
    # alerts this stack calls for fire.
    async def firing() -> dict[str, dict[str, object]]:
        alerts = (await prometheus.api("alerts"))["alerts"]
        return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}

    for _ in range(20):
        if "CarveVaultUnavailable" in await firing():
            break
        await asyncio.sleep(0.5)
    groups = (await prometheus.api("rules"))["groups"]
    evaluated = [rule for group in groups for rule in group["rules"]]
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    assert len(evaluated) == sum(len(group["rules"]) for group in shipped)
    assert {r["name"]: r["health"] for r in evaluated if r["health"] != "ok"} == {}
    fired = await firing()
    assert set(fired) == {"CarveVaultUnavailable"}
    alert = fired["CarveVaultUnavailable"]
    assert alert["labels"] == {
        "alertname": "CarveVaultUnavailable",
        "check": "vault",
        "severity": "critical",
    }
    annotations = alert["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["runbook_url"] == "docs/runbooks.md#carvevaultunavailable"
    assert annotations["summary"] == "A carve service cannot reach Vault (vault)."
