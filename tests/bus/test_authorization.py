"""Channel authorization: pure rules first, then the implied-group case end to end.

Odoo 19's rule is the default: every session, public included, may listen to any string
channel; the lock-down patterns (`public_channels`, `channel_allowlist`) drop names."""

from __future__ import annotations

import fnmatch
import itertools
import logging

import orjson
import pytest

from rtbus.bus import channels as bus_channels
from rtbus.bus.authorization import (NON_STRING_CHANNEL, AfterSubscribeHooks, ChannelPolicy,
                                     SubscribeContext, Subscription, authorize,
                                     parse_presence_channel, server_channels)
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


def test_public_session_gets_any_string_channel_by_default():
    """Odoo 19: a visitor without a user listens to what it asks for, plus broadcast."""
    sub = authorize(PUBLIC, ["kiosk-7f3a", "live.chat.visitor_91", "News", "res.partner",
                             "broadcast"], POLICY)
    assert sub.channels == tuple(sorted({enc("broadcast"), enc("kiosk-7f3a"),
                                         enc("live.chat.visitor_91"), enc("News"),
                                         enc("res.partner")}))
    assert sub.dropped == () and sub.presence_partner_ids == ()


def test_public_channels_patterns_lock_down_public_sessions_only():
    policy = ChannelPolicy(public_channels=("news", "lobby.*"))
    requested = ["news", "lobby.main", "lobby", "private", "broadcast", "News", "res.partner"]
    sub = authorize(PUBLIC, requested, policy)
    assert sub.channels == (enc("broadcast"), enc("lobby.main"), enc("news"))
    assert sub.dropped == ("lobby", "private", "News", "res.partner")
    signed_in = authorize(USER, requested, policy)        # users are not concerned
    assert signed_in.dropped == () and enc("private") in signed_in.channels


def test_public_channels_broadcast_alone_or_empty_keeps_public_sessions_on_broadcast():
    for patterns in (("broadcast",), ()):
        sub = authorize(PUBLIC, ["news", "broadcast"], ChannelPolicy(public_channels=patterns))
        assert sub.channels == (enc("broadcast"),) and sub.dropped == ("news",)


def test_stored_public_session_gets_no_partner_channel_but_its_groups():
    session = Session(sid="p" * 64, dbname=DB, uid=None, partner_id=4, group_ids=(10,))
    sub = authorize(session, [], POLICY)
    assert sub.channels == (enc("broadcast"), enc("res.groups", 10))


def test_dropping_is_logged_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="rtbus.bus.authorization"):
        authorize(PUBLIC, ["secret"], ChannelPolicy(public_channels=("news",)))
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
    # Refused even for a public session whose rules would have dropped the name anyway.
    with pytest.raises(ValueError):
        authorize(PUBLIC, ["y" * 1_000_000], ChannelPolicy(public_channels=("news",)))


def test_unencodable_names_are_refused():
    with pytest.raises(bus_channels.InvalidChannel, match="cannot be encoded"):
        authorize(USER, ["\ud800"], POLICY)


FORGERIES = [
    'res.partner", 7',
    '["mydb","res.partner",7]',
    '["mydb","res.partner",8]',
    '["mydb","res.partner",8,"presence"]',
    '["mydb","res.groups",99]',
    'mydb","res.partner",7]',
    "res.partner,7",
    "res.partner_8",
    "'; DROP TABLE bus_bus; --",
    "\" OR 1=1 --",
    "\x00",
    "res.groups",
]


@pytest.mark.parametrize("session", [USER, PUBLIC], ids=["user", "public"])
@pytest.mark.parametrize("name", FORGERIES)
def test_strings_never_collide_with_record_channels(session, name):
    """Whatever the default lets through, a client string stays a two-string channel."""
    sub = authorize(session, [name], POLICY)
    own = enc(name)
    assert own in sub.channels
    assert orjson.loads(own) == [DB, name]           # always two strings, whatever the text
    records = {enc("res.partner", 7), enc("res.partner", 8), enc("res.groups", 99),
               enc("res.partner", 8, "presence")}
    assert own not in records
    granted = {bus_channels.encode(DB, c) for c in server_channels(session)}
    assert (set(sub.channels) - {own}) == granted    # nothing beyond what the server adds


def test_allowlist_restricts_every_session():
    policy = ChannelPolicy(allowlist=("app.*", "exact"))
    requested = ["app.chat", "exact", "exactly", "App.chat", "other"]
    for session in (USER, PUBLIC):
        sub = authorize(session, requested, policy)
        assert enc("app.chat") in sub.channels and enc("exact") in sub.channels
        assert sub.dropped == ("exactly", "App.chat", "other")
    assert enc("res.partner", 7) in authorize(USER, requested, policy).channels   # not filtered


def test_public_sessions_need_both_lists():
    policy = ChannelPolicy(allowlist=("app.*",), public_channels=("app.public.*", "other"))
    sub = authorize(PUBLIC, ["app.public.news", "app.private", "other"], policy)
    assert sub.channels == (enc("app.public.news"), enc("broadcast"))
    assert sub.dropped == ("app.private", "other")


PATTERNS = ["*", "a*", "a?c", "[ab]*", "[!a]*", "x.y", "*.chat", "[", "lit[eral", "", "ünï*"]
NAMES = ["a", "abc", "aXc", "b", "ba", "x.y", "xzy", "live.chat", "[", "lit[eral", "", "ünïcode",
         "a\nb", "A"]


@pytest.mark.parametrize("patterns", [combo for size in (1, 2) for combo in
                                      itertools.combinations(PATTERNS, size)])
def test_patterns_match_as_fnmatchcase(patterns):
    public = ChannelPolicy(public_channels=patterns)
    allow = ChannelPolicy(allowlist=patterns)
    for name in NAMES:
        expected = name == "broadcast" or any(fnmatch.fnmatchcase(name, p) for p in patterns)
        assert public.allows_name(PUBLIC, name) is expected, name
        assert allow.allows_name(USER, name) is expected, name


def test_rules_can_be_replaced_through_the_one_entry_point():
    class OnlyEven:
        def authorize(self, session, requested):
            kept = [name for name in requested if len(name) % 2 == 0]
            return Subscription(session.dbname, tuple(sorted(enc(name) for name in kept)))

        def describe(self):
            return "even names only"

    sub = authorize(PUBLIC, ["ab", "abc"], OnlyEven())
    assert sub.channels == (enc("ab"),)


# -- presence ------------------------------------------------------------------------------------


def test_presence_channels_for_signed_in_sessions():
    sub = authorize(USER, ["odoo-presence-res.partner_8", "odoo-presence-res.partner_3",
                           "odoo-presence-res.partner_8"], POLICY)
    assert sub.presence_partner_ids == (3, 8)
    assert enc("res.partner", 8, "presence") in sub.channels
    assert enc("res.partner", 3, "presence") in sub.channels
    assert enc("odoo-presence-res.partner_8") not in sub.channels


@pytest.mark.parametrize("policy", [POLICY, ChannelPolicy(public_channels=("odoo-presence-*",))])
def test_presence_channels_refused_to_public_sessions(policy):
    """Odoo 19 grants presence by record rules or an access token, which rtbus cannot
    check: a public session gets no presence, and the name is no string channel either."""
    names = ["odoo-presence-res.partner_8", "odoo-presence-res.partner_8-" + "a" * 64 + "o0x1",
             "odoo-presence-mail.guest_3"]
    sub = authorize(PUBLIC, names, policy)
    assert sub.channels == (enc("broadcast"),) and sub.presence_partner_ids == ()
    assert sub.dropped == tuple(names)


def test_allowlist_does_not_filter_presence():
    sub = authorize(USER, ["odoo-presence-res.partner_8"], ChannelPolicy(allowlist=("app.*",)))
    assert sub.presence_partner_ids == (8,)


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
                                       channel_allowlist="a*,b", public_channels="news,lobby.*")
    assert ChannelPolicy.from_config(config) == ChannelPolicy(
        max_channels=3, allowlist=("a*", "b"), public_channels=("news", "lobby.*"))
    default = ChannelPolicy.from_config(Config.defaults())
    assert default == ChannelPolicy() and default.public_channels == ("*",)
    assert default.is_odoo_default


def test_describe_names_the_rule_in_one_line():
    default = ChannelPolicy().describe()
    assert "Odoo 19's rule" in default and "any string channel (public_channels = *)" in default
    assert "any name (channel_allowlist empty)" in default and "\n" not in default
    locked = ChannelPolicy(max_channels=50, allowlist=("app.*",),
                           public_channels=("news", "lobby.*")).describe()
    assert "locked down" in locked and "names matching news, lobby.* (public_channels)" in locked
    assert "only names matching app.* (channel_allowlist)" in locked and "at most 50" in locked
    assert "broadcast only" in ChannelPolicy(public_channels=()).describe()
    assert not ChannelPolicy(allowlist=("x",)).is_odoo_default


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
