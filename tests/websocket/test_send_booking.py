"""Write-through sends booked once per run (rtbus.websocket.hub.SentBatches): what is
read equals what booking each send gives, with write-through, partial and queued sends
in one fan-out."""

from __future__ import annotations

import random
import socket
import time

import gevent
import pytest

from rtbus.metrics.histogram import Histogram
from rtbus.websocket.hub import SentBatches
from test_connection_reads import open_connections, read_frames, run_until
from stub_hub import StubHub


def test_observe_elapsed_gives_the_buckets_and_count_of_one_observe_each():
    rng = random.Random(17)
    start = 1000.0
    # Across several buckets, with ends before the start (counted as 0) and on bounds.
    ends = sorted([start + rng.uniform(-0.002, 0.3) for _ in range(500)]
                  + [start + 0.005, start + 0.01, start + 0.01, start])
    many, each = Histogram(), Histogram()
    many.observe_elapsed(start, ends)
    for end in ends:
        each.observe(end - start)
    assert many.counts == each.counts
    assert many.count == each.count == len(ends)
    assert many.sum == pytest.approx(each.sum, rel=1e-12)
    many.observe_elapsed(start, [])
    assert many.count == len(ends)


def test_observe_elapsed_puts_a_value_on_a_bound_in_that_bound_s_bucket():
    ends = [0.001, 0.001, 0.002, 0.0025, 0.01, 0.011, 10.0, 11.0]
    many, each = Histogram(), Histogram()
    many.observe_elapsed(0.0, ends)
    for end in ends:
        each.observe(end)
    assert many.counts == each.counts
    assert many.counts[:2] == [2, 2] and many.counts[-2:] == [1, 1]


def test_a_run_within_one_bucket_is_booked_there():
    histogram = Histogram()
    histogram.observe_elapsed(10.0, [10.0031, 10.0032, 10.0049])
    assert histogram.counts[2] == 3 and histogram.count == 3     # (0.0025, 0.005]


def booking_twin(hub):
    """Every send also booked one at a time in a reference SentBatches."""
    reference = SentBatches(Histogram())
    sent = hub.sent
    through, count = sent.through, sent.count

    class Recording:
        def through(self, frame, since, now):
            reference.count(frame, since, True, now)
            through(frame, since, now)

        def count(self, frame, since, written_through, now=None):
            now = time.monotonic() if now is None else now
            reference.count(frame, since, written_through, now)
            count(frame, since, written_through, now)

        def counts(self):
            return sent.counts()

    hub.sent = Recording()
    return sent, reference


def test_a_fan_out_books_what_booking_each_send_gives():
    hub = StubHub()
    connections, clients, _ = open_connections(hub, 20)
    sent, reference = booking_twin(hub)
    slow = connections[0]
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    clients[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # Connection 0: a large batch the kernel takes only part of; its writer sends the
    # rest, and the fan-out's batch queues behind it (booked by that writer).
    large = b'[{"id":1,"message":{"payload":"%s"}}]' % (b"x" * 300_000)
    assert slow.mailbox.put(large, [1], time.monotonic())
    assert slow._writer is not None
    since = time.monotonic() - 0.004
    for n in (2, 3):
        batch = b'[{"id":%d,"message":{"payload":"fan-out"}}]' % n
        for connection in connections:
            assert connection.mailbox.put(batch, [n], since)
    assert len(slow.mailbox) == 2
    assert len(read_frames(clients[0], 3)) == 3
    run_until(lambda: hub.sent_count("batches_sent") == 1 + 2 * len(connections))
    gevent.idle()
    assert sent.counts() == reference.counts()
    assert reference.batches_written_through == 1 + 2 * (len(connections) - 1)
    assert sent.latency.counts == reference.latency.counts
    assert sent.latency.count == reference.latency.count == 1 + 2 * len(connections)
    assert sent.latency.sum == pytest.approx(reference.latency.sum, rel=1e-9)
    for connection in connections:
        connection.abort()


def test_a_pending_run_is_booked_before_the_counts_are_read():
    sent = SentBatches(Histogram())
    frame = b"\x81\x02[]"
    for now in (5.001, 5.002, 5.003):
        sent.through(frame, 5.0, now)
    sent.count(frame, None, False)
    assert sent.counts() == {"batches_sent": 4, "batch_bytes_sent": 16,
                             "batches_compressed": 0, "batches_written_through": 3}
    assert sent.latency.count == 3
    assert sent.latency.sum == pytest.approx(0.006)
    assert sent.counts()["batches_sent"] == 4       # booked once
