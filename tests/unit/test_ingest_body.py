"""The ingest's block body parser: the payload cut out of the body must never change the answer."""

from __future__ import annotations

import base64
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.accept import split_block_body
from shared.errors import InvalidRequest
from shared.protocol import decode_block_data

Verdict = dict[str, object] | None


def decoded(fields: dict[str, object], data: object) -> Verdict:
    """The fields with the payload decoded as the ingest decodes it; None if it refuses it."""
    if not isinstance(data, str):
        return {**fields, "data": data}  # not a payload: the request model refuses it later
    try:
        return {**fields, "data": decode_block_data(data)}
    except ValueError:
        return None


def full_parse(body: bytes) -> Verdict:
    """The reference: orjson on the whole body, then the payload decoded."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return decoded(value, value.get("data")) if isinstance(value, dict) else None


def split_parse(body: bytes) -> tuple[Verdict, bool]:
    """What the ingest makes of ``body``, and whether it cut the payload out."""
    try:
        fields, payload = split_block_body(bytearray(body))
    except InvalidRequest:
        return None, False
    if payload is None:
        return decoded(fields, fields.get("data")), False
    return {**fields, "data": payload}, True


def osquery_body(block_id: int, data: bytes) -> bytes:
    head = orjson.dumps({"block_id": block_id, "session_id": "s" * 32, "request_id": "r-1"})
    return head[:-1] + b',"data":"' + base64.b64encode(data) + b'"}'


@given(st.integers(0, 10**9), st.binary(max_size=3000))
def test_osquerys_shape_is_cut_and_means_the_same(block_id: int, data: bytes) -> None:
    body = osquery_body(block_id, data)
    parsed, cut = split_parse(body)
    assert cut
    assert parsed == full_parse(body)


def test_the_payload_comes_back_decoded_and_out_of_the_fields() -> None:
    body = bytearray(osquery_body(3, b"x" * 3000))
    fields, payload = split_block_body(body)
    assert payload == b"x" * 3000
    assert fields == {"block_id": 3, "session_id": "s" * 32, "request_id": "r-1", "data": ""}


@pytest.mark.parametrize(
    ("payload", "error"),
    [(b"QU\x01JD", "not JSON"), (b"QU\xffJD", "not JSON"), (b"QU=JD", None)],
)
def test_a_broken_payload_gets_the_full_parses_answer(payload: bytes, error: str | None) -> None:
    """Not JSON: the parser's error, before anything else is checked, as without the cut.
    JSON but not base64: the fields, left for the decoding step to refuse (as before)."""
    body = b'{"block_id":1,"session_id":"' + b"s" * 32 + b'","data":"' + payload + b'"}'
    if error is None:
        fields, decoded_payload = split_block_body(bytearray(body))
        assert decoded_payload is None and fields["data"] == payload.decode()
    else:
        with pytest.raises(InvalidRequest, match=error):
            split_block_body(bytearray(body))


TRICKY = [
    b'{"data":"QUJD","block_id":1}',  # data not last
    b'{"x":{"data":"QUJD"}}',  # nested
    b'{"data" : "", "x":{"data":"QUJD"}}',  # top-level data first, nested one last
    b'{"a":"\\"data\\":\\"", "data":"QUJD"}',  # the key's text inside another string
    b'{"data":"QUJD","data":"RUZH"}',  # duplicate keys: the last wins
    b'{"data":"QUJD", "data":"RUZH" }',
    b'{"data":"QU\\"JD"}',  # an escaped quote in the payload
    b'{"data":"QU\\u0041JD"}',  # an escape in the payload
    b'{"block_id":1, "data" :\n "QUJD" \n}',  # whitespace
    b'{"data":"QUJD"}}',  # trailing garbage
    b'{"data":"QUJD"',  # unterminated
    b'["data","QUJD"]',  # not an object
    b'{"k":1,"data":"QUJD"} ',
    b'{"data":"QUJD"}\n',
    b'{"data":"Q\x01UJD"}',  # a control character: invalid JSON
    # The real "data" key spelled with an escape, which no search for the key's text finds;
    # then the text "data" as the end of another key, or as a nested key.
    b'{"d\\u0061ta":"", "k\\"data":"QUJD"}',
    b'{"d\\u0061ta":"", "x":{"data":"QUJD"}}',
]


@pytest.mark.parametrize("body", TRICKY)
def test_tricky_bodies_mean_what_a_full_parse_says(body: bytes) -> None:
    assert split_parse(body)[0] == full_parse(body)


scalars = st.none() | st.integers() | st.sampled_from(["", "QUJD", "QU JD", '"', "\\", "é"])
json_values = scalars | st.lists(scalars, max_size=2) | st.dictionaries(st.just("data"), scalars)


@given(
    st.dictionaries(st.sampled_from(["data", "block_id", "x", "da"]), json_values, max_size=4),
    st.sampled_from([",", ", ", ",\n"]),
    st.sampled_from([":", " : "]),
)
def test_any_object_means_the_same_split_or_not(
    obj: dict[str, object], comma: str, colon: str
) -> None:
    body = json.dumps(obj, separators=(comma, colon)).encode()
    assert split_parse(body)[0] == full_parse(body)
