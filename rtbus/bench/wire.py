"""Client-side bytes of the bench, without sockets: the target address, the websocket
handshake and frames a client sends, HTTP/1.1 requests and responses, and the fast
scan of notification ids in what the server pushes.

The scan is a regular expression over the raw JSON, not a JSON decode: the bench
reads every notification of every client, and decoding each would make the client,
not the server, the bottleneck. It relies on the notification shape rtbus and Odoo
send (``{"id":N,"message":{"type":T,"payload":{"t":...`` with compact separators);
bench payloads put their publish time under the key ``t``, whose one-letter name
keeps it first even where PostgreSQL's jsonb reorders keys (by length).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import re
import urllib.parse
import zlib

import orjson

from rtbus.websocket.frames import Frame, Opcode, encode_close

NOTIFICATION_TYPE = "rtbus.bench"
MAX_HEAD_BYTES = 16384
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# id and publish time of each bench notification; foreign notifications do not match.
_NOTIFICATION_RE = re.compile(
    rb'"id":(\d+),"message":\{"type":"' + re.escape(NOTIFICATION_TYPE.encode())
    + rb'","payload":\{"t":([0-9.]+)')


class WireError(Exception):
    """The server answered something the bench cannot use; `kind` names it in reports."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Target:
    """A server base address: ``http://host:port[/prefix]`` (plain HTTP, no TLS)."""

    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> "Target":
        """Raise ValueError with a sentence for anything but an http:// URL with a port."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "ws"):
            raise ValueError(f"{url!r}: give an http:// (or ws://) address; TLS is not supported")
        if not parts.hostname:
            raise ValueError(f"{url!r} names no host")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"{url!r} has an invalid port") from None
        return cls(parts.hostname, port, parts.path.rstrip("/"))

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 80 else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"http://{self.netloc}"

    def __str__(self) -> str:
        return f"http://{self.netloc}{self.prefix}"


# -- websocket ----------------------------------------------------------------------


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def expected_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


# What Chromium offers.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


def handshake_request(target: Target, key: str, *, origin: str, cookie: str | None = None,
                      db: str | None = None, deflate: bool = False) -> bytes:
    """The upgrade request. No User-Agent, so the server's version check is skipped;
    `deflate` offers permessage-deflate."""
    path = target.prefix + "/websocket"
    if db:
        path += "?" + urllib.parse.urlencode({"db": db})
    lines = [f"GET {path} HTTP/1.1", f"Host: {target.netloc}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             f"Origin: {origin}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if deflate:
        lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def check_handshake(head: bytes, key: str) -> None:
    """Raise WireError unless `head` (the response up to the blank line) is a valid 101."""
    status_line, _, rest = head.partition(b"\r\n")
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[1].isdigit():
        raise WireError("bad-response", status_line[:80].decode("latin-1"))
    status = int(fields[1])
    if status != 101:
        raise WireError(f"http-{status}")
    accept = expected_accept(key).encode("ascii")
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip() != accept:
                raise WireError("bad-accept")
            return
    raise WireError("bad-accept", "no Sec-WebSocket-Accept header")


_FILLER_WORDS = ("the build passed on staging and the team deploys it now; review the invoice of "
                 "order for customer Azure Interior before Friday, then mark the task done and "
                 "notify the channel meeting moved to room with Marc Demo about quarterly sales "
                 "pipeline leads opportunity won lost call email reply attached report draft "
                 "approved rejected pending shipment delivery").split()


def filler_text(length: int) -> str:
    """`length` characters of words and numbers in a fixed pseudo-random order: padding that
    compresses about as much as real message text does (zlib level 1: about 2x at 1.5 KB),
    where a run of one letter would flatter permessage-deflate."""
    words, state, size = [], 12345, 0
    while size < length:
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        draw = state >> 8
        word = str(draw % 100000) if draw % 4 == 0 else _FILLER_WORDS[draw % len(_FILLER_WORDS)]
        words.append(word)
        size += len(word) + 1
    return " ".join(words)[:length]


def inflate(payload: bytes) -> bytes:
    """The payload of a compressed (RSV1) frame, inflated: permessage-deflate with no
    context takeover, as rtbus always answers."""
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


def subscribe_frame(channels: list[str], last: int) -> bytes:
    message = orjson.dumps({"event_name": "subscribe", "data": {"channels": channels, "last": last}})
    return Frame(True, Opcode.TEXT, message).serialize(mask=os.urandom(4))


def pong_frame(payload: bytes) -> bytes:
    return Frame(True, Opcode.PONG, payload).serialize(mask=os.urandom(4))


def close_frame(code: int) -> bytes:
    return Frame(True, Opcode.CLOSE, encode_close(code)).serialize(mask=os.urandom(4))


def scan_notifications(data: bytes, start: int = 0, end: int = -1) -> list[tuple[bytes, bytes]]:
    """(id, publish time) of every bench notification in `data[start:end]` (without
    copying it), as raw digits."""
    return _NOTIFICATION_RE.findall(data, start, len(data) if end < 0 else end)


# -- HTTP/1.1 ------------------------------------------------------------------------


def jsonrpc_request(target: Target, path: str, params: dict, *,
                    headers: dict[str, str] | None = None) -> bytes:
    """A keep-alive ``POST`` of a JSON-RPC 2.0 call to `target` + `path`."""
    body = orjson.dumps({"jsonrpc": "2.0", "method": "call", "params": params, "id": 1})
    lines = [f"POST {target.prefix}{path} HTTP/1.1", f"Host: {target.netloc}",
             "Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class HttpResponseReader:
    """Incremental parser of HTTP/1.1 responses on a keep-alive connection.

    `feed(data)` returns a complete `(status, keep_alive, body)` or None until more
    bytes arrive; bytes past the response stay buffered for the next one. Bodies are
    Content-Length or chunked; a response with neither is read to EOF (`eof()`).
    """

    def __init__(self, max_head: int = MAX_HEAD_BYTES):
        self.max_head = max_head
        self._buffer = bytearray()
        self._head: tuple[int, bool, int | None, bool] | None = None

    def feed(self, data: bytes) -> tuple[int, bool, bytes] | None:
        self._buffer += data
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > self.max_head:
                    raise WireError("bad-response", "response head too large")
                return None
            self._head = _parse_head(bytes(self._buffer[:end]))
            del self._buffer[:end + 4]
        status, keep_alive, length, chunked = self._head
        if chunked:
            body = self._dechunk()
        elif length is not None:
            body = None if len(self._buffer) < length else bytes(self._buffer[:length])
            if body is not None:
                del self._buffer[:length]
        else:
            return None
        if body is None:
            return None
        self._head = None
        return status, keep_alive, body

    def eof(self) -> tuple[int, bool, bytes] | None:
        """The response delimited by the end of the connection, if one was being read."""
        if self._head is None or self._head[2] is not None or self._head[3]:
            return None
        status = self._head[0]
        body = bytes(self._buffer)
        self._head, self._buffer = None, bytearray()
        return status, False, body

    def _dechunk(self) -> bytes | None:
        buffer, pos, parts = self._buffer, 0, []
        while True:
            line_end = buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buffer[pos:line_end]).split(b";")[0] or b"0", 16)
            if size == 0:
                trailer_end = buffer.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return None
                del buffer[:trailer_end + 4]
                return b"".join(parts)
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return None
            parts.append(bytes(buffer[start:start + size]))
            pos = start + size + 2


def _parse_head(head: bytes) -> tuple[int, bool, int | None, bool]:
    status_line, _, rest = head.partition(b"\r\n")
    fields = status_line.split(None, 2)
    if len(fields) < 2 or not fields[1].isdigit():
        raise WireError("bad-response", status_line[:80].decode("latin-1"))
    status = int(fields[1])
    keep_alive = fields[0] == b"HTTP/1.1"
    length, chunked = None, False
    for line in rest.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            keep_alive = b"close" not in value
    if status in (204, 304) or 100 <= status < 200:
        length = 0
    return status, keep_alive, length, chunked
