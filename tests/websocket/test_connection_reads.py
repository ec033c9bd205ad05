"""The read path of WebsocketConnection in one gevent loop, over socketpairs: no greenlet
while idle, frames handled in order, one end per connection."""

from __future__ import annotations

import gc

import gevent
import gevent.socket
import greenlet

from rtbus.session import Session
from rtbus.websocket.connection import WebsocketConnection
from rtbus.websocket.frames import Frame, FrameParser, Opcode, encode_close
from stub_hub import StubHub
from waiting import wait_until


def mask_frame(opcode: Opcode, payload: bytes) -> bytes:
    return Frame(True, opcode, payload).serialize(mask=b"\x01\x02\x03\x04")


SESSION = Session(sid=None, dbname="test", uid=None, partner_id=None, group_ids=())


def open_connections(hub, n):
    ends, pairs = [], [gevent.socket.socketpair() for _ in range(n)]
    connections = []
    for n, (server, _) in enumerate(pairs):
        connection = WebsocketConnection(hub, server, SESSION, remote="test",
                                         on_end=lambda n=n: ends.append(n))
        connection.start()
        connections.append(connection)
    return connections, [client for _, client in pairs], ends


def run_until(predicate, timeout=5.0):
    wait_until(predicate, timeout, sleep=gevent.sleep)


def read_frames(client, count):
    parser, frames = FrameParser(1 << 20, require_mask=False), []
    client.settimeout(5)
    while len(frames) < count:
        data = client.recv(65536)
        assert data, f"closed after {frames}"
        frames += parser.feed(data)
    return frames


def live_greenlets() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def test_an_idle_connection_holds_no_greenlet():
    hub = StubHub()
    before = live_greenlets()
    connections, clients, _ = open_connections(hub, 50)
    gevent.idle()         # whatever the starts spawned has run
    assert live_greenlets() - before < 5
    for connection in connections:
        connection.abort()


def test_frames_sent_together_are_answered_in_order_and_reading_resumes():
    hub = StubHub()
    (connection,), (client,), _ = open_connections(hub, 1)
    client.sendall(mask_frame(Opcode.PING, b"one") + mask_frame(Opcode.PING, b"two"))
    assert [f.payload for f in read_frames(client, 2)] == [b"one", b"two"]
    client.sendall(mask_frame(Opcode.PING, b"three"))      # the watcher was re-armed
    assert [f.payload for f in read_frames(client, 1)] == [b"three"]
    connection.abort()


def test_a_close_is_echoed_and_the_connection_ends_once():
    hub = StubHub()
    (connection,), (client,), ends = open_connections(hub, 1)
    client.sendall(mask_frame(Opcode.CLOSE, encode_close(1000, "bye")))
    (frame,) = read_frames(client, 1)
    assert frame.opcode is Opcode.CLOSE
    run_until(lambda: ends)
    connection.abort()
    gevent.idle()         # a second end, if one were spawned, would have run
    assert ends == [0] and hub.forgotten == [connection] and hub.unsubscribed == [connection]


def test_a_peer_that_goes_away_ends_the_connection_once():
    hub = StubHub()
    connections, clients, ends = open_connections(hub, 2)
    clients[0].close()
    connections[1].abort()
    run_until(lambda: len(ends) == 2)
    gevent.idle()
    assert sorted(ends) == [0, 1] and len(hub.forgotten) == 2
