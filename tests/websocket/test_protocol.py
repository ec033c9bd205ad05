"""Connection state machine: bytes from a (masked) client in, events and server bytes out."""

import pytest

from rtbus.websocket.frames import CloseCode, Frame, FrameParser, Opcode, encode_close
from rtbus.websocket.protocol import (
    BinaryMessage,
    CloseReceived,
    InvalidState,
    PingReceived,
    PongReceived,
    ProtocolViolation,
    ServerProtocol,
    State,
    TextMessage,
)

MASK = b"\x01\x02\x03\x04"


def client(opcode, payload=b"", fin=True):
    """Bytes of one masked client frame."""
    if isinstance(payload, str):
        payload = payload.encode()
    return Frame(fin, opcode, payload).serialize(MASK)


def close_frame(code, reason=""):
    return client(Opcode.CLOSE, encode_close(code, reason))


def sent(protocol):
    """The frames the server queued, parsed as a client would."""
    return FrameParser(2**30, require_mask=False).feed(protocol.data_to_send())


def violation(data, code, max_message_size=2**20):
    protocol = ServerProtocol(max_message_size)
    events = protocol.receive_data(data)
    assert isinstance(events[-1], ProtocolViolation), events
    assert events[-1].code == code
    assert sent(protocol)[-1] == Frame(True, Opcode.CLOSE, encode_close(code, events[-1].reason))
    assert protocol.close_sent and protocol.state is State.CLOSED
    assert protocol.should_close_transport()
    return protocol, events


# -- messages ----------------------------------------------------------------------------

def test_text_and_binary_messages():
    protocol = ServerProtocol()
    events = protocol.receive_data(client(Opcode.TEXT, "héllo") + client(Opcode.BINARY, b"\x00"))
    assert events == [TextMessage("héllo"), BinaryMessage(b"\x00")]
    assert protocol.data_to_send() == b"" and protocol.state is State.OPEN
    assert protocol.frames_received == 2


def test_fragmented_message_with_interleaved_ping():
    protocol = ServerProtocol()
    data = (client(Opcode.TEXT, "he", fin=False) + client(Opcode.PING, b"p")
            + client(Opcode.CONTINUATION, "ll", fin=False) + client(Opcode.PONG, b"q")
            + client(Opcode.CONTINUATION, "o"))
    assert protocol.receive_data(data) == [
        PingReceived(b"p"), PongReceived(b"q"), TextMessage("hello")]
    assert sent(protocol) == [Frame(True, Opcode.PONG, b"p")]
    assert protocol.frames_received == 5


def test_fragmented_binary_message():
    protocol = ServerProtocol()
    data = client(Opcode.BINARY, b"\x00\xff", fin=False) + client(Opcode.CONTINUATION, b"\xfe")
    assert protocol.receive_data(data) == [BinaryMessage(b"\x00\xff\xfe")]


def test_text_split_inside_a_multibyte_character():
    encoded = "€uro".encode()          # € is 3 bytes
    protocol = ServerProtocol()
    data = (client(Opcode.TEXT, encoded[:1], fin=False)
            + client(Opcode.CONTINUATION, encoded[1:2], fin=False)
            + client(Opcode.CONTINUATION, encoded[2:]))
    assert protocol.receive_data(data) == [TextMessage("€uro")]


def test_invalid_utf8_in_a_single_frame():
    violation(client(Opcode.TEXT, b"ok\xff"), CloseCode.INCONSISTENT_DATA)


def test_invalid_utf8_across_fragments_found_at_the_bad_fragment():
    # The first fragment ends with a lead byte; the next one does not continue it.
    protocol, events = violation(
        client(Opcode.TEXT, b"a\xe2", fin=False) + client(Opcode.CONTINUATION, b"(", fin=False),
        CloseCode.INCONSISTENT_DATA)
    assert len(events) == 1


def test_truncated_character_at_the_end_of_a_fragmented_message():
    violation(client(Opcode.TEXT, b"a", fin=False) + client(Opcode.CONTINUATION, b"\xe2\x82"),
              CloseCode.INCONSISTENT_DATA)


def test_binary_messages_are_not_checked_for_utf8():
    assert ServerProtocol().receive_data(client(Opcode.BINARY, b"\xff")) == [BinaryMessage(b"\xff")]


def test_one_byte_at_a_time_gives_the_same_events():
    data = (client(Opcode.TEXT, "€", fin=False) + client(Opcode.PING, b"x")
            + client(Opcode.CONTINUATION, "x" * 300) + client(Opcode.BINARY, b"b" * 70000)
            + close_frame(1000, "done"))
    whole = ServerProtocol()
    expected = whole.receive_data(data)
    stepped = ServerProtocol()
    events = []
    for i in range(len(data)):
        events += stepped.receive_data(data[i:i + 1])
    assert events == expected
    assert [type(e) for e in events] == [PingReceived, TextMessage, BinaryMessage, CloseReceived]
    assert stepped.data_to_send() == whole.data_to_send()
    assert stepped.frames_received == whole.frames_received == 5


# -- fragment order ----------------------------------------------------------------------

def test_continuation_without_a_message_in_progress():
    _, events = violation(client(Opcode.CONTINUATION, "x"), CloseCode.PROTOCOL_ERROR)
    assert "unexpected continuation" in events[-1].reason


def test_new_message_while_expecting_a_continuation():
    _, events = violation(client(Opcode.TEXT, "a", fin=False) + client(Opcode.TEXT, "b"),
                          CloseCode.PROTOCOL_ERROR)
    assert "expected a continuation" in events[-1].reason


def test_binary_while_expecting_a_continuation():
    violation(client(Opcode.TEXT, "a", fin=False) + client(Opcode.BINARY, b"b"),
              CloseCode.PROTOCOL_ERROR)


def test_order_error_found_from_the_header_alone():
    protocol = ServerProtocol()
    protocol.receive_data(client(Opcode.TEXT, "a", fin=False))
    events = protocol.receive_data(client(Opcode.TEXT, "b" * 100)[:2])
    assert events == [ProtocolViolation(CloseCode.PROTOCOL_ERROR, events[0].reason)]


def test_events_before_a_violation_are_reported():
    _, events = violation(client(Opcode.TEXT, "fine") + client(Opcode.CONTINUATION, "x"),
                          CloseCode.PROTOCOL_ERROR)
    assert events[0] == TextMessage("fine")


@pytest.mark.parametrize("data", [
    Frame(True, Opcode.TEXT, b"x").serialize(),                    # unmasked
    Frame(True, Opcode.TEXT, b"x", rsv1=True).serialize(MASK),
    Frame(True, 3, b"").serialize(MASK),
    Frame(False, Opcode.PING, b"").serialize(MASK),
    Frame(True, Opcode.PING, b"p" * 126).serialize(MASK),
])
def test_frame_rule_violations_close_with_1002(data):
    violation(data, CloseCode.PROTOCOL_ERROR)


# -- message size ------------------------------------------------------------------------

def test_message_at_the_limit_is_fine():
    protocol = ServerProtocol(max_message_size=100)
    data = client(Opcode.TEXT, "a" * 60, fin=False) + client(Opcode.CONTINUATION, "b" * 40)
    assert protocol.receive_data(data) == [TextMessage("a" * 60 + "b" * 40)]


def test_single_frame_too_big_refused_before_its_payload():
    protocol = ServerProtocol(max_message_size=100)
    header = client(Opcode.BINARY, b"x" * 1000)[:4]       # 16-bit length, no mask yet
    [event] = protocol.receive_data(header)
    assert event.code == CloseCode.MESSAGE_TOO_BIG
    assert protocol._parser.buffered <= len(header)


def test_fragments_adding_up_past_the_limit_refused_at_the_header():
    protocol = ServerProtocol(max_message_size=100)
    assert protocol.receive_data(client(Opcode.TEXT, "a" * 60, fin=False)) == []
    events = protocol.receive_data(client(Opcode.CONTINUATION, "b" * 41)[:2])
    assert [e.code for e in events] == [CloseCode.MESSAGE_TOO_BIG]
    assert sent(protocol)[-1].payload[:2] == (1009).to_bytes(2, "big")


def test_default_limit_is_one_mebibyte():
    protocol = ServerProtocol()
    payload = b"\0" * 2**20
    assert protocol.receive_data(client(Opcode.BINARY, payload)) == [BinaryMessage(payload)]
    [event] = ServerProtocol().receive_data(client(Opcode.BINARY, b"\0" * (2**20 + 1))[:10])
    assert event.code == CloseCode.MESSAGE_TOO_BIG


# -- ping / pong -------------------------------------------------------------------------

def test_ping_answered_with_the_same_payload():
    protocol = ServerProtocol()
    assert protocol.receive_data(client(Opcode.PING, b"\x00abc")) == [PingReceived(b"\x00abc")]
    assert sent(protocol) == [Frame(True, Opcode.PONG, b"\x00abc")]
    assert protocol.receive_data(client(Opcode.PING)) == [PingReceived(b"")]
    assert protocol.data_to_send() == b"\x8a\x00"


def test_server_ping_and_pong_event():
    protocol = ServerProtocol()
    protocol.send_ping(b"t1")
    assert protocol.data_to_send() == b"\x89\x02t1"
    assert protocol.receive_data(client(Opcode.PONG, b"t1")) == [PongReceived(b"t1")]
    with pytest.raises(ValueError):
        protocol.send_ping(b"x" * 126)


# -- closing -----------------------------------------------------------------------------

def test_client_close_echoed_with_its_code_and_reason():
    protocol = ServerProtocol()
    assert protocol.receive_data(close_frame(4001, "bye")) == [CloseReceived(4001, "bye")]
    assert sent(protocol) == [Frame(True, Opcode.CLOSE, b"\x0f\xa1bye")]
    assert (protocol.close_code, protocol.close_reason) == (4001, "bye")
    assert protocol.close_sent and protocol.close_received
    assert protocol.state is State.CLOSED and protocol.should_close_transport()


def test_application_close_code_echoed():
    protocol = ServerProtocol()
    assert protocol.receive_data(close_frame(3999)) == [CloseReceived(3999, "")]
    assert sent(protocol)[0].payload == b"\x0f\x9f"


def test_empty_close_echoed_as_clean():
    protocol = ServerProtocol()
    assert protocol.receive_data(client(Opcode.CLOSE)) == [CloseReceived(CloseCode.CLEAN, "")]
    assert sent(protocol) == [Frame(True, Opcode.CLOSE, b"\x03\xe8")]


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000])
def test_invalid_close_code_answered_with_1002(code):
    protocol, _ = violation(client(Opcode.CLOSE, code.to_bytes(2, "big")), CloseCode.PROTOCOL_ERROR)
    assert protocol.close_received


def test_one_byte_close_answered_with_1002():
    _, events = violation(client(Opcode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR)
    assert "malformed close frame" in events[-1].reason


def test_close_reason_not_utf8_answered_with_1007():
    violation(client(Opcode.CLOSE, b"\x03\xe8\xc3\x28"), CloseCode.INCONSISTENT_DATA)


def test_server_initiated_close_then_client_answer():
    protocol = ServerProtocol()
    protocol.send_close(CloseCode.KEEP_ALIVE_TIMEOUT, "lifetime")
    assert sent(protocol) == [Frame(True, Opcode.CLOSE, b"\x0f\xa2lifetime")]
    assert protocol.state is State.CLOSING and not protocol.should_close_transport()
    # Data still in flight from the client is delivered; pings are no longer answered.
    assert protocol.receive_data(client(Opcode.TEXT, "late") + client(Opcode.PING, b"p")) == [
        TextMessage("late"), PingReceived(b"p")]
    assert protocol.receive_data(close_frame(4002)) == [
        CloseReceived(CloseCode.KEEP_ALIVE_TIMEOUT, "")]
    assert protocol.data_to_send() == b""     # no second close
    assert protocol.state is State.CLOSED and protocol.should_close_transport()


def test_send_close_twice_is_a_no_op_and_sending_after_close_is_refused():
    protocol = ServerProtocol()
    protocol.send_close(CloseCode.TRY_LATER)
    protocol.send_close(CloseCode.SERVER_ERROR)
    assert sent(protocol) == [Frame(True, Opcode.CLOSE, b"\x03\xf5")]
    for send in (protocol.send_text, protocol.send_binary, protocol.send_ping):
        with pytest.raises(InvalidState):
            send(b"x")


def test_send_close_after_the_echo_is_a_no_op():
    protocol = ServerProtocol()
    protocol.receive_data(close_frame(1000))
    protocol.data_to_send()
    protocol.send_close(CloseCode.GOING_AWAY)
    assert protocol.data_to_send() == b""


@pytest.mark.parametrize("code", [1006, 1005, 999, 5000])
def test_send_close_refuses_codes_not_allowed_on_the_wire(code):
    protocol = ServerProtocol()
    with pytest.raises(ValueError):
        protocol.send_close(code)
    assert not protocol.close_sent and protocol.data_to_send() == b""


def test_send_close_cuts_a_long_reason_on_a_character_boundary():
    protocol = ServerProtocol()
    protocol.send_close(CloseCode.CLEAN, "€" * 60)        # 180 bytes
    [frame] = sent(protocol)
    assert frame.payload == b"\x03\xe8" + ("€" * 41).encode()   # 123 bytes


def test_input_after_a_close_is_ignored():
    protocol = ServerProtocol()
    events = protocol.receive_data(
        close_frame(1000) + client(Opcode.TEXT, "after") + client(Opcode.PING))
    assert events == [CloseReceived(CloseCode.CLEAN, "")]
    assert protocol.receive_data(client(Opcode.TEXT, "later")) == []
    assert len(sent(protocol)) == 1 and protocol.frames_received == 1


def test_input_after_a_violation_is_ignored():
    protocol = ServerProtocol()
    protocol.receive_data(client(Opcode.CONTINUATION, "x") + client(Opcode.TEXT, "after"))
    assert protocol.receive_data(client(Opcode.PING)) == []
    assert len(sent(protocol)) == 1


def test_violation_after_our_close_sends_nothing_more():
    protocol = ServerProtocol()
    protocol.send_close(CloseCode.GOING_AWAY)
    protocol.data_to_send()
    [event] = protocol.receive_data(client(Opcode.TEXT, b"\xff"))
    assert event.code == CloseCode.INCONSISTENT_DATA
    assert protocol.data_to_send() == b"" and protocol.should_close_transport()


# -- sending -----------------------------------------------------------------------------

def test_send_text_bytes_and_str_and_binary():
    protocol = ServerProtocol()
    batch = b'[{"id":1,"message":{"type":"t","payload":{}}}]'
    protocol.send_text(batch)
    protocol.send_text("é")
    protocol.send_binary(b"\x00")
    assert sent(protocol) == [Frame(True, Opcode.TEXT, batch),
                              Frame(True, Opcode.TEXT, "é".encode()),
                              Frame(True, Opcode.BINARY, b"\x00")]
    assert protocol.data_to_send() == b""


@pytest.mark.parametrize("size, header", [(125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"),
                                          (65536, b"\x81\x7f" + (65536).to_bytes(8, "big"))])
def test_server_frames_are_unmasked_with_the_shortest_length(size, header):
    protocol = ServerProtocol()
    protocol.send_text(b"x" * size)
    assert protocol.data_to_send() == header + b"x" * size

