"""WebSocket close status codes (RFC 6455 §7.4), with the names Odoo's bus uses.

A module of its own, importing nothing, so that `rtbus.errors` can name the close code
each error becomes without importing the codec."""

from __future__ import annotations

import enum


class CloseCode(enum.IntEnum):
    """Close status codes, with the names Odoo's bus uses for them."""

    CLEAN = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INCORRECT_DATA = 1003
    ABNORMAL_CLOSURE = 1006      # local meaning only: drop the TCP connection, no close frame
    INCONSISTENT_DATA = 1007
    MESSAGE_VIOLATING_POLICY = 1008
    MESSAGE_TOO_BIG = 1009
    EXTENSION_NEGOTIATION_FAILED = 1010
    SERVER_ERROR = 1011
    RESTART = 1012
    TRY_LATER = 1013
    BAD_GATEWAY = 1014
    SESSION_EXPIRED = 4001
    KEEP_ALIVE_TIMEOUT = 4002
    KILL_NOW = 4003
