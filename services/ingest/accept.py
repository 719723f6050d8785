"""From a block request to an accepted block: every check of what a host sent, in one place.

A block body's largest valid size depends on the session's block size, and
the session id sits in the body. osquery writes it before the base64 payload,
so the first bytes name the session, the session names the limit, and a body
over that limit is refused on its Content-Length without being read
(``peek``). ``read`` then reads the body within that limit, parses it (the
payload decoded straight from the body when it has osquery's shape), and
checks, in this order: the request model, the session, the request id, the
node key, the device certificate, the block id's range, the base64 and the
block's length. What comes out is an ``Accepted`` block, ready to store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web

from services.ingest import keys
from services.ingest.body import (
    check_declared_length,
    parse_json_object,
    parse_model,
    read_prefix,
    read_rest,
)
from services.ingest.device import device_of, node_key_header
from services.ingest.sessions import NeverIssued, Session
from shared.errors import Forbidden, InvalidRequest, UnknownSession
from shared.protocol import BlockRequest, decode_block_data, expected_block_length, max_block_body

PEEK_BYTES = 512
_SESSION_ID_RE = re.compile(rb'"session_id"\s*:\s*"([A-Za-z0-9_-]{16,128})"')
_BLOCK_ID_RE = re.compile(rb'"block_id"\s*:\s*(\d{1,12})\s*[,}]')
# The start of the "data" member, whose value is the base64 payload (group 1: key's opening quote).
_DATA_RE = re.compile(rb'(")data"[ \t\r\n]*:[ \t\r\n]*"')


@dataclass
class Incoming:
    """What the first bytes of a block body told: its session (if found) and the body limit."""

    prefix: bytes
    session: Session | None
    seen: bool
    block_id: int | None  # read from the first bytes (the full parse confirms it)
    limit: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """A block that belongs where it claims, decoded; ``seen``: known confirmed already."""

    session: Session
    block_id: int
    data: bytes
    seen: bool


async def peek(request: web.Request) -> Incoming:
    """The first bytes of a block body, and the limit the rest of it must keep to."""
    settings = request.app[keys.SETTINGS]
    global_limit = max_block_body(settings.max_block_size)
    check_declared_length(request, global_limit)
    prefix = await read_prefix(request, PEEK_BYTES)
    block_id = peek_block_id(prefix)
    if (peeked := peek_session_id(prefix)) is None:
        return Incoming(prefix, None, False, block_id, global_limit)
    session, seen = await _session(request, peeked, block_id)
    limit = max_block_body(session.block_size)
    check_declared_length(request, limit)  # before the body waits for the byte budget
    return Incoming(prefix, session, seen, block_id, limit)


async def read(request: web.Request, incoming: Incoming) -> Accepted:
    """The rest of the body, parsed and checked; a ClientError for anything not acceptable."""
    received = await _read_block_request(request, incoming)
    data = _check_block(request, received)
    return Accepted(received.session, received.block.block_id, data, received.seen)


def peek_session_id(prefix: bytes) -> str | None:
    """The session id in the first bytes of a block body, if osquery's key order put it there.

    osquery writes ``block_id`` and ``session_id`` before ``data``, so the
    session (and with it the largest valid body) is known before the payload
    is read.
    """
    match = _SESSION_ID_RE.search(prefix)
    return match.group(1).decode() if match else None


def peek_block_id(prefix: bytes) -> int | None:
    match = _BLOCK_ID_RE.search(prefix)
    return int(match.group(1)) if match else None


@dataclass
class _Received:
    """A parsed block request; its payload already decoded when the parser could."""

    block: BlockRequest
    decoded: bytes | None  # None: the payload is still block.data, base64
    session: Session
    seen: bool

    def payload(self) -> bytes:
        if self.decoded is not None:
            return self.decoded
        try:
            return decode_block_data(self.block.data)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc


async def _read_block_request(request: web.Request, incoming: Incoming) -> _Received:
    """Parse a block body, reading no more than the session's block size allows."""
    body = await read_rest(request, incoming.prefix, incoming.limit)
    fields, decoded = split_block_body(body)
    del body
    block = parse_model(BlockRequest, fields)
    session, seen = incoming.session, incoming.seen
    if session is None or session.session_id != block.session_id:
        session, seen = await _session(request, block.session_id, block.block_id)
        seen = seen and block.block_id < session.block_count
    elif incoming.block_id != block.block_id and block.block_id < session.block_count:
        # (Out of range: refused by _check_block; Redis would refuse the bit offset.)
        seen = await request.app[keys.SESSIONS].seen(session.session_id, block.block_id)
    return _Received(block, decoded, session, seen)


async def _session(
    request: web.Request, session_id: str, block_id: int | None
) -> tuple[Session, bool]:
    """The session a block names (see SessionStore.get); refused without a lookup when it
    is not cached and its device keeps naming sessions nobody issued (abuse.py)."""
    app = request.app
    sessions = app[keys.SESSIONS]
    if (cached := sessions.cached(session_id)) is not None:
        return cached, False
    device = device_of(request, app[keys.SETTINGS].proxy_networks)
    unknown = app[keys.UNKNOWN]
    if device is not None and unknown.reached(device.fingerprint_sha256):
        app[keys.METRICS].unlooked.inc()
        raise UnknownSession("unknown or ended session")
    try:
        return await sessions.get(session_id, block_id)
    except NeverIssued:  # only ids no carve ever had: not a host still sending to an ended one
        if device is not None:
            unknown.count(device.fingerprint_sha256)
        raise


def _check_block(request: web.Request, received: _Received) -> bytes:
    """The decoded payload, once the block is known to belong where it claims."""
    block, session = received.block, received.session
    if block.request_id != session.request_id:
        raise InvalidRequest("request_id does not match the session")
    if not session.node_key_matches(node_key_header(request)):
        raise Forbidden("node key missing or not the one that started the carve")
    if session.device_sha256:
        device = device_of(request, request.app[keys.SETTINGS].proxy_networks)
        if not session.device_matches(device.fingerprint_sha256 if device else ""):
            raise Forbidden("block sent with another device certificate than the carve's start")
    if block.block_id >= session.block_count:
        raise InvalidRequest(f"block_id {block.block_id} out of range [0, {session.block_count})")
    data = received.payload()
    want = expected_block_length(
        block.block_id, session.block_count, session.block_size, session.carve_size
    )
    if len(data) != want:
        raise InvalidRequest(f"block {block.block_id} decodes to {len(data)} bytes, want {want}")
    return data


def split_block_body(body: bytearray) -> tuple[dict[str, object], bytes | None]:
    """A block body parsed without turning its payload into a Python string.

    orjson copies a 1 MiB block's base64 into a str that is then decoded (together
    0.5-0.9 ms here); decoding straight from the body takes 0.09 ms. When the body has
    the shape osquery sends, with ``data`` as the last member of the object, the rest is
    parsed with the payload cut out and the payload is decoded from a view of the body:
    the decoded block comes back, and ``data`` in the fields is "".

    The cut-out is taken only when it changes nothing a full parse would say: the key
    is a real top-level key (preceded by ``{`` or ``,``, so not inside another string;
    followed only by the object's own ``}``, so at the outermost level and the last,
    winning, "data" key), the payload holds no quote or backslash (so it is one whole
    JSON string) and decodes as strict base64 (so it holds no byte a JSON string could
    not, nor anything a full parse would read differently). Otherwise: the full parse,
    whose verdict and error come in the same order as before, and ``None`` (the payload
    is then decoded by ``_Received.payload``, after the checks that come first).
    """
    view = _payload_view(body)
    if view is None:
        return parse_json_object(body), None
    start, end = view
    fields = parse_json_object(body[:start] + body[end:])
    if fields.get("data") != "":
        return parse_json_object(body), None
    try:
        return fields, decode_block_data(memoryview(body)[start:end])
    except ValueError:
        return parse_json_object(body), None


def _payload_view(body: bytearray) -> tuple[int, int] | None:
    """Where the top-level "data" string's content lies, if osquery's shape holds."""
    match = _DATA_RE.search(body)
    if match is None or bytes(body[: match.start(1)].rstrip()[-1:]) not in (b"{", b","):
        return None
    start, end = match.end(), body.rfind(b'"')
    if end < start or body[end + 1 :].strip() != b"}":
        return None
    if body.find(b'"', start, end) != -1 or body.find(b"\\", start, end) != -1:
        return None  # not one whole string: leave it to the full parse
    return start, end
