"""Health routes: cheap, sessionless, never cached."""

from __future__ import annotations

from werkzeug.wrappers import Request, Response

from rtbus.http.responses import json_response


def websocket_health(app, request: Request) -> Response:
    """``/websocket/health``: 200 ``{"status": "pass"}``; sets no session cookie.

    Behind nginx the ``/websocket`` location routes this to the process that
    serves websockets, so a probe checks that very process.
    """
    return json_response({"status": "pass"})
