"""Mailbox: the bounded per-client queue (no database)."""

from __future__ import annotations

import threading
import time

from rtbus.bus.mailbox import Mailbox


def test_fifo_and_last_id():
    box = Mailbox(100)
    assert box.put(b"[1]", [1]) and box.put(b"[2,3]", [2, 3])
    assert (len(box), box.pending_bytes, box.last_id) == (2, 8, 3)
    assert box.get(0) == b"[1]"
    assert box.get(0) == b"[2,3]"
    assert box.get(0) is None


def test_get_waits_for_a_put_from_another_thread():
    box = Mailbox(100)
    threading.Timer(0.05, box.put, args=(b"[]", [])).start()
    assert box.get(5) == b"[]"
    started = time.monotonic()
    assert box.get(0.05) is None
    assert time.monotonic() - started >= 0.04


def test_overflow_refuses_marks_and_calls_back_once():
    calls = []
    box = Mailbox(10, on_overflow=calls.append)
    assert box.put(b"x" * 6, [1])
    assert not box.put(b"y" * 6, [2])            # 12 > 10
    assert box.overflowed and calls == [box]
    assert not box.put(b"z", [3])
    assert calls == [box]
    assert box.get(0) == b"x" * 6                 # what was queued before stays readable
    assert box.get(1) is None                     # then returns at once
    assert box.last_id == 1


def test_an_oversized_batch_enters_an_empty_mailbox():
    box = Mailbox(10)
    assert box.put(b"x" * 50, [1])
    assert not box.put(b"y", [2])
    assert box.overflowed


def test_close_wakes_a_waiting_getter():
    box = Mailbox(10)
    threading.Timer(0.05, box.close).start()
    assert box.get(5) is None
    assert not box.put(b"[]", [])


def test_on_ready_fires_once_per_drained_to_non_empty_edge():
    ready = []
    box = Mailbox(100, on_ready=ready.append)
    assert box.put(b"[1]", [1])                   # a new mailbox counts as drained
    assert box.put(b"[2]", [2])                   # the consumer has not looked since
    assert ready == [box]
    assert box.pop() == b"[1]" and box.pop() == b"[2]"
    assert box.put(b"[3]", [3])                   # not yet drained: pop() never saw it empty
    assert ready == [box]
    assert box.pop() == b"[3]" and box.pop() is None
    assert box.put(b"[4]", [4])
    assert ready == [box, box]


def test_close_and_overflow_wake_a_drained_consumer():
    ready = []
    box = Mailbox(4, on_ready=ready.append)
    assert box.pop() is None
    assert box.put(b"xxx", [1]) and ready == [box]
    assert box.pop() == b"xxx" and box.pop() is None
    assert box.put(b"yyy", [2]) and ready == [box, box]
    assert not box.put(b"zz", [3])                # 5 > 4: overflow, consumer not drained
    assert box.overflowed and ready == [box, box]
    assert box.pop() == b"yyy" and box.pop() is None
    closing = Mailbox(4, on_ready=ready.append)
    assert closing.pop() is None
    closing.close()
    assert ready[-1] is closing and closing.pop() is None


def test_pop_returns_the_since_of_each_batch():
    box = Mailbox(100)
    box.put(b"[1]", [1], 5.0)
    box.put(b"[2]", [2])
    assert box.pop() == b"[1]" and box.last_since == 5.0
    assert box.pop() == b"[2]" and box.last_since is None


# -- write-through: send_now ---------------------------------------------------


def test_a_batch_taken_by_send_now_is_not_queued_and_wakes_nobody():
    sent, woken = [], []
    box = Mailbox(100, on_ready=woken.append,
                  send_now=lambda batch, since: sent.append((batch, since)) or True)
    assert box.put(b"[1]", [4], since=1.5)
    assert sent == [(b"[1]", 1.5)] and woken == [] and len(box) == 0
    assert box.last_id == 4 and box.pending_bytes == 0


def test_a_batch_send_now_refuses_is_queued_and_wakes_the_consumer():
    offered, woken = [], []
    box = Mailbox(100, on_ready=woken.append,
                  send_now=lambda batch, since: offered.append(batch) and False)
    assert box.put(b"[1]", [1])
    assert offered == [b"[1]"] and woken == [box] and box.pop() == b"[1]"


def test_send_now_is_not_offered_a_batch_that_would_overtake_the_queue():
    offered = []

    def send_now(batch, since):
        offered.append(batch)
        return batch != b"[1]"       # the first is refused, so it waits in the queue

    box = Mailbox(100, send_now=send_now)
    box.put(b"[1]", [1])
    box.put(b"[2]", [2])
    assert offered == [b"[1]"]
    assert [box.pop(), box.pop()] == [b"[1]", b"[2]"]
    assert box.put(b"[3]", [3]) and offered == [b"[1]", b"[3]"] and len(box) == 0


def test_send_now_is_not_offered_anything_once_closed_or_overflowed():
    offered = []
    box = Mailbox(3, send_now=lambda batch, since: offered.append(batch) or True)
    box.close()
    assert not box.put(b"[1]", [1]) and offered == []
