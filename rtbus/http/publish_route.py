"""``/bus/publish``: the JSON-RPC route through which services that only speak HTTP publish.

Refused unless the request carries the configured ``bus_api_key`` as
``Authorization: Bearer <key>`` (or ``X-Rtbus-Api-Key: <key>``); when no key is
configured, publishing over HTTP is disabled. Params: ``channel``, ``type``,
``payload`` for one notification, or ``notifications`` (a list of
``[channel, type, payload]``) for several in one transaction, and ``db``
(default: the first served database). A channel is a string (``"broadcast"``),
a record ``["res.partner", 7]`` or a record subchannel
``["res.partner", 7, "presence"]``. Result: ``{"ids": [...]}``.
"""

from __future__ import annotations

import hmac

from rtbus.bus.channels import InvalidChannel
from rtbus.http.jsonrpc import AccessDenied, InvalidParams, jsonrpc_route

MAX_NOTIFICATIONS = 1000


def _presented_key(request) -> str | None:
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-Rtbus-Api-Key") or None


def check_api_key(app, request) -> None:
    """Raise AccessDenied unless the request presents the configured API key."""
    expected = app.config.bus_api_key
    if not expected:
        raise AccessDenied("publishing over HTTP is disabled: bus_api_key is not set")
    presented = _presented_key(request)
    if presented is None:
        raise AccessDenied("an API key is required (Authorization: Bearer <bus_api_key>)",
                           http_status=401, headers={"WWW-Authenticate": 'Bearer realm="rtbus"'})
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        raise AccessDenied("wrong API key")


def _notifications(notifications, channel, notification_type, payload) -> list[tuple]:
    if notifications is None:
        if channel is None or notification_type is None:
            raise InvalidParams("give either notifications=[[channel, type, payload], ...] "
                                "or channel, type and payload")
        notifications = [[channel, notification_type, payload]]
    elif channel is not None or notification_type is not None:
        raise InvalidParams("give either notifications or channel/type/payload, not both")
    if not isinstance(notifications, list) or not notifications:
        raise InvalidParams("notifications must be a non-empty list of [channel, type, payload]")
    if len(notifications) > MAX_NOTIFICATIONS:
        raise InvalidParams(f"at most {MAX_NOTIFICATIONS} notifications per call")
    result = []
    for item in notifications:
        if not isinstance(item, list) or len(item) != 3:
            raise InvalidParams(f"each notification is [channel, type, payload], got {item!r:.80}")
        if not isinstance(item[1], str) or not item[1]:
            raise InvalidParams("a notification type is a non-empty string")
        result.append(tuple(item))
    return result


@jsonrpc_route(authorize=check_api_key)
def bus_publish(app, request, *, channel=None, type=None, payload=None, notifications=None, db=None):
    dbname = app.database(db)
    batch = _notifications(notifications, channel, type, payload)
    try:
        ids = app.publisher.publish(app.pool, dbname, batch)
    except (InvalidChannel, TypeError) as exc:
        raise InvalidParams(str(exc)) from None
    return {"ids": ids}
