"""permessage-deflate without sockets: negotiation, inflating client data, compressing once."""

import os
import tracemalloc
import zlib

import pytest

from rtbus.websocket.deflate import (
    CompressionPolicy,
    DeflateParams,
    MessageInflater,
    OutgoingMessage,
    OutgoingMessages,
    compressed_size_limit,
    is_compressed_frame,
    negotiate,
    parse_offers,
)
from rtbus.websocket.frames import CloseCode, Frame, FrameParser, Opcode, ProtocolError

BOTH_WAYS = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"


def client_deflate(data: bytes, window_bits: int = 15) -> bytes:
    """What a client sends for `data`: raw deflate, sync flush, the last 4 bytes cut."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def client_inflate(frame: bytes, window_bits: int = 15) -> bytes:
    """What a client reads from one of our frames, inflating with at most `window_bits`."""
    (parsed,) = FrameParser(1 << 24, require_mask=False, allow_rsv1=True).feed(frame)
    if not parsed.rsv1:
        return parsed.payload
    return zlib.decompressobj(-window_bits).decompress(parsed.payload + b"\x00\x00\xff\xff")


# -- negotiation ------------------------------------------------------------------------

@pytest.mark.parametrize("offer, answer, bits", [
    # Chromium and Firefox, as they send it.
    ("permessage-deflate; client_max_window_bits", BOTH_WAYS, 15),
    ("permessage-deflate", BOTH_WAYS, 15),
    ("permessage-deflate; client_no_context_takeover; server_no_context_takeover", BOTH_WAYS, 15),
    ("permessage-deflate; server_max_window_bits=10", BOTH_WAYS + "; server_max_window_bits=10", 10),
    ('permessage-deflate; server_max_window_bits="12"; client_max_window_bits=9',
     BOTH_WAYS + "; server_max_window_bits=12", 12),
    ("x-webkit-deflate-frame, PERMESSAGE-DEFLATE ; Client_Max_Window_Bits", BOTH_WAYS, 15),
])
def test_offers_accepted_with_no_context_takeover_both_ways(offer, answer, bits):
    assert negotiate([offer]) == (answer, DeflateParams(bits))


@pytest.mark.parametrize("offer", [
    "permessage-deflate; server_max_window_bits",            # needs a value
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; server_max_window_bits=7",
    "permessage-deflate; server_max_window_bits=010",
    "permessage-deflate; server_max_window_bits=09",
    "permessage-deflate; server_max_window_bits=\u0661\u0662",      # non-ASCII digits
    "permessage-deflate; server_max_window_bits=8",           # zlib cannot deflate with 256 B
    "permessage-deflate; client_max_window_bits=20",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; mystery_parameter",
    "x-webkit-deflate-frame",
    "",
])
def test_offers_that_must_be_declined(offer):
    assert negotiate([offer]) is None


def test_a_declined_offer_falls_back_to_the_next_one():
    offers = ["permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
              "permessage-deflate"]
    assert negotiate(offers) == (BOTH_WAYS + "; server_max_window_bits=9", DeflateParams(9))
    assert negotiate(["permessage-deflate; bogus", "permessage-deflate"]) == (BOTH_WAYS, DeflateParams(15))


@pytest.mark.parametrize("header", ['permessage-deflate; server_max_window_bits="10',
                                    "permessage deflate", "permessage-deflate; =10",
                                    "permessage-deflate; a=b=c"])
def test_a_header_that_does_not_parse_negotiates_nothing(header):
    with pytest.raises(ValueError):
        parse_offers([header])
    assert negotiate([header, "permessage-deflate"]) is None


def test_agreed_parameters_are_shared_objects():
    # An idle connection holds a reference to one of a handful of objects, nothing more.
    first = negotiate(["permessage-deflate"])[1]
    assert negotiate(["permessage-deflate; client_max_window_bits"])[1] is first


# -- inflating --------------------------------------------------------------------------

def test_inflate_frame_by_frame():
    data = b'{"event_name":"subscribe","data":{"channels":["a","b"],"last":0}}' * 20
    compressed = client_deflate(data)
    inflater = MessageInflater(len(data))
    out = inflater.inflate(compressed[:10], final=False) + inflater.inflate(compressed[10:], final=True)
    assert out == data and inflater.remaining == 0


def test_a_stream_ended_with_bfinal_is_accepted():
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(b"hello") + compressor.flush(zlib.Z_FINISH)
    assert MessageInflater(100).inflate(data, final=True) == b"hello"


def test_zip_bomb_refused_without_inflating_past_the_limit():
    bomb = client_deflate(b"\0" * (64 << 20))          # 64 MiB of zeros in about 64 KB
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            MessageInflater(1 << 20).inflate(bomb, final=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG
    assert "inflates to more than the limit of 1048576 bytes" in info.value.reason
    assert peak < 3 << 20


def test_the_limit_is_on_the_whole_message():
    inflater = MessageInflater(1000)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = compressor.compress(b"a" * 600) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert inflater.inflate(first, final=False) == b"a" * 600
    second = compressor.compress(b"b" * 401) + compressor.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(ProtocolError) as info:
        inflater.inflate(second[:-4], final=True)
    assert info.value.code == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x07" * 40])
def test_invalid_deflate_data_is_1007(garbage):
    with pytest.raises(ProtocolError) as info:
        MessageInflater(1 << 20).inflate(garbage, final=True)
    assert info.value.code == CloseCode.INCONSISTENT_DATA


def test_data_after_the_end_of_the_stream_is_1007():
    data = zlib.compress(b"hello", wbits=-15) + b"trailing"
    with pytest.raises(ProtocolError, match="follows the end") as info:
        MessageInflater(100).inflate(data, final=True)
    assert info.value.code == CloseCode.INCONSISTENT_DATA


def test_compressed_size_limit_leaves_room_for_incompressible_data():
    # Level 0 stores everything: the largest a deflate stream for `size` bytes gets.
    for size in (126, 4096, 1 << 20):
        worst = zlib.compressobj(0, zlib.DEFLATED, -15)
        stored = worst.compress(b"\x9f" * size) + worst.flush(zlib.Z_SYNC_FLUSH)
        assert size < len(stored[:-4]) <= compressed_size_limit(size)


# -- compressing once -------------------------------------------------------------------

POLICY = CompressionPolicy(threshold=100, level=6)
BATCH = b'[' + b",".join(b'{"id":%d,"message":{"type":"mail.record/insert","payload":'
                         b'{"Thread":{"id":42,"model":"discuss.channel"}}}}' % i
                         for i in range(30)) + b']'


def test_a_large_message_is_compressed_once_and_shared():
    message = OutgoingMessage(BATCH, POLICY)
    frame = message.frame(DeflateParams(15))
    assert message.frame(DeflateParams(15)) is frame        # built once, the same bytes
    assert is_compressed_frame(frame) and len(frame) < len(BATCH) / 3
    assert client_inflate(frame) == BATCH
    parsed = FrameParser(1 << 20, require_mask=False, allow_rsv1=True).feed(frame)
    assert [(f.fin, f.opcode, f.rsv1) for f in parsed] == [(True, Opcode.TEXT, True)]


def test_a_smaller_window_gets_its_own_variant():
    message = OutgoingMessage(BATCH * 20, POLICY)
    small = message.frame(DeflateParams(9))
    assert small is not message.frame(DeflateParams(15))
    assert client_inflate(small, window_bits=9) == BATCH * 20


def test_uncompressed_when_not_negotiated_small_or_incompressible():
    assert OutgoingMessage(BATCH, POLICY).frame(None) == Frame(True, Opcode.TEXT, BATCH).serialize()
    assert OutgoingMessage(BATCH, None).frame(DeflateParams(15)) == Frame(True, Opcode.TEXT, BATCH).serialize()
    small = OutgoingMessage(b'[{"id":1}]', POLICY)
    assert small.frame(DeflateParams(15)) is small.plain_frame()
    incompressible = OutgoingMessage(os.urandom(2000), POLICY, Opcode.BINARY)
    frame = incompressible.frame(DeflateParams(15))
    assert not is_compressed_frame(frame) and frame is incompressible.plain_frame()


def test_outgoing_messages_share_one_message_per_payload_and_stay_bounded(monkeypatch):
    messages = OutgoingMessages(POLICY)
    first = messages.get(BATCH)
    assert messages.get(bytes(BATCH)) is first        # equal content, another object
    monkeypatch.setattr(OutgoingMessages, "MAX_ENTRIES", 3)
    for i in range(10):
        messages.get(b"[%d]" % i)
    assert len(messages) == 3 and messages.get(BATCH) is not first
    monkeypatch.setattr(OutgoingMessages, "MAX_BYTES", 2 * len(BATCH))
    big = [messages.get(BATCH + b" " * i) for i in range(3)]
    assert len(messages) <= 2 and messages.get(BATCH + b" " * 2) is big[2]
