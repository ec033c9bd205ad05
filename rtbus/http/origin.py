"""Which browser pages may act with the visitor's session cookie: the Origin rule.

A browser attaches the ``session_id`` cookie to a websocket handshake or a POST whatever
page started it, and names that page in ``Origin``. Without a check, a page on another
site could open ``/websocket`` with the visitor's cookie and read the visitor's
notifications. So a request that carries the cookie and an Origin is trusted only when
that Origin is

- the request's own origin: its scheme, host and port (with ``proxy_mode``, the ones
  ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` give, applied to the environ before);
- the deployment's own page on ``http_port`` of the same host, when this is the gevent
  process without a proxy in front (the board's shared worker on the other port);
- or one of ``allowed_origins``.

Any other (``null`` included) never acts as the cookie's session: by default the cookie
is removed from the request, which then runs as a public visitor (Odoo's
``ODOO_BUS_PUBLIC_SAMESITE_WS``, on here by default, so embedded public widgets keep
working), and the downgrade is logged; with ``cross_origin_sessions = refuse`` it is
answered 403. Requests without an Origin come from non-browser clients (a browser
always sends it on these requests) and are left as they are.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit

from rtbus import errors
from rtbus.http.responses import error_response
from rtbus.session import COOKIE_NAME, sid_from_cookie_header

_logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_PAGE_SCHEMES = {"ws": "http", "wss": "https"}

Origin = tuple[str, str, int]      # (scheme, host, port), lower case, default port filled in


def parse_origin(value: str | None) -> Origin | None:
    """``("https", "example.com", 443)`` from ``"https://Example.com"``; None when `value`
    is absent, ``null`` or anything but a bare scheme://host[:port]."""
    if not value:
        return None
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = _PAGE_SCHEMES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def request_origin(environ) -> Origin | None:
    """The origin a request was sent to: its scheme and its Host (or server name and port)."""
    scheme = environ.get("wsgi.url_scheme", "http")
    host = environ.get("HTTP_HOST")
    if not host:
        host = f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}".rstrip(":")
    return parse_origin(f"{scheme}://{host}")


class OriginPolicy:
    """The Origin rule of one process; `screen` applies it to a request's environ.

    Thread-safe: the only state that changes is the counters.
    """

    def __init__(self, allowed=(), *, refuse: bool = False, sibling_port: int | None = None):
        parsed = {origin: parse_origin(origin) for origin in allowed}
        bad = [origin for origin, value in parsed.items() if value is None]
        if bad:
            raise errors.ConfigError(f"allowed_origins: {', '.join(bad)} is not an origin "
                                     f"(scheme://host[:port], without a path)")
        self.allowed = frozenset(parsed.values())
        self.refuse = refuse
        self.sibling_port = sibling_port
        self._lock = threading.Lock()
        self.counters = {"downgraded": 0, "refused": 0}

    @classmethod
    def from_config(cls, config, role: str) -> OriginPolicy:
        # Only the gevent process has a sibling page: the board served on http_port.
        sibling = config.http_port if role == "gevent" and config.http_port else None
        return cls(config.allowed_origins, refuse=config.cross_origin_sessions == "refuse",
                   sibling_port=sibling)

    def stats(self) -> dict:
        """Cross-origin requests seen: ``downgraded`` (served without the session), ``refused``."""
        return dict(self.counters)

    def trusts(self, environ) -> bool:
        """Whether the request's Origin (present) may act with its session cookie."""
        origin = parse_origin(environ.get("HTTP_ORIGIN"))
        if origin is None:
            return False
        own = request_origin(environ)
        return origin == own or origin in self.allowed or self._is_sibling(origin, own)

    def may_read(self, environ) -> bool:
        """Whether another origin's page may read the answer (CORS): the sibling page and
        the allowed origins."""
        origin = parse_origin(environ.get("HTTP_ORIGIN"))
        if origin is None:
            return False
        return origin in self.allowed or self._is_sibling(origin, request_origin(environ))

    def _is_sibling(self, origin: Origin, own: Origin | None) -> bool:
        return (self.sibling_port is not None and own is not None
                and origin == (own[0], own[1], self.sibling_port))

    def screen(self, environ):
        """Apply the rule to a request before anything reads its cookie.

        Returns None to go on (maybe without the session cookie, removed from
        ``HTTP_COOKIE``), or the 403 response to send instead.
        """
        if "HTTP_ORIGIN" not in environ or sid_from_cookie_header(environ) is None:
            return None
        if self.trusts(environ):
            return None
        origin = environ.get("HTTP_ORIGIN", "")[:200]
        if self.refuse:
            self._count("refused")
            _logger.info("refused a cross-origin %s %s carrying a session cookie: Host=%s, Origin=%s",
                         environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                         environ.get("HTTP_HOST"), origin)
            return error_response(403, "this page's origin may not use the session cookie here")
        self._count("downgraded")
        environ["HTTP_COOKIE"] = without_session_cookie(environ.get("HTTP_COOKIE", ""))
        if environ.get("PATH_INFO") == "/websocket":
            # Odoo's wording, which operators already alert on.
            _logger.info("Downgrading websocket session. Host=%s, Origin=%s, Scheme=%s",
                         environ.get("HTTP_HOST"), origin, environ.get("wsgi.url_scheme"))
        else:
            _logger.info("Downgrading cross-origin %s %s to a public session. Host=%s, Origin=%s",
                         environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                         environ.get("HTTP_HOST"), origin)
        return None

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counters[outcome] += 1


def without_session_cookie(header: str) -> str:
    """A Cookie header with every ``session_id`` cookie removed, the others kept."""
    kept = [part.strip() for part in header.split(";")
            if part.strip() and part.partition("=")[0].strip() != COOKIE_NAME]
    return "; ".join(kept)
