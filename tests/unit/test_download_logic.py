"""Pure logic of the download service: ranges, member paths, client addresses, the token cache."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request
from prometheus_client import CollectorRegistry, Gauge

from services.download.archive import ByteRange, RangeNotSatisfiable, parse_range
from services.download.audit import outcome_of
from services.download.members import clean_member_path, original_path
from services.download.metrics import DownloadMetrics
from services.download.slots import StreamBusy, StreamSlots, TarBusy, TarJobs
from services.download.tokens import Authorizer, Identity
from shared.errors import Forbidden, InvalidRequest, Unauthorized, Unavailable
from shared.proxies import client_address
from shared.vault import InvalidToken


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None),
        ("", 100, None),
        ("bytes=0-9", 100, ByteRange(0, 9)),
        ("bytes=90-", 100, ByteRange(90, 99)),
        ("bytes=-10", 100, ByteRange(90, 99)),
        ("bytes=-1000", 100, ByteRange(0, 99)),
        ("bytes=50-5000", 100, ByteRange(50, 99)),
        ("bytes=99-99", 100, ByteRange(99, 99)),
        (" bytes=1-2 ", 100, ByteRange(1, 2)),
        ("bytes=0-1,4-5", 100, None),  # several ranges: whole file
        ("bytes=5-1", 100, None),  # inverted: ignored
        ("items=0-1", 100, None),
        ("bytes=-", 100, None),
        ("bytes=a-b", 100, None),
    ],
)
def test_parse_range(header: str | None, size: int, expected: ByteRange | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100)])
def test_unsatisfiable_range(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.status == 416
    assert caught.value.details["size"] == size


def test_byte_range_content_range() -> None:
    assert ByteRange(10, 19).length == 10
    assert ByteRange(10, 19).content_range(100) == "bytes 10-19/100"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("/tmp/osquery_carve_3f1c-aa/var/log/auth.log", "/var/log/auth.log"),
        ("tmp/osquery_carve_3f1c/etc/hosts", "/etc/hosts"),
        ("/private/var/tmp/osquery_carve_x/Users/a/b", "/Users/a/b"),
        ("/tmp/osquery_carve_3f1c", "/"),
        ("/tmp/osquery_carve_3f1c/", "/"),
        ("/var/log/plain.log", "/var/log/plain.log"),  # no prefix: shown as is
        ("/tmp/osquery_carve_a/tmp/osquery_carve_b/x", "/tmp/osquery_carve_b/x"),  # first only
    ],
)
def test_original_path(name: str, path: str) -> None:
    assert original_path(name) == path


@pytest.mark.parametrize(
    ("raw", "clean"),
    [("var/log/a", "/var/log/a"), ("/var//log/./a", "/var/log/a"), ("/a b/c", "/a b/c")],
)
def test_clean_member_path(raw: str, clean: str) -> None:
    assert clean_member_path(raw) == clean


@pytest.mark.parametrize("raw", ["../etc/passwd", "/var/../../etc", "a\x00b", "a\nb", "/", ""])
def test_clean_member_path_refuses(raw: str) -> None:
    with pytest.raises(InvalidRequest):
        clean_member_path(raw)


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1/32"))


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.9", None, "203.0.113.9"),
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.9.9.9", "198.51.100.1"),  # rightmost untrusted
        ("127.0.0.1", "10.0.0.1, 10.0.0.2", "10.0.0.1"),  # all trusted: the first hop
        ("10.1.2.3", None, "10.1.2.3"),
    ],
)
def test_client_address(peer: str, xff: str | None, expected: str) -> None:
    headers = {"X-Forwarded-For": xff} if xff else {}
    request = make_mocked_request("GET", "/", headers=headers)
    request._transport_peername = (peer, 1234)
    assert request.remote == peer
    assert client_address(request, TRUSTED) == expected


def test_outcome_of() -> None:
    assert [outcome_of(s) for s in (200, 206, 304, 401, 403, 404, 409, 500, 503)] == [
        "allowed",
        "allowed",
        "allowed",
        "denied",
        "denied",
        "refused",
        "refused",
        "error",
        "error",
    ]


def test_identity_merges_token_and_identity_policies() -> None:
    identity = Identity.from_lookup(
        {
            "policies": ["default"],
            "identity_policies": ["responders"],
            "display_name": "userpass-ann",
            "entity_id": "e-1",
            "accessor": "acc",
        }
    )
    assert identity.policies == {"default", "responders"}
    assert (identity.display_name, identity.entity_id, identity.accessor) == (
        "userpass-ann",
        "e-1",
        "acc",
    )
    assert Identity.from_lookup({"policies": None}).policies == frozenset()


class FakeVault:
    """Counts lookups; answers from a table, or fails like an unreachable Vault."""

    def __init__(self, table: dict[str, dict[str, Any]], delay: float = 0.0) -> None:
        self.table = table
        self.delay = delay
        self.calls = 0
        self.down = False

    async def lookup_self(self, token: str) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise Unavailable("vault", "ConnectionError")
        if token not in self.table:
            raise InvalidToken("unknown")
        return self.table[token]


def _authorizer(vault: FakeVault, ttl: float = 60.0) -> Authorizer:
    metrics = DownloadMetrics.create(CollectorRegistry())
    return Authorizer(vault, "carves", cache_ttl=ttl, metrics=metrics)


async def test_authorizer_caches_both_answers_and_shares_lookups() -> None:
    vault = FakeVault({"good": {"policies": ["carves"], "accessor": "a1"}}, delay=0.05)
    auth = _authorizer(vault)
    identities = await asyncio.gather(*(auth.authenticate("good") for _ in range(10)))
    assert {i.accessor for i in identities} == {"a1"}
    assert vault.calls == 1  # ten concurrent requests, one lookup
    for _ in range(3):
        with pytest.raises(Unauthorized):
            await auth.authenticate("bad")
    assert vault.calls == 2  # the refusal is cached too


async def test_authorizer_policy_and_missing_token() -> None:
    vault = FakeVault({"plain": {"policies": ["default"]}})
    auth = _authorizer(vault)
    identity = await auth.authenticate("plain")
    with pytest.raises(Forbidden):
        auth.require_policy(identity)
    auth.require_policy(identity, "default")
    for missing in (None, ""):
        with pytest.raises(Unauthorized):
            await auth.authenticate(missing)
    assert vault.calls == 1


async def test_authorizer_never_caches_an_outage() -> None:
    vault = FakeVault({"good": {"policies": ["carves"]}})
    auth = _authorizer(vault)
    vault.down = True
    with pytest.raises(Unavailable):
        await auth.authenticate("good")
    vault.down = False
    assert (await auth.authenticate("good")).policies == {"carves"}
    assert vault.calls == 2


async def test_authorizer_without_cache_asks_every_time() -> None:
    vault = FakeVault({"good": {"policies": ["carves"]}})
    auth = _authorizer(vault, ttl=0)
    for _ in range(3):
        await auth.authenticate("good")
    assert vault.calls == 3


def test_stream_slots_refuse_past_the_limit() -> None:
    slots = StreamSlots(2, per_responder=2)
    with slots.hold("a"), slots.hold("b"):
        with pytest.raises(Unavailable) as caught, slots.hold("c"):
            pass
        assert "2 downloads" in caught.value.reason
        assert slots.used == 2
    assert slots.used == 0
    with slots.hold("a"):  # freed slots are reused
        assert slots.used == 1


def test_stream_slots_keep_a_share_per_responder() -> None:
    streaming = Gauge("streams", "streams", registry=CollectorRegistry())
    slots = StreamSlots(3, per_responder=2, streaming=streaming)
    with slots.hold("hog"), slots.hold("hog"):
        with pytest.raises(StreamBusy) as caught, slots.hold("hog"):
            pass
        assert (caught.value.status, caught.value.code) == (429, "stream_busy")
        with slots.hold("other"):  # the hog's share leaves a slot to the others
            assert slots.used == 3 and streaming._value.get() == 3
    assert slots.used == 0 and streaming._value.get() == 0
    with slots.hold("hog"), slots.hold("hog"):  # released shares are whole again
        pass


async def test_tar_jobs_share_per_carve_and_per_responder() -> None:
    running = Gauge("jobs", "jobs", registry=CollectorRegistry())
    jobs = TarJobs(3, per_carve=2, per_responder=2, running=running, max_waiting=1)
    admitted: list[str] = []

    async def job(carve: str, responder: str, release: asyncio.Event) -> None:
        async with jobs.hold(carve, responder):
            admitted.append(f"{carve}/{responder}")
            await release.wait()

    first, second = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(job("c1", "ann", first)),
        asyncio.create_task(job("c1", "bob", first)),
        asyncio.create_task(job("c1", "cy", second)),  # past the carve's share: waits
        asyncio.create_task(job("c2", "ann", second)),
        asyncio.create_task(job("c3", "ann", second)),  # past ann's share: waits
    ]
    await asyncio.sleep(0.05)
    assert admitted == ["c1/ann", "c1/bob", "c2/ann"]
    assert running._value.get() == 3
    # One waiting per share at most: the next one is told to come back later.
    with pytest.raises(TarBusy) as caught:
        async with jobs.hold("c1", "dee"):
            pass
    assert (caught.value.status, caught.value.details) == (429, {"limit": "carve"})
    with pytest.raises(TarBusy) as caught:
        async with jobs.hold("c9", "ann"):
            pass
    assert caught.value.details == {"limit": "responder"}
    first.set()  # c1/ann and c1/bob end: the two waiting jobs get their workers
    await asyncio.sleep(0.05)
    assert sorted(admitted[3:]) == ["c1/cy", "c3/ann"]
    second.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1)
    assert running._value.get() == 0
