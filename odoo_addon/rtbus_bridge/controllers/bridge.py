"""The routes rtbus's authorization proxy calls (``auth_proxy_url = <odoo>/rtbus_bridge``).

``POST /rtbus_bridge/subscribe`` arrives with the browser's ``session_id`` cookie, so
Odoo's own HTTP layer loads and checks the session (ir.http._authenticate_explicit)
and this route runs as that user, or as the public user. It then runs the subscribe
preparation of ``ir.websocket`` exactly as Odoo's websocket does for a ``subscribe``
event (``_prepare_subscribe_data``, whose ``_build_bus_channel_list`` every module
overrides, then ``_after_subscribe_data``), and answers the channels in rtbus's shape.

``POST /rtbus_bridge/events`` receives rtbus's batches of presence updates and closes,
and hands each to ``ir.websocket`` as the session's user, as Odoo's websocket would.

Both refuse (403) a request without a valid signature under the shared secret
(``rtbus_bridge_secret`` in the Odoo configuration file, else the system parameter
``rtbus_bridge.secret``), the value of rtbus's ``auth_proxy_secret``.
"""

import json
import logging

from werkzeug.exceptions import BadRequest, Forbidden

from odoo import http
from odoo.http import request
from odoo.service import security
from odoo.tools import config

from .. import protocol

_logger = logging.getLogger(__name__)

MAX_EVENTS = 5000            # per batch; rtbus sends at most 500

try:                          # mail's guests (livechat visitors, invited guests)
    from odoo.addons.mail.tools.discuss import add_guest_to_context
except ImportError:           # bus without mail: there are no guests
    def add_guest_to_context(func):
        return func


@add_guest_to_context
def _prepare(websocket, channels):
    """Odoo's subscribe preparation for the request's user (and guest, with mail)."""
    data = websocket._prepare_subscribe_data(channels, 0)
    try:
        websocket._after_subscribe_data(data)
    except Exception:     # as in a websocket subscribe: the subscription stands
        _logger.exception("rtbus_bridge: _after_subscribe_data failed")
    return data


class RtbusBridge(http.Controller):

    @http.route("/rtbus_bridge/subscribe", type="http", auth="public", methods=["POST"],
                csrf=False, save_session=False)
    def subscribe(self):
        body = self._signed_body()
        if body.get("db") != request.db:
            return request.make_json_response(
                {"error": f"this Odoo serves {request.db}, not {body.get('db')}"}, status=421)
        channels = body.get("channels")
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise BadRequest("channels must be a list of strings")
        if self._session_ended():
            return request.make_json_response({"valid": False})
        data = _prepare(request.env["ir.websocket"], list(channels))
        granted = []
        for channel in data["channels"]:
            shape = protocol.unanchored(channel)
            if shape is None:
                _logger.warning("rtbus_bridge: channel %r has no shape rtbus knows; not granted",
                                channel)
                continue
            granted.extend(shape)
        user = request.env.user
        public = user._is_public()
        return request.make_json_response({
            "valid": True,
            "uid": None if public else user.id,
            "partner_id": None if public else user.partner_id.id,
            "channels": granted,
        })

    @http.route("/rtbus_bridge/events", type="http", auth="public", methods=["POST"],
                csrf=False, save_session=False)
    def events(self):
        body = self._signed_body()
        events = body.get("events")
        if not isinstance(events, list):
            raise BadRequest("events must be a list")
        applied = 0
        for event in events[:MAX_EVENTS]:
            try:
                with request.env.cr.savepoint():
                    applied += bool(self._apply(event))
            except Exception:
                _logger.exception("rtbus_bridge: event %s failed", event.get("type"))
        return request.make_json_response({"applied": applied})

    # -- helpers ---------------------------------------------------------------------

    def _signed_body(self):
        secret = (config.get("rtbus_bridge_secret")
                  or request.env["ir.config_parameter"].sudo().get_param("rtbus_bridge.secret"))
        data = request.httprequest.get_data(cache=True)
        headers = request.httprequest.headers
        if not protocol.is_signed(secret.encode() if secret else b"",
                                  headers.get(protocol.TIMESTAMP_HEADER),
                                  headers.get(protocol.SIGNATURE_HEADER), data):
            raise Forbidden("rtbus_bridge: missing or invalid signature")
        try:
            body = json.loads(data)
        except ValueError:
            raise BadRequest("rtbus_bridge: the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("rtbus_bridge: the body is not a JSON object")
        return body

    def _session_ended(self):
        """Whether the cookie names a session that is over: nothing stored under it
        (logged out and rotated away, garbage-collected), or a stored user that
        ir.http just logged out because the session no longer checks (password
        changed, deleted by a rotation). Odoo's websocket closes 4001 in both cases."""
        sid = request.httprequest.cookies.get("session_id")
        if not sid:
            return False
        stored = self._stored_session(sid)
        if stored is None or not len(stored):
            return True
        return bool(stored.get("uid")) and not request.session.uid

    def _stored_session(self, sid):
        store = http.root.session_store
        if not store.is_valid_key(sid):
            return None
        return store.get(sid)

    def _guest(self, cookies):
        """The mail.guest whose token the forwarded cookies carry (mail installed), or None."""
        if "mail.guest" not in request.env:
            return None
        guests = request.env["mail.guest"]
        return guests._get_guest_from_token(cookies.get(guests._cookie_name, "")) or None

    def _apply(self, event):
        """Hand one forwarded event to ir.websocket as its session's user (a guest's
        close, known by its forwarded cookie, as the public user)."""
        if event.get("db") != request.db:
            return False
        cookies = event.get("cookies") if isinstance(event.get("cookies"), dict) else {}
        uid = None
        if isinstance(event.get("sid"), str):
            stored = self._stored_session(event["sid"])
            uid = stored.get("uid") if stored is not None else None
            if uid and not security.check_session(stored, request.env(user=uid)):
                return False       # ended meanwhile: nothing to update for it
        websocket = request.env["ir.websocket"]
        if uid:
            websocket = websocket.with_user(uid)
        if event.get("type") == "update_presence":
            if not uid:
                guest = self._guest(cookies)
                if not guest:
                    return False
                # mail reads the guest from the context (this request has no guest cookie)
                websocket = websocket.with_context(guest=guest)
            websocket._serve_ir_websocket(
                "update_presence", {"inactivity_period": event.get("inactivity_period", 0)})
            return True
        if event.get("type") == "closed" and (uid or cookies):
            websocket._on_websocket_closed(cookies)
            return True
        return False
