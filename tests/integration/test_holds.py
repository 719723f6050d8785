"""Legal holds, expiry and case tags against real OpenBao, RabbitMQ and SecantusDB: a held carve
is never expired or deleted, the hold's events reach the exchange, and every change is audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest

from devstack.vault import POLICY, VaultAdmin
from services.janitor.main import run_sweep
from shared.carves import Status
from shared.events import EventType
from shared.lifecycle import transition
from tests.audit_rows import settled_rows
from tests.events import listening
from tests.stack import RunningApp, Stack
from tests.uploads import Upload, random_bytes

KiB = 1024
ADMIN = "osquery-file-carve-admin"


def later(days: float) -> Any:
    return lambda: datetime.now(UTC) + timedelta(days=days)


@dataclass
class Admin:
    stack: Stack
    url: str
    token: str  # read and admin policies
    reader: str  # the read policy only
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        headers = {"X-Vault-Token": token or self.token}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = orjson.dumps(body)
        async with self.http.request(method, self.url + path, data=data, headers=headers) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None

    async def hold(self, carve_id: str, case: str, reason: str = "litigation") -> tuple[int, Any]:
        return await self.call(
            "PUT", f"/api/v1/carves/{carve_id}/hold", {"case": case, "reason": reason}
        )

    async def release(self, carve_id: str, case: str) -> tuple[int, Any]:
        return await self.call("DELETE", f"/api/v1/carves/{carve_id}/hold/{case}")

    async def delete(self, carve_id: str) -> tuple[int, Any]:
        return await self.call("DELETE", f"/api/v1/carves/{carve_id}")


@pytest.fixture
async def admin(stack: Stack, vault: VaultAdmin) -> AsyncIterator[Admin]:
    download = await stack.start_download(vault_cache_ttl=0.5)
    async with aiohttp.ClientSession() as http:
        yield Admin(
            stack, download.url, vault.token(POLICY, ADMIN).token, vault.token(POLICY).token, http
        )


async def complete(stack: Stack, seed: int) -> Upload:
    upload = Upload(stack, random_bytes(5 * 4 * KiB + 100, seed), 4 * KiB)
    async with aiohttp.ClientSession() as http:
        await upload.start(http)
        await upload.send_all(http, range(upload.count))
    await stack.wait_complete(upload.carve_id)
    return upload


async def sweep_at(stack: Stack, days: float) -> dict[str, int]:
    janitor: RunningApp = await stack.start_janitor(clock=later(days))
    return dict((await run_sweep(janitor.app)).actions)


async def test_a_hold_keeps_the_carve_from_expiry_and_delete_until_released(
    admin: Admin, stack: Stack
) -> None:
    upload = await complete(stack, seed=1)
    cid = upload.carve_id
    async with listening(stack.env["CARVE_AMQP_URL"], stack.env["CARVE_EVENTS_EXCHANGE"]) as ears:
        status, view = await admin.hold(cid, "IR-2026-0042", "preserve for court")
        assert status == 201
        assert [(h["case"], h["reason"], h["placed_by"]) for h in view["holds"]] == [
            ("IR-2026-0042", "preserve for court", "token-token")
        ]
        # The janitor, 31 days on (past the 30-day retention), keeps it, bytes and all.
        actions = await sweep_at(stack, 31)
        assert actions.get("expired", 0) == 0
        assert await stack.chunk_count(cid) == upload.count
        # So does an administrator's delete: 409 held, naming the cases.
        status, body = await admin.delete(cid)
        assert (status, body["code"], body["holds"]) == (409, "held", ["IR-2026-0042"])
        assert "legal hold" in body["error"]
        assert (await stack.carve_doc(cid) or {})["status"] == "complete"
        status, view = await admin.release(cid, "IR-2026-0042")
        assert (status, view["holds"]) == (200, [])
        placed = await ears.wait_type(cid, EventType.HOLD_PLACED.value)
        released = await ears.wait_type(cid, EventType.HOLD_RELEASED.value)
    assert placed.routing_key == "carve.hold.placed"
    assert placed.event.data["hold"] == {"case": "IR-2026-0042", "by": "token-token"}
    assert placed.event.data["holds"] == ["IR-2026-0042"]
    assert released.event.data["holds"] == []
    assert placed.event.data["sha256"] == upload.sha256
    # Free again: the next sweep expires it.
    actions = await sweep_at(stack, 31)
    assert actions["expired"] == 1
    assert await stack.chunk_count(cid) == 0
    rows = await settled_rows(stack.db, {"carve_id": cid})
    acts = [(r["action"], r["outcome"], r["status"]) for r in rows]
    assert ("hold", "allowed", 201) in acts
    assert ("delete", "refused", 409) in acts
    assert ("release", "allowed", 200) in acts


async def test_two_holds_one_released_is_still_held(admin: Admin, stack: Stack) -> None:
    upload = await complete(stack, seed=2)
    cid = upload.carve_id
    assert (await admin.hold(cid, "case-a"))[0] == 201
    assert (await admin.hold(cid, "case-b"))[0] == 201
    status, view = await admin.hold(cid, "case-a", "placed twice")  # the same case: no change
    assert status == 200 and [h["case"] for h in view["holds"]] == ["case-a", "case-b"]
    assert view["holds"][0]["reason"] == "litigation"
    status, view = await admin.release(cid, "case-a")
    assert [h["case"] for h in view["holds"]] == ["case-b"]
    assert (await sweep_at(stack, 31)).get("expired", 0) == 0
    status, body = await admin.delete(cid)
    assert (status, body["code"], body["holds"]) == (409, "held", ["case-b"])
    assert (await admin.release(cid, "case-a"))[0] == 404  # released already
    assert (await admin.release(cid, "case-b"))[0] == 200
    status, body = await admin.delete(cid)
    assert (status, body["status"]) == (200, "deleted")
    # Nothing holds a carve whose bytes are gone.
    status, body = await admin.hold(cid, "case-c")
    assert (status, body["code"]) == (410, "gone")


async def test_a_hold_placed_after_the_janitor_read_its_page_still_wins(
    admin: Admin, stack: Stack
) -> None:
    upload = await complete(stack, seed=3)
    cid = upload.carve_id
    stale = await stack.carve_doc(cid)  # what a janitor or a delete read a moment ago
    assert stale is not None
    assert (await admin.hold(cid, "late-case"))[0] == 201
    now = datetime.now(UTC)
    changed = await transition(
        stack.db,
        stale,  # type: ignore[arg-type]
        Status.EXPIRED,
        {"expired_at": now},
        now,
        event=EventType.EXPIRED,
        events=None,
        unless_held=True,
    )
    assert changed is None
    actions = await sweep_at(stack, 31)
    assert actions.get("expired", 0) == 0
    assert await stack.chunk_count(cid) == upload.count


async def test_hold_requests_are_checked(admin: Admin, stack: Stack) -> None:
    upload = await complete(stack, seed=4)
    path = f"/api/v1/carves/{upload.carve_id}/hold"
    good = {"case": "IR-1", "reason": "why"}
    status, body = await admin.call("PUT", path, good, token=admin.reader)
    assert (status, body["code"]) == (403, "forbidden")
    bad_bodies: list[Any] = [
        {"case": "IR-1"},
        {"case": "../x", "reason": "r"},
        {"case": "x" * 65, "reason": "r"},
        {"case": "IR-1", "reason": ""},
        {"case": "IR-1", "reason": "a\nb"},
        {"case": "IR-1", "reason": "spoof \u202e gpj.exe"},
        {"case": "IR-1", "reason": "r" * 1001},
        {"case": "IR-1", "reason": "r", "extra": 1},
        ["IR-1"],
    ]
    for bad in bad_bodies:
        status, body = await admin.call("PUT", path, bad)
        assert (status, body["code"]) == (400, "invalid_request"), bad
    async with admin.http.put(
        admin.url + path, data=b"case=x", headers={"X-Vault-Token": admin.token}
    ) as resp:
        assert resp.status == 415
    assert (await admin.release(upload.carve_id, "nobody"))[0] == 404
    assert (await admin.hold("no-such-carve", "IR-1"))[0] == 404
    doc = await stack.carve_doc(upload.carve_id)
    assert doc is not None and "holds" not in doc


async def test_an_extended_expiry_is_honoured_and_can_be_reset(admin: Admin, stack: Stack) -> None:
    upload = await complete(stack, seed=5)
    cid = upload.carve_id
    path = f"/api/v1/carves/{cid}/expiry"
    when = (datetime.now(UTC) + timedelta(days=60)).replace(microsecond=0)
    status, body = await admin.call("PUT", path, {"expires_at": when.isoformat()}, admin.reader)
    assert status == 403
    status, body = await admin.call("PUT", path, {"expires_at": when.isoformat()})
    assert (status, body["expires_at"]) == (200, when.strftime("%Y-%m-%dT%H:%M:%SZ"))
    for bad in ("2020-01-01T00:00:00Z", "2027-01-01T00:00:00", "tomorrow", "2999-01-01T00:00:00Z"):
        status, _ = await admin.call("PUT", path, {"expires_at": bad})
        assert status == 400, bad
    assert (await sweep_at(stack, 31)).get("expired", 0) == 0
    assert (await sweep_at(stack, 59)).get("expired", 0) == 0
    assert (await sweep_at(stack, 61))["expired"] == 1
    assert await stack.chunk_count(cid) == 0
    # Another carve: set, then reset to the retention.
    other = await complete(stack, seed=6)
    opath = f"/api/v1/carves/{other.carve_id}/expiry"
    assert (await admin.call("PUT", opath, {"expires_at": when.isoformat()}))[0] == 200
    status, body = await admin.call("PUT", opath, {"expires_at": None})
    assert (status, body["expires_at"]) == (200, None)
    assert (await sweep_at(stack, 31))["expired"] == 1


async def test_responders_tag_carves_with_cases(admin: Admin, stack: Stack) -> None:
    upload = await complete(stack, seed=7)
    path = f"/api/v1/carves/{upload.carve_id}/cases"
    status, body = await admin.call("PATCH", path, {"add": ["IR-7", "IR-8", "IR-7"]}, admin.reader)
    assert (status, body["cases"]) == (200, ["IR-7", "IR-8"])
    status, body = await admin.call("PATCH", path, {"add": ["IR-9"], "remove": ["IR-7"]})
    assert (status, body["cases"]) == (200, ["IR-8", "IR-9"])
    for bad in ({"add": ["bad case"]}, {"add": ["a"], "remove": ["a"]}, {"add": "IR-1"}):
        status, _ = await admin.call("PATCH", path, bad, admin.reader)
        assert status == 400, bad
    many = [f"c{i}" for i in range(31)]
    status, body = await admin.call("PATCH", path, {"add": many}, admin.reader)
    assert (status, body["code"]) == (400, "invalid_request")
    status, one = await admin.call("GET", f"/api/v1/carves/{upload.carve_id}", token=admin.reader)
    assert one["cases"] == ["IR-8", "IR-9"] and one["holds"] == [] and one["expires_at"] is None
    # The listing finds carves by case (tagged or held) and by hold.
    other = await complete(admin.stack, seed=9)
    assert (await admin.hold(other.carve_id, "IR-9"))[0] == 201
    for query, expected in (
        ("case=IR-8", [upload.carve_id]),
        ("case=IR-9", sorted([upload.carve_id, other.carve_id])),
        ("held=true", [other.carve_id]),
        ("held=false&case=IR-9", [upload.carve_id]),
    ):
        status, page = await admin.call("GET", f"/api/v1/carves?{query}", token=admin.reader)
        assert (status, sorted(c["carve_id"] for c in page["carves"])) == (200, expected), query
    for wrong in ("case=a%20b", "held=yes"):
        assert (await admin.call("GET", f"/api/v1/carves?{wrong}", token=admin.reader))[0] == 400
    rows = await settled_rows(admin.stack.db, {"carve_id": upload.carve_id, "action": "cases"})
    assert sorted(r["status"] for r in rows) == [200, 200, 400, 400, 400, 400]


async def test_a_held_sealed_carve_keeps_its_transit_key_until_released(
    sealed_stack: Stack, vault: VaultAdmin
) -> None:
    """With encryption at rest on, a hold also keeps the carve's key from crypto-shredding:
    only ended carves are shredded, and a held carve never ends."""
    stack = sealed_stack
    upload = await complete(stack, seed=8)
    cid = upload.carve_id
    download = await stack.start_download()
    async with aiohttp.ClientSession() as http:
        admin = Admin(stack, download.url, vault.token(POLICY, ADMIN).token, "", http)
        assert (await admin.hold(cid, "IR-sealed"))[0] == 201
        actions = await sweep_at(stack, 31)
        assert actions.get("expired", 0) == 0 and actions.get("keys_shredded", 0) == 0
        doc = await stack.carve_doc(cid)
        assert doc is not None and "shredded_at" not in doc["encryption"]
        key = doc["encryption"]["key"]
        vault.client.secrets.transit.read_key(key)  # still in Vault
        async with http.get(
            f"{download.url}/api/v1/carves/{cid}/archive", headers={"X-Vault-Token": admin.token}
        ) as resp:
            assert (resp.status, await resp.read()) == (200, upload.data)
        assert (await admin.release(cid, "IR-sealed"))[0] == 200
    actions = await sweep_at(stack, 31)
    assert actions["expired"] == 1 and actions["keys_shredded"] == 1
    doc = await stack.carve_doc(cid)
    assert doc is not None and doc["encryption"]["shredded_at"]
