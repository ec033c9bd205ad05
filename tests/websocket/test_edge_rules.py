"""The edge's rules without I/O: the deadline table and the connection caps."""

from __future__ import annotations

from rtbus.config import Config
from rtbus.websocket.edge import ConnectionCounts, Deadlines, EdgeLimits, Phase, Refusal


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_due_returns_the_items_past_their_deadline_once():
    clock = Clock()
    table = Deadlines(clock)
    table.set("a", 1.0)
    table.set("b", 5.0)
    clock.now += 2
    assert table.due() == ["a"]
    assert table.due() == []
    clock.now += 10
    assert table.due() == ["b"]
    assert len(table) == 0


def test_a_new_deadline_replaces_the_old_and_none_removes_it():
    clock = Clock()
    table = Deadlines(clock)
    table.set("a", 1.0)
    table.set("a", 10.0)
    table.set("b", 1.0)
    table.set("b", None)
    clock.now += 2
    assert table.due() == []
    clock.now += 10
    assert table.due() == ["a"]


def test_due_hands_out_at_most_its_limit_earliest_first():
    clock = Clock()
    table = Deadlines(clock)
    for index in range(5):
        table.set(index, 1.0 + index / 10)
    clock.now += 5
    assert table.due(limit=2) == [0, 1]
    assert table.due(limit=10) == [2, 3, 4]


def test_superseded_entries_do_not_pile_up():
    table = Deadlines(Clock())
    for _ in range(10 * Deadlines.COMPACT_SLACK):
        table.set("a", 30.0)
    assert len(table._heap) <= 2 + Deadlines.COMPACT_SLACK


def test_the_process_cap_refuses_beyond_it_and_a_close_frees_a_slot():
    counts = ConnectionCounts(max_connections=2, max_per_client=0)
    assert counts.open() is None and counts.open() is None
    assert counts.open() is Refusal.PROCESS
    counts.close()
    assert counts.open() is None
    assert counts.refusals[Refusal.PROCESS] == 1


def test_the_client_cap_counts_ipv6_by_64_and_releases():
    counts = ConnectionCounts(max_connections=0, max_per_client=2)
    first, _ = counts.claim("2001:db8::1")
    second, _ = counts.claim("2001:db8::2")
    assert first == second
    assert counts.claim("2001:db8::3") == (None, Refusal.CLIENT)
    assert counts.claim("192.0.2.1")[1] is None
    counts.release(first)
    assert counts.claim("2001:db8::4")[1] is None
    counts.release(None)      # a connection never counted under a client


def test_no_client_cap_means_no_client_key():
    assert ConnectionCounts(10, 0).claim("192.0.2.1") == (None, None)


def test_limits_from_the_defaults():
    limits = EdgeLimits.from_config(Config.defaults())
    assert limits.time_for(Phase.HEAD) == 10.0
    assert limits.time_for(Phase.APP) is None and limits.time_for(Phase.UPGRADED) is None
    assert limits.max_head_size == 64 * 1024


def test_next_at_is_the_earliest_deadline_still_set():
    clock = Clock()
    table = Deadlines(clock)
    assert table.next_at() is None
    table.set("a", 1.0)
    table.set("b", 5.0)
    assert table.next_at() == 101.0
    table.set("a", None)
    assert table.next_at() == 105.0
    table.set("b", 9.0)
    assert table.next_at() == 109.0
