"""Health routes: cheap, sessionless, never cached."""

from __future__ import annotations

import logging

import psycopg2
from werkzeug.wrappers import Request, Response

from rtbus.errors import PoolError
from rtbus.http.responses import json_response

_logger = logging.getLogger(__name__)

DB_CHECK_TIMEOUT = 1.0    # seconds to wait for a pooled connection


def websocket_health(app, request: Request) -> Response:
    """``/websocket/health``: 200 ``{"status": "pass"}``; sets no session cookie.

    Behind nginx the ``/websocket`` location routes this to the process that
    serves websockets, so a probe checks that very process. With
    ``?db_server_status=1`` it also runs ``SELECT 1`` on the first served database
    through the pool: ``"db_server_status": true``, or 503 with ``"status": "fail"``
    and ``"db_server_status": false`` when PostgreSQL (or a pooled connection) is
    out of reach.
    """
    if not _wanted(request.args.get("db_server_status")):
        return json_response({"status": "pass"})
    if _database_answers(app):
        return json_response({"status": "pass", "db_server_status": True})
    return json_response({"status": "fail", "db_server_status": False}, 503)


def _wanted(flag: str | None) -> bool:
    return flag is not None and flag.strip().lower() not in ("", "0", "false", "no", "off")


def _database_answers(app) -> bool:
    try:
        with app.pool.connection(app.databases[0], timeout=DB_CHECK_TIMEOUT) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
            conn.rollback()
    except (PoolError, psycopg2.Error) as exc:
        _logger.warning("health check: database %s does not answer: %s",
                        app.databases[0], str(exc).strip())
        return False
    return True
