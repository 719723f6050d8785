"""Pure logic: protocol geometry and parsing, the queue message codec, the handler, batching."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymongo.errors import AutoReconnect, OperationFailure

from services.assembler.handler import Handled, handle_block
from services.assembler.store import classify_write_error
from services.assembler.tracker import CarveTracker
from services.ingest.accept import peek_block_id, peek_session_id
from services.ingest.budget import ByteBudget
from shared.batching import Coalescer
from shared.carves import CarveRecord, new_carve_doc, same_start
from shared.errors import PoisonMessage, Unavailable
from shared.finalize import Outcome, Result
from shared.mongo import transient_on_outage
from shared.protocol import (
    StartRequest,
    decode_block_data,
    expected_block_length,
    geometry_error,
    max_block_body,
)
from shared.queue import Block, decode, encode
from shared.resources import with_amqp_retry


@given(st.integers(1, 10**12), st.integers(1, 16 * 2**20))
def test_real_client_geometry_is_accepted_and_blocks_add_up(size: int, block: int) -> None:
    count = -(-size // block)
    assert geometry_error(count, block, size) is None
    lengths = [expected_block_length(i, count, block, size) for i in (0, count - 1)]
    assert 0 < lengths[1] <= block
    assert (count - 1) * block + lengths[1] == size
    if count > 1:
        assert lengths[0] == block


@pytest.mark.parametrize(("n", "b", "s"), [(1, 10, 11), (2, 10, 10), (3, 10, 5), (1, 10, 0)])
def test_inconsistent_geometry_is_named(n: int, b: int, s: int) -> None:
    assert "inconsistent" in (geometry_error(n, b, s) or "")


@given(st.binary(max_size=3000))
def test_base64_round_trip_and_body_bound(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert decode_block_data(encoded) == data
    assert len(encoded) + 200 <= max_block_body(max(len(data), 1))


@pytest.mark.parametrize("bad", ["abc", "ab=c", "YWJj\n", "YW Jj", "é", "YWJj===", "YQ"])
def test_strict_base64(bad: str) -> None:
    with pytest.raises(ValueError, match="base64"):
        decode_block_data(bad)


def test_peek_finds_ids_in_osquery_key_order() -> None:
    sid = "A" * 32
    prefix = b'{"block_id":42,"session_id":"' + sid.encode() + b'","request_id":"r","data":"YW'
    assert peek_session_id(prefix) == sid
    assert peek_block_id(prefix) == 42
    assert peek_session_id(b'{"data":"xxxx') is None
    assert peek_block_id(b'{"block_id":4.5,') is None


def test_start_request_is_strict_but_ignores_unknown_keys() -> None:
    ok = {
        "block_count": 1,
        "block_size": 10,
        "carve_size": 5,
        "carve_id": "c-1",
        "request_id": "q",
        "node_key": "",
        "future_key": [1],
    }
    assert StartRequest.model_validate(ok).carve_id == "c-1"
    for key, value in [("block_size", "10"), ("block_size", True), ("carve_id", "a/b")]:
        with pytest.raises(ValidationError):
            StartRequest.model_validate({**ok, key: value})


def _block(block_id: int = 0, data: bytes = b"abcd") -> Block:
    return Block("c", block_id, 2, 4, 6, data)


def test_queue_codec_round_trip_and_poison() -> None:
    blocks = [_block(), _block(1, b"ef"), Block("other-carve", 0, 1, 8, 3, b"xyz")]
    message = encode(blocks)
    headers = dict(message.headers)
    assert decode(message.body, headers) == blocks
    assert decode(encode(blocks[:1]).body, {**headers, "count": 1}) == blocks[:1]
    for broken in [{**headers, "format": "v0"}, {**headers, "count": 2}, {}]:
        with pytest.raises(PoisonMessage):
            decode(message.body, broken)
    for body in [message.body[:-1], message.body + b"\x00", b"", b"\x01\x00"]:
        with pytest.raises(PoisonMessage):
            decode(body, headers)
    short = encode([Block("c", 0, 2, 4, 6, b"abc")])  # block 0 must be a full 4 bytes
    with pytest.raises(PoisonMessage, match="want 4"):
        decode(short.body, dict(short.headers))


@given(st.lists(st.tuples(st.text(min_size=1, max_size=40), st.binary(max_size=64)), max_size=20))
def test_queue_codec_any_batch(pairs: list[tuple[str, bytes]]) -> None:
    blocks = [Block(cid, 0, 1, max(len(d), 1), max(len(d), 1), d) for cid, d in pairs if d]
    if blocks:
        message = encode(blocks)
        assert decode(message.body, dict(message.headers)) == blocks


class FakeStore:
    def __init__(self) -> None:
        self.chunks: dict[tuple[str, int], bytes] = {}
        self.progress: dict[str, int] = {}

    async def put_chunk(self, carve_id: str, n: int, data: bytes) -> bool:
        if (carve_id, n) in self.chunks:
            return False
        self.chunks[carve_id, n] = data
        return True

    async def add_received(self, counts: dict[str, int]) -> None:
        for carve_id, k in counts.items():
            self.progress[carve_id] = self.progress.get(carve_id, 0) + k


class FakeFinalizer:
    def __init__(self, store: FakeStore, count: int = 2) -> None:
        self.store = store
        self.count = count
        self.calls: list[str] = []

    async def maybe_finalize(self, carve_id: str) -> Result:
        self.calls.append(carve_id)
        whole = sum(1 for c, _ in self.store.chunks if c == carve_id) == self.count
        return Result(Outcome.FINALIZED if whole else Outcome.NOT_READY)


async def test_handler_finalizes_on_the_last_block_when_all_are_there() -> None:
    store = FakeStore()
    fin = FakeFinalizer(store)
    tracker = CarveTracker(store, fin, idle=0.0)
    assert await handle_block(_block(0), store, fin, tracker) is Handled.WRITTEN
    assert fin.calls == []  # not the last block: no need to ask MongoDB
    assert await handle_block(_block(1, b"ef"), store, fin, tracker) is Handled.FINALIZED
    assert await handle_block(_block(0), store, fin, tracker) is Handled.DUPLICATE
    assert store.chunks == {("c", 0): b"abcd", ("c", 1): b"ef"}
    with pytest.raises(PoisonMessage):
        await handle_block(_block(5), store, fin, tracker)


async def test_tracker_finishes_out_of_order_carves_and_records_progress() -> None:
    store = FakeStore()
    fin = FakeFinalizer(store)
    tracker = CarveTracker(store, fin, idle=0.0)
    # The last block first: too early to finalize.
    assert await handle_block(_block(1, b"ef"), store, fin, tracker) is Handled.WRITTEN
    assert fin.calls == ["c"]
    await handle_block(_block(0), store, fin, tracker)
    await tracker.sweep()  # chunks stopped arriving: look again
    assert fin.calls == ["c", "c"]
    assert store.progress == {"c": 2}
    assert tracker.tracked() == 0  # finalized: forgotten
    await tracker.sweep()
    assert fin.calls == ["c", "c"]


async def test_tracker_waits_for_idle_and_keeps_progress_on_outage() -> None:
    store = FakeStore()
    fin = FakeFinalizer(store, count=3)
    tracker = CarveTracker(store, fin, idle=3600.0)
    tracker.note("c", new_chunk=True)
    tracker.note("c", new_chunk=False)
    await tracker.sweep()
    assert fin.calls == []  # still receiving
    assert store.progress == {"c": 1}

    async def down(counts: dict[str, int]) -> None:
        raise Unavailable("MongoDB", "down")

    tracker.note("c", new_chunk=True)
    store.add_received = down  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await tracker.sweep()
    del store.add_received
    await tracker.sweep()
    assert store.progress == {"c": 2}  # the increment was kept for the next try


async def test_coalescer_batches_under_load_and_isolates_item_errors() -> None:
    batches: list[list[int]] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        await asyncio.sleep(0.01)
        return [ValueError(i) if i == 7 else i * 10 for i in items]

    coalescer: Coalescer[int, int] = Coalescer(flush, max_items=4)
    assert await coalescer.submit(100) == 1000
    assert batches == [[100]]  # alone, it is written at once: no waiting for company
    batches.clear()
    results = await asyncio.gather(
        *(coalescer.submit(i) for i in range(10)), return_exceptions=True
    )
    assert [r for r in results if not isinstance(r, BaseException)] == [
        i * 10 for i in range(10) if i != 7
    ]
    assert isinstance(results[7], ValueError)
    assert max(len(b) for b in batches) == 4
    assert sorted(i for b in batches for i in b) == list(range(10))


async def test_coalescer_weight_limit_and_whole_batch_failure() -> None:
    seen: list[list[bytes]] = []

    async def flush(items: Sequence[bytes]) -> list[bool | BaseException]:
        seen.append(list(items))
        await asyncio.sleep(0)
        if b"boom" in items:
            raise ConnectionError("down")
        return [True] * len(items)

    coalescer: Coalescer[bytes, bool] = Coalescer(flush, 100, weight=len, max_weight=10)
    items = [b"x" * 6, b"y" * 6, b"z" * 6, b"boom"]
    results = await asyncio.gather(*(coalescer.submit(i) for i in items), return_exceptions=True)
    assert all(len(b"".join(batch)) <= 10 or len(batch) == 1 for batch in seen)
    assert isinstance(results[3], ConnectionError)
    assert results[0] is True


@pytest.mark.parametrize("concurrency", [1, 2, 4])
async def test_coalescer_keeps_at_most_concurrency_flushes_in_flight(concurrency: int) -> None:
    in_flight = peak = 0
    flushed: list[int] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)  # a confirm's wait
        flushed.extend(items)
        in_flight -= 1
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(flush, max_items=3, concurrency=concurrency)
    assert await asyncio.gather(*(coalescer.submit(i) for i in range(30))) == list(range(30))
    assert peak == concurrency
    assert sorted(flushed) == list(range(30))
    # Runners that finished are replaced: a later item is never left waiting.
    for i in range(5):
        assert await coalescer.submit(100 + i) == 100 + i
        await asyncio.sleep(0)


async def test_coalescer_linger_shares_one_flush_bounded_by_time_count_and_weight() -> None:
    batches: list[list[bytes]] = []

    async def flush(items: Sequence[bytes]) -> list[int | BaseException]:
        batches.append(list(items))
        await asyncio.sleep(0.001)
        return [len(item) for item in items]

    coalescer: Coalescer[bytes, int] = Coalescer(
        flush, 4, weight=len, max_weight=10, concurrency=2, linger=0.05
    )

    async def later(delay: float, item: bytes) -> int:
        await asyncio.sleep(delay)
        return await coalescer.submit(item)

    # Items arriving within the linger share one flush.
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (
        list(await asyncio.gather(later(0, b"a"), later(0.01, b"b"), later(0.02, b"c"))) == [1] * 3
    )
    assert batches == [[b"a", b"b", b"c"]]
    assert loop.time() - started < 1.0  # bounded by the linger, not by a fourth item
    # A batch that fills (by count, then by weight) goes at once, without lingering.
    batches.clear()
    started = loop.time()
    assert await asyncio.gather(*(coalescer.submit(b"x") for _ in range(4))) == [1] * 4
    assert await coalescer.submit(b"y" * 10) == 10
    assert loop.time() - started < 0.04
    assert batches == [[b"x"] * 4, [b"y" * 10]]
    # What a full batch left goes on without waiting for that batch's flush.
    batches.clear()
    assert await asyncio.gather(*(coalescer.submit(b"w") for _ in range(6))) == [1] * 6
    assert sorted(len(b) for b in batches) == [2, 4]


async def test_coalescer_lingers_only_while_another_flush_is_in_flight() -> None:
    """``linger_alone=False``: a lone caller (nothing in flight) is flushed at once, however
    long the linger; items that arrive while a flush awaits its answer wait for company."""
    batches: list[list[int]] = []
    answer = asyncio.Event()
    lingered: list[None] = []

    async def flush(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        if items[0] == 0:
            await answer.wait()  # a confirm that takes its time
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(
        flush,
        max_items=3,
        concurrency=2,
        linger=3600.0,
        linger_alone=False,
        on_linger=lambda: lingered.append(None),
    )
    # One at a time, as a lone host sends: never a linger (an hour each if it did).
    for i in range(1, 6):
        assert await coalescer.submit(i) == i
    assert lingered == [] and batches == [[i] for i in range(1, 6)]
    batches.clear()
    # While block 0's flush is in flight, the next ones wait for company: a full batch.
    first = asyncio.create_task(coalescer.submit(0))
    await asyncio.sleep(0)
    company = [asyncio.create_task(coalescer.submit(i)) for i in (10, 11)]
    await asyncio.sleep(0.01)
    assert len(lingered) == 1 and not any(task.done() for task in company)
    assert await coalescer.submit(12) == 12  # the third fills the batch: it goes at once
    assert [await task for task in company] == [10, 11]
    assert batches == [[0], [10, 11, 12]]
    answer.set()
    assert await first == 0


async def test_coalescer_does_not_linger_for_a_heavy_batch() -> None:
    """``linger_below``: light items wait for company (up to the linger), a batch that
    already weighs that much goes at once (an hour's linger would show)."""
    lingered: list[None] = []

    async def flush(items: Sequence[bytes]) -> list[int | BaseException]:
        return [len(item) for item in items]

    coalescer: Coalescer[bytes, int] = Coalescer(
        flush,
        64,
        weight=len,
        max_weight=1000,
        linger=3600.0,
        linger_below=100,
        on_linger=lambda: lingered.append(None),
    )
    assert await coalescer.submit(b"x" * 100) == 100
    assert await coalescer.submit(b"y" * 500) == 500
    assert lingered == []
    light = asyncio.create_task(coalescer.submit(b"z"))
    await asyncio.sleep(0.01)
    assert len(lingered) == 1 and not light.done()  # waits for company
    assert await coalescer.submit(b"w" * 99) == 99  # 100 bytes together: the batch goes
    assert await light == 1


async def test_coalescer_goes_on_after_a_flush_raises_cancelled_error() -> None:
    """aiormq cancels pending confirms when its channel closes: the flush raises
    CancelledError though nobody cancelled the coalescer. Items queued meanwhile still go."""
    calls = 0

    async def flush(items: Sequence[str]) -> list[str | BaseException]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise asyncio.CancelledError
        return list(items)

    coalescer: Coalescer[str, str] = Coalescer(flush)
    first = asyncio.create_task(coalescer.submit("a"))
    await asyncio.sleep(0)  # "a" is being flushed
    second = asyncio.create_task(coalescer.submit("b"))
    assert await asyncio.wait_for(second, 2.0) == "b"  # no later submit needed
    with pytest.raises(asyncio.CancelledError):
        await first


def test_start_refuses_more_blocks_than_a_redis_bitmap_holds() -> None:
    fields: dict[str, Any] = {"block_size": 1, "carve_id": "c1", "request_id": "r"}
    assert StartRequest(block_count=2**32, carve_size=2**32, **fields).block_count == 2**32
    with pytest.raises(ValidationError):
        StartRequest(block_count=2**32 + 1, carve_size=2**32 + 1, **fields)


async def test_byte_budget_bounds_bytes_in_flight() -> None:
    budget = ByteBudget(10)
    peak = 0
    order: list[str] = []

    async def job(name: str, size: int) -> None:
        nonlocal peak
        async with budget.hold(size):
            peak = max(peak, budget.used)
            order.append(name)
            await asyncio.sleep(0.01)

    await asyncio.gather(job("a", 6), job("b", 6), job("c", 4), job("huge", 50))
    assert peak <= 10
    assert sorted(order) == ["a", "b", "c", "huge"]
    assert budget.used == 0


async def test_amqp_setup_is_retried_until_the_broker_is_ready() -> None:
    class Link:
        connected = asyncio.Event()

    Link.connected.set()
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("INTERNAL_ERROR")
        return "subscribed"

    link: Any = Link()
    assert await with_amqp_retry(link, flaky, "consume") == "subscribed"
    assert calls == 3

    async def broken() -> str:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError, match="still down"):
        await with_amqp_retry(link, broken, "consume", give_up_after=0.3)


def test_mongodb_errors_keep_valid_blocks_queued() -> None:
    with pytest.raises(Unavailable):
        with transient_on_outage("chunk write"):
            raise OperationFailure("internal server error", code=1)
    with pytest.raises(Unavailable):
        with transient_on_outage("chunk write"):
            raise AutoReconnect("primary stepped down")
    with pytest.raises(OperationFailure):  # about the document: the caller decides
        with transient_on_outage("chunk write"):
            raise OperationFailure("object too large", code=10334)
    assert classify_write_error({"code": 11000}) is False
    assert isinstance(classify_write_error({"code": 10334, "errmsg": "too big"}), PoisonMessage)
    assert isinstance(classify_write_error({"code": 1, "errmsg": "internal"}), Unavailable)


def test_public_carve_record_never_carries_private_fields() -> None:
    start = StartRequest.model_validate(
        {
            "block_count": 2,
            "block_size": 4,
            "carve_size": 6,
            "carve_id": "c-1",
            "request_id": "q",
            "node_key": "secret-node-key",
        }
    )
    doc = new_carve_doc(start, "session-secret-0123456789", datetime.now(UTC))
    assert same_start(doc, start)
    assert not same_start(doc, start.model_copy(update={"node_key": "other"}))
    record = CarveRecord.from_doc(doc)
    dumped = record.model_dump_json()
    assert "secret-node-key" not in dumped and "session-secret" not in dumped
    assert (record.carve_id, record.status, record.blocks_received) == ("c-1", "receiving", 0)
