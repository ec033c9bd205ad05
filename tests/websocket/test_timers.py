"""The process's one timer for every websocket deadline, on a real gevent loop."""

from __future__ import annotations

import time

import gevent

from rtbus.websocket.timers import TimerQueue
from waiting import wait_until


def scheduled(*deadlines):
    """A queue given each (item, seconds from now, or None); returns (fired, queue, now),
    `fired` filling with (item, when) as they fire."""
    fired = []
    queue = TimerQueue(lambda item: fired.append((item, time.monotonic())))
    now = time.monotonic()
    for item, seconds in deadlines:
        queue.set(item, None if seconds is None else now + seconds)
    return fired, queue, now


def run_until(predicate, timeout: float = 5.0) -> None:
    """Let the gevent loop run until `predicate()` holds, at most `timeout` s."""
    wait_until(predicate, timeout, sleep=gevent.sleep, message="the timer to fire")


def test_items_fire_once_each_in_deadline_order():
    fired, queue, now = scheduled(("late", 0.06), ("early", 0.02))
    run_until(lambda: len(fired) == 2)
    assert [item for item, _ in fired] == ["early", "late"]
    assert all(at >= now + 0.02 for _, at in fired)
    assert len(queue) == 0        # nothing is left to fire again


def test_a_new_deadline_replaces_the_old_one():
    fired, queue, now = scheduled(("a", 0.01), ("a", 0.1))
    run_until(lambda: fired)
    assert fired[0][1] >= now + 0.1
    assert len(fired) == 1 and len(queue) == 0


def test_none_removes_a_deadline():
    fired, _, _ = scheduled(("gone", 0.01), ("gone", None), ("kept", 0.05))
    run_until(lambda: fired)
    assert [item for item, _ in fired] == ["kept"]


def test_an_earlier_deadline_rearms_the_timer():
    fired, queue, _ = scheduled(("far", 60), ("near", 0.02))
    run_until(lambda: fired)
    assert [item for item, _ in fired] == ["near"]
    assert len(queue) == 1
    queue.close()


def test_an_item_may_set_its_next_deadline_from_its_callback():
    fired = []
    queue = None

    def due(item):
        fired.append(item)
        if len(fired) < 3:
            queue.set(item, time.monotonic() + 0.01)

    queue = TimerQueue(due)
    queue.set("again", time.monotonic() + 0.01)
    run_until(lambda: len(fired) == 3)
    assert len(queue) == 0


def test_more_items_due_than_one_run_takes_all_fire():
    fired, _, _ = scheduled(*((n, 0.01) for n in range(1200)))
    run_until(lambda: len(fired) == 1200)
    assert sorted(item for item, _ in fired) == list(range(1200))
