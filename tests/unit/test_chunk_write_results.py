"""What a bulk chunk insert's errors mean for each chunk (services/assembler/store.py)."""

from __future__ import annotations

from services.assembler.store import insert_results
from shared.errors import PoisonMessage, Unavailable


def test_duplicates_and_bad_chunks_are_told_apart() -> None:
    details = {
        "writeErrors": [
            {"index": 1, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 2, "code": 10334, "errmsg": "BSONObjectTooLarge"},
            {"index": 3, "code": 91, "errmsg": "shutting down"},
        ]
    }
    results = insert_results(5, details)
    assert results[0] is True and results[4] is True
    assert results[1] is False
    assert isinstance(results[2], PoisonMessage)
    assert isinstance(results[3], Unavailable)


def test_a_write_concern_error_stores_nothing_for_sure() -> None:
    """On the primary, not acknowledged by a majority: a failover could lose them, so the
    message must stay queued (Unavailable), duplicates included; a bad chunk stays bad."""
    details = {
        "writeErrors": [
            {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"},
            {"index": 2, "code": 10334, "errmsg": "BSONObjectTooLarge"},
        ],
        "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}],
    }
    results = insert_results(3, details)
    assert isinstance(results[0], Unavailable)
    assert isinstance(results[1], Unavailable)
    assert "majority" in str(results[1])
    assert isinstance(results[2], PoisonMessage)
