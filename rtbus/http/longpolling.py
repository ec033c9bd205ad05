"""``/longpolling/poll``: a JSON-RPC call held until notifications arrive (evented processes).

Params (Odoo ≤15's): ``channels`` (list of strings, the rules of `subscribe`),
``last`` (the highest notification id the client has, 0 on a fresh page) and
``options`` (``{"bus_inactivity": ms}`` records the user's presence). The result is
the list of notifications after `last`, ``[{"id", "message": {"type", "payload"}}]``
as on the websocket, or ``[]`` after ``longpolling_timeout`` seconds.

The session comes from the ``session_id`` cookie (a stale one: JSON-RPC error 100),
and is checked again before notifications are handed over, so a logout during the
wait is noticed. The wait itself is rtbus.bus.poll's; this module adds the I/O: it
watches the client's socket meanwhile, and a client that closes its connection ends
its wait at once instead of holding a slot for up to 50 s.

On an HTTP worker the route answers 421 at once, whatever the method, with a
sentence naming the longpolling port: holding a prefork worker for 50 s is how
Odoo ≤15 deployments ran out of workers ("bus.Bus unavailable").
"""

from __future__ import annotations

import contextlib

from werkzeug.wrappers import Request, Response

from rtbus.bus.authorization import SubscribeContext
from rtbus.bus.poll import Outcome, Poll
from rtbus.errors import ClientError, DatabaseUnavailable
from rtbus.http import cors, misroute
from rtbus.http.bus_routes import authorized
from rtbus.http.jsonrpc import InvalidParams, JsonRpcError, RawResult, error_response, jsonrpc_route
from rtbus.session import sid_from_cookie_header
from rtbus.websocket.socket_watch import departure_watch

INACTIVITY_OPTION = "bus_inactivity"


class MisdirectedRequest(JsonRpcError):
    message, http_status = "Misdirected Request", 421


def poll(app, request: Request) -> Response:
    """The route: refused at once on HTTP workers, held on the evented processes."""
    if not app.serves_subscribers:
        return _misrouted(app, request)
    return cors.allow_sibling_page(app, request, _poll(app, request))


def _misrouted(app, request: Request) -> Response:
    message = (f"Long-polling is served on the longpolling port ({app.config.gevent_port}), "
               f"not by this HTTP worker: route /longpolling to the longpolling port.")
    misroute.report("/longpolling/poll", message, request.remote_addr)
    return error_response(MisdirectedRequest(message))


@jsonrpc_route
def _poll(app, request: Request, *, channels, last=0, options=None):
    dbname = app.database(request.args.get("db"))
    last = _check_last(last)
    options = _check_options(options)
    session = app.sessions.authenticate(dbname, sid_from_cookie_header(request.environ),
                                         client=request.remote_addr,
                                         cookies=request.cookies)
    subscription, session = authorized(app, session, channels)
    if INACTIVITY_OPTION in options and not session.is_public:
        try:
            app.presence.update_presence(session, options[INACTIVITY_OPTION])
        except ClientError as exc:
            raise InvalidParams(f"options.{INACTIVITY_OPTION}: {exc}") from None
    if last == 0:
        # A page's first poll. Later polls re-subscribe after every answer: running
        # the hooks then would echo their own notifications back for ever.
        app.subscribe_hooks.run(session, subscription, SubscribeContext(
            pool=app.pool, transport="longpolling", notifier=app.notifier,
            extra={"remote": request.remote_addr}))
    if not app.dispatcher.listening:
        # Nothing would wake the poll: let the client retry rather than hang for 50 s.
        raise DatabaseUnavailable("the bus cannot LISTEN to PostgreSQL right now; retry later")
    result = app.longpolls.wait(subscription.dbname, subscription.channels, last,
                                watch=_watch(request.environ, app.session_followers, session))
    if result.outcome in (Outcome.DELIVERED, Outcome.SESSION_CHANGED):
        app.sessions.check(session)       # signed out while waiting: error 100, no data
    return RawResult(result.batch)


def _check_last(last) -> int:
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise InvalidParams(f"last must be a non-negative integer (a notification id), "
                            f"got {last!r:.40}")
    return last


def _check_options(options) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidParams(f"options must be an object, got {type(options).__name__}")
    return options


# -- noticing that the session changed or the client left ----------------------------------


def _watch(environ, followers, session):
    """A `watch` for LongPolls.wait: the poll ends when its session changes (it is then
    answered ``[]``, or error 100 when the session is no longer valid) or its client left."""
    departure = departure_watch(environ)

    @contextlib.contextmanager
    def watching(held: Poll):
        handle = followers.follow(session, held.session_changed)
        try:
            with departure(held) if departure is not None else contextlib.nullcontext():
                yield
        finally:
            followers.unfollow(handle)

    return watching
