"""Health routes: cheap, sessionless, never cached."""

from __future__ import annotations

import logging
import time

import psycopg2
from werkzeug.wrappers import Request, Response

from rtbus.errors import PoolError
from rtbus.http.responses import json_response

_logger = logging.getLogger(__name__)

DB_CHECK_TIMEOUT = 1.0    # seconds to wait for a pooled connection
STALE_SNAPSHOTS = 3       # a worker silent for this many snapshot intervals fails ?workers=1


def websocket_health(app, request: Request) -> Response:
    """``/websocket/health``: 200 ``{"status": "pass"}``; sets no session cookie.

    Behind nginx the ``/websocket`` location routes this to the process that
    serves websockets, so a probe checks that very process. With
    ``?db_server_status=1`` it also runs ``SELECT 1`` on the first served database
    through the pool: ``"db_server_status": true``, or 503 with ``"status": "fail"``
    and ``"db_server_status": false`` when PostgreSQL (or a pooled connection) is
    out of reach.

    With ``?workers=1`` it answers for the whole server, whichever gevent worker the
    probe lands on: from the metrics snapshots of the runtime directory, the evented
    processes up (``"workers"``: number, pid, websockets, long-polls, seconds since its
    last snapshot) and the totals (``"websockets"``, ``"longpolls"``); 503 with
    ``"status": "fail"`` when fewer than ``gevent_workers`` are up or one has not
    written its snapshot for three intervals (its event loop is stuck).
    """
    if _wanted(request.args.get("workers")):
        return _whole_server(app)
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


def _whole_server(app) -> Response:
    from rtbus.metrics import snapshots
    from rtbus.service.kinds import gevent_worker_count

    writer = app.snapshots
    if writer is None:
        return json_response({"status": "fail", "reason": "no runtime directory to read"}, 503)
    writer.write()
    now = time.time()
    workers = []
    for snapshot in snapshots.read_all(writer.directory):
        if snapshot.get("kind") not in ("gevent", "single"):
            continue
        figures = snapshot["metrics"]
        workers.append({"worker": snapshot.get("worker", 0), "pid": snapshot.get("pid"),
                        "websockets": figures.get("rtbus_websockets_open", 0),
                        "longpolls": figures.get("rtbus_longpolls_open", 0),
                        "snapshot_age": round(now - snapshot.get("written", 0), 1)})
    wanted = gevent_worker_count(app.config) if app.config.workers > 0 else 1
    stale = [w for w in workers if w["snapshot_age"] > STALE_SNAPSHOTS * writer.interval]
    ok = len(workers) >= wanted and not stale
    body = {"status": "pass" if ok else "fail", "workers_wanted": wanted,
            "workers": sorted(workers, key=lambda w: w["worker"]),
            "websockets": sum(w["websockets"] for w in workers),
            "longpolls": sum(w["longpolls"] for w in workers)}
    return json_response(body, 200 if ok else 503)
