"""The drain queue's rule, without processes: one child at a time, the next once it is gone."""

from __future__ import annotations

from rtbus.service.drain import DrainQueue
from rtbus.service.master import Child


def child(pid: int, killed: str | None = None) -> Child:
    return Child("gevent", pid, None, 0.0, 0, killed_because=killed)   # no pipe: the queue never reads it


def test_the_next_is_due_only_once_the_current_one_is_gone():
    children = {pid: child(pid) for pid in (11, 12, 13)}
    queue = DrainQueue()
    for pid in children:
        queue.add(pid)
    assert queue.next_due(children).pid == 11 and len(queue) == 2
    assert queue.next_due(children) is None          # 11 still drains
    del children[11]
    assert queue.next_due(children).pid == 12
    del children[12]
    assert queue.next_due(children).pid == 13
    del children[13]
    assert queue.next_due(children) is None and queue.current is None


def test_a_child_gone_or_killed_while_waiting_loses_its_turn():
    children = {11: child(11), 12: child(12, killed="gevent_watchdog_timeout"), 14: child(14)}
    queue = DrainQueue()
    for pid in (11, 12, 13, 14):
        queue.add(pid)
    assert queue.next_due(children).pid == 11
    del children[11]
    assert queue.next_due(children).pid == 14         # 12 was killed, 13 is gone
    assert len(queue) == 0
