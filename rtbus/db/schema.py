"""The versioned schema of a served database, and creating that database when missing.

Migrations are the files `rtbus/db/migrations/NNNN_name.sql`, numbered 1, 2, 3... with
no gap. `upgrade()` applies the missing ones in a single transaction, serialised across
processes by an advisory lock, and records each in `rtbus_schema`. A migration file must
not contain its own BEGIN/COMMIT, and should be idempotent where it can (IF NOT EXISTS),
so an existing Odoo database is adopted rather than broken.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import logging
import re
from collections.abc import Mapping, Sequence

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rtbus.db import connect
from rtbus.errors import SchemaError

_logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key held while upgrading ("rtbus_sc" in ASCII); any constant
# works as long as every rtbus version uses the same one.
UPGRADE_LOCK_KEY = 0x72746275735F7363

MAINTENANCE_DATABASES = ("postgres", "template1")

_MIGRATION_FILE = re.compile(r"(\d{4})_(\w+)\.sql")

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS rtbus_schema (
    version integer PRIMARY KEY,
    description text,
    applied_at timestamp DEFAULT (now() at time zone 'utc')
)
"""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One schema step: `version` (1, 2...), a short `description`, and the SQL to run."""

    version: int
    description: str
    sql: str


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """The migrations shipped with this rtbus, in order. Raises SchemaError on a gap or duplicate."""
    found = []
    for item in (importlib.resources.files("rtbus.db") / "migrations").iterdir():
        match = _MIGRATION_FILE.fullmatch(item.name)
        if match:
            found.append(Migration(int(match[1]), match[2].replace("_", " "),
                                   item.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise SchemaError(f"rtbus/db/migrations is inconsistent: versions {versions} should be 1..{len(found)}.")
    return tuple(found)


def latest_version() -> int:
    """The schema version this code expects (the highest migration number)."""
    return migrations()[-1].version


def current_version(conn) -> int:
    """The schema version recorded in the database `conn` is connected to; 0 if never initialised.

    Runs in the caller's transaction; if the connection was idle, it is left idle.
    """
    was_idle = conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('rtbus_schema') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT coalesce(max(version), 0) FROM rtbus_schema")
            return cur.fetchone()[0]
    finally:
        if was_idle and not conn.autocommit:
            conn.rollback()


def upgrade(conn, *, available: Sequence[Migration] | None = None) -> tuple[int, int]:
    """Apply the migrations the database lacks, in one transaction, and commit.

    `conn` must not be inside a transaction. `available` defaults to `migrations()`
    (tests pass their own). Concurrent callers are serialised by an advisory lock; the
    later ones find nothing left to do. Returns (old_version, new_version).
    Raises SchemaError if the database is newer than the code; a failing migration
    rolls everything back and raises SchemaError naming it.
    """
    available = migrations() if available is None else tuple(available)
    latest = available[-1].version if available else 0
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise SchemaError("upgrade() needs a connection outside any transaction.")
    with connect.own_transactions(conn):
        with conn.cursor() as cur:
            # READ COMMITTED whatever the connection's default: each statement after the
            # lock must see what a concurrent upgrader committed before releasing it.
            cur.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (UPGRADE_LOCK_KEY,))
            cur.execute(_CREATE_VERSION_TABLE)
            cur.execute("SELECT coalesce(max(version), 0) FROM rtbus_schema")
            old = cur.fetchone()[0]
            if old > latest:
                raise SchemaError(
                    f"database {conn.info.dbname} has schema version {old}, newer than this "
                    f"rtbus knows ({latest}): upgrade rtbus or use another database.")
            for migration in available:
                if migration.version > old:
                    _apply(cur, migration, conn.info.dbname)
        conn.commit()
    return old, max(old, latest)


def _apply(cur, migration: Migration, dbname: str) -> None:
    try:
        cur.execute(migration.sql)
    except psycopg2.Error as exc:
        raise SchemaError(f"migration {migration.version:04d} ({migration.description}) failed "
                          f"on database {dbname}: {str(exc).strip()}") from exc
    cur.execute("INSERT INTO rtbus_schema (version, description) VALUES (%s, %s)",
                (migration.version, migration.description))


def ensure_database(target, dbname: str) -> bool:
    """Create database `dbname` unless it exists; return True if this call created it.

    `target` is a Config or a dict of psycopg2 connect arguments (its dbname is ignored).
    Works from the `postgres` maintenance database, or `template1` when that is missing.
    A concurrent creator winning the race is not an error. Raises SchemaError when
    the role may not create databases, psycopg2.OperationalError when the server
    cannot be reached.
    """
    conn = _connect_maintenance(target)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                            .format(sql.Identifier(dbname)))
            except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                return False  # someone else created it between our check and our CREATE
            except psycopg2.errors.InsufficientPrivilege as exc:
                raise SchemaError(f"database {dbname} does not exist and role {conn.info.user} may "
                                  "not create it: create it, or grant the role CREATEDB.") from exc
    finally:
        conn.close()
    _logger.info("created database %s", dbname)
    return True


def _connect_maintenance(target):
    last_error = None
    for maintenance in MAINTENANCE_DATABASES:
        if isinstance(target, Mapping):
            kwargs = {**target, "dbname": maintenance}
        else:
            kwargs = connect.connect_kwargs(target, dbname=maintenance, application_name="rtbus-schema")
        try:
            return psycopg2.connect(**kwargs)
        except psycopg2.OperationalError as exc:
            if f'database "{maintenance}" does not exist' not in str(exc):
                raise
            last_error = exc
    raise SchemaError("neither the postgres nor the template1 database exists on the server, so "
                      "rtbus cannot create databases there.") from last_error


def prepare(config, *, dbname: str) -> tuple[int, int]:
    """Create `dbname` if needed and bring its schema up to date; return (old, new) versions."""
    ensure_database(config, dbname)
    conn = psycopg2.connect(**connect.connect_kwargs(config, dbname=dbname, application_name="rtbus-schema"))
    try:
        old, new = upgrade(conn)
    finally:
        conn.close()
    if old != new:
        _logger.info("schema of %s upgraded from %d to %d", dbname, old, new)
    else:
        _logger.debug("schema of %s is up to date (version %d)", dbname, new)
    return old, new
