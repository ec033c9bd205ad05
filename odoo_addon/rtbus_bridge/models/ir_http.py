"""Logouts reach rtbus: every Odoo logout (the logout route, a session that no longer
checks, a destroyed session) runs ir.http._post_logout, which here sends
``NOTIFY rtbus_session, '<first 16 characters of the sid>'`` in this database. rtbus
LISTENs there and closes the session's websockets with 4001 at once."""

import logging

from odoo import models
from odoo.http import request

from .. import protocol

_logger = logging.getLogger(__name__)


class IrHttp(models.AbstractModel):
    _inherit = "ir.http"

    @classmethod
    def _post_logout(cls):
        super()._post_logout()
        sid = getattr(request.session, "sid", None) if request else None
        if not sid:
            return
        # A cursor of its own, committed at once: the logout route is read-only, and
        # the NOTIFY must not wait for (or die with) the request's transaction.
        try:
            with request.env.registry.cursor() as cr:
                cr.execute("SELECT pg_notify(%s, %s)",
                           (protocol.NOTIFY_CHANNEL, protocol.sid_prefix(sid)))
        except Exception:
            _logger.exception("rtbus_bridge: could not signal a logout to rtbus; its sockets "
                              "close when rtbus next re-checks the session")
