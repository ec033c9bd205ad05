"""Signed sids and the look-up budget, without a database."""

from __future__ import annotations

import base64
import os

from rtbus.session_guard import (SIGNED_SID_LENGTH, LookupBudget, client_key, is_signed_shape,
                                 mac_matches, sign)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_signed_sid_has_the_shape_and_its_mac():
    key = os.urandom(64)
    sid = sign(key, os.urandom(32))
    assert len(sid) == SIGNED_SID_LENGTH == 68 and is_signed_shape(sid)
    assert mac_matches(key, sid)
    assert not mac_matches(os.urandom(64), sid)


def test_any_change_to_a_signed_sid_breaks_its_mac():
    key = os.urandom(64)
    sid = sign(key, bytes(32))
    for index in range(4, len(sid)):
        replacement = "A" if sid[index] != "A" else "B"
        tampered = sid[:index] + replacement + sid[index + 1:]
        assert not mac_matches(key, tampered), index


def test_shapes_that_are_not_signed():
    assert not is_signed_shape("x" * 68)
    assert not is_signed_shape("rb1_" + "a" * 63)
    assert not is_signed_shape(base64.urlsafe_b64encode(os.urandom(48)).decode())   # pre-0005 sids
    assert not mac_matches(os.urandom(64), "rb1_" + "!" * 64)


def test_client_keys():
    assert client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("2001:db8:1:2:3:4:5:6") == client_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert client_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert client_key(None) == client_key("") == client_key("not an address") == "-"


def test_a_client_budget_is_spent_by_failures_and_refills():
    clock = FakeClock()
    budget = LookupBudget(60, 0, clock=clock)
    assert all(budget.take("192.0.2.1") for _ in range(60))
    assert not budget.take("192.0.2.1")
    assert budget.take("192.0.2.2")              # another client has its own
    clock.now += 1.0                             # 60 a minute: one more per second
    assert budget.take("192.0.2.1")
    assert not budget.take("192.0.2.1")
    assert budget.refusals == 2


def test_lookups_that_found_a_session_give_their_share_back():
    budget = LookupBudget(3, 0, clock=FakeClock())
    for _ in range(100):
        assert budget.take("192.0.2.1")
        budget.give_back("192.0.2.1")
    assert budget.refusals == 0


def test_the_total_budget_bounds_many_clients():
    budget = LookupBudget(10, 25, clock=FakeClock())
    granted = sum(budget.take(f"198.51.100.{n}") for n in range(100))
    assert granted == 25


def test_zero_means_no_limit():
    budget = LookupBudget(0, 0, clock=FakeClock())
    assert all(budget.take("192.0.2.1") for _ in range(10_000))


def test_client_buckets_are_bounded():
    budget = LookupBudget(5, 0, max_clients=100, clock=FakeClock())
    for n in range(1000):
        budget.take(f"10.0.{n // 256}.{n % 256}")
    assert len(budget._clients) == 100
