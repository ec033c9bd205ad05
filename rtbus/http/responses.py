"""Response helpers shared by every route: JSON bodies encoded with orjson."""

from __future__ import annotations

import orjson
from werkzeug.wrappers import Response

JSON_TYPE = "application/json"


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON response that is never cached by a proxy or the browser."""
    response = Response(orjson.dumps(data), status=status, mimetype=JSON_TYPE, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    """A JSON error body ``{"error": {"status": ..., "message": ...}}``."""
    return json_response({"error": {"status": status, "message": message}}, status, headers)
