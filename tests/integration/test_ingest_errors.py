"""Bad input to the osquery endpoints: a clear answer, nothing stored, nothing queued.

The answer's kind is what osquery acts on (it ignores the status): a refused
start is JSON without a session (the host fails the carve at once), a refused
block or an unknown path is text/plain (the host retries twice, then fails the
carve), so the host's own ``carves`` table never says SUCCESS for a carve the
server will not complete.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from typing import Any

import aiohttp
import pytest

from clients.osquery_sim import judge_reply
from services.ingest import accept
from shared.errors import Forbidden
from tests.stack import Stack

B = 1024


def start_body(**over: Any) -> dict[str, Any]:
    body = {
        "block_count": 3,
        "block_size": B,
        "carve_size": 2 * B + 100,
        "carve_id": str(uuid.uuid4()),
        "request_id": str(uuid.uuid4()),
        "node_key": "nk-secret",
    }
    body.update(over)
    return body


async def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    data = io.BytesIO(raw)  # aiohttp warns about raw bytes bodies over 1 MB
    headers = {"Content-Type": "application/json", **(headers or {})}
    async with (
        aiohttp.ClientSession() as http,
        http.post(url, data=data, headers=headers) as resp,
    ):
        return resp.status, resp.content_type, await resp.read()


async def start(stack: Stack, **over: Any) -> tuple[dict[str, Any], str]:
    body = start_body(**over)
    status, ctype, raw = await post(stack.ingest_url + "/start_uploads", body)
    assert status == 200, raw
    assert ctype == "application/json"
    reply = json.loads(raw)
    return body, reply["session_id"]


def block(sid: str, rid: str, i: int, data: bytes) -> dict[str, Any]:
    return {
        "block_id": i,
        "session_id": sid,
        "request_id": rid,
        "data": base64.b64encode(data).decode(),
    }


async def assert_json_error(
    stack: Stack, path: str, body: bytes | dict[str, Any], status: int, code: str
) -> dict[str, Any]:
    got, ctype, raw = await post(stack.ingest_url + path, body)
    assert (got, ctype) == (status, "application/json"), raw
    reply: dict[str, Any] = json.loads(raw)
    assert reply["success"] is False
    assert reply["code"] == code
    assert reply["error"]
    return reply


async def assert_text_refusal(
    stack: Stack, path: str, body: bytes | dict[str, Any], status: int, code: str
) -> str:
    """A refusal osquery counts as a failed request (retried, then DATA POST FAILED)."""
    got, ctype, raw = await post(stack.ingest_url + path, body)
    assert (got, ctype) == (status, "text/plain"), raw
    text = raw.decode()
    assert text.startswith(f"refused: {code}: ") and text.endswith("\n"), text
    assert len(text) > len(f"refused: {code}: \n")  # a reason, not just a code
    assert not judge_reply(got, raw).ok
    return text


async def nothing_queued_or_stored(stack: Stack, carve_id: str) -> None:
    assert await stack.chunk_count(carve_id) == 0
    doc = await stack.carve_doc(carve_id)
    assert doc is None or doc["blocks_received"] == 0


async def test_start_returns_unguessable_session_and_records_carve(stack: Stack) -> None:
    body, sid = await start(stack)
    assert len(sid) >= 22  # >= 128 bits in base64url
    assert set(sid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
    doc = await stack.carve_doc(body["carve_id"])
    assert doc is not None
    assert doc["status"] == "receiving"
    assert (doc["block_count"], doc["block_size"], doc["carve_size"]) == (3, B, 2 * B + 100)
    # The node key only as a SHA-256: a database dump gives no host's key away.
    assert doc["node_key_sha256"] == hashlib.sha256(b"nk-secret").hexdigest()
    assert "nk-secret" not in repr(doc)
    assert doc["session_sha256"] == hashlib.sha256(sid.encode()).hexdigest()
    _, sid2 = await start(stack)
    assert sid2 != sid


async def test_repeated_start_gets_same_session_but_reuse_is_refused(stack: Stack) -> None:
    body, sid = await start(stack)
    status, _, raw = await post(stack.ingest_url + "/start_uploads", body)
    assert status == 200 and json.loads(raw)["session_id"] == sid
    other = dict(body, block_size=2 * B, block_count=2)
    await assert_json_error(stack, "/start_uploads", other, 409, "conflict")


@pytest.mark.parametrize(
    ("over", "status", "code"),
    [
        ({"carve_size": 3 * B + 1}, 400, "invalid_request"),  # N*B < S
        ({"carve_size": 2 * B}, 400, "invalid_request"),  # S <= (N-1)*B
        ({"block_count": 0}, 400, "invalid_request"),
        ({"block_size": "1024"}, 400, "invalid_request"),
        ({"block_size": 1024.0}, 400, "invalid_request"),
        ({"block_count": True}, 400, "invalid_request"),
        ({"carve_id": "../../etc/passwd"}, 400, "invalid_request"),
        ({"carve_id": ""}, 400, "invalid_request"),
        ({"request_id": None}, 400, "invalid_request"),
        (
            {"block_size": 17 * 1024 * 1024, "carve_size": 17 * 1024 * 1024, "block_count": 1},
            413,
            "payload_too_large",
        ),
    ],
)
async def test_bad_start_is_refused(
    stack: Stack, over: dict[str, Any], status: int, code: str
) -> None:
    body = start_body(**over)
    await assert_json_error(stack, "/start_uploads", body, status, code)
    if isinstance(body["carve_id"], str) and body["carve_id"]:
        assert await stack.carve_doc(body["carve_id"]) is None


async def test_carve_size_limit(stack: Stack) -> None:
    gib = 1024**3
    huge = start_body(block_size=8 * 1024 * 1024, carve_size=101 * gib, block_count=101 * 128)
    await assert_json_error(stack, "/start_uploads", huge, 413, "payload_too_large")


async def test_non_json_bodies_are_refused(stack: Stack) -> None:
    await assert_json_error(stack, "/start_uploads", b"carve please", 400, "invalid_request")
    await assert_text_refusal(stack, "/upload_blocks", b"\x00\x01garbage", 400, "invalid_request")
    await assert_text_refusal(stack, "/upload_blocks", b"[1, 2]", 400, "invalid_request")


async def test_bad_blocks_are_refused_and_change_nothing(stack: Stack) -> None:
    body, sid = await start(stack)
    rid, cid = body["request_id"], body["carve_id"]
    cases: list[tuple[dict[str, Any], int, str]] = [
        (block("A" * 32, rid, 0, b"x" * B), 404, "unknown_session"),
        (block(sid, "not-the-request", 0, b"x" * B), 400, "invalid_request"),
        (block(sid, rid, 3, b"x" * 100), 400, "invalid_request"),  # out of range
        (block(sid, rid, -1, b"x" * B), 400, "invalid_request"),
        (block(sid, rid, 0, b"x" * (B - 1)), 400, "invalid_request"),  # short
        (block(sid, rid, 0, b"x" * (B + 1)), 400, "invalid_request"),  # long
        (block(sid, rid, 2, b"x" * B), 400, "invalid_request"),  # last block must be 100
        (dict(block(sid, rid, 0, b"x" * B), data="not base64!!"), 400, "invalid_request"),
        (dict(block(sid, rid, 0, b"x" * B), data="eHh4"[:3]), 400, "invalid_request"),  # padding
        (dict(block(sid, rid, 0, b"x" * B), block_id="0"), 400, "invalid_request"),
        ({"block_id": 0, "session_id": sid}, 400, "invalid_request"),
    ]
    for payload, status, code in cases:
        await assert_text_refusal(stack, "/upload_blocks", payload, status, code)
    await nothing_queued_or_stored(stack, cid)


async def test_wrong_node_key_header_is_refused(stack: Stack) -> None:
    body, sid = await start(stack)
    payload = block(sid, body["request_id"], 0, b"x" * B)
    status, ctype, raw = await post(
        stack.ingest_url + "/upload_blocks", payload, headers={"Authorization": "NodeKey other"}
    )
    assert (status, ctype) == (403, "text/plain"), raw
    assert raw.startswith(b"refused: forbidden: ")
    await nothing_queued_or_stored(stack, body["carve_id"])


async def test_start_with_another_hosts_node_key_header_is_refused(stack: Stack) -> None:
    body = start_body(node_key="key-a")
    status, ctype, raw = await post(
        stack.ingest_url + "/start_uploads", body, headers={"Authorization": "NodeKey key-b"}
    )
    assert (status, ctype) == (403, "application/json"), raw
    assert await stack.carve_doc(body["carve_id"]) is None


async def test_oversized_body_refused_from_content_length(stack: Stack) -> None:
    body, sid = await start(stack)
    payload = block(sid, body["request_id"], 0, b"x" * (64 * B))  # 64x the session's block size
    reply = await assert_text_refusal(stack, "/upload_blocks", payload, 413, "payload_too_large")
    assert "limit" in reply
    # Larger than any block size the server allows: refused before reading, no session needed.
    limit = 4 * (16 * 1024 * 1024) // 3 + 4096
    status, ctype, raw = await post(stack.ingest_url + "/upload_blocks", b"{" + b" " * limit + b"}")
    assert (status, ctype) == (413, "text/plain"), raw
    await nothing_queued_or_stored(stack, body["carve_id"])


@pytest.mark.parametrize("prefix", ["/api/v1/osquery/carve", "/api/osquery/carve"])
async def test_fleet_paths_are_aliases(stack: Stack, prefix: str) -> None:
    body = start_body()
    status, _, raw = await post(stack.ingest_url + prefix + "/begin", body)
    assert status == 200
    sid = json.loads(raw)["session_id"]
    bad = block(sid, body["request_id"], 0, b"x")
    await assert_text_refusal(stack, prefix + "/block", bad, 400, "invalid_request")


@pytest.mark.parametrize("path", ["/start_uploads%20", "/upload_block", "/api/v1/carves"])
async def test_unknown_paths_are_not_json_so_the_carve_fails(stack: Stack, path: str) -> None:
    # A flagfile typo (a trailing space, a wrong endpoint) fails the carve on the host, visibly,
    # whichever of the two paths it is in: a JSON 404 to a mistyped block path would read as
    # "stored" and the host would record SUCCESS for a carve that never arrived.
    text = await assert_text_refusal(stack, path, start_body(), 404, "no_route")
    assert path not in text  # the host's text is not echoed back


async def test_any_refusal_raised_in_the_block_view_is_text(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refusals added later (e.g. a block sent with another device certificate) get the kind
    # osquery must see without any change to the error handling: every ClientError raised
    # while serving a block endpoint is text/plain with its own status.
    class OtherCertificate(Forbidden):
        code = "other_certificate"

    def refuse(request: object, received: object) -> bytes:
        raise OtherCertificate("block sent with another device certificate")

    monkeypatch.setattr(accept, "_check_block", refuse)
    body, sid = await start(stack)
    payload = block(sid, body["request_id"], 0, b"x" * B)
    for path in ("/upload_blocks", "/api/v1/osquery/carve/block", "/api/osquery/carve/block"):
        status, ctype, raw = await post(stack.ingest_url + path, payload)
        assert (status, ctype) == (403, "text/plain")
        assert raw == b"refused: other_certificate: block sent with another device certificate\n"
    await nothing_queued_or_stored(stack, body["carve_id"])
