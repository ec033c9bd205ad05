"""A tiny HTTP client for tests: one request per connection, bounded by a timeout."""

from __future__ import annotations

import http.client
import json

import orjson


def post_json(port: int, path: str, body, headers: dict | None = None, timeout: float = 10.0):
    """POST `body` (JSON-encoded unless bytes) and return (status, headers, decoded JSON or None)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, dict(response.getheaders()), (json.loads(raw) if raw else None)
    except (ConnectionError, http.client.HTTPException, TimeoutError) as exc:
        return 0, {}, {"transport_error": str(exc)}
    finally:
        conn.close()
