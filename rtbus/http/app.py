"""The WSGI application served by the HTTP workers, the gevent process and single mode.

Routes are declared in one werkzeug Map. Each process builds one Application
with what that process has: every process has a connection pool; only the
processes that hold subscribers (gevent, single) have a dispatcher.
"""

from __future__ import annotations

import logging

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from rtbus import errors
from rtbus.db.connect import served_databases
from rtbus.http import health, metrics_route, proxy, publish, session_routes, websocket_route
from rtbus.http import bus_routes, cors, demo, index_page, longpolling, origin, static_files
from rtbus.http.responses import error_response
from rtbus.session_followers import SessionFollowers

_logger = logging.getLogger(__name__)

ROLES = ("http", "gevent", "single")


class Application:
    """A WSGI callable routing requests to endpoint functions ``f(app, request) -> Response``."""

    def __init__(self, config, *, role: str, pool, dispatcher=None):
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        self.config = config
        self.role = role
        self.pool = pool
        self.dispatcher = dispatcher
        self.databases = served_databases(config)
        self.origins = origin.OriginPolicy.from_config(config, role)
        self.hub = None   # the websocket hub, set by the evented processes
        # The websockets and held long-polls of each session, told when it changes
        # (the evented processes' NOTIFY rtbus_session callback calls it).
        self.session_followers = SessionFollowers()
        self.snapshots = None   # this process's metrics SnapshotWriter, set by the process
        self._publisher = None
        self._sessions = None
        self._policy = None
        self._presence = None
        self._longpolls = None
        self._subscribe_hooks = None
        self._static_files = None
        # The application behind auth_proxy_url decides sessions, channels and presence.
        self.auth = None
        if config.auth_proxy_url:
            from rtbus.auth import AuthBridge
            from rtbus.bus.authorization import AfterSubscribeHooks
            self.auth = AuthBridge.from_config(config)
            self._sessions, self._policy = self.auth.sessions, self.auth.rules
            self._presence = self.auth.presence
            # The application runs its own after-subscribe steps (Odoo's
            # _after_subscribe_data) while it answers the subscription.
            self._subscribe_hooks = AfterSubscribeHooks()
        self.url_map = Map([
            Rule("/", endpoint=index_page.page, methods=["GET", "HEAD"]),
            Rule("/index.json", endpoint=index_page.json_index, methods=["GET", "HEAD"]),
            Rule("/static/<path:filename>", endpoint=static_files.static, methods=["GET", "HEAD"]),
            Rule("/demo/session", endpoint=demo.session),
            Rule("/demo/people", endpoint=demo.people),
            Rule("/demo/publish", endpoint=demo.publish),
            Rule("/websocket/health", endpoint=health.websocket_health, methods=["GET", "HEAD"]),
            Rule("/metrics", endpoint=metrics_route.metrics, methods=["GET", "HEAD"]),
            Rule("/bus/publish", endpoint=publish.publish),
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
        if self.serves_subscribers:
            # Once per evented process start (HTTP workers apply the same configuration).
            _logger.info("%s", self.policy.describe())

    @property
    def policy(self):
        """The channel rules of this deployment (rtbus.bus.authorization.ChannelRules): the
        one decision of every transport. A replacement assigned here before the evented
        process makes its hub takes its place for websockets, long-polls and peeks."""
        if self._policy is None:
            from rtbus.bus.authorization import ChannelPolicy
            self._policy = ChannelPolicy.from_config(self.config)
        return self._policy

    @policy.setter
    def policy(self, rules) -> None:
        self._policy = rules

    @property
    def presence(self):
        """This process's PresenceService (throttled, coalesced presence writes)."""
        if self._presence is None:
            from rtbus.bus.presence import PresenceService
            self._presence = PresenceService.from_config(self.pool, self.config)
        return self._presence

    @property
    def subscribe_hooks(self):
        """The after-subscribe hooks of this process (presence pushes missed presences)."""
        if self._subscribe_hooks is None:
            from rtbus.bus.authorization import AfterSubscribeHooks
            from rtbus.bus.presence import push_missed_presences
            self._subscribe_hooks = AfterSubscribeHooks([push_missed_presences])
        return self._subscribe_hooks

    @property
    def static_files(self):
        """The browser client and the board's assets, read once by this process."""
        if self._static_files is None:
            self._static_files = static_files.StaticFiles()
        return self._static_files

    @property
    def longpolls(self):
        """The long-polls this process holds (evented processes only)."""
        if self._longpolls is None:
            if not self.serves_subscribers:
                raise RuntimeError(f"a {self.role} process holds no long-polls")
            from rtbus.bus.poll import LongPolls
            self._longpolls = LongPolls.from_config(self.dispatcher, self.config)
        return self._longpolls

    @property
    def sessions(self):
        """This process's SessionStore (a small cache in front of rtbus_session)."""
        if self._sessions is None:
            from rtbus.session import SessionStore
            config = self.config
            if not self.serves_subscribers:
                # No dispatcher here to hear the rtbus_session NOTIFYs: a cached
                # check could outlive a revocation, so HTTP workers ask every time.
                config = config.replace(session_check_cache_seconds=0)
            self._sessions = SessionStore(self.pool, config)
        return self._sessions

    @property
    def publisher(self):
        """This process's Publisher (it keeps one connection to the imbus database)."""
        if self._publisher is None:
            from rtbus.bus.publish import Publisher
            self._publisher = Publisher.from_config(self.config)
        return self._publisher

    def database(self, name: str | None) -> str:
        """The served database a request names, or the first one; UnknownDatabase otherwise
        (whose message names no database: which ones are served is nobody's business)."""
        if name is None:
            return self.databases[0]
        if name not in self.databases:
            raise errors.UnknownDatabase("this server does not serve the database the request names")
        return name

    def close(self) -> None:
        """Release what the application holds (the publisher's imbus connection)."""
        if self._publisher is not None and self._publisher.notifier is not None:
            self._publisher.notifier.close()
        if self.auth is not None:
            self.auth.close()

    @property
    def serves_subscribers(self) -> bool:
        """True in the processes that hold websockets and long-polls."""
        return self.role in ("gevent", "single")

    def __call__(self, environ, start_response):
        if self.config.proxy_mode:
            # Here, before anything reads the environ: routes, the websocket layer and
            # the access logs of both server kinds all see the real client.
            proxy.apply_forwarded(environ)
        # Then, before anything reads the cookie: a foreign page's request never acts as
        # the visitor's session (rtbus.http.origin).
        refusal = self.origins.screen(environ)
        if refusal is not None:
            return refusal(environ, start_response)
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

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
        except HTTPException as exc:
            return error_response(exc.code or 500, exc.description or exc.name)
        except Exception as exc:   # each error class maps to one outcome, in errors.py
            outcome = errors.wire_outcome(exc)
            headers = {"Retry-After": str(outcome.retry_after)} if outcome.retry_after else None
            if outcome is errors.UNEXPECTED:
                _logger.exception("error while serving %s %s", request.method, request.path)
                return error_response(500, "internal server error")
            _logger.log(logging.DEBUG if outcome.routine else logging.WARNING, "%s %s: %s",
                        request.method, request.path, exc)
            return error_response(outcome.http_status, str(exc), headers)

