"""``/static/<file>``: the browser client and the demo page's assets, from ``rtbus/static/``.

Every process serves them, so the shared worker script always comes from the
page's own origin (a SharedWorker must be same-origin with the page that starts
it). The files are read once per process and kept in memory: they are few and
small, and they only change with an upgrade, which restarts the processes.

Caching: every file has a strong ETag, the start of its SHA-256. A URL carrying
``?v=<that tag>`` (the page writes its asset URLs that way) is immutable and cached
for a year; any other URL must be revalidated (``no-cache``), which costs a 304.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from werkzeug.security import safe_join
from werkzeug.wrappers import Request, Response

from rtbus.http.responses import error_response

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


@dataclasses.dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    version: str     # the ETag's value, and the `v` that makes a URL immutable


class StaticFiles:
    """The files of one directory, loaded on first use and kept for the process's life."""

    def __init__(self, directory: str = STATIC_DIR):
        self.directory = directory
        self._files: dict[str, StaticFile] = {}

    def get(self, name: str) -> StaticFile | None:
        """The file `name` (relative, '/'-separated), or None when it does not exist or
        is outside the directory or of a type not served."""
        found = self._files.get(name)
        if found is None:
            # Misses are not remembered: clients choose the names, and must not grow this dict.
            found = self._load(name)
            if found is not None:
                self._files[name] = found
        return found

    def version(self, name: str) -> str:
        """The cache-busting version of `name`; raises LookupError when it is missing."""
        found = self.get(name)
        if found is None:
            raise LookupError(f"static file {name!r} is missing from {self.directory}")
        return found.version

    def url(self, name: str) -> str:
        """The immutable URL of `name`: ``/static/<name>?v=<version>``."""
        return f"/static/{name}?v={self.version(name)}"

    def _load(self, name: str) -> StaticFile | None:
        content_type = CONTENT_TYPES.get(os.path.splitext(name)[1].lower())
        path = safe_join(self.directory, name)
        if content_type is None or path is None or not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            body = f.read()
        return StaticFile(body, content_type, hashlib.sha256(body).hexdigest()[:16])


def respond(request: Request, found: StaticFile) -> Response:
    """Answer `request` with `found`: 304 when the browser's copy is current."""
    headers = {
        "ETag": f'"{found.version}"',
        "Cache-Control": IMMUTABLE if request.args.get("v") == found.version else REVALIDATE,
        "X-Content-Type-Options": "nosniff",
    }
    if found.version in request.if_none_match:
        return Response(status=304, headers=headers)
    # werkzeug drops the body of a HEAD answer and keeps its Content-Length.
    return Response(found.body, headers=headers, content_type=found.content_type)


def static(app, request: Request, filename: str) -> Response:
    """``GET /static/<filename>``."""
    found = app.static_files.get(filename)
    if found is None:
        return error_response(404, f"no static file {filename!r}")
    return respond(request, found)
