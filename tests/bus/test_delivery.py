"""rtbus.bus.delivery without PostgreSQL: pages, fan-out, catch-ups and cursors."""

from __future__ import annotations

from rtbus.bus import delivery
from rtbus.bus.delivery import CatchUp, Limits, Replayed, Row, Subscriber, after_epoch


def row(epoch, row_id, channel="c", size=0):
    return Row(epoch, row_id, channel, '{"p":"%s"}' % ("x" * size))


def sub(key="s"):
    return Subscriber(key, "db", mailbox=None)


def ids(rows):
    return [r.id for r in rows]


def test_pages_respect_both_limits_and_let_a_large_row_go_alone():
    limits = Limits(notifications=2, max_bytes=200)
    rows = [row(1, i) for i in range(1, 6)]
    assert [ids(p) for p in limits.pages(rows)] == [[1, 2], [3, 4], [5]]
    big = [row(1, 1, size=50), row(1, 2, size=50), row(1, 3, size=500), row(1, 4)]
    pages = Limits(notifications=10, max_bytes=200).pages(big)
    assert [ids(p) for p in pages] == [[1, 2], [3], [4]]
    assert all(len(delivery.encode(p)) <= 200 for p in pages if len(p) > 1)
    assert limits.pages([]) == []


def test_encode_splices_the_wire_form():
    assert delivery.encode([row(1, 7), Row(1, 8, "c", None)]) == \
        b'[{"id":7,"message":{"p":""}},{"id":8,"message":null}]'


def test_fan_out_orders_by_position_across_channels_and_skips_the_floor():
    a, b = sub("a"), sub("b")
    b.floor = (2, 5)
    rows = [row(2, 5, "x"), row(3, 1, "y"), row(3, 6, "x")]      # a late id 1 in epoch 3
    wants = delivery.fan_out({"x": {a, b}, "y": {a}}, rows)
    assert [r.position for r in wants[a]] == [(2, 5), (3, 1), (3, 6)]
    assert ids(wants[b]) == [6]


def test_given_moves_the_delivered_cursor_forward_only():
    s = sub()
    s.given([row(3, 1), row(3, 9)])
    s.given([row(2, 4)])
    assert s.delivered == (3, 9)


def test_the_first_subscribe_adopts_last_later_ones_catch_up_added_channels():
    s = sub()
    first = delivery.start_catchup(s, frozenset({"a"}), 42)
    assert (first.position, first.last, first.window, first.adopt) == (None, 42, False, True)
    window = delivery.start_catchup(sub(), frozenset({"a"}), 0)
    assert window.window and window.position == delivery.START
    # Completed, then a channel added: caught up from the last row delivered.
    delivery.finish_page(s, first, Replayed((5, 42), False, [], None, True), 7, Limits())
    assert s.catchup is None and s.channels == {"a"} and s.floor == after_epoch(7)
    s.given([row(8, 50, "a")])
    added = delivery.start_catchup(s, frozenset({"a", "b"}), 99)
    assert added.channels == {"b"} and added.position == (8, 50) and not added.adopt
    # Its adopted `last` counts as delivered for channels added later.
    other = sub("o")
    adopted = delivery.start_catchup(other, frozenset({"a"}), 42)
    delivery.finish_page(other, adopted, Replayed((5, 42), False, [], None, True), 7, Limits())
    assert delivery.start_catchup(other, frozenset({"a", "b"}), 0).position == (5, 42)
    fresh = sub("f")
    delivery.finish_page(fresh, delivery.start_catchup(fresh, frozenset({"a"}), 0),
                         Replayed((-1, 0), True, [], None, True), 7, Limits())
    assert delivery.start_catchup(fresh, frozenset({"a", "b"}), 0).window
    # Dropping a channel drops it from the pending catch-up too.
    delivery.start_catchup(s, frozenset({"a"}), 0)
    assert s.catchup.channels == set()


def test_an_incomplete_page_keeps_the_catch_up_and_moves_its_position():
    s = sub()
    catchup = delivery.start_catchup(s, frozenset({"c"}), 10)
    page = Replayed((4, 10), False, [row(4, 11), row(5, 3)], (5, 3), complete=False)
    assert ids(delivery.finish_page(s, catchup, page, 9, Limits())) == [11, 3]
    assert s.catchup is catchup and catchup.position == (5, 3) and s.channels == frozenset()
    last = Replayed((5, 3), False, [row(6, 12)], (6, 12), complete=True)
    assert ids(delivery.finish_page(s, catchup, last, 9, Limits())) == [12]
    assert s.catchup is None and s.channels == {"c"} and s.floor == after_epoch(9)


def test_a_page_cut_by_bytes_continues_after_what_was_sent():
    s = sub()
    catchup = delivery.start_catchup(s, frozenset({"c"}), 0)
    rows = [row(1, i, size=100) for i in range(1, 5)]
    page = Replayed((-1, 0), True, rows, (1, 4), complete=True)
    sent = delivery.finish_page(s, catchup, page, 1, Limits(max_bytes=300))
    assert ids(sent) == [1, 2] and s.catchup is catchup
    assert catchup.position == (1, 2) and catchup.window


def test_a_start_ahead_of_this_process_raises_the_floor_to_it():
    s = sub()
    catchup = delivery.start_catchup(s, frozenset({"c"}), 30)
    delivery.finish_page(s, catchup, Replayed((12, 30), False, [], None, True), 10, Limits())
    assert s.floor == (12, 30)
    assert ids(s.wants([row(12, 29), row(12, 31), row(13, 2)])) == [31, 2]


def test_skipped_rows_still_move_the_position():
    s = sub()
    catchup = delivery.start_catchup(s, frozenset({"c"}), 5)
    page = Replayed((3, 5), False, [], (3, 9), complete=False)   # malformed rows only
    assert delivery.finish_page(s, catchup, page, 4, Limits()) == []
    assert catchup.position == (3, 9)


def test_restart_forgets_old_positions():
    live, pending = sub("a"), sub("b")
    live.floor, live.delivered = (9, 100), (9, 100)
    pending.catchup = CatchUp({"c"}, (8, 4))
    delivery.restart([live, pending], 10)
    assert live.floor == delivery.START and live.delivered == (9, delivery.MAX_ID)
    assert pending.catchup.position == delivery.START and pending.catchup.window
    assert ids(live.wants([row(10, 1)])) == [1]
