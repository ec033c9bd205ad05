"""Garbage collection of bus_bus: delete what is older than the retention, in batches.

Run by the cron worker, never in a request (a large DELETE holds locks for long, which
is why Odoo moved its bus GC out of the request path). Each batch is its own
transaction, so a big backlog never becomes one long lock-holding statement.
"""

from __future__ import annotations

import datetime
import logging
import time

import psycopg2.extensions

from rtbus.db.connect import own_transactions

_logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_MAX_BATCHES = 100

_DELETE_BATCH = """
DELETE FROM bus_bus WHERE id IN (
    SELECT id FROM bus_bus
     WHERE create_date < (now() at time zone 'utc') - %(retention)s * interval '1 second'
     ORDER BY id LIMIT %(batch)s
     FOR UPDATE SKIP LOCKED)
"""

# The epochs of the bus stream are kept as long as the rows (the resume horizon),
# the newest always: it is where every dispatcher's next read starts.
_DELETE_EPOCHS = """
DELETE FROM rtbus_bus_stream
 WHERE create_date < (now() at time zone 'utc') - %(retention)s * interval '1 second'
   AND epoch < (SELECT max(epoch) FROM rtbus_bus_stream)
"""
_DELETE_LATE = "DELETE FROM rtbus_bus_late WHERE epoch < (SELECT min(epoch) FROM rtbus_bus_stream)"

_RECORD_RUN = """
INSERT INTO rtbus_bus_gc (id, last_run, deleted_rows)
VALUES (1, now() at time zone 'utc', %(deleted)s)
ON CONFLICT (id) DO UPDATE SET last_run = EXCLUDED.last_run, deleted_rows = EXCLUDED.deleted_rows
"""


def collect_garbage(conn, retention_seconds: float, batch_size: int = DEFAULT_BATCH_SIZE,
                    max_batches: int = DEFAULT_MAX_BATCHES) -> int:
    """Delete bus_bus rows created more than `retention_seconds` ago; return how many.

    Deletes at most `batch_size` rows per transaction (committed each) and at most
    `max_batches` batches per call; a caller finding `batch_size * max_batches` rows
    deleted should run again soon. The bus stream's epochs older than the retention go
    too (all but the newest), and with them the exact resume of older `last` ids. Records the run in rtbus_bus_gc (see last_run()).
    `conn` must not be inside a transaction; it is left idle. Raises psycopg2 errors.
    """
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise RuntimeError("collect_garbage() commits per batch: the connection is in a transaction")
    started = time.monotonic()
    deleted = 0
    with own_transactions(conn):
        for _ in range(max_batches):
            with conn.cursor() as cur:
                cur.execute(_DELETE_BATCH, {"retention": retention_seconds, "batch": batch_size})
                count = cur.rowcount
            conn.commit()
            deleted += count
            if count < batch_size:
                break
        with conn.cursor() as cur:
            cur.execute(_DELETE_EPOCHS, {"retention": retention_seconds})
            cur.execute(_DELETE_LATE)
        conn.commit()
        with conn.cursor() as cur:
            cur.execute(_RECORD_RUN, {"deleted": deleted})
        conn.commit()
    _logger.info("bus GC deleted %d row(s) older than %.0f s from %s in %.2f s",
                deleted, retention_seconds, conn.info.dbname, time.monotonic() - started)
    return deleted


def last_run(conn) -> tuple[datetime.datetime, int] | None:
    """(UTC time of the last GC run, rows it deleted), or None if it never ran."""
    with conn.cursor() as cur:
        cur.execute("SELECT last_run, deleted_rows FROM rtbus_bus_gc WHERE id = 1")
        row = cur.fetchone()
    if not conn.autocommit:
        conn.rollback()
    return (row[0], row[1]) if row else None
