"""Session management for the application whose users rtbus serves (JSON-RPC, API key).

rtbus does not log users in: the application does, then tells rtbus who the
user is. These routes are one of four equivalent ways (with the Python API,
the SQL functions and ``rtbus-server session``), all guarded by ``bus_api_key``
like ``/bus/publish``:

- ``/bus/session/create`` ``{uid, partner_id, group_ids, ttl?, db?}`` → ``{"sid": ...}``;
  the application sets it as the browser's ``session_id`` cookie.
- ``/bus/session/rotate`` ``{sid, db?}`` → ``{"sid": <new sid>}`` (after a login, say).
- ``/bus/session/revoke`` ``{sid}`` or ``{uid}`` → ``{"revoked": n}`` (logout).
- ``/bus/groups`` ``{groups: {id: {"name", "implied_ids"}}, replace?, db?}`` → ``{"groups": n}``.

A revoke takes effect in this process at once and in the others within
``session_check_cache_seconds``.
"""

from __future__ import annotations

import psycopg2

from rtbus.http.jsonrpc import InvalidParams, jsonrpc_route
from rtbus.http.publish_route import check_api_key
from rtbus.session import SessionNotFound, create_session, revoke_session, revoke_user_sessions, \
    rotate_session, set_groups


def _int(value, name: str, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value >= 2 ** 31:
        raise InvalidParams(f"{name} must be a positive 32-bit integer, got {value!r:.40}")
    return value


def _ids(values, name: str) -> list[int]:
    if not isinstance(values, list):
        raise InvalidParams(f"{name} must be a list of positive integers")
    return [_int(value, name) for value in values]


@jsonrpc_route(authorize=check_api_key)
def create(app, request, *, uid=None, partner_id=None, group_ids=(), ttl=None, db=None):
    dbname = app.database(db)
    uid = _int(uid, "uid", optional=True)
    partner_id = _int(partner_id, "partner_id", optional=True)
    groups = _ids(list(group_ids), "group_ids")
    lifetime = app.config.session_ttl if ttl is None else _int(ttl, "ttl")
    with app.pool.connection(dbname) as conn:
        try:
            sid = create_session(conn, uid, partner_id, groups, ttl=lifetime)
        except psycopg2.DataError as exc:
            raise InvalidParams(str(exc).strip()) from None
        conn.commit()
    return {"sid": sid, "ttl": lifetime}


@jsonrpc_route(authorize=check_api_key)
def rotate(app, request, *, sid, db=None):
    dbname = app.database(db)
    if not isinstance(sid, str):
        raise InvalidParams("sid must be a string")
    with app.pool.connection(dbname) as conn:
        try:
            new_sid = rotate_session(conn, sid)
        except SessionNotFound as exc:
            raise InvalidParams(str(exc)) from None
        conn.commit()
    app.sessions.invalidate(dbname, sid)
    return {"sid": new_sid}


@jsonrpc_route(authorize=check_api_key)
def revoke(app, request, *, sid=None, uid=None, db=None):
    dbname = app.database(db)
    if (sid is None) == (uid is None):
        raise InvalidParams("give either sid (one session) or uid (every session of a user)")
    with app.pool.connection(dbname) as conn:
        if sid is not None:
            if not isinstance(sid, str):
                raise InvalidParams("sid must be a string")
            revoke_session(conn, sid)
            revoked = None
        else:
            revoked = revoke_user_sessions(conn, _int(uid, "uid"))
        conn.commit()
    if sid is not None:
        app.sessions.invalidate(dbname, sid)
    else:
        app.sessions.invalidate(dbname)
    return {"revoked": revoked}


@jsonrpc_route(authorize=check_api_key)
def groups(app, request, *, groups, replace=False, db=None):
    dbname = app.database(db)
    if not isinstance(groups, dict):
        raise InvalidParams('groups must be {"<id>": {"name": ..., "implied_ids": [...]}}')
    declared = {}
    for key, spec in groups.items():
        try:
            gid = int(key)
        except ValueError:
            raise InvalidParams(f"group id {key!r:.40} is not an integer") from None
        if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
            raise InvalidParams(f"group {gid}: expected {{\"name\": str, \"implied_ids\": [int]}}")
        declared[_int(gid, "group id")] = (spec.get("name", ""), _ids(spec.get("implied_ids", []),
                                                                       "implied_ids"))
    with app.pool.connection(dbname) as conn:
        set_groups(conn, declared, replace=bool(replace))
        conn.commit()
    app.sessions.invalidate(dbname)
    return {"groups": len(declared)}
