"""Odoo 19's JSON-RPC bus routes, served by HTTP workers and evented processes alike.

- ``/websocket/peek_notifications`` ``{channels, last, is_first_poll}`` →
  ``{"channels": [anchored channels], "notifications": [{"id", "message"}]}``.
  The first poll (``is_first_poll`` true) marks the session as a bus session; a
  later poll of a session without the mark (signed in or out meanwhile, or no cookie
  at all) is error 100, ``odoo.http.SessionExpiredException``, so the client starts
  over with a first poll. The channels follow the rules of every transport
  (rtbus.bus.authorization). The notifications are those after the stream position
  of ``last``, exactly as a websocket resuming with it gets them, at most
  bus_batch_max_notifications / bus_batch_max_bytes per call: the client's next
  peek with the id of the last one it got continues from there.
- ``/websocket/on_closed`` → null; the signed-in user's presence goes offline.
- ``/bus/has_missed_notifications`` ``{last_notification_id}`` → true when that
  row is gone (garbage-collected): the page missed notifications.
- ``/bus/get_autovacuum_info`` → ``{"lastcall", "nextcall"}`` of the bus GC job,
  UTC ``"YYYY-MM-DD HH:MM:SS"`` strings, null when it never ran.
- ``/websocket/update_bus_presence`` moved to the websocket in Odoo 19: 404 with
  a body naming the ``update_presence`` event.

The database is the first served one, or the ``db`` query parameter. A dead
database or an exhausted pool answers 503 with Retry-After (rtbus.errors).
"""

from __future__ import annotations

import logging

import orjson
from werkzeug.wrappers import Request, Response

from rtbus.bus.authorization import SubscribeContext, authorize
from rtbus.bus import delivery, stream
from rtbus.bus.dispatch import BACKLOG_SECONDS
from rtbus.errors import ClientError, SessionExpired
from rtbus.http.jsonrpc import InvalidParams, JsonRpcError, error_response, jsonrpc_route
from rtbus.session import sid_from_cookie_header

_logger = logging.getLogger(__name__)

_AUTOVACUUM_SQL = ("SELECT to_char(lastcall, 'YYYY-MM-DD HH24:MI:SS'),"
                   " to_char(nextcall, 'YYYY-MM-DD HH24:MI:SS')"
                   " FROM rtbus_cron WHERE name = 'bus_gc'")


def _dbname(app, request: Request) -> str:
    return app.database(request.args.get("db"))


def _id_param(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidParams(f"{name} must be a non-negative integer, got {value!r:.40}")
    return value


def authorized(app, session, channels):
    """(the Subscription `session` may have on `channels`, the session to serve it with).

    The channel rules decide (rtbus.bus.authorization); a channel list they refuse is the
    call's InvalidParams.
    """
    try:
        subscription = authorize(session, channels, app.policy)
    except ClientError as exc:
        raise InvalidParams(str(exc)) from None
    return subscription, subscription.session_or(session)


# -- peek ------------------------------------------------------------------------------------


@jsonrpc_route
def peek_notifications(app, request: Request, *, channels, last=0, is_first_poll=False):
    if not isinstance(is_first_poll, bool):
        raise InvalidParams("is_first_poll must be true or false")
    last = _id_param(last, "last")
    dbname = _dbname(app, request)
    session = app.sessions.check_poll(dbname, sid_from_cookie_header(request.environ),
                                      is_first_poll, client=request.remote_addr,
                                      cookies=request.cookies)
    subscription, session = authorized(app, session, channels)
    app.subscribe_hooks.run(session, subscription, SubscribeContext(
        pool=app.pool, transport="peek", notifier=app.notifier, extra={"remote": request.remote_addr}))
    return {"channels": subscription.anchored_channels(),
            "notifications": _read_notifications(app, dbname, subscription.channels, last)}


def _read_notifications(app, dbname: str, channels, last: int) -> list[dict]:
    config = app.config
    limits = delivery.Limits.from_config(config)
    with app.pool.connection(dbname) as conn:
        try:
            with conn.cursor() as cur:
                # Record an epoch first, so that rows committed before this call are in
                # the stream even when no dispatcher has woken since.
                cur.execute("SET LOCAL synchronous_commit = off")
                epoch, _, _ = stream.read_next(cur, None, BACKLOG_SECONDS)
            conn.commit()
            with conn.cursor() as cur:
                page = stream.replay(cur, delivery.CatchUp.first(channels, last), epoch,
                                     channels, BACKLOG_SECONDS, limits.notifications,
                                     f" in database {dbname}")
        finally:
            conn.rollback()
    pages = limits.pages(page.rows)
    notifications = []
    for row in pages[0] if pages else ():
        try:
            notifications.append({"id": row.id, "message": orjson.loads(row.blob)["message"]})
        except orjson.JSONDecodeError:
            _logger.warning("bus_bus row %d in database %s is not JSON: skipped", row.id, dbname)
    return notifications


# -- presence and housekeeping -----------------------------------------------------------------


@jsonrpc_route
def on_closed(app, request: Request):
    dbname = _dbname(app, request)
    try:
        session = app.sessions.authenticate(dbname, sid_from_cookie_header(request.environ),
                                             client=request.remote_addr,
                                             cookies=request.cookies)
    except SessionExpired:
        return None      # signed out already: nobody to mark offline
    app.presence.set_offline(session)     # a visitor's is ignored (or forwarded: rtbus.auth)
    return None


@jsonrpc_route
def has_missed_notifications(app, request: Request, *, last_notification_id):
    notification_id = _id_param(last_notification_id, "last_notification_id")
    with app.pool.connection(_dbname(app, request)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT NOT EXISTS (SELECT 1 FROM bus_bus WHERE id = %s)",
                        (notification_id,))
            (missed,) = cur.fetchone()
        conn.rollback()
    return missed


@jsonrpc_route
def get_autovacuum_info(app, request: Request):
    with app.pool.connection(_dbname(app, request)) as conn:
        with conn.cursor() as cur:
            cur.execute(_AUTOVACUUM_SQL)
            row = cur.fetchone()
        conn.rollback()
    lastcall, nextcall = row if row is not None else (None, None)
    return {"lastcall": lastcall, "nextcall": nextcall}


# -- removed in Odoo 19 ------------------------------------------------------------------------


class RouteMoved(JsonRpcError):
    code, message, name, http_status = 404, "404: Not Found", "werkzeug.exceptions.NotFound", 404


def update_bus_presence(app, request: Request) -> Response:
    """Gone in Odoo 19 (any method): presence now travels on the websocket."""
    return error_response(RouteMoved(
        "/websocket/update_bus_presence was removed in Odoo 19: send the update_presence "
        "event on the websocket instead, "
        '{"event_name": "update_presence", "data": {"inactivity_period": <milliseconds>}}'))
