"""The client → server event protocol carried in websocket data messages (Odoo's).

Every data message is JSON ``{"event_name": <str>, "data": <any>}``, as TEXT or
BINARY. A single BINARY ``0x00`` byte is the browser worker's connection-check
probe and means nothing. The server never answers an event directly; it answers
through notifications.

`parse_event` turns a message into an event or raises `InvalidEvent` with a
sentence for the log; the connection stays open either way.
"""

from __future__ import annotations

import dataclasses

import orjson

from rtbus.errors import InvalidEvent

CONNECTION_CHECK_PROBE = b"\x00"


@dataclasses.dataclass(frozen=True)
class ClientEvent:
    name: str
    data: object


@dataclasses.dataclass(frozen=True)
class SubscribeRequest:
    """``subscribe``: the complete channel list the client wants, and its last seen id."""

    channels: object   # checked by rtbus.bus.authorization
    last: int


def is_probe(message: str | bytes) -> bool:
    return isinstance(message, bytes) and message == CONNECTION_CHECK_PROBE


def parse_event(message: str | bytes) -> ClientEvent:
    """Decode one client message into a ClientEvent; raise InvalidEvent."""
    try:
        decoded = orjson.loads(message)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"invalid JSON data: {exc}") from None
    if not isinstance(decoded, dict):
        raise InvalidEvent("an event is a JSON object {\"event_name\": ..., \"data\": ...}")
    if "event_name" not in decoded:
        raise InvalidEvent("key 'event_name' is missing from the request")
    name = decoded["event_name"]
    if not isinstance(name, str):
        raise InvalidEvent("'event_name' must be a string")
    return ClientEvent(name, decoded.get("data"))


def parse_subscribe(data: object) -> SubscribeRequest:
    """The data of a ``subscribe`` event; raise InvalidEvent when it is malformed."""
    if not isinstance(data, dict):
        raise InvalidEvent("subscribe data must be an object {\"channels\": [...], \"last\": <int>}")
    if "channels" not in data:
        raise InvalidEvent("subscribe data has no 'channels'")
    if "last" not in data:
        raise InvalidEvent("subscribe data has no 'last'")
    last = data["last"]
    if isinstance(last, bool) or not isinstance(last, int) or last < 0:
        raise InvalidEvent(f"'last' must be a non-negative integer, got {last!r:.40}")
    return SubscribeRequest(data["channels"], last)


def parse_inactivity(data: object) -> int:
    """The ``inactivity_period`` (milliseconds) of an ``update_presence`` event."""
    if not isinstance(data, dict) or "inactivity_period" not in data:
        raise InvalidEvent("update_presence data must be {\"inactivity_period\": <milliseconds>}")
    period = data["inactivity_period"]
    if isinstance(period, bool) or not isinstance(period, (int, float)) or period < 0:
        raise InvalidEvent(f"'inactivity_period' must be a non-negative number, got {period!r:.40}")
    return int(period)
