"""Who may listen to what, over real websockets: every attempt refused cleanly, the server alive."""

from __future__ import annotations

import pytest

import busclient
from busclient import close_code, receive_ids, received_before
from rtbus.session import create_session, rotate_session, set_groups
from serverproc import health_ok


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="security", RTBUS_PUBLIC_CHANNELS="lobby")


@pytest.fixture(scope="module")
def db(module_conn):
    set_groups(module_conn, {100: ("Employee", []), 200: ("Manager", [100]), 300: ("Admin", [])})
    module_conn.commit()
    return module_conn


def session(db, uid, partner_id, groups=()) -> str:
    sid = create_session(db, uid, partner_id, list(groups))
    db.commit()
    return sid


def connect(server, sid=None):
    return busclient.connect(server.longpolling_port, sid=sid)


def subscribe(ws, channels):
    busclient.subscribe(ws, channels, last=10**9)


def test_another_users_partner_channel_cannot_be_reached(server, db, publish, module_db):
    ws = connect(server, session(db, 1, 11))
    try:
        # Clients only send strings: a forged record channel is just an odd string.
        subscribe(ws, [f'["{module_db}","res.partner",22]', "res.partner,22", "res.partner_22"])
        other_partner = publish.one(("res.partner", 22))
        own_partner = publish.one(("res.partner", 11))
        assert other_partner not in received_before(ws, own_partner)
    finally:
        ws.close()


def test_group_channels_follow_implied_groups(server, db, publish):
    manager = connect(server, session(db, 2, 12, [200]))       # Manager implies Employee
    admin = connect(server, session(db, 3, 13, [300]))
    try:
        subscribe(manager, [])
        subscribe(admin, [])
        employees = publish.one(("res.groups", 100))
        everyone = publish.one("broadcast")
        assert employees in received_before(manager, everyone)      # held only by implication
        assert employees not in received_before(admin, everyone)
    finally:
        manager.close()
        admin.close()


def test_public_session_gets_only_broadcast_and_public_channels(server, publish):
    ws = connect(server)
    try:
        subscribe(ws, ["lobby", "private-room", "odoo-presence-res.partner_11"])
        lobby, private, everyone = publish.one("lobby"), publish.one("private-room"), publish.one("broadcast")
        got = received_before(ws, everyone)
        assert lobby in got and private not in got
    finally:
        ws.close()


@pytest.mark.parametrize("cookie", ["forged" + "x" * 58, "' OR 1=1 --", "a" * 5000])
def test_forged_cookies_are_closed_4001(server, cookie):
    ws = connect(server, cookie)
    try:
        assert close_code(ws) == 4001
    finally:
        ws.close()


def test_expired_and_rotated_cookies_are_closed_4001(server, db, publish):
    expired = session(db, 4, 14)
    with db.cursor() as cr:
        cr.execute("UPDATE rtbus_session SET expires = (now() at time zone 'utc') - interval '1 s' "
                   "WHERE sid = %s", (expired,))
    db.commit()
    old = session(db, 5, 15)
    new = rotate_session(db, old)
    db.commit()
    for sid in (expired, old):
        ws = connect(server, sid)
        try:
            assert close_code(ws) == 4001
        finally:
            ws.close()
    ws = connect(server, new)
    try:
        subscribe(ws, [])
        own = publish.one(("res.partner", 15))
        assert receive_ids(ws, [own]) == [own]
    finally:
        ws.close()


@pytest.mark.parametrize("channels", [
    ['room"; DROP TABLE bus_bus; --'], ["it's", 'say "hi"', "\\\\"], ["x" * 5000], [1, 2], [None],
    [{"a": 1}], "not-a-list", [["res.partner", 11]], ["ok"] * 5000,
])
def test_hostile_channel_lists_are_refused_or_harmless(server, db, publish, channels):
    rows_before = bus_rows(db)
    ws = connect(server, session(db, 6, 16))
    try:
        subscribe(ws, channels)
        subscribe(ws, ["fine"])                       # the connection is still usable
        fine = publish.one("fine")
        assert receive_ids(ws, [fine]) == [fine]
    finally:
        ws.close()
    assert health_ok(server.longpolling_port)
    # Nothing of the channel strings ran as SQL: every row is still there, plus `fine`.
    assert bus_rows(db) == rows_before + [fine]


def bus_rows(db) -> list[int]:
    with db.cursor() as cr:
        cr.execute("SELECT id FROM bus_bus ORDER BY id")
        ids = [row[0] for row in cr.fetchall()]
    db.rollback()
    return ids
