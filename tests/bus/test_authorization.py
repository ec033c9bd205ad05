"""Channel authorization: pure rules first, then the implied-group case end to end."""

from __future__ import annotations

import logging

import orjson
import pytest

from rtbus.bus import channels as bus_channels
from rtbus.bus.authorization import (NON_STRING_CHANNEL, AfterSubscribeHooks, ChannelPolicy,
                                     SubscribeContext, Subscription, authorize,
                                     parse_presence_channel)
from rtbus.config import Config
from rtbus.db.pool import ConnectionPool
from rtbus.session import Session, SessionStore, create_session, set_groups

DB = "mydb"
USER = Session(sid="s" * 64, dbname=DB, uid=2, partner_id=7, group_ids=(1, 3))
PUBLIC = Session(sid=None, dbname=DB, uid=None, partner_id=None, group_ids=())
POLICY = ChannelPolicy()


def enc(*channel):
    return orjson.dumps([DB, *channel]).decode()


def decoded(subscription: Subscription) -> list:
    return subscription.anchored_channels()


# -- what the server adds -------------------------------------------------------------------------


def test_user_gets_broadcast_partner_and_groups():
    sub = authorize(USER, ["my_channel"], POLICY)
    assert decoded(sub) == sorted([[DB, "broadcast"], [DB, "my_channel"], [DB, "res.groups", 1],
                                   [DB, "res.groups", 3], [DB, "res.partner", 7]],
                                  key=lambda c: orjson.dumps(c))
    assert list(sub.channels) == sorted(set(sub.channels))
    assert sub.dbname == DB and sub.presence_partner_ids == () and sub.dropped == ()


def test_channels_are_sorted_and_unique():
    sub = authorize(USER, ["b", "a", "b", "broadcast", "a"], POLICY)
    assert sub.channels == tuple(sorted(set(sub.channels)))
    assert sub.channels.count(enc("a")) == 1 and sub.channels.count(enc("broadcast")) == 1


def test_public_session_gets_only_broadcast_and_public_channels():
    policy = ChannelPolicy(public_channels=frozenset({"news"}))
    sub = authorize(PUBLIC, ["news", "private", "broadcast", "odoo-presence-res.partner_7",
                             "res.partner", "News"], policy)
    assert sub.channels == (enc("broadcast"), enc("news"))
    assert sub.dropped == ("private", "odoo-presence-res.partner_7", "res.partner", "News")
    assert sub.presence_partner_ids == ()


def test_stored_public_session_gets_no_partner_channel_but_its_groups():
    session = Session(sid="p" * 64, dbname=DB, uid=None, partner_id=4, group_ids=(10,))
    sub = authorize(session, [], POLICY)
    assert sub.channels == (enc("broadcast"), enc("res.groups", 10))


def test_dropping_is_logged_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="rtbus.bus.authorization"):
        authorize(PUBLIC, ["secret"], POLICY)
    assert "dropped 1 channel(s)" in caplog.text and "'secret'" in caplog.text


# -- what a client may not do ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [1, None, True, 1.5, ["mydb", "res.partner", 7],
                                 ["res.partner", 7], {"a": 1}])
def test_non_string_channels_are_refused_with_odoos_message(bad):
    with pytest.raises(ValueError) as info:
        authorize(USER, ["fine", bad], POLICY)
    assert str(info.value) == NON_STRING_CHANNEL == "bus.Bus only string channels are allowed."


@pytest.mark.parametrize("bad", ["broadcast", {"channels": []}, None, 7])
def test_channel_list_must_be_a_list(bad):
    with pytest.raises(ValueError, match="channels must be a list"):
        authorize(USER, bad, POLICY)


def test_channel_count_is_bounded():
    policy = ChannelPolicy(max_channels=5)
    assert len(authorize(USER, [f"c{i}" for i in range(5)], policy).channels) == 5 + 4
    with pytest.raises(ValueError, match="6 channels requested, more than the 5 allowed"):
        authorize(USER, [f"c{i}" for i in range(6)], policy)


def test_huge_channel_names_are_refused():
    limit = bus_channels.MAX_ENCODED_CHANNEL_BYTES - len(enc(""))
    assert enc("x" * limit) in authorize(USER, ["x" * limit], POLICY).channels
    with pytest.raises(bus_channels.InvalidChannel):
        authorize(USER, ["x" * (limit + 1)], POLICY)
    with pytest.raises(ValueError):
        authorize(USER, ["y" * 1_000_000], POLICY)
    # Refused even for a public session, which would have dropped the name anyway.
    with pytest.raises(ValueError):
        authorize(PUBLIC, ["y" * 1_000_000], POLICY)


def test_unencodable_names_are_refused():
    with pytest.raises(bus_channels.InvalidChannel, match="cannot be encoded"):
        authorize(USER, ["\ud800"], POLICY)


@pytest.mark.parametrize("name", [
    'res.partner", 7',
    '["mydb","res.partner",7]',
    'mydb","res.partner",7]',
    "res.partner,7",
    "'; DROP TABLE bus_bus; --",
    "\" OR 1=1 --",
    "\x00",
    "res.groups",
])
def test_strings_never_collide_with_record_channels(name):
    sub = authorize(USER, [name], POLICY)
    own = enc(name)
    assert own in sub.channels
    assert orjson.loads(own) == [DB, name]           # always two strings, whatever the text
    for forged in (enc("res.partner", 7), enc("res.partner", 8), enc("res.groups", 99),
                   enc("res.partner", 8, "presence")):
        assert forged != own
    assert enc("res.partner", 8) not in sub.channels
    assert enc("res.groups", 99) not in sub.channels


def test_allowlist_restricts_signed_in_clients():
    policy = ChannelPolicy(allowlist=("app.*", "exact"))
    sub = authorize(USER, ["app.chat", "exact", "exactly", "App.chat", "other"], policy)
    assert enc("app.chat") in sub.channels and enc("exact") in sub.channels
    assert sub.dropped == ("exactly", "App.chat", "other")
    assert enc("res.partner", 7) in sub.channels     # server channels are not filtered


# -- presence ------------------------------------------------------------------------------------


def test_presence_channels_for_signed_in_sessions():
    sub = authorize(USER, ["odoo-presence-res.partner_8", "odoo-presence-res.partner_3",
                           "odoo-presence-res.partner_8"], POLICY)
    assert sub.presence_partner_ids == (3, 8)
    assert enc("res.partner", 8, "presence") in sub.channels
    assert enc("res.partner", 3, "presence") in sub.channels
    assert enc("odoo-presence-res.partner_8") not in sub.channels


def test_presence_channels_refused_to_public_sessions():
    sub = authorize(PUBLIC, ["odoo-presence-res.partner_8"], ChannelPolicy(
        public_channels=frozenset({"odoo-presence-res.partner_8"})))
    assert sub.channels == (enc("broadcast"),) and sub.presence_partner_ids == ()


@pytest.mark.parametrize("name, expected", [
    ("odoo-presence-res.partner_1", 1),
    ("odoo-presence-res.partner_2147483647", 2147483647),
    ("odoo-presence-res.partner_2147483648", None),
    ("odoo-presence-res.partner_99999999999", None),
    ("odoo-presence-res.partner_0", None),
    ("odoo-presence-res.partner_07", None),
    ("odoo-presence-res.partner_-1", None),
    ("odoo-presence-res.partner_1e3", None),
    ("odoo-presence-res.partner_٣", None),       # a non-ASCII digit
    ("odoo-presence-res.partner_3-" + "a" * 64 + "o0x1", None),
    ("odoo-presence-mail.guest_3", None),
    ("odoo-presence-res_partner_3", None),
])
def test_parse_presence_channel(name, expected):
    assert parse_presence_channel(name) == expected
    sub = authorize(USER, [name], POLICY)
    assert sub.presence_partner_ids == (() if expected is None else (expected,))
    if expected is None:
        assert sub.dropped == (name,)


# -- policy from the configuration ---------------------------------------------------------------


def test_policy_from_config():
    config = Config.defaults().replace(max_channels_per_subscription=3,
                                       channel_allowlist="a*,b", public_channels="news")
    assert ChannelPolicy.from_config(config) == ChannelPolicy(
        max_channels=3, allowlist=("a*", "b"), public_channels=frozenset({"news"}))
    assert ChannelPolicy.from_config(Config.defaults()) == ChannelPolicy()


# -- the after-subscribe hooks --------------------------------------------------------------------


def test_hooks_run_in_order_and_survive_a_failing_one(caplog):
    calls = []
    hooks = AfterSubscribeHooks()

    @hooks.register
    def first(session, subscription, context):
        calls.append(("first", session.uid, subscription.dbname, context.transport))

    def broken(session, subscription, context):
        raise RuntimeError("boom")

    def last(session, subscription, context):
        calls.append(("last", context.extra["connection"]))

    hooks.register(broken)
    hooks.register(last)
    hooks.register(last)              # once only
    assert len(hooks) == 3
    sub = authorize(USER, [], POLICY)
    context = SubscribeContext(pool=None, transport="peek", extra={"connection": 12})
    with caplog.at_level(logging.ERROR, logger="rtbus.bus.authorization"):
        assert hooks.run(USER, sub, context) == 1
    assert calls == [("first", 2, DB, "peek"), ("last", 12)]
    assert "after-subscribe hook" in caplog.text and "boom" in caplog.text
    hooks.unregister(broken)
    assert hooks.run(USER, sub, context) == 0


# -- end to end: a group held only by implication --------------------------------------------------


def test_group_held_by_implication_gets_its_channel(pg_cluster, fresh_db):
    from rtbus.db import schema

    conn = pg_cluster.connect(fresh_db)
    kwargs = pg_cluster.connect_kwargs()
    del kwargs["dbname"]
    pool = ConnectionPool("test-authz", 2, kwargs, timeout=5)
    try:
        schema.upgrade(conn)
        set_groups(conn, {10: ("Sales Manager", [11]), 11: ("Sales User", [12]),
                          12: ("Internal", [])})
        sid = create_session(conn, 2, 7, [10])
        other = create_session(conn, 3, 8, [12])
        conn.commit()
        store = SessionStore(pool)
        sub = authorize(store.get(fresh_db, sid), [], POLICY)
        for group_id in (10, 11, 12):
            assert orjson.dumps([fresh_db, "res.groups", group_id]).decode() in sub.channels
        sub_other = authorize(store.get(fresh_db, other), [], POLICY)
        assert orjson.dumps([fresh_db, "res.groups", 10]).decode() not in sub_other.channels
        assert orjson.dumps([fresh_db, "res.partner", 7]).decode() not in sub_other.channels
    finally:
        conn.close()
        pool.close_all()
