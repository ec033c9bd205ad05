"""Cross-origin reads of the long-poll by the deployment's own page, and by no one else.

Without a proxy in front, the board is served by the HTTP workers on ``http_port``
and the long-poll by the gevent process on ``gevent_port``: two origins. Its shared
worker posts the poll as JSON (``application/json``, the only type a JSON-RPC route
takes) with the session cookie, so the browser first asks, with a preflight
``OPTIONS``, whether it may; and it lets the page read the answer only when the answer
names the page's origin. The origins named are the sibling page (the same scheme and
host as the request, on ``http_port``) and ``allowed_origins`` (see rtbus.http.origin).
Any other site gets no CORS headers, so it cannot read a visitor's notifications with
the visitor's cookie.
"""

from __future__ import annotations

from werkzeug.wrappers import Request, Response

PREFLIGHT_MAX_AGE = 7200     # seconds; Chromium caps a preflight's cache at 2 hours


def cors_origin(app, request: Request) -> str | None:
    """The request's Origin when that page may read the answer, else None."""
    if app.origins.may_read(request.environ):
        return request.headers.get("Origin")
    return None


def allow_sibling_page(app, request: Request, response: Response) -> Response:
    """Add the CORS headers that let the sibling page (or an allowed origin) read `response`."""
    origin = cors_origin(app, request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
    response.headers.add("Vary", "Origin")
    return response


def preflight(app, request: Request) -> Response:
    """``OPTIONS /longpolling/poll``: allow a credentialed JSON POST from the pages that may
    read the answer; other origins get an answer without CORS headers, which the browser
    takes as a refusal."""
    response = Response(status=204)
    del response.headers["Content-Type"]
    response.headers["Allow"] = "POST, OPTIONS"
    if cors_origin(app, request) is not None:
        response.headers["Access-Control-Allow-Methods"] = "POST"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return allow_sibling_page(app, request, response)
