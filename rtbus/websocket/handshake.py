"""The opening handshake (RFC 6455 §4.2), decided without I/O.

`check_request` validates an upgrade request in the order Odoo's bus does and says what
is wrong in a sentence; `response_headers` gives the headers of the 101 answer;
`is_outdated` tells whether a browser client runs another bus worker version.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping

from rtbus.errors import HandshakeError

# Value the browser worker sends as `/websocket?version=`. It must equal Odoo 19's
# `_VERSION` in addons/bus/websocket.py: a client with another value runs stale bus
# JavaScript and is told to reload (close 1000, reason "OUTDATED_VERSION").
WORKER_VERSION = "19.0-2"

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"   # RFC 6455 §1.3
SUPPORTED_VERSION = "13"
OUTDATED_VERSION_REASON = "OUTDATED_VERSION"

# Lower case, sorted: the order in which missing ones are named.
REQUIRED_HEADERS = ("connection", "host", "origin", "sec-websocket-key",
                    "sec-websocket-version", "upgrade")


def accept_key(key: str) -> str:
    """Return the Sec-WebSocket-Accept value answering the client's Sec-WebSocket-Key."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _lower_keys(headers: Mapping[str, str]) -> dict[str, str]:
    # Works for a dict as for werkzeug's EnvironHeaders; a repeated header keeps its
    # first value, as werkzeug's get() does.
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), value)
    return lowered


def check_request(method: str, headers: Mapping[str, str]) -> str:
    """Validate a WebSocket upgrade request and return its Sec-WebSocket-Key.

    `headers` is any mapping with an `items()` method; names are compared
    case-insensitively. Raises HandshakeError with:
      405 when the method is not GET;
      400 "Empty or missing header(s): ..." naming each required header absent or
          blank (Connection, Host, Origin, Sec-WebSocket-Key, Sec-WebSocket-Version,
          Upgrade), lower case and sorted;
      400 "Invalid upgrade header" unless Upgrade is "websocket";
      400 "Invalid connection header" unless Connection lists the "upgrade" token;
      426 with `Sec-WebSocket-Version: 13` for any other protocol version;
      400 when the key is not strict base64 of exactly 16 bytes.
    """
    if method.upper() != "GET":
        raise HandshakeError(405, f"A WebSocket handshake is a GET request, not {method}.",
                             [("Allow", "GET")])
    found = _lower_keys(headers)
    missing = [name for name in REQUIRED_HEADERS if not found.get(name, "").strip()]
    if missing:
        raise HandshakeError(400, "Empty or missing header(s): " + ", ".join(missing))
    if found["upgrade"].strip().lower() != "websocket":
        raise HandshakeError(400, "Invalid upgrade header")
    tokens = {token.strip().lower() for token in found["connection"].split(",")}
    if "upgrade" not in tokens:
        raise HandshakeError(400, "Invalid connection header")
    version = found["sec-websocket-version"].strip()
    if version != SUPPORTED_VERSION:
        raise HandshakeError(
            426, f"WebSocket protocol version {version} is not supported; use version 13.",
            [("Sec-WebSocket-Version", SUPPORTED_VERSION)])
    key = found["sec-websocket-key"].strip()
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):   # ValueError: non-ASCII characters
        raise HandshakeError(400, "Sec-WebSocket-Key should be b64 encoded") from None
    if len(decoded) != 16:
        raise HandshakeError(400, "Sec-WebSocket-Key should be of length 16 once decoded")
    return key


def response_headers(key: str, extensions: str | None = None) -> list[tuple[str, str]]:
    """Return the headers of the 101 Switching Protocols answer to `key`.

    `extensions` is the negotiated Sec-WebSocket-Extensions value (permessage-deflate's
    answer, see rtbus.websocket.deflate.negotiate), or None: then frames never carry RSV
    bits. No subprotocol is negotiated.
    """
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if extensions:
        headers.append(("Sec-WebSocket-Extensions", extensions))
    return headers


def response_head(key: str, extensions: str | None = None,
                  reason: str = "SWITCHING PROTOCOLS") -> bytes:
    """The whole 101 answer to `key`, status line to blank line, as one buffer. The
    default reason phrase is the one werkzeug writes, so every path sends the same bytes."""
    lines = [f"HTTP/1.1 101 {reason}",
             *(f"{name}: {value}" for name, value in response_headers(key, extensions))]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def is_outdated(version: str | None, user_agent: str | None) -> bool:
    """True when a browser-like client (it sends a User-Agent) runs another worker version.

    A missing `version` counts as different. Clients without a User-Agent (scripts,
    devices) are never outdated: they do not run Odoo's JavaScript worker. The caller
    opens such a connection and closes it at once with 1000 OUTDATED_VERSION_REASON.
    """
    return bool(user_agent) and version != WORKER_VERSION
