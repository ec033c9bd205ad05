"""The rtbus side of the bridge without Odoo: signatures, secrets, channel shapes.

Imports nothing from Odoo, so rtbus's own test suite checks it against rtbus's client
(the two ends of one contract, see rtbus/auth/__init__.py in the rtbus repository).
"""

import hashlib
import hmac
import time

TIMESTAMP_HEADER = "X-Rtbus-Timestamp"
SIGNATURE_HEADER = "X-Rtbus-Signature"
MAX_AGE = 300           # seconds a signed request stays acceptable (clock skew included)
NOTIFY_CHANNEL = "rtbus_session"
SID_PREFIX_LENGTH = 16  # what rtbus needs of a sid to find its sockets (never the whole sid)


def signature(secret, timestamp, body):
    """X-Rtbus-Signature of `body` (bytes) sent at `timestamp` (str) under `secret` (bytes)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def is_signed(secret, timestamp, sent, body, now=None):
    """Whether a request from rtbus carries a valid, recent signature."""
    if not secret or not timestamp or not sent:
        return False
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    if abs(age) > MAX_AGE:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), sent)


def unanchored(channel):
    """The JSON shape rtbus expects for one channel of Odoo's subscribe data, or None.

    Odoo's channels are strings, records (`res.partner(3,)`: ["res.partner", 3]) and
    (record, subchannel) pairs (["res.partner", 3, "presence"]), as bus.channel_with_db
    anchors them. A recordset of several records gives one channel per record.
    """
    if isinstance(channel, str):
        return [channel]
    if _is_records(channel):
        return [[channel._name, record_id] for record_id in channel.ids]
    if (isinstance(channel, tuple) and len(channel) == 2 and _is_records(channel[0])
            and isinstance(channel[1], str)):
        return [[channel[0]._name, record_id, channel[1]] for record_id in channel[0].ids]
    return None


def _is_records(value):
    return hasattr(value, "_name") and hasattr(value, "ids") and not isinstance(value, type)


def sid_prefix(sid):
    return sid[:SID_PREFIX_LENGTH]
