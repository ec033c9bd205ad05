"""``/``: the live board for people (HTML), and the JSON index for programs (``/index.json``).

A browser asks for ``text/html`` and gets the board (``rtbus/static/demo.html``);
a client that does not (curl, monitoring, ``Accept: application/json``) gets the
JSON index it always got. The board's shared worker needs three facts, written
into ``data-`` attributes of the page:

- where the longpolling port is (`bus_base_url`): behind a proxy or in single mode,
  the page's own origin; else the page's host on ``gevent_port``, unless
  ``longpolling_public_url`` says otherwise;
- the worker version the server expects (``?version=`` of ``/websocket``): a page
  kept from before an upgrade carries the old one, and the server answers it with
  close 1000 ``OUTDATED_VERSION``;
- the database, and whether the demo routes are on.
"""

from __future__ import annotations

import html

from werkzeug.wrappers import Request, Response

from rtbus.http.responses import json_response
from rtbus.websocket.handshake import WORKER_VERSION

PAGE = "demo.html"
PAGE_ASSETS = ("demo.css", "demo.js", "rtbus-bus.js", "rtbus-worker.js", "favicon.svg")


def json_index(app, request: Request) -> Response:
    """A short description of this server, for programs."""
    return json_response({
        "server": "rtbus",
        "role": app.role,
        "routes": sorted(rule.rule for rule in app.url_map.iter_rules()),
    })


def wants_html(request: Request) -> bool:
    """True when the client prefers HTML to JSON (browsers do; curl and scripts do not)."""
    # On a tie (no Accept header, */*) the first offer wins: JSON, as before the board existed.
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def bus_base_url(app, request: Request) -> str:
    """The origin browsers reach /websocket and /longpolling/poll on; "" is the page's own."""
    configured = app.config.longpolling_public_url
    if configured:
        return configured.rstrip("/")
    if app.role != "http" or app.config.proxy_mode or not app.config.gevent_port:
        return ""
    host = request.host
    # Drop the port of "host:port" and "[v6]:port", keep a bare "[v6]".
    if host.startswith("["):
        host = host[:host.index("]") + 1]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return f"{request.scheme}://{host}:{app.config.gevent_port}"


def page(app, request: Request) -> Response:
    """``GET /``: the board for browsers, the JSON index for everyone else."""
    if not wants_html(request):
        return json_index(app, request)
    files = app.static_files
    template = files.get(PAGE)
    if template is None:
        return json_index(app, request)
    replacements = {
        "{{bus_url}}": bus_base_url(app, request),
        "{{worker_version}}": WORKER_VERSION,
        "{{db}}": app.databases[0],
        "{{demo_mode}}": "on" if app.config.demo_mode else "off",
        "{{role}}": app.role,
    }
    for name in PAGE_ASSETS:
        replacements[f"{{{{url:{name}}}}}"] = files.url(name)
    text = template.body.decode()
    for placeholder, value in replacements.items():
        text = text.replace(placeholder, html.escape(value, quote=True))
    response = Response(text, content_type="text/html; charset=utf-8")
    # The page names the current asset versions and worker version: never reuse an old copy.
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response
