"""Sessions bound to the host that started them: its node key and its device certificate.

The certificate headers are the ones NGINX and ingress-nginx pass upstream
(``ssl-client-verify``, ``ssl-client-cert`` as URL-encoded PEM); here the test
plays the proxy, so it can also play an attacker who sends them directly.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import uuid
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from redis.asyncio import Redis

from clients.osquery_sim import block_body, judge_reply, start_body
from devstack.backends import Backends
from devstack.services import scrape
from shared.lifecycle import session_keys
from tests.certs import self_signed
from tests.stack import Stack

BLOCK = 1024
DATA = bytes(range(256)) * 10  # 2,560 bytes: three blocks


def make_cert(common_name: str) -> tuple[bytes, str, str]:
    """A device certificate: PEM, its SHA-256 fingerprint and serial (hex)."""
    _, cert = self_signed(common_name, organization="carve-test")
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return pem, cert.fingerprint(hashes.SHA256()).hex(), format(cert.serial_number, "x")


DEVICE_A = make_cert("host-a.example.org")
DEVICE_B = make_cert("host-b.example.org")


def cert_headers(device: tuple[bytes, str, str] | None) -> dict[str, str]:
    """What NGINX sets for a verified client certificate ($ssl_client_escaped_cert)."""
    if device is None:
        return {}
    return {
        "ssl-client-verify": "SUCCESS",
        "ssl-client-cert": quote(device[0].decode(), safe=""),
        "ssl-client-subject-dn": "CN=ignored",
    }


class Host:
    def __init__(self, url: str, node_key: str = "nk-1") -> None:
        self.url = url
        self.node_key = node_key
        self.carve_id = str(uuid.uuid4())
        self.request_id = str(uuid.uuid4())
        self.session_id = ""

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url + path, data=body, headers=headers) as resp,
        ):
            return resp.status, await resp.read()

    async def start(self, headers: dict[str, str], body_key: str | None = None) -> tuple[int, Any]:
        body = start_body(
            block_count=3,
            block_size=BLOCK,
            carve_size=len(DATA),
            carve_id=self.carve_id,
            request_id=self.request_id,
            node_key=self.node_key if body_key is None else body_key,
        )
        status, raw = await self.post("/start_uploads", body, headers)
        reply = json.loads(raw)
        self.session_id = reply.get("session_id", self.session_id)
        return status, reply

    async def block(self, i: int, headers: dict[str, str]) -> tuple[int, bytes]:
        chunk = DATA[i * BLOCK : (i + 1) * BLOCK]
        return await self.post(
            "/upload_blocks", block_body(i, self.session_id, self.request_id, chunk), headers
        )


def node_key(key: str) -> dict[str, str]:
    return {"Authorization": f"NodeKey {key}"}


async def test_start_records_the_device_and_only_its_certificate_may_send_blocks(
    stack: Stack,
) -> None:
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32")
    host = Host(ingest.url)
    status, reply = await host.start(cert_headers(DEVICE_A))
    assert status == 200 and reply["session_id"]
    doc = await stack.carve_doc(host.carve_id)
    assert doc is not None
    assert doc["device"] == {
        "common_name": "host-a.example.org",
        "subject_dn": "CN=host-a.example.org,O=carve-test",
        "serial": DEVICE_A[2],
        "fingerprint_sha256": DEVICE_A[1],
    }
    assert doc["host"] == "cert:" + DEVICE_A[1]
    # Another enrolled device, or none at all (straight to the ingest): refused, nothing stored.
    for headers in (cert_headers(DEVICE_B), {}, {"ssl-client-verify": "NONE"}):
        status, raw = await host.block(0, headers)
        assert status == 403, raw
        assert b"device certificate" in raw
    assert await stack.chunk_count(host.carve_id) == 0
    for i in range(3):
        status, raw = await host.block(i, cert_headers(DEVICE_A))
        assert status == 200 and judge_reply(status, raw).ok, raw
    done = await stack.wait_complete(host.carve_id)
    assert done["sha256"] == hashlib.sha256(DATA).hexdigest()
    assert "session_id" not in done  # only its hash outlives the carve


async def test_a_retried_start_from_another_device_is_a_conflict(stack: Stack) -> None:
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32")
    host = Host(ingest.url)
    status, first = await host.start(cert_headers(DEVICE_A))
    assert status == 200
    status, again = await host.start(cert_headers(DEVICE_A))
    assert (status, again["session_id"]) == (200, first["session_id"])
    status, reply = await host.start(cert_headers(DEVICE_B))
    assert (status, reply["code"]) == (409, "conflict") and "session_id" not in reply


async def test_certificate_headers_from_an_untrusted_peer_are_ignored(stack: Stack) -> None:
    """Without CARVE_TRUSTED_PROXIES (the default) the headers are attacker text."""
    host = Host(stack.ingest_url)
    status, _ = await host.start(cert_headers(DEVICE_A))
    assert status == 200
    doc = await stack.carve_doc(host.carve_id)
    assert doc is not None and doc["device"] is None
    assert doc["host"] == "nk:" + hashlib.sha256(b"nk-1").hexdigest()[:32]


async def test_a_garbled_certificate_from_the_proxy_is_refused(stack: Stack) -> None:
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32")
    headers = {"ssl-client-verify": "SUCCESS", "ssl-client-cert": "not%20a%20certificate"}
    status, reply = await Host(ingest.url).start(headers)
    assert (status, reply["code"]) == (400, "invalid_request") and "session_id" not in reply


async def test_one_device_is_one_host_whatever_its_node_keys(stack: Stack) -> None:
    ingest = await stack.start_ingest(trusted_proxies="127.0.0.1/32", max_active_carves_per_host=1)
    assert (await Host(ingest.url, "nk-1").start(cert_headers(DEVICE_A)))[0] == 200
    status, reply = await Host(ingest.url, "nk-2").start(cert_headers(DEVICE_A))
    assert (status, reply["code"]) == (429, "host_active_carves")
    assert (await Host(ingest.url, "nk-3").start(cert_headers(DEVICE_B)))[0] == 200


async def test_header_only_node_key_is_recorded_and_binds_the_carve(stack: Stack) -> None:
    """osquery 5.23+ may send the key only in the header: it still binds the session."""
    host = Host(stack.ingest_url)
    status, first = await host.start(node_key("nk-header"), body_key="")
    assert status == 200
    doc = await stack.carve_doc(host.carve_id)
    assert doc is not None
    assert doc["node_key_sha256"] == hashlib.sha256(b"nk-header").hexdigest()
    # A retried start with another key is not the same start.
    status, reply = await host.start(node_key("nk-other"), body_key="")
    assert (status, reply["code"]) == (409, "conflict")
    status, again = await host.start(node_key("nk-header"), body_key="")
    assert again["session_id"] == first["session_id"]
    # Its blocks must carry the key, and the same one.
    for headers in ({}, node_key("nk-other")):
        status, raw = await host.block(0, headers)
        assert status == 403 and b"node key" in raw, raw
    assert await stack.chunk_count(host.carve_id) == 0
    for i in range(3):
        assert (await host.block(i, node_key("nk-header")))[0] == 200
    await stack.wait_complete(host.carve_id)


@pytest.mark.parametrize("version_sends_header", [False, True])
async def test_body_node_key_binds_blocks_as_each_version_sends_them(
    stack: Stack, version_sends_header: bool
) -> None:
    """Before 5.23 blocks carry no key at all: still taken. From 5.23 on they must carry it."""
    host = Host(stack.ingest_url)
    headers = node_key("nk-1") if version_sends_header else {}
    assert (await host.start(headers))[0] == 200
    status, _ = await host.block(0, {})
    assert status == (403 if version_sends_header else 200)
    assert (await host.block(1, node_key("nk-2")))[0] == 403
    for i in range(3):
        assert (await host.block(i, headers))[0] == 200
    await stack.wait_complete(host.carve_id)


async def test_a_device_guessing_session_ids_stops_costing_lookups(
    stack: Stack, backends: Backends
) -> None:
    """Each block naming a session nobody issued costs a Redis round trip and a MongoDB
    query. Past CARVE_MAX_UNKNOWN_SESSIONS_PER_DEVICE of them, that device's guesses are
    refused with the same reply and no lookup; another device is not affected."""
    ingest = await stack.start_ingest(
        trusted_proxies="127.0.0.1/32", max_unknown_sessions_per_device=5
    )
    guesser = Host(ingest.url)

    async def guess() -> tuple[int, bytes]:
        guesser.session_id = secrets.token_urlsafe(24)
        return await guesser.block(0, cert_headers(DEVICE_A))

    looked_up = [await guess() for _ in range(5)]
    async with Redis.from_url(backends.redis.url) as redis:
        before = int((await redis.info("stats"))["total_commands_processed"])
        unlooked = [await guess() for _ in range(50)]
        spent = int((await redis.info("stats"))["total_commands_processed"]) - before - 1
    # The same answer as before (osquery's verdict unchanged), from no lookup at all.
    assert {reply for reply in looked_up + unlooked} == {looked_up[0]}
    status, raw = looked_up[0]
    assert status == 404 and b"unknown or ended session" in raw
    assert spent <= 2, spent  # 50 lookups would be 100 commands (HGETALL and GETBIT each)
    metrics = await scrape(ingest.url)
    assert metrics["carve_unknown_sessions_unlooked_total"] == 50
    # Another device carves on, and its own unknown session is still looked up.
    other = Host(ingest.url)
    status, reply = await other.start(cert_headers(DEVICE_B))
    assert status == 200, reply
    for i in range(3):
        assert await other.block(i, cert_headers(DEVICE_B)) == (200, b'{"success":true}')
    doc = await stack.wait_complete(other.carve_id, timeout=30)
    assert doc["blocks_received"] == 3
    # The guessing device's own carve, once its session is cached, is not refused either.
    own = Host(ingest.url)
    status, reply = await own.start(cert_headers(DEVICE_A))
    assert status == 200, reply
    assert await own.block(0, cert_headers(DEVICE_A)) == (200, b'{"success":true}')


async def test_a_host_still_sending_to_its_ended_carve_is_not_taken_for_a_guesser(
    stack: Stack, backends: Backends
) -> None:
    """osquery 5.21 and older skip a refused block and send the rest: a host whose carve the
    janitor failed may send many blocks of it. Those sessions were issued, so they are not
    counted as guesses, and the host's next carve is served by a replica that never cached
    its session."""
    settings = {"trusted_proxies": "127.0.0.1/32", "max_unknown_sessions_per_device": 5}
    first, second = await stack.start_ingest(**settings), await stack.start_ingest(**settings)
    ended = Host(first.url)
    status, reply = await ended.start(cert_headers(DEVICE_B))
    assert status == 200, reply
    # What the janitor does to a carve that went quiet: failed, then its Redis keys go.
    await stack.db["carves"].update_one(
        {"_id": ended.carve_id}, {"$set": {"status": "failed"}, "$unset": {"session_id": ""}}
    )
    async with Redis.from_url(backends.redis.url) as redis:
        await redis.delete(*session_keys(stack.env["CARVE_REDIS_KEY_PREFIX"], ended.session_id))
    ended.url = second.url
    for _ in range(20):  # block 0 again and again, as a host skipping refused blocks would
        status, raw = await ended.block(0, cert_headers(DEVICE_B))
        assert status == 404 and b"unknown or ended session" in raw
    metrics = await scrape(second.url)
    assert metrics.get("carve_unknown_sessions_unlooked_total", 0) == 0
    fresh = Host(first.url)
    status, reply = await fresh.start(cert_headers(DEVICE_B))
    assert status == 200, reply
    fresh.url = second.url  # started on one replica, its blocks on another: not cached there
    for i in range(3):
        assert await fresh.block(i, cert_headers(DEVICE_B)) == (200, b'{"success":true}')
    assert (await stack.wait_complete(fresh.carve_id, timeout=30))["blocks_received"] == 3
