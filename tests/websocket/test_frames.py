"""Frame codec: serialize and parse, the server's rules on client frames, close payloads."""

import os

import pytest

from rtbus.websocket.frames import (
    CloseCode,
    Frame,
    FrameParser,
    Opcode,
    ProtocolError,
    apply_mask,
    decode_close,
    encode_close,
    is_valid_close_code,
)

MASK = bytes.fromhex("37fa213d")


def parse_all(data, **kwargs):
    kwargs.setdefault("max_frame_size", 2**24)
    return FrameParser(kwargs.pop("max_frame_size"), **kwargs).feed(data)


def raises(data, code, match=None, **kwargs):
    with pytest.raises(ProtocolError, match=match) as info:
        parse_all(data, **kwargs)
    assert info.value.code == code
    return info.value


def test_wire_values():
    assert [int(op) for op in Opcode] == [0, 1, 2, 8, 9, 10]
    assert CloseCode.CLEAN == 1000 and CloseCode.TRY_LATER == 1013
    assert CloseCode.SESSION_EXPIRED == 4001 and CloseCode.KEEP_ALIVE_TIMEOUT == 4002
    assert CloseCode.KILL_NOW == 4003 and CloseCode.ABNORMAL_CLOSURE == 1006


def test_rfc_examples():
    # RFC 6455 §5.7: a single-frame unmasked and masked "Hello".
    assert Frame(True, Opcode.TEXT, b"Hello").serialize() == bytes.fromhex("810548656c6c6f")
    masked = bytes.fromhex("818537fa213d7f9f4d5158")
    assert Frame(True, Opcode.TEXT, b"Hello").serialize(MASK) == masked
    [frame] = parse_all(bytes.fromhex("818537fa213d7f9f4d5158"))
    assert frame == Frame(True, Opcode.TEXT, b"Hello")


@pytest.mark.parametrize("size, header_len, length_byte", [
    (0, 2, 0), (125, 2, 125),           # 7-bit length
    (126, 4, 126), (65535, 4, 126),     # 16-bit length
    (65536, 10, 127), (70000, 10, 127), # 64-bit length
])
@pytest.mark.parametrize("mask", [None, MASK])
def test_lengths_round_trip(size, header_len, length_byte, mask):
    payload = os.urandom(size)
    data = Frame(True, Opcode.BINARY, payload).serialize(mask)
    extra = 4 if mask else 0
    assert len(data) == header_len + extra + size
    assert data[1] & 0x7F == length_byte
    assert bool(data[1] & 0x80) == (mask is not None)
    assert parse_all(data, require_mask=False) == [Frame(True, Opcode.BINARY, payload)]


def test_mask_round_trip_and_odd_lengths():
    for size in (0, 1, 3, 4, 5, 1023, 2047, 2048, 2049, 2051, 4097, 70001):   # both methods
        payload = os.urandom(size)
        masked = apply_mask(payload, MASK)
        assert len(masked) == size
        assert apply_mask(masked, MASK) == payload
        assert masked == bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def test_serialize_rejects_bad_mask_length():
    with pytest.raises(ValueError):
        Frame(True, Opcode.TEXT, b"x").serialize(b"abc")


def test_flags_survive_round_trip():
    frames = [Frame(False, Opcode.TEXT, b"part"), Frame(True, Opcode.CONTINUATION, b"2")]
    assert parse_all(b"".join(frame.serialize(MASK) for frame in frames)) == frames


def test_byte_by_byte_gives_the_same_frames():
    data = b"".join(Frame(True, op, p).serialize(MASK) for op, p in [
        (Opcode.TEXT, b"a" * 300), (Opcode.PING, b"hi"), (Opcode.BINARY, b""),
        (Opcode.TEXT, b"z" * 70000)])
    parser = FrameParser(2**20)
    frames = []
    for i in range(len(data)):
        frames += parser.feed(data[i:i + 1])
    assert frames == parse_all(data)
    assert len(frames) == 4 and parser.buffered == 0


def test_unmasked_client_frame_refused():
    err = raises(Frame(True, Opcode.TEXT, b"x").serialize(), CloseCode.PROTOCOL_ERROR)
    assert err.reason == "frames from the client must be masked"
    assert parse_all(Frame(True, Opcode.TEXT, b"x").serialize(), require_mask=False)


@pytest.mark.parametrize("flag", ["rsv1", "rsv2", "rsv3"])
def test_reserved_bits_refused(flag):
    data = Frame(True, Opcode.TEXT, b"x", **{flag: True}).serialize(MASK)
    raises(data, CloseCode.PROTOCOL_ERROR, "reserved")


def test_rsv1_allowed_only_on_the_first_frame_of_a_data_message_with_deflate():
    first = Frame(False, Opcode.TEXT, b"x", rsv1=True).serialize(MASK)
    frames = parse_all(first, allow_rsv1=True)
    assert frames == [Frame(False, Opcode.TEXT, b"x", rsv1=True)]
    for flag in ("rsv2", "rsv3"):
        raises(Frame(True, Opcode.TEXT, b"x", **{flag: True}).serialize(MASK),
               CloseCode.PROTOCOL_ERROR, "reserved", allow_rsv1=True)
    for opcode in (Opcode.CONTINUATION, Opcode.PING, Opcode.PONG, Opcode.CLOSE):
        raises(Frame(True, opcode, b"", rsv1=True).serialize(MASK), CloseCode.PROTOCOL_ERROR,
               f"RSV1 \\(compressed\\) is set on a {opcode.name} frame", allow_rsv1=True)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_refused(opcode):
    raises(Frame(True, opcode, b"").serialize(MASK), CloseCode.PROTOCOL_ERROR, "unknown opcode")


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_fragmented_control_frame_refused(opcode):
    raises(Frame(False, opcode, b"").serialize(MASK), CloseCode.PROTOCOL_ERROR, "fragmented")


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_over_125_bytes_refused(opcode):
    assert parse_all(Frame(True, opcode, b"\x03\xe8" + b"p" * 123).serialize(MASK))
    # The 2-byte header is enough to refuse it.
    raises(Frame(True, opcode, b"p" * 126).serialize(MASK)[:2], CloseCode.PROTOCOL_ERROR, "125")


@pytest.mark.parametrize("size", [101, 70000])
def test_oversized_frame_refused_from_its_header_alone(size):
    # The header without its masking key and payload.
    header = Frame(True, Opcode.BINARY, b"\0" * size).serialize(MASK)[:-size - 4]
    parser = FrameParser(100)
    with pytest.raises(ProtocolError) as info:
        parser.feed(header)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    assert parser.buffered == len(header)    # nothing of the payload was ever buffered
    assert parse_all(Frame(True, Opcode.BINARY, b"\0" * 100).serialize(MASK), max_frame_size=100)


def test_64_bit_length_with_most_significant_bit_set_refused():
    header = bytes([0x82, 0x80 | 127]) + (2**63 + 5).to_bytes(8, "big")
    raises(header, CloseCode.PROTOCOL_ERROR, "most significant bit", max_frame_size=2**64)


def test_check_header_runs_before_the_payload():
    seen = []
    parser = FrameParser(2**20, check_header=lambda *args: seen.append(args))
    data = Frame(False, Opcode.TEXT, b"x" * 200).serialize(MASK)
    assert parser.feed(data[:4]) == []
    assert seen[-1] == (Opcode.TEXT, False, False, 200)


def test_frame_parse_needs_exactly_one_frame():
    data = Frame(True, Opcode.TEXT, b"x").serialize()
    assert Frame.parse(data) == Frame(True, Opcode.TEXT, b"x")
    for bad in (data[:-1], data + data):
        with pytest.raises(ValueError):
            Frame.parse(bad)
    with pytest.raises(ProtocolError):
        Frame.parse(data, require_mask=True)


# -- close payloads ----------------------------------------------------------------------

def test_close_round_trip():
    assert encode_close(CloseCode.GOING_AWAY, "bye") == b"\x03\xe9bye"
    assert decode_close(b"\x03\xe9bye") == (CloseCode.GOING_AWAY, "bye")
    assert decode_close(encode_close(4001)) == (CloseCode.SESSION_EXPIRED, "")
    code, reason = decode_close(encode_close(3500, "é"))
    assert (code, reason) == (3500, "é") and type(code) is int


def test_empty_close_reads_as_clean():
    assert decode_close(b"") == (CloseCode.CLEAN, "")


def test_one_byte_close_is_malformed():
    with pytest.raises(ProtocolError, match="malformed close frame") as info:
        decode_close(b"\x03")
    assert info.value.code == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_invalid_close_codes(code):
    assert not is_valid_close_code(code)
    with pytest.raises(ProtocolError, match=f"invalid close code {code}") as info:
        decode_close(code.to_bytes(2, "big"))
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    with pytest.raises(ValueError):
        encode_close(code)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012,
                                  1013, 1014, 3000, 4001, 4002, 4003, 4999])
def test_valid_close_codes(code):
    assert is_valid_close_code(code)
    assert decode_close(encode_close(code, "r")) == (code, "r")


def test_close_reason_not_utf8():
    with pytest.raises(ProtocolError) as info:
        decode_close(b"\x03\xe8\xff\xfe")
    assert info.value.code == CloseCode.INCONSISTENT_DATA


def test_long_close_reason_cut_on_a_character_boundary():
    payload = encode_close(1000, "é" * 100)          # 200 bytes of reason
    assert len(payload) <= 125
    code, reason = decode_close(payload)
    assert reason == "é" * 61                         # 122 bytes: the 62nd would straddle 123
    assert decode_close(encode_close(1000, "a" * 200))[1] == "a" * 123
