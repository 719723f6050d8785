"""What osquery puts on the wire and how it judges a reply (docs/osquery-protocol.md).

The request bodies byte for byte (compact JSON in osquery's key order, the base64 block inside
JSON), the headers per version, and the verdict on a reply: the HTTP status is never looked
at, an empty or JSON body is a success, anything else a transport failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64

DEFAULT_VERSION: tuple[int, int, int] = (5, 23, 0)
RETRIES_SINCE: tuple[int, int, int] = (5, 22, 0)
NODE_KEY_HEADER_SINCE: tuple[int, int, int] = (5, 23, 0)


@dataclass
class Reply:
    ok: bool
    payload: Any = None
    http_status: int | None = None
    error: str = ""
    socket_error: bool = False


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RapidJSON's FindMember returns the first of duplicate keys; a dict keeps the last.
    return dict(reversed(pairs))


def judge_reply(http_status: int | None, body: bytes) -> Reply:
    """Judge a reply the way osquery does (JSONSerializer::deserialize, RapidJSON's defaults).

    The status is ignored. An empty body is a success. Otherwise the body is parsed as a C
    string (it ends at the first NUL byte), with RapidJSON's default flags: any JSON value at
    the root, nothing but whitespace after it, no NaN/Infinity, no comments or trailing
    commas, numbers that fit a double, and no check of the UTF-8 inside strings. Whatever
    parses is a success, whatever does not (a whitespace-only body too) a failure.
    """
    if not body:
        return Reply(ok=True, payload=None, http_status=http_status)
    text = body.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    try:
        # orjson refuses what RapidJSON refuses with these flags (NaN, Infinity, overflow).
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return Reply(ok=False, http_status=http_status, error=f"HTTP {http_status}, non-JSON")
    return Reply(
        ok=True, payload=json.loads(text, object_pairs_hook=_first_wins), http_status=http_status
    )


def version_string(version: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in version)


def request_headers(version: tuple[int, int, int], node_key: str) -> dict[str, str]:
    """The headers osquery ``version`` sends on every carve request (Host/Content-Length aside)."""
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"osquery/{version_string(version)}",
    }
    if version >= NODE_KEY_HEADER_SINCE:
        headers["Authorization"] = f"NodeKey {node_key}"
    return headers


def _dumps(obj: Mapping[str, Any]) -> bytes:
    # Compact, keys in the given order, UTF-8 as is (no \\u escapes for non-ASCII): as RapidJSON.
    return orjson.dumps(obj)


def start_body(
    *,
    block_count: int,
    block_size: int,
    carve_size: int,
    carve_id: str,
    request_id: str,
    node_key: str,
) -> bytes:
    """The exact start request body (osquery's key order, compact)."""
    return _dumps(
        {
            "block_count": block_count,
            "block_size": block_size,
            "carve_size": carve_size,
            "carve_id": carve_id,
            "request_id": request_id,
            "node_key": node_key,
        }
    )


def block_body(block_id: int, session_id: str, request_id: str, data: bytes) -> bytes:
    """The exact block request body; the base64 is spliced in as bytes to avoid str copies."""
    head = _dumps({"block_id": block_id, "session_id": session_id, "request_id": request_id})
    return head[:-1] + b',"data":"' + pybase64.b64encode(data) + b'"}'
