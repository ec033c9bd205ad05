"""The state machine with permessage-deflate and with the process-wide receive budget."""

import tracemalloc
import zlib

import pytest

from rtbus.websocket.budget import ReceiveBudget
from rtbus.websocket.deflate import CompressionPolicy, DeflateParams, OutgoingMessage
from rtbus.websocket.frames import CloseCode, Frame, FrameParser, Opcode, encode_close
from rtbus.websocket.protocol import (
    CloseReceived,
    PingReceived,
    ProtocolViolation,
    ServerProtocol,
    State,
    TextMessage,
)

MASK = b"\x05\x06\x07\x08"
DEFLATE = DeflateParams(15)


def client(opcode, payload=b"", fin=True, rsv1=False):
    if isinstance(payload, str):
        payload = payload.encode()
    return Frame(fin, opcode, payload, rsv1=rsv1).serialize(MASK)


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def compressed_message(text: str, fragments: int = 1) -> bytes:
    """A compressed TEXT message as a client sends it, cut into `fragments` frames."""
    data = deflated(text.encode())
    step = -(-len(data) // fragments)
    parts = [data[i:i + step] for i in range(0, len(data), step)]
    frames = [client(Opcode.TEXT if i == 0 else Opcode.CONTINUATION, part,
                     fin=i == len(parts) - 1, rsv1=i == 0) for i, part in enumerate(parts)]
    return b"".join(frames)


def last_close(protocol):
    frames = FrameParser(1 << 20, require_mask=False).feed(protocol.data_to_send())
    assert frames[-1].opcode is Opcode.CLOSE
    return frames[-1].payload


# -- compressed client messages ---------------------------------------------------------

def test_compressed_messages_single_and_fragmented():
    protocol = ServerProtocol(deflate=DEFLATE)
    text = '{"event_name":"subscribe","data":{"channels":["é' + "x" * 3000 + '"],"last":0}}'
    data = (compressed_message(text) + client(Opcode.TEXT, "plain too")
            + compressed_message(text, fragments=3))
    assert protocol.receive_data(data) == [TextMessage(text), TextMessage("plain too"), TextMessage(text)]


def test_control_frames_between_compressed_fragments():
    protocol = ServerProtocol(deflate=DEFLATE)
    data = deflated(b"hello world")
    events = protocol.receive_data(client(Opcode.TEXT, data[:3], fin=False, rsv1=True)
                                   + client(Opcode.PING, b"p")
                                   + client(Opcode.CONTINUATION, data[3:]))
    assert events == [PingReceived(b"p"), TextMessage("hello world")]


def test_rsv1_without_deflate_negotiated_is_1002():
    protocol = ServerProtocol()
    [event] = protocol.receive_data(compressed_message("hi"))
    assert event.code == CloseCode.PROTOCOL_ERROR


def test_rsv1_on_a_continuation_is_1002():
    protocol = ServerProtocol(deflate=DEFLATE)
    data = deflated(b"hello")
    events = protocol.receive_data(client(Opcode.TEXT, data[:2], fin=False, rsv1=True)
                                   + client(Opcode.CONTINUATION, data[2:], rsv1=True))
    assert isinstance(events[-1], ProtocolViolation) and events[-1].code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("fragments", [1, 4])
def test_zip_bomb_is_1009(fragments):
    protocol = ServerProtocol(max_message_size=1 << 20, deflate=DEFLATE)
    bomb = compressed_message("\0" * (32 << 20), fragments)   # 32 MiB in about 32 KB
    events = protocol.receive_data(bomb)
    assert events == [ProtocolViolation(CloseCode.MESSAGE_TOO_BIG, events[-1].reason)]
    assert "inflates to more than the limit of 1048576 bytes" in events[-1].reason
    assert last_close(protocol)[:2] == (1009).to_bytes(2, "big")
    assert protocol.should_close_transport()


def test_the_inflated_size_is_what_the_limit_holds():
    protocol = ServerProtocol(max_message_size=1000, deflate=DEFLATE)
    assert protocol.receive_data(compressed_message("a" * 1000, 2)) == [TextMessage("a" * 1000)]
    [event] = protocol.receive_data(compressed_message("a" * 1001, 2))
    assert event.code == CloseCode.MESSAGE_TOO_BIG


def test_an_uncompressed_message_keeps_the_exact_limit_with_deflate_on():
    protocol = ServerProtocol(max_message_size=1000, deflate=DEFLATE)
    [event] = protocol.receive_data(client(Opcode.BINARY, b"x" * 1001)[:4])
    assert event.code == CloseCode.MESSAGE_TOO_BIG


def test_inflated_text_must_be_utf8():
    protocol = ServerProtocol(deflate=DEFLATE)
    data = deflated(b"caf\xc3")
    [event] = protocol.receive_data(client(Opcode.TEXT, data, rsv1=True))
    assert event.code == CloseCode.INCONSISTENT_DATA


def test_corrupt_compressed_data_is_1007():
    protocol = ServerProtocol(deflate=DEFLATE)
    [event] = protocol.receive_data(client(Opcode.TEXT, b"\xff\xff\xff", rsv1=True))
    assert event.code == CloseCode.INCONSISTENT_DATA


# -- sending ----------------------------------------------------------------------------

def test_send_message_uses_the_negotiated_variant_shared_by_connections():
    message = OutgoingMessage(b'[{"id":1,"message":"' + b"z" * 4000 + b'"}]', CompressionPolicy(100))
    deflating = [ServerProtocol(deflate=DEFLATE) for _ in range(2)]
    plain = ServerProtocol()
    frames = [protocol.send_message(message) for protocol in (*deflating, plain)]
    assert frames[0] is frames[1] and frames[0][0] == 0xC1     # FIN, RSV1, TEXT
    assert frames[2][0] == 0x81 and frames[2] is message.plain_frame()
    for protocol, frame in zip((*deflating, plain), frames):
        assert protocol.data_to_send() is frame      # written as is, no copy


def test_send_message_after_close_is_refused():
    from rtbus.websocket.protocol import InvalidState

    protocol = ServerProtocol(deflate=DEFLATE)
    protocol.send_close(1000)
    with pytest.raises(InvalidState):
        protocol.send_message(OutgoingMessage(b"[]", None))


# -- the receive budget -----------------------------------------------------------------

def test_partial_messages_are_charged_and_given_back():
    budget = ReceiveBudget(1 << 20)
    protocol = ServerProtocol(budget=budget)
    frame = client(Opcode.BINARY, b"x" * 5000)
    protocol.receive_data(frame[:3000])
    assert budget.used == 3000 - 8              # the header is parsed, its payload is not
    protocol.receive_data(frame[3000:])
    assert budget.used == 0
    protocol.receive_data(client(Opcode.TEXT, "a" * 200, fin=False))
    assert budget.used == 200                    # a fragment waiting for the rest
    protocol.receive_data(client(Opcode.CONTINUATION, "b"))
    assert budget.used == 0 and budget.peak == 3000 - 8


def test_a_compressed_fragment_also_holds_its_inflater():
    from rtbus.websocket.deflate import INFLATER_COST

    budget = ReceiveBudget(1 << 20)
    protocol = ServerProtocol(deflate=DEFLATE, budget=budget)
    data = deflated(b"hello world")
    protocol.receive_data(client(Opcode.TEXT, data[:4], fin=False, rsv1=True))
    assert budget.used >= INFLATER_COST
    protocol.receive_data(client(Opcode.CONTINUATION, data[4:]))
    assert budget.used == 0


def test_the_connection_that_would_pass_the_budget_is_closed_1013():
    budget = ReceiveBudget(10_000)
    holder, latecomer = ServerProtocol(budget=budget), ServerProtocol(budget=budget)
    holder.receive_data(client(Opcode.BINARY, b"x" * 9000)[:8000])
    events = latecomer.receive_data(client(Opcode.BINARY, b"y" * 9000)[:5000])
    assert events == [ProtocolViolation(CloseCode.TRY_LATER, events[0].reason)]
    assert "10000 bytes this process allows" in events[0].reason
    assert latecomer.state is State.CLOSED and budget.refusals == 1
    assert budget.used == 8000 - 8               # the holder keeps its share
    # A complete message needs no budget at all, even while it is exhausted.
    other = ServerProtocol(budget=budget)
    assert other.receive_data(client(Opcode.TEXT, "z" * 5000)) == [TextMessage("z" * 5000)]
    holder.discard_input()                       # its transport ended
    assert budget.used == 0
    holder.discard_input()
    assert budget.used == 0


def test_a_close_or_violation_gives_the_bytes_back():
    budget = ReceiveBudget(1 << 20)
    protocol = ServerProtocol(budget=budget)
    protocol.receive_data(client(Opcode.TEXT, "a" * 100, fin=False))
    assert budget.used == 100
    events = protocol.receive_data(client(Opcode.CLOSE, encode_close(1000)) + b"junk after close")
    assert isinstance(events[-1], CloseReceived) and budget.used == 0
    protocol = ServerProtocol(budget=budget)
    protocol.receive_data(client(Opcode.TEXT, "a" * 100, fin=False))
    protocol.receive_data(client(Opcode.BINARY, "not a continuation"))
    assert budget.used == 0


def test_no_limit_budget_still_counts():
    budget = ReceiveBudget(0)
    protocol = ServerProtocol(budget=budget)
    protocol.receive_data(client(Opcode.BINARY, b"x" * 70000)[:60000])
    assert budget.used > 0 and budget.refusals == 0


# -- idle memory ------------------------------------------------------------------------

def idle_bytes_per_connection(make, count: int = 500) -> float:
    """tracemalloc's bytes per protocol kept after each received and sent a message (zlib's
    own allocations included: CPython routes them through the traced raw allocator)."""
    message = OutgoingMessage(b'[{"id":1,"message":"' + b"w" * 5000 + b'"}]', CompressionPolicy(100))
    received = compressed_message('{"event_name":"subscribe","data":{"channels":["' + "c" * 3000 + '"]}}', 2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = []
        for _ in range(count):
            protocol = make()
            if protocol.deflate is not None:
                protocol.receive_data(received)
            else:
                protocol.receive_data(client(Opcode.TEXT, "x" * 3000))
            protocol.send_message(message)
            protocol.data_to_send()
            kept.append(protocol)
        return (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()


def test_an_idle_connection_holds_no_more_with_deflate():
    budget = ReceiveBudget(1 << 20)
    plain = idle_bytes_per_connection(lambda: ServerProtocol(budget=budget))
    deflating = idle_bytes_per_connection(lambda: ServerProtocol(deflate=DEFLATE, budget=budget))
    # No zlib stream (tens of KB) survives a message; a few bytes of difference are allowed.
    assert deflating <= plain + 32, (plain, deflating)
    assert budget.used == 0
