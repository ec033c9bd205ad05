"""Request bodies read with their size bounded while they are read, chunked ones included.

A declared ``Content-Length`` above the limit is refused before a byte of the body is
read. A chunked body (no length) is read one buffer at a time and refused as soon as it
passes the limit, so a 64 MiB chunked POST costs at most the limit plus one buffer of
memory, never the whole body.
"""

from __future__ import annotations

from werkzeug.wrappers import Request

from rtbus.errors import RequestTooLarge

BUFFER = 64 * 1024


def read_body(request: Request, limit: int) -> bytes:
    """The body of `request`, at most `limit` bytes; RequestTooLarge beyond.

    Reads at most ``limit + 1`` bytes, `BUFFER` at a time. The stream is werkzeug's:
    bounded by Content-Length when there is one, ended by the server's de-chunking
    otherwise, empty when the request has neither.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise RequestTooLarge(f"request body of {declared} bytes is larger than the {limit} bytes "
                              f"this server accepts")
    stream = request.stream
    body = bytearray()
    while True:
        data = stream.read(min(BUFFER, limit + 1 - len(body)))
        if not data:
            return bytes(body)
        body += data
        if len(body) > limit:
            raise RequestTooLarge(f"request body larger than the {limit} bytes this server accepts")
