"""``/websocket``: the handshake, then the connection is handed to the websocket hub.

Served by the evented processes only. An HTTP worker answering it would hold
a prefork worker for the life of the connection; instead it answers 421 with
Odoo's sentence naming the longpolling port, the most common deployment
mistake (nginx not routing /websocket to the longpolling port).
"""

from __future__ import annotations

import logging

from werkzeug.wrappers import Request, Response

from rtbus.http import misroute
from rtbus.http.responses import error_response
from rtbus.websocket import deflate, handshake

_logger = logging.getLogger(__name__)


def _misrouted(app, request: Request) -> Response:
    port = app.config.gevent_port
    message = (f"Couldn't bind the websocket. Is the connection opened on the evented port ({port})? "
               f"This is an HTTP worker: route /websocket to the longpolling port.")
    misroute.report("/websocket", message, request.remote_addr)
    return error_response(421, message)


class Accepted:
    """A handshake the route accepted: the 101's key and extensions, and `serve(sock,
    initial, on_end)`, which hands the socket to the hub once the 101 is written."""

    __slots__ = ("key", "extensions", "serve")

    def __init__(self, key: str, extensions: str | None, serve):
        self.key = key
        self.extensions = extensions
        self.serve = serve

    def head(self) -> bytes:
        """The 101 answer, status line to blank line, as one buffer."""
        return handshake.response_head(self.key, self.extensions)


# The environ's key of each header the handshake checks (werkzeug's EnvironHeaders
# reads the same keys: HTTP_ and the name, upper case, "_" for "-").
_CHECKED_KEYS = tuple((name, "HTTP_" + name.upper().replace("-", "_")) for name in handshake.REQUIRED_HEADERS)


def _request_headers(environ) -> dict[str, str]:
    """The headers the handshake checks, by lower-case name, as werkzeug's EnvironHeaders
    gives them, without its title-casing generator over every header (4.6 % of the gevent
    process's CPU in a ramp of handshakes, py-spy, issue 17) nor a pass over the other
    headers (2 %)."""
    return {name: environ[key] for name, key in _CHECKED_KEYS if key in environ}


def _extension_offers(environ) -> list[str]:
    """The Sec-WebSocket-Extensions lines, as werkzeug's request.headers.getlist gives
    them (pywsgi joins repeated lines into one)."""
    offers = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
    return [] if offers is None else [offers]


def websocket(app, request: Request) -> Response:
    """The routing map's endpoint: the 101 as a werkzeug response, the hand-over left in
    the environ (``rtbus.upgrade``) for the edge."""
    answer = accept(app, request)
    if not isinstance(answer, Accepted):
        return answer
    response = Response(status=101, headers=handshake.response_headers(answer.key, answer.extensions))
    del response.headers["Content-Type"]
    request.environ["rtbus.upgrade"] = answer.serve
    return response


def accept(app, request: Request) -> Accepted | Response:
    """Validate the upgrade: Accepted, or the response that refuses it (the hub serves
    an accepted socket once the 101 is written)."""
    from rtbus.errors import SessionExpired
    from rtbus.session import sid_from_cookie_header

    if not app.serves_subscribers:
        return _misrouted(app, request)
    try:
        key = handshake.check_request(request.method, _request_headers(request.environ))
    except handshake.HandshakeError as exc:
        _logger.info("websocket handshake refused (%d) for %s: %s", exc.status, request.remote_addr, exc.message)
        return error_response(exc.status, exc.message, dict(exc.headers))
    dbname = app.database(request.args.get("db"))
    environ = request.environ
    # Straight from the environ: the values werkzeug's request.headers would give.
    outdated = handshake.is_outdated(request.args.get("version"), environ.get("HTTP_USER_AGENT"))
    expired = False
    try:
        session = app.sessions.authenticate(dbname, sid_from_cookie_header(environ),
                                             client=request.remote_addr,
                                             cookies=request.cookies)
    except SessionExpired:
        # Accepted, then closed with 4001: the client waits for a new session.
        session, expired = app.sessions.public(dbname), True
    agreed = (deflate.negotiate(_extension_offers(environ))
              if app.config.websocket_compression else None)
    extensions, params = agreed if agreed is not None else (None, None)
    # Never a Set-Cookie on the 101 (Odoo's released handlers mark the session dirty so
    # that one rides on it): some browsers let a cookie on an upgrade answer replace the
    # page's own session. What rtbus knows of a session stays in rtbus_session.
    remote = request.remote_addr or "?"

    def serve(sock, initial: bytes, on_end) -> None:
        app.hub.serve(sock, session, remote=remote, initial=initial, outdated=outdated, expired=expired,
                      deflate=params, on_end=on_end)

    return Accepted(key, extensions, serve)
