"""Cross-origin reads of the long-poll by the deployment's own page, and by no one else.

Without a proxy in front, the board is served by the HTTP workers on ``http_port``
and the long-poll by the gevent process on ``gevent_port``: two origins. Its
shared worker posts the poll as a simple request (``text/plain``, no preflight)
with the session cookie; the browser only lets it read the answer when the answer
names that origin. The one origin named is the sibling page: the same scheme and
host as this request, on ``http_port``. Any other site gets no CORS headers, so it
cannot read a visitor's notifications with the visitor's cookie.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from werkzeug.wrappers import Request, Response


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:host.index("]")].lower()
    return host.partition(":")[0].lower() if host.count(":") == 1 else host.lower()


def sibling_page_origin(app, request: Request) -> str | None:
    """The request's Origin when it is this deployment's page on ``http_port``, else None."""
    origin = request.headers.get("Origin")
    if not origin or app.role != "gevent" or not app.config.http_port:
        return None
    try:
        parsed = urlsplit(origin)
        port = parsed.port
    except ValueError:
        return None
    if parsed.scheme != request.scheme or port != app.config.http_port:
        return None
    if (parsed.hostname or "").lower() != _hostname(request.host):
        return None
    return origin


def allow_sibling_page(app, request: Request, response: Response) -> Response:
    """Add the CORS headers that let the sibling page read `response`."""
    origin = sibling_page_origin(app, request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers.add("Vary", "Origin")
    return response
