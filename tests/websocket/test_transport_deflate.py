"""permessage-deflate and the receive budget on the real server, with real clients: the
`websockets` library (an independent RFC 7692 implementation) and a raw-socket client
that inspects the frames on the wire."""

from __future__ import annotations

import json
import os
import zlib

import pytest
from websockets.sync.client import connect as websockets_connect

from rtbus.websocket.frames import Frame, FrameParser, Opcode
from rtbus.websocket.handshake import WORKER_VERSION
from serverproc import health_ok, wait_until
from waiting import metric, wait_metric
from wsclient import RawWebsocket

BOTH_WAYS = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
THRESHOLD = 1024
MAX_MESSAGE = 128 * 1024
BUDGET = 256 * 1024


@pytest.fixture(scope="module")
def bus_db(module_db):
    return module_db


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="deflate", RTBUS_PUBLIC_CHANNELS="room",
                          RTBUS_WEBSOCKET_MAX_MESSAGE_SIZE=str(MAX_MESSAGE),
                          RTBUS_WEBSOCKET_RECEIVE_BUDGET=str(BUDGET),
                          RTBUS_WEBSOCKET_COMPRESSION_THRESHOLD=str(THRESHOLD),
                          RTBUS_WEBSOCKET_RATE_LIMIT_BURST="1000")


def browser_like(port: int):
    """A `websockets` client; it sends a User-Agent, so it names the worker version."""
    return websockets_connect(f"ws://127.0.0.1:{port}/websocket?version={WORKER_VERSION}",
                              origin=f"http://127.0.0.1:{port}", compression="deflate",
                              open_timeout=5)


def subscribe_message(channels, last=0) -> str:
    return json.dumps({"event_name": "subscribe", "data": {"channels": channels, "last": last}})


def wait_subscriptions(port: int, count: float) -> None:
    wait_metric(port, "rtbus_websocket_subscriptions_total", count)


def deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def raw_deflate_client(port: int) -> RawWebsocket:
    raw = RawWebsocket(port, headers={"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"})
    raw.parser = FrameParser(1 << 26, require_mask=False, allow_rsv1=True)
    return raw


def read_notifications(raw: RawWebsocket, ids: list[int]) -> list[tuple[bool, list[dict]]]:
    """(compressed?, notifications) of each data frame until every id in `ids` arrived."""
    frames, seen = [], set()
    while not set(ids) <= seen:
        frame = raw.read_frame()
        assert frame is not None, "the connection ended"
        if frame.opcode is not Opcode.TEXT:
            continue
        payload = frame.payload
        if frame.rsv1:
            payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
        batch = json.loads(payload)
        seen.update(n["id"] for n in batch)
        frames.append((frame.rsv1, batch))
    return frames


def test_an_independent_client_negotiates_and_gets_small_and_large_batches(server, publish):
    port = server.longpolling_port
    before = metric(port, "rtbus_websocket_subscriptions_total")
    with browser_like(port) as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == BOTH_WAYS
        ws.send(subscribe_message(["room"], last=10**9))
        wait_subscriptions(port, before + 1)
        small = publish("room", "small", {"text": "hi"})
        large = publish("room", "large", {"text": "é" + "lorem ipsum " * 2000})
        got: dict[int, dict] = {}
        while not set(small + large) <= set(got):
            got.update((n["id"], n) for n in json.loads(ws.recv(timeout=5)))
    assert got[small[0]]["message"] == {"type": "small", "payload": {"text": "hi"}}
    assert got[large[0]]["message"] == {"type": "large", "payload": {"text": "é" + "lorem ipsum " * 2000}}


def test_on_the_wire_large_batches_are_compressed_small_ones_are_not(server, publish):
    port = server.longpolling_port
    before = metric(port, "rtbus_websocket_subscriptions_total")
    compressed_before = metric(port, "rtbus_websocket_batches_compressed_total")
    raw = raw_deflate_client(port)
    try:
        assert raw.status == 101 and raw.response_headers["sec-websocket-extensions"] == BOTH_WAYS
        (marker,) = publish("nobody-listens", "marker")     # nothing older is replayed
        # The client compresses too: its subscribe is inflated by the server.
        raw.send_frame(Opcode.TEXT, deflated(subscribe_message(["room"], last=marker).encode()), rsv1=True)
        wait_subscriptions(port, before + 1)
        small = publish("room", "small")
        frames = read_notifications(raw, small)
        large = publish("room", "large", {"pad": "x" * 50_000})
        frames += read_notifications(raw, large)
    finally:
        raw.close()
    by_id = {n["id"]: compressed for compressed, batch in frames for n in batch}
    assert by_id[small[0]] is False and by_id[large[0]] is True
    assert metric(port, "rtbus_websocket_batches_compressed_total") >= compressed_before + 1


def test_one_batch_is_compressed_once_for_many_subscribers(server, publish):
    port = server.longpolling_port
    clients = [raw_deflate_client(port) for _ in range(5)]
    try:
        (marker,) = publish("nobody-listens", "marker")
        before = metric(port, "rtbus_websocket_subscriptions_total")
        for raw in clients:
            raw.send_text(subscribe_message(["room"], last=marker))   # nothing older replayed
        wait_subscriptions(port, before + len(clients))
        (shared,) = publish("room", "shared", {"pad": "y" * 20_000})
        wires = set()
        for raw in clients:
            frame = raw.read_frame()
            assert frame.opcode is Opcode.TEXT and frame.rsv1
            wires.add(frame.payload)
        # The same compressed bytes on every connection, inflating to the one batch.
        assert len(wires) == 1
        batch = json.loads(zlib.decompressobj(-15).decompress(wires.pop() + b"\x00\x00\xff\xff"))
        assert [n["id"] for n in batch] == [shared]
    finally:
        for raw in clients:
            raw.close()


def test_no_extension_offered_means_plain_frames(server):
    raw = RawWebsocket(server.longpolling_port)
    try:
        assert raw.status == 101 and "sec-websocket-extensions" not in raw.response_headers
        raw.send_frame(Opcode.TEXT, deflated(b"{}"), rsv1=True)   # RSV1 was not negotiated
        assert raw.read_close()[0] == 1002
    finally:
        raw.close()


def test_zip_bomb_closed_1009_without_harm(server):
    port = server.longpolling_port
    raw = raw_deflate_client(port)
    try:
        bomb = deflated(b" " * (64 << 20))        # 64 MiB of spaces in ~64 KB, under the wire limit
        assert len(bomb) < MAX_MESSAGE
        raw.send_frame(Opcode.TEXT, bomb, rsv1=True)
        code, reason = raw.read_close()
        assert code == 1009 and "inflates to more than the limit" in reason
    finally:
        raw.close()
    assert health_ok(port)


def test_partial_messages_past_the_process_budget_close_1013(server, publish):
    port = server.longpolling_port
    frame = Frame(True, Opcode.BINARY, os.urandom(MAX_MESSAGE - 1000)).serialize(os.urandom(4))
    held = 100_000
    holders, latecomers = [], []
    try:
        for _ in range(2):                       # 2 x 100 KB fit in 256 KiB
            raw = RawWebsocket(port)
            raw.send_raw(frame[:held])
            holders.append(raw)
        wait_until(lambda: metric(port, "rtbus_websocket_receive_budget_bytes") >= 2 * (held - 14), 10,
                   message="the holders' partial frames charged to the budget")
        refusals = metric(port, "rtbus_websocket_receive_budget_refusals_total")
        for _ in range(5):
            raw = RawWebsocket(port)
            latecomers.append(raw)
            try:
                raw.send_raw(frame[:held])
            except OSError:
                pass          # closed while sending: its close frame is still to be read
        for raw in latecomers:
            code, reason = raw.read_close()
            assert code == 1013 and "partially received messages" in reason
        assert metric(port, "rtbus_websocket_receive_budget_refusals_total") == refusals + 5
        # The process stays healthy and serves complete messages while the budget is spent.
        assert health_ok(port)
        before = metric(port, "rtbus_websocket_subscriptions_total")
        with browser_like(port) as ws:
            ws.send(subscribe_message(["room"], last=10**9))
            wait_subscriptions(port, before + 1)
            ids = publish("room", "during-the-attack")
            got: list[int] = []
            while ids[0] not in got:         # after the backlog replayed on subscribe
                got.extend(n["id"] for n in json.loads(ws.recv(timeout=5)))
        # A holder completing its message gives its share back; one vanishing does too.
        holders[0].send_raw(frame[held:])
        holders[1].close()
        wait_until(lambda: metric(port, "rtbus_websocket_receive_budget_bytes") == 0, 10,
                   message="the budget given back")
    finally:
        for raw in holders + latecomers:
            raw.close()


@pytest.fixture(scope="module")
def plain_server(module_servers):
    return module_servers(name="plain", RTBUS_WEBSOCKET_COMPRESSION="false")


def test_compression_can_be_turned_off(plain_server):
    raw = raw_deflate_client(plain_server.longpolling_port)
    try:
        assert raw.status == 101 and "sec-websocket-extensions" not in raw.response_headers
    finally:
        raw.close()
