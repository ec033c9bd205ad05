"""NOTIFY payloads on the `imbus` channel: building them and sending them.

A NOTIFY payload is the compact JSON list of the encoded channels that received
notifications, e.g. `[["mydb","broadcast"],["mydb","res.partner",7]]`. Message
bodies never travel in NOTIFY (they are read from `bus_bus`), but a transaction that
notifies thousands of channels can still exceed PostgreSQL's payload limit (8000
bytes by default), so the list is halved until every part fits.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from psycopg2 import sql

_logger = logging.getLogger(__name__)

IMBUS = "imbus"
DEFAULT_MAX_LENGTH = 8000
DEFAULT_FUNCTION = "pg_notify"


def notify_payloads(channels: Sequence[str], max_length: int = DEFAULT_MAX_LENGTH) -> list[str]:
    """Return the NOTIFY payloads announcing `channels` (encoded channel strings).

    One payload when the whole list is shorter than `max_length` bytes (PostgreSQL
    rejects a payload of `max_length` bytes or more). Otherwise the list is split at
    ceil(n/2), recursively. A single channel is never split, even if it is too long
    for the limit (sending it then fails in PostgreSQL, loudly). Empty input gives [].
    """
    payloads = _split(list(channels), max_length)
    if len(payloads) > 1:
        _logger.info("imbus notification payload too large, split into %d payloads",
                    len(payloads))
    return payloads


def _split(channels: list[str], max_length: int) -> list[str]:
    if not channels:
        return []
    payload = "[" + ",".join(channels) + "]"
    if len(channels) == 1 or len(payload.encode("utf-8")) < max_length:
        return [payload]
    half = (len(channels) + 1) // 2
    return _split(channels[:half], max_length) + _split(channels[half:], max_length)


def function_identifier(function_name: str) -> sql.Composable:
    """Quote a notify function name, optionally schema-qualified (`myschema.my_notify`).

    Raises ValueError for an empty name or empty part.
    """
    parts = function_name.split(".")
    if not all(parts) or len(parts) > 2:
        raise ValueError(f"invalid notify function name {function_name!r}")
    return sql.Identifier(*parts)


def send_notify(cursor, payloads: Sequence[str], function_name: str = DEFAULT_FUNCTION) -> None:
    """Run `SELECT <function>('imbus', payload)` for each payload on `cursor`.

    PostgreSQL delivers the notifications when the cursor's transaction commits
    (immediately in autocommit); the caller owns the transaction.
    """
    if not payloads:
        return
    query = sql.SQL("SELECT {}(%s, %s)").format(function_identifier(function_name))
    for payload in payloads:
        cursor.execute(query, (IMBUS, payload))
