"""bench.chaos's judgement of one carve: host record against server record."""

from __future__ import annotations

from typing import Any

import pytest

from bench.chaos import Seen, verdict
from clients.osquery_sim import STATUS_DATA_POST_FAILED, STATUS_SUCCESS, CarveResult

H = "a" * 64  # the host's SHA-256
X = "b" * 64


def host(status: str, session: str | None = "s") -> CarveResult:
    return CarveResult("c", "r", session, status, H, 10, 5, 2)


def doc(status: str, **fields: Any) -> dict[str, Any]:
    return {"_id": "c", "status": status, **fields}


@pytest.mark.parametrize(
    ("result", "seen", "problems"),
    [
        (host(STATUS_SUCCESS), Seen(doc("complete", sha256=H), H, H), []),
        (host(STATUS_DATA_POST_FAILED), Seen(doc("failed", failure_reason="idle")), []),
        (host(STATUS_DATA_POST_FAILED), Seen(doc("complete", sha256=H), H), []),
        (host(STATUS_DATA_POST_FAILED, None), Seen(None), []),
        (host(STATUS_SUCCESS), Seen(None), ["host SUCCESS, but the server has no such carve"]),
        (
            host(STATUS_SUCCESS),
            Seen(doc("receiving")),
            ["still receiving", "host SUCCESS, server says receiving"],
        ),
        (
            host(STATUS_SUCCESS),
            Seen(doc("failed", failure_reason="idle")),
            ["host SUCCESS, server says failed"],
        ),
        (
            host(STATUS_SUCCESS),
            Seen(doc("complete", sha256=H), H, X),
            [f"download serves sha256 {X}"],
        ),
        (
            host(STATUS_SUCCESS),
            Seen(doc("complete", sha256=X), X, X),
            [f"complete with sha256 {X}, host has {H}", f"download serves sha256 {X}"],
        ),
        (
            host(STATUS_DATA_POST_FAILED),
            Seen(doc("complete", sha256=H), X),
            [f"metadata sha256 {H} != bytes {X}"],
        ),
        (
            host(STATUS_DATA_POST_FAILED),
            Seen(doc("failed")),
            ["host DATA POST FAILED, server says failed without a reason"],
        ),
        (
            host(STATUS_DATA_POST_FAILED),
            Seen(doc("receiving")),
            ["still receiving", "host DATA POST FAILED, server says receiving without a reason"],
        ),
    ],
)
def test_verdict(result: CarveResult, seen: Seen, problems: list[str]) -> None:
    assert verdict(result, seen) == problems
