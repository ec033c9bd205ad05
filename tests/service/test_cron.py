"""Cron jobs in a real deployment: the bus garbage collector runs and records its run."""

from __future__ import annotations

import pytest

from serverproc import run_cli


def _seed(pg_cluster, dbname):
    conn = pg_cluster.connect(dbname)
    try:
        with conn.cursor() as cr:
            cr.execute("INSERT INTO bus_bus (channel, message, create_date) VALUES "
                       "(%(channel)s, '{}', (now() at time zone 'utc') - interval '3 days'), "
                       "(%(channel)s, '{}', (now() at time zone 'utc'))",
                       {"channel": f'["{dbname}","broadcast"]'})
        conn.commit()
    finally:
        conn.close()


def _state(pg_cluster, dbname):
    conn = pg_cluster.connect(dbname)
    try:
        with conn.cursor() as cr:
            cr.execute("SELECT count(*) FROM bus_bus")
            (rows,) = cr.fetchone()
            cr.execute("SELECT lastcall IS NOT NULL, nextcall > lastcall FROM rtbus_cron WHERE name = 'bus_gc'")
            return rows, cr.fetchone()
    finally:
        conn.close()


@pytest.mark.parametrize("workers", ["--workers=1", "--workers=0"])
def test_bus_gc_deletes_old_notifications(workers, start_server, server_env, pg_cluster, fresh_db):
    env = dict(server_env, RTBUS_DB_NAME=fresh_db)
    assert run_cli(["initdb"], env).returncode == 0
    _seed(pg_cluster, fresh_db)
    server = start_server(workers, "--max-cron-threads=1", env=env)
    server.wait_log(rf"cron job bus_gc done on {fresh_db} in [\d.]+ s: 1 notifications older than 86400 s deleted")
    assert _state(pg_cluster, fresh_db) == (1, (True, True))
