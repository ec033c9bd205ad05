"""The WSGI application served by the HTTP workers, the gevent workers and single mode.

Routes are declared in one werkzeug Map. Each process builds its parts once
(rtbus.service.services) and gives them to its Application: every process has a
connection pool and sessions; only the processes that hold subscribers (gevent,
single) have a dispatcher, long-polls and a websocket hub.
"""

from __future__ import annotations

import logging

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from rtbus import errors
from rtbus.db.connect import served_databases
from rtbus.http import health, metrics_route, proxy, publish_route, session_routes, websocket_route
from rtbus.http import bus_routes, cors, demo, index_page, longpolling, static_files
from rtbus.http.responses import error_response

_logger = logging.getLogger(__name__)

ROLES = ("http", "gevent", "single")


class Application:
    """A WSGI callable routing requests to endpoint functions ``f(app, request) -> Response``.

    `services` (rtbus.service.services.Services) is everything the routes use; the
    Application reads its parts and creates none.
    """

    def __init__(self, services):
        if services.role not in ROLES:
            raise ValueError(f"a {services.role} process serves no HTTP")
        self.services = services
        self.config = services.config
        self.role = services.role
        self.databases = served_databases(self.config)
        # The parts the routes use, as the process built them.
        self.pool = services.pool
        self.dispatcher = services.dispatcher
        self.origins = services.origins
        self.sessions = services.sessions
        self.policy = services.policy
        self.presence = services.presence
        self.subscribe_hooks = services.subscribe_hooks
        self.session_followers = services.followers
        self.longpolls = services.longpolls
        self.hub = services.hub
        self.publisher = services.publisher
        self.notifier = services.notifier
        self.snapshots = services.snapshots
        self.static_files = static_files.StaticFiles()   # read on first use, then kept
        self.url_map = Map([
            Rule("/", endpoint=index_page.page, methods=["GET", "HEAD"]),
            Rule("/index.json", endpoint=index_page.json_index, methods=["GET", "HEAD"]),
            Rule("/static/<path:filename>", endpoint=static_files.static, methods=["GET", "HEAD"]),
            Rule("/demo/session", endpoint=demo.session),
            Rule("/demo/people", endpoint=demo.people),
            Rule("/demo/publish", endpoint=demo.post_message),
            Rule("/websocket/health", endpoint=health.websocket_health, methods=["GET", "HEAD"]),
            Rule("/metrics", endpoint=metrics_route.metrics, methods=["GET", "HEAD"]),
            Rule("/bus/publish", endpoint=publish_route.bus_publish),
            Rule("/bus/session/create", endpoint=session_routes.create),
            Rule("/bus/session/rotate", endpoint=session_routes.rotate),
            Rule("/bus/session/revoke", endpoint=session_routes.revoke),
            Rule("/bus/groups", endpoint=session_routes.groups),
            Rule("/longpolling/poll", endpoint=cors.preflight, methods=["OPTIONS"]),
            Rule("/longpolling/poll", endpoint=longpolling.poll),
            Rule("/websocket/peek_notifications", endpoint=bus_routes.peek_notifications),
            Rule("/websocket/on_closed", endpoint=bus_routes.on_closed),
            Rule("/websocket/update_bus_presence", endpoint=bus_routes.update_bus_presence),
            Rule("/bus/has_missed_notifications", endpoint=bus_routes.has_missed_notifications),
            Rule("/bus/get_autovacuum_info", endpoint=bus_routes.get_autovacuum_info),
            # Upgrade requests match the first rule, anything else the second, so
            # that a plain GET gets the handshake's sentence, not a routing error.
            Rule("/websocket", endpoint=websocket_route.websocket, websocket=True),
            Rule("/websocket", endpoint=websocket_route.websocket),
        ])

    def database(self, name: str | None) -> str:
        """The served database a request names, or the first one; UnknownDatabase otherwise
        (whose message names no database: which ones are served is nobody's business)."""
        if name is None:
            return self.databases[0]
        if name not in self.databases:
            raise errors.UnknownDatabase("this server does not serve the database the request names")
        return name

    @property
    def serves_subscribers(self) -> bool:
        """True in the processes that hold websockets and long-polls."""
        return self.services.serves_subscribers

    def __call__(self, environ, start_response):
        refusal = self._screen(environ)
        if refusal is not None:
            return refusal(environ, start_response)
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def upgrade(self, environ) -> websocket_route.Accepted | Response:
        """``GET /websocket`` without the routing map nor a werkzeug response: what the
        evented edge calls for it (the same screening, route and error answers as
        `__call__`). Accepted, whose 101 the caller writes, or the refusal to send."""
        refusal = self._screen(environ)
        if refusal is not None:
            return refusal
        request = Request(environ)
        try:
            return websocket_route.accept(self, request)
        except Exception as exc:
            return self._failed(request, exc)

    def _screen(self, environ) -> Response | None:
        if self.config.proxy_mode:
            # Here, before anything reads the environ: routes, the websocket layer and
            # the access logs of both server kinds all see the real client.
            proxy.apply_forwarded(environ)
        # Then, before anything reads the cookie: a foreign page's request never acts as
        # the visitor's session (rtbus.http.origin).
        return self.origins.screen(environ)

    def dispatch(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, arguments = adapter.match()
            return endpoint(self, request, **arguments)
        except NotFound:
            return error_response(404, f"no route for {request.path}")
        except MethodNotAllowed as exc:
            allowed = ", ".join(exc.valid_methods or ())
            return error_response(405, f"{request.method} is not allowed on {request.path}; use {allowed}",
                                  {"Allow": allowed})
        except Exception as exc:
            return self._failed(request, exc)

    def _failed(self, request: Request, exc: Exception) -> Response:
        """The answer to an error a route raised."""
        if isinstance(exc, HTTPException):
            return error_response(exc.code or 500, exc.description or exc.name)
        # Each error class maps to one outcome, in errors.py.
        outcome = errors.wire_outcome(exc)
        headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else None
        if outcome is errors.UNEXPECTED:
            _logger.exception("error while serving %s %s", request.method, request.path)
            return error_response(500, "internal server error")
        _logger.log(logging.DEBUG if outcome.routine else logging.WARNING, "%s %s: %s",
                    request.method, request.path, exc)
        return error_response(outcome.http_status, str(exc), headers)
