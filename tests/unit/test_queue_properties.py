"""The ingest's publish path builds a block message's body and properties itself: the same
bytes on the wire as ``shared.queue.encode``'s aio_pika.Message, which the assembler decodes."""

from __future__ import annotations

from pamqp.header import ContentHeader

from shared.queue import Block, blocks_properties, decode, encode, encode_body


def _blocks(count: int) -> list[Block]:
    return [Block(f"carve-{i}", i, 10, 8192, 81920, bytes([i]) * 8192) for i in range(count)]


def test_body_and_properties_are_those_of_encode() -> None:
    for count in (1, 3):
        blocks = _blocks(count)
        message = encode(blocks)
        assert message.timestamp is not None
        properties = blocks_properties(count, message.timestamp.timestamp())
        assert encode_body(blocks) == message.body
        assert properties == message.properties
        ours = ContentHeader(0, len(message.body), properties).marshal()
        theirs = ContentHeader(0, len(message.body), message.properties).marshal()
        assert ours == theirs
        assert decode(encode_body(blocks), properties.headers or {}) == blocks


def test_properties_are_persistent_and_stamped_now() -> None:
    properties = blocks_properties(1)
    assert properties.delivery_mode == 2
    assert properties.timestamp is not None and properties.timestamp.tzinfo is not None
