"""Webhooks against a real receiver: signed (checked with the standardwebhooks library, not our
code), valid CloudEvents, Slack messages that stay inert, retries, dead deliveries, endpoints
that fail or hang without delaying others, TLS verified, and a service killed mid-delivery."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import secrets
import signal
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cloudevents.core.formats.json import JSONFormat
from cryptography.hazmat.primitives import serialization
from standardwebhooks import Webhook, WebhookVerificationError

from clients.osquery_sim import build_archive, carve
from devstack import ROOT
from devstack.services import scrape
from devstack.vault import POLICY, VaultAdmin
from tests.certs import self_signed
from tests.integration.test_events import hostile_tar
from tests.stack import Stack
from tests.uploads import random_bytes
from tests.webhook_receiver import Hit, receiving

KiB = 1024
ADMIN = "osquery-file-carve-admin"
MEMBERS = {"/var/log/auth.log": random_bytes(30_310, seed=5)}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def endpoints_file(tmp_path: Path, endpoints: list[dict[str, Any]]) -> str:
    path = tmp_path / f"webhooks-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(endpoints))
    return str(path)


def verified(hit: Hit, secret: str) -> Any:
    """The body, once the standardwebhooks library accepts its signature (raises otherwise)."""
    headers = {k: v for k, v in hit.headers.items() if k.lower().startswith("webhook-")}
    return Webhook(secret).verify(hit.body, headers)


async def carve_file(stack: Stack, tmp_path: Path, members: dict[str, bytes] = MEMBERS) -> str:
    guid = str(uuid.uuid4())
    archive = build_archive(members, tmp_path / guid, carve_guid=guid)
    async with aiohttp.ClientSession() as http:
        result = await carve(http, stack.ingest_url, archive, block_size=4 * KiB, carve_id=guid)
    assert result.ok, result
    await stack.wait_complete(guid)
    return guid


async def deliveries(stack: Stack, endpoint: str) -> list[dict[str, Any]]:
    return await stack.db["webhook_deliveries"].find({"endpoint": endpoint}).to_list()


async def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise TimeoutError(f"not true within {timeout} s")


async def test_every_event_is_delivered_signed_as_a_cloudevent_and_to_chat(
    stack: Stack, tmp_path: Path
) -> None:
    siem, chat = new_secret(), new_secret()
    async with receiving() as rx:
        config = endpoints_file(
            tmp_path,
            [
                {"name": "siem", "url": rx.url + "/siem", "secret": siem},
                {
                    "name": "chat",
                    "url": rx.url + "/chat",
                    "secret": chat,
                    "events": ["carve.completed"],
                    "format": "slack",
                },
            ],
        )
        events = await stack.start_events(
            webhooks_file=config, console_url="https://carves.example.org/ui/"
        )
        carve_id = await carve_file(stack, tmp_path)
        hits = await rx.wait("/siem", 2)
        (message,) = await rx.wait("/chat", 1)
        await asyncio.sleep(1.0)  # nothing more comes
        counts = await scrape(events.url)
    assert len(rx.at("/siem")) == 2 and len(rx.at("/chat")) == 1
    kinds = []
    for hit in hits:
        payload = verified(hit, siem)
        event = JSONFormat().read(None, hit.body)  # a valid CloudEvent, as the SDK reads it
        attributes = event.get_attributes()
        assert attributes["subject"] == carve_id == payload["data"]["carve_id"]
        assert hit.headers["webhook-id"] == attributes["id"]
        assert hit.headers["content-type"] == "application/json"
        kinds.append(attributes["type"])
        with pytest.raises(WebhookVerificationError):  # another endpoint's secret fails
            verified(hit, chat)
    assert kinds == ["carve.started", "carve.completed"]
    payload = verified(message, chat)
    data = json.loads(hits[1].body)["data"]
    sha256, host, size = data["sha256"], data["host"], data["carve_size"] / 1024
    assert payload == {
        "text": f"carve complete: `/var/log/auth.log` from `{host}`, {size:.1f} KiB, "
        f"sha256 `{sha256}`, "
        f"<https://carves.example.org/ui/#/carves/{carve_id}|open in the console>"
    }
    assert message.headers["webhook-id"] == hits[1].headers["webhook-id"]
    rows = await deliveries(stack, "siem")
    assert {(r["state"], r["attempts"], r["last_status"]) for r in rows} == {("delivered", 1, 200)}
    assert counts['carve_webhook_attempts_total{endpoint="siem",outcome="delivered"}'] == 2
    assert counts['carve_webhook_delivery_seconds_count{endpoint="chat"}'] == 1


async def test_a_failing_endpoint_gets_it_once_it_recovers_and_a_hanging_one_delays_nobody(
    stack: Stack, tmp_path: Path
) -> None:
    secret = new_secret()
    async with receiving() as rx:
        rx.script = {"/flaky": [500, 503, 500, 200], "/hang": ["hang"], "/gone": [410]}
        only = ["carve.completed"]
        config = endpoints_file(
            tmp_path,
            [
                {"name": name, "url": f"{rx.url}/{name}", "secret": secret, "events": only}
                for name in ("flaky", "hang", "gone", "fine")
            ],
        )
        await stack.start_events(webhooks_file=config, webhook_backoff=0.2, webhook_read_timeout=30)
        started = asyncio.get_running_loop().time()
        carve_id = await carve_file(stack, tmp_path)
        (fine,) = await rx.wait("/fine", 1)
        flaky = await rx.wait("/flaky", 4)
        await rx.wait("/gone", 3)

        async def gone_recorded() -> list[dict[str, Any]]:
            rows = await deliveries(stack, "gone")
            return rows if rows[0]["attempts"] >= 2 else []

        (gone,) = await wait_until(gone_recorded)
        (hung,) = await deliveries(stack, "hang")
        assert rx.at("/hang")  # asked, and still holding its connection
    # The hanging endpoint held only its own sender: the others went out meanwhile.
    assert fine.at - started < 10 and json.loads(fine.body)["subject"] == carve_id
    assert {h.headers["webhook-id"] for h in flaky} == {fine.headers["webhook-id"]}
    (row,) = await deliveries(stack, "flaky")
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 4, 200)
    assert gone["state"] == "pending" and gone["last_status"] == 410  # not disabled, retried
    assert hung["state"] == "pending" and hung["attempts"] == 0


async def test_a_delivery_is_dead_after_the_retry_window(stack: Stack, tmp_path: Path) -> None:
    secret = new_secret()
    async with receiving() as rx:
        rx.script = {"/down": [500]}
        config = endpoints_file(
            tmp_path,
            [
                {
                    "name": "down",
                    "url": rx.url + "/down",
                    "secret": secret,
                    "events": ["carve.started"],
                }
            ],
        )
        events = await stack.start_events(
            webhooks_file=config, webhook_backoff=0.1, webhook_retry_for=1.0
        )
        await carve_file(stack, tmp_path)

        async def dead() -> list[dict[str, Any]]:
            return [r for r in await deliveries(stack, "down") if r["state"] == "dead"]

        (row,) = await wait_until(dead)
        counts = await scrape(events.url)
    assert row["attempts"] == len(rx.at("/down")) >= 2 and row["last_error"] == "HTTP 500"
    assert row["dead_at"] - row["created_at"] >= dt.timedelta(seconds=1.0)
    assert counts['carve_webhook_dead_total{endpoint="down"}'] == 1


def receiver_tls(tmp_path: Path) -> tuple[ssl.SSLContext, str]:
    """A TLS context for 127.0.0.1 with a fresh self-signed certificate, and its PEM's path."""
    key, cert = self_signed("webhook receiver", ip="127.0.0.1")
    cert_path, key_path = tmp_path / "rx.pem", tmp_path / "rx.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, str(cert_path)


async def test_tls_is_verified_redirects_not_followed_answers_read_to_a_bound(
    stack: Stack, tmp_path: Path
) -> None:
    secret = new_secret()
    tls, ca = receiver_tls(tmp_path)
    async with receiving(tls) as rx:
        rx.script = {"/moved": [302], "/big": ["stream"]}
        only = ["carve.started"]
        rows = [
            {"name": n, "url": f"{rx.url}/{n}", "secret": secret, "events": only}
            for n in ("moved", "big")
        ]
        # Without the private CA, nothing is sent; with it (CARVE_WEBHOOK_CACERT), all is.
        untrusting = await stack.start_events(
            webhooks_file=endpoints_file(tmp_path, [{**rows[1], "name": "untrusted"}]),
            webhook_backoff=30,
        )
        await stack.start_events(
            webhooks_file=endpoints_file(tmp_path, rows), webhook_cacert=ca, webhook_backoff=30
        )
        await carve_file(stack, tmp_path)
        await rx.wait("/big", 1)

        async def settled() -> bool:
            rows = await stack.db["webhook_deliveries"].find({"attempts": {"$gte": 1}}).to_list()
            return len(rows) == 3

        await wait_until(settled)
        await untrusting.stop()
    by_name = {r["endpoint"]: r for r in await stack.db["webhook_deliveries"].find().to_list()}
    assert by_name["big"]["state"] == "delivered"  # the 100 MiB answer was not waited for
    assert (by_name["moved"]["state"], by_name["moved"]["last_status"]) == ("pending", 302)
    assert rx.at("/followed") == []
    untrusted = by_name["untrusted"]
    assert untrusted["state"] == "pending" and untrusted["last_status"] is None
    assert "Certificate" in untrusted["last_error"] and len(rx.hits) == 2


async def test_hostile_names_stay_inert_in_chat(stack: Stack, tmp_path: Path) -> None:
    secret = new_secret()
    async with receiving() as rx:
        config = endpoints_file(
            tmp_path,
            [{"name": "chat", "url": rx.url + "/chat", "secret": secret, "format": "slack",
              "events": ["carve.completed"]}],
        )  # fmt: skip
        await stack.start_events(webhooks_file=config, console_url="https://c.example/ui/")
        guid = str(uuid.uuid4())
        path = tmp_path / f"{guid}.tar"
        path.write_bytes(hostile_tar(guid))
        async with aiohttp.ClientSession() as http:
            result = await carve(http, stack.ingest_url, path, block_size=4 * KiB, carve_id=guid)
        assert result.ok
        (hit,) = await rx.wait("/chat", 1)
    text = verified(hit, secret)["text"]
    assert len(hit.body) < 1024
    # The first path is the HTML one: escaped for Slack and set in code.
    assert text.startswith("carve complete: `/tmp/&lt;img src=x onerror=alert(1)&gt;.txt` +4 more")
    # The only < and > left are the link's own.
    assert text.count("<") == 1 and text.count(">") == 1 and text.endswith("|open in the console>")


async def test_a_killed_carve_events_delivers_after_restart_with_the_same_id(
    stack: Stack, tmp_path: Path
) -> None:
    secret = new_secret()
    async with receiving() as rx:
        rx.script = {"/slow": ["hang", 200]}
        config = endpoints_file(
            tmp_path,
            [
                {
                    "name": "slow",
                    "url": rx.url + "/slow",
                    "secret": secret,
                    "events": ["carve.completed"],
                }
            ],
        )
        env = {
            "CARVE_WEBHOOKS_FILE": config,
            "CARVE_WEBHOOK_CONNECT_TIMEOUT": "1",
            "CARVE_WEBHOOK_READ_TIMEOUT": "4",  # its claim: 1 + 2 x 4 + 5 s
        }
        first = await stack.spawn("events", **env)
        await carve_file(stack, tmp_path)
        (cut,) = await rx.wait("/slow", 1)  # the delivery is under way: kill it there
        first.kill(signal.SIGKILL)
        (row,) = await deliveries(stack, "slow")
        assert row["state"] == "pending" and row["claim_until"] is not None
        # Its claim lapses (timeouts + 5 s): a new process sends it again.
        await stack.spawn("events", **{**env, "CARVE_WEBHOOK_READ_TIMEOUT": "1"})
        _, again = await rx.wait("/slow", 2, timeout=60)
    assert again.headers["webhook-id"] == cut.headers["webhook-id"]
    assert verified(again, secret)["type"] == "carve.completed"
    (row,) = await deliveries(stack, "slow")
    assert (row["state"], row["last_status"]) == ("delivered", 200)


async def test_a_bad_endpoint_configuration_stops_the_service_with_a_clear_error(
    stack: Stack, tmp_path: Path
) -> None:
    bad = endpoints_file(
        tmp_path, [{"name": "x", "url": "http://127.0.0.1:9/", "secret": "not-a-whsec"}]
    )
    proc = stack.launch("events", CARVE_WEBHOOKS_FILE=bad)
    assert await asyncio.to_thread(proc.proc.wait, 30) != 0
    log = proc.log_path.read_text()
    assert "webhook endpoint x: secret" in log and "whsec_" in log
    assert "not-a-whsec" not in log  # the value itself is never printed


async def test_admins_see_deliveries_without_bodies_or_urls(
    stack: Stack, vault: VaultAdmin, tmp_path: Path
) -> None:
    vault.client.sys.create_or_update_policy(
        ADMIN, (ROOT / "deploy" / "vault" / f"{ADMIN}.hcl").read_text()
    )
    admin, reader = vault.token(POLICY, ADMIN).token, vault.token(POLICY).token
    download = await stack.start_download(vault_cache_ttl=0.5)
    secret = new_secret()
    async with receiving() as rx, aiohttp.ClientSession() as http:
        rx.script = {"/down": [503]}
        config = endpoints_file(
            tmp_path,
            [
                {"name": n, "url": f"{rx.url}/{n}?token=s3cr3t", "secret": secret}
                for n in ("up", "down")
            ],
        )
        await stack.start_events(webhooks_file=config, webhook_backoff=60)
        carve_id = await carve_file(stack, tmp_path)
        await rx.wait("/up", 2)
        await rx.wait("/down", 2)

        async def listed(query: str, token: str = admin) -> tuple[int, Any]:
            url = f"{download.url}/api/v1/webhooks/deliveries{query}"
            async with http.get(url, headers={"X-Vault-Token": token}) as resp:
                return resp.status, await resp.json()

        async def all_tried() -> bool:
            _, body = await listed("?endpoint=down")
            return all(d["attempts"] == 1 for d in body["deliveries"])

        await wait_until(all_tried)
        status, refused = await listed("", reader)
        status_all, everything = await listed("")
        _, up = await listed("?state=delivered")
        _, down = await listed(f"?endpoint=down&carve_id={carve_id}&limit=1")
        _, rest = await listed(f"?endpoint=down&carve_id={carve_id}&cursor={down['next_cursor']}")
        bad, _ = await listed("?state=lost")
    assert (status, refused["code"]) == (403, "forbidden") and status_all == 200
    assert len(everything["deliveries"]) == 4 and everything["next_cursor"] is None
    assert {(d["endpoint"], d["state"]) for d in up["deliveries"]} == {("up", "delivered")}
    (first,) = down["deliveries"]
    (second,) = rest["deliveries"]
    assert {first["event_type"], second["event_type"]} == {"carve.started", "carve.completed"}
    assert (first["state"], first["dead"], first["attempts"]) == ("pending", False, 1)
    assert (first["last_status"], first["last_error"]) == (503, "HTTP 503")
    assert first["next_attempt"].endswith("Z") and first["carve_id"] == carve_id
    text = json.dumps(everything)
    assert "s3cr3t" not in text and rx.url not in text and "specversion" not in text
    assert bad == 400

    async def audited() -> set[tuple[str, int]]:  # rows are written after each answer
        rows = await stack.db["audit"].find({"action": "webhooks"}).to_list()
        outcomes = {(r["outcome"], r["status"]) for r in rows}
        return outcomes if ("refused", 400) in outcomes else set()  # the last one asked

    outcomes = await wait_until(audited, timeout=10)
    assert outcomes == {("denied", 403), ("allowed", 200), ("refused", 400)}
