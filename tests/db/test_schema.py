"""Schema: versioned migrations, Odoo's bus_bus layout, concurrency, database creation."""

from __future__ import annotations

import logging
import threading

import psycopg2
import psycopg2.extensions
import pytest

import pgcluster
from rtbus.db import schema
from rtbus.db.schema import Migration
from rtbus.errors import SchemaError


@pytest.fixture
def conn(pg_cluster, fresh_db):
    connection = pg_cluster.connect(fresh_db)
    yield connection
    connection.close()


def fetchall(conn, query, args=()):
    with conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    conn.rollback()
    return rows


def columns(conn, table):
    return fetchall(conn, """
        SELECT column_name, data_type, column_default FROM information_schema.columns
        WHERE table_name = %s ORDER BY ordinal_position""", (table,))


def run_in_threads(*functions, timeout=20):
    results, errors = [None] * len(functions), []
    barrier = threading.Barrier(len(functions))

    def run(index, function):
        try:
            barrier.wait(5)
            results[index] = function()
        except Exception as exc:  # collected and re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in enumerate(functions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]
    return results


def test_shipped_migrations_are_numbered_from_one():
    found = schema.migrations()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].description == "bus" and "bus_bus" in found[0].sql
    assert schema.latest_version() == found[-1].version


def test_upgrade_creates_odoo_bus_layout(conn):
    assert schema.current_version(conn) == 0
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    latest = schema.latest_version()
    assert schema.upgrade(conn) == (0, latest)
    # PostgreSQL deparses the default as "(now() AT TIME ZONE 'utc'::text)" or, in older
    # releases, "timezone('utc'::text, now())": compare what it means.
    utc_now = "now() at time zone utc"
    found = [(name, kind, utc_now if default and "now()" in default and "'utc'" in default else default)
             for name, kind, default in columns(conn, "bus_bus")]
    assert found == [
        ("id", "integer", "nextval('bus_bus_id_seq'::regclass)"),
        ("channel", "character varying", None),
        ("message", "character varying", None),
        ("create_date", "timestamp without time zone", utc_now),
        ("create_uid", "integer", None),
        ("write_date", "timestamp without time zone", utc_now),
        ("write_uid", "integer", None),
        # Added by rtbus (migration 0006), filled by a trigger: Odoo's columns stay as they are.
        ("xact", "xid8", None),
    ]
    indexes = dict(fetchall(conn, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'bus_bus'"))
    assert indexes["bus_bus_create_date_index"].endswith("USING btree (create_date)")
    assert indexes["bus_bus_channel_id_index"].endswith("USING btree (channel, id)")
    assert indexes["bus_bus_pkey"].endswith("USING btree (id)")
    assert indexes["bus_bus_xact_index"].endswith("USING btree (xact)")
    assert [c[0] for c in columns(conn, "rtbus_cron")] == [
        "name", "interval_seconds", "lastcall", "nextcall", "running_pid"]
    assert [c[0] for c in columns(conn, "rtbus_schema")] == ["version", "description", "applied_at"]
    assert schema.current_version(conn) == latest


def test_upgrade_is_idempotent(conn):
    latest = schema.latest_version()
    schema.upgrade(conn)
    assert schema.upgrade(conn) == (latest, latest)
    assert fetchall(conn, "SELECT count(*) FROM rtbus_schema") == [(latest,)]


def test_upgrade_applies_only_missing_steps(conn):
    first = schema.migrations()[0]
    second = Migration(2, "extra table", "CREATE TABLE extra (x int)")
    assert schema.upgrade(conn, available=[first]) == (0, 1)
    assert schema.upgrade(conn, available=[first, second]) == (1, 2)
    assert fetchall(conn, "SELECT version, description FROM rtbus_schema ORDER BY version") == [
        (1, "bus"), (2, "extra table")]
    assert fetchall(conn, "SELECT to_regclass('extra') IS NOT NULL") == [(True,)]


def test_failed_migration_leaves_nothing_behind(conn):
    broken = Migration(2, "broken", "CREATE TABLE half_done (x int); SELECT no_such_column")
    with pytest.raises(SchemaError, match=r"migration 0002 \(broken\) failed"):
        schema.upgrade(conn, available=[schema.migrations()[0], broken])
    assert conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert schema.current_version(conn) == 0
    assert fetchall(conn, "SELECT to_regclass('bus_bus'), to_regclass('half_done')") == [(None, None)]


def test_database_newer_than_the_code_is_refused(conn):
    latest = schema.latest_version()
    schema.upgrade(conn)
    with conn.cursor() as cur:
        cur.execute("INSERT INTO rtbus_schema (version, description) VALUES (%s, 'future')", (latest + 1,))
    conn.commit()
    with pytest.raises(SchemaError, match=f"schema version {latest + 1}, newer than this rtbus knows"):
        schema.upgrade(conn)
    assert schema.current_version(conn) == latest + 1


def test_concurrent_upgrades_are_serialised(pg_cluster, fresh_db):
    # A slow second step widens the race window; one connection is REPEATABLE READ,
    # whose snapshot must not hide the other's committed work.
    steps = [schema.migrations()[0], Migration(2, "slow", "SELECT pg_sleep(0.3); CREATE TABLE slow (x int)")]
    first, second = pg_cluster.connect(fresh_db), pg_cluster.connect(fresh_db)
    second.set_session(isolation_level="REPEATABLE READ")
    try:
        results = run_in_threads(lambda: schema.upgrade(first, available=steps),
                                 lambda: schema.upgrade(second, available=steps))
        assert sorted(results) == [(0, 2), (2, 2)]
        assert fetchall(first, "SELECT version FROM rtbus_schema ORDER BY version") == [(1,), (2,)]
    finally:
        first.close()
        second.close()


def test_ensure_database_creates_once_even_when_racing(pg_cluster):
    name = pgcluster.unique_name()
    kwargs = pg_cluster.connect_kwargs()
    try:
        results = run_in_threads(lambda: schema.ensure_database(kwargs, name),
                                 lambda: schema.ensure_database(kwargs, name))
        assert sorted(results) == [False, True]
        assert schema.ensure_database(kwargs, name) is False
        with pg_cluster.connect(name) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_encoding")
            assert cur.fetchone() == ("UTF8",)
    finally:
        pg_cluster.drop_database(name)


def test_prepare_creates_and_upgrades_then_is_quiet(pg_cluster, caplog):
    name = pgcluster.unique_name()
    config = pgcluster.config_for(pg_cluster, db_name=name)
    latest = schema.latest_version()
    try:
        with caplog.at_level(logging.INFO, logger="rtbus.db.schema"):
            assert schema.prepare(config, dbname=name) == (0, latest)
            messages = [r.getMessage() for r in caplog.records]
            assert messages == [f"created database {name}", f"schema of {name} upgraded from 0 to {latest}"]
            caplog.clear()
            assert schema.prepare(config, dbname=name) == (latest, latest)
            assert caplog.records == []
    finally:
        pg_cluster.drop_database(name)
