"""Bus channels: anchoring to a database, and their compact JSON text.

A channel names who a notification is for. Applications speak of channels in
three shapes, and the bus stores them anchored to the database name so that one
`bus_bus` stream per cluster can never leak across databases:

    "broadcast"                        -> ["mydb", "broadcast"]
    ("res.partner", 7)                 -> ["mydb", "res.partner", 7]
    ("res.partner", 7, "presence")     -> ["mydb", "res.partner", 7, "presence"]

The `channel` column of `bus_bus`, the NOTIFY payloads and the dispatcher's
subscription keys all use the *encoded* form: the compact JSON text of the
anchored list (`["mydb","res.partner",7]`), compared as exact strings, as Odoo
does. Non-ASCII characters are written as UTF-8, not escaped, which is also what
PostgreSQL's JSON output does (so the SQL publishing function matches byte for byte).

Anchored and unanchored shapes never overlap: an anchored list has a string in
second position followed by an integer (or nothing), an unanchored record channel
has an integer in second position.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from rtbus.errors import InvalidChannel

# Bounded so that one channel always fits in a NOTIFY payload (8000 bytes by
# default) with plenty of room, and so that a client cannot grow our channel maps
# with megabyte-long keys.
MAX_ENCODED_CHANNEL_BYTES = 1024


def _is_int(value) -> bool:
    # bool is an int subclass; True is not a record id.
    return isinstance(value, int) and not isinstance(value, bool)


def _anchored_shape(value: Sequence) -> bool:
    """True when `value` looks like [db, name] / [db, model, id] / [db, model, id, sub]."""
    n = len(value)
    if n < 2 or n > 4 or not all(isinstance(v, str) for v in value[:2]):
        return False
    if n >= 3 and not _is_int(value[2]):
        return False
    return n < 4 or isinstance(value[3], str)


def _record_shape(value: Sequence) -> bool:
    """True when `value` looks like (model, id) or (model, id, subchannel)."""
    n = len(value)
    return (
        n in (2, 3)
        and isinstance(value[0], str)
        and _is_int(value[1])
        and (n == 2 or isinstance(value[2], str))
    )


def channel_with_db(db: str, channel) -> list:
    """Return `channel` anchored to database `db`, as a new list.

    Accepts a string, a `(model, id)` or `(model, id, subchannel)` tuple or list,
    or an already-anchored list (returned as a copy). Raises InvalidChannel for any
    other shape, for an anchored channel naming another database, or when the
    encoded result exceeds MAX_ENCODED_CHANNEL_BYTES.
    """
    if isinstance(channel, str):
        anchored = [db, channel]
    elif isinstance(channel, (list, tuple)):
        if _record_shape(channel):
            anchored = [db, *channel]
        elif _anchored_shape(channel):
            if channel[0] != db:
                raise InvalidChannel(
                    f"channel {list(channel)!r} is anchored to database {channel[0]!r}, "
                    f"not {db!r}")
            anchored = list(channel)
        else:
            raise InvalidChannel(f"unknown channel shape {channel!r}")
    else:
        raise InvalidChannel(f"a channel is a string or a (model, id[, subchannel]) tuple, "
                             f"not {type(channel).__name__}")
    _check_length(encode_channel(anchored))
    return anchored


def encode_channel(anchored: Sequence) -> str:
    """Return the compact JSON text of an anchored channel, e.g. `["mydb","broadcast"]`."""
    return orjson.dumps(list(anchored)).decode("utf-8")


def encode(db: str, channel) -> str:
    """Anchor `channel` to `db` and encode it: the text stored in `bus_bus.channel`."""
    return encode_channel(channel_with_db(db, channel))


def decode(text: str | bytes) -> list:
    """Parse an encoded channel and check it is anchored.

    Raises InvalidChannel when the text is too long, not JSON, or not an anchored shape.
    """
    _check_length(text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidChannel(f"channel is not JSON: {text!r:.80}") from exc
    if not isinstance(value, list) or not _anchored_shape(value):
        raise InvalidChannel(f"not an anchored channel: {text!r:.80}")
    return value


def database_of(text: str) -> str:
    """Return the database an encoded channel is anchored to (raises InvalidChannel)."""
    return decode(text)[0]


def canonical(text: str | bytes) -> str:
    """Re-encode an anchored channel written by someone else (maybe with spaces) compactly."""
    return encode_channel(decode(text))


def _check_length(encoded: str | bytes) -> None:
    size = len(encoded.encode("utf-8")) if isinstance(encoded, str) else len(encoded)
    if size > MAX_ENCODED_CHANNEL_BYTES:
        raise InvalidChannel(
            f"channel is {size} bytes encoded, more than the {MAX_ENCODED_CHANNEL_BYTES} allowed")
