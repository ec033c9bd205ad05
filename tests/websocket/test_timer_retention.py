"""A deadline removed or replaced lets go of its item at once.

Before, the heap kept every old entry's item until that deadline surfaced (up to
websocket_ping_interval, 40 s) or a compaction: an ended WebsocketConnection kept its
closed mailbox's queued batches, its unsent bytes, session and protocol alive meanwhile."""

from __future__ import annotations

import gc
import time
import weakref

from rtbus.websocket.edge import Deadlines
from rtbus.websocket.timers import TimerQueue


class _Item:
    pass


def test_a_removed_deadline_does_not_keep_its_item_alive():
    deadlines = Deadlines()
    item = _Item()
    ref = weakref.ref(item)
    deadlines.set(item, 40.0)
    deadlines.set(item, None)       # the connection ended
    del item
    gc.collect()
    assert ref() is None


def test_a_replaced_deadline_does_not_keep_its_item_alive_either():
    deadlines = Deadlines()
    item = _Item()
    ref = weakref.ref(item)
    deadlines.set(item, 40.0)
    deadlines.set(item, 30.0)
    deadlines.set(item, None)
    del item
    gc.collect()
    assert ref() is None and deadlines.next_at() is None


def test_ended_connections_are_not_retained_by_the_timer_queue():
    queue = TimerQueue(lambda item: None)
    refs = []
    try:
        for _ in range(500):
            item = _Item()
            queue.set(item, time.monotonic() + 40.0)
            queue.set(item, None)
            refs.append(weakref.ref(item))
            del item
        gc.collect()
        assert len(queue) == 0
        assert sum(ref() is not None for ref in refs) == 0
    finally:
        queue.close()
