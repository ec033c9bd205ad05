"""rtbus-server send and budget, and the start-up budget check, end to end."""

from __future__ import annotations

from buslisten import ImbusListener
from serverproc import run_cli


def test_send_publishes_one_notification(server_env, pg_cluster, fresh_db):
    env = dict(server_env, RTBUS_DB_NAME=fresh_db)
    listener = ImbusListener(pg_cluster, "postgres")
    try:
        result = run_cli(["send", '["res.partner", 7]', "reload", '{"ids": [1, 2]}'], env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("sent notification ")
        assert listener.wait(1) == [[[fresh_db, "res.partner", 7]]]
    finally:
        listener.close()
    conn = pg_cluster.connect(fresh_db)
    try:
        with conn.cursor() as cr:
            cr.execute("SELECT channel, message FROM bus_bus")
            assert cr.fetchall() == [(f'["{fresh_db}","res.partner",7]',
                                      '{"type":"reload","payload":{"ids":[1,2]}}')]
    finally:
        conn.close()


def test_send_takes_a_plain_string_payload_and_refuses_bad_channels(server_env, fresh_db):
    env = dict(server_env, RTBUS_DB_NAME=fresh_db)
    assert run_cli(["send", "broadcast", "note", "not json at all"], env).returncode == 0
    bad = run_cli(["send", "[1, 2, 3, 4, 5]", "note"], env)
    assert bad.returncode == 2 and "cannot send" in bad.stderr
    usage = run_cli(["send", "broadcast"], env)
    assert usage.returncode == 2 and "usage: rtbus-server send" in usage.stderr


def test_budget_prints_the_table(server_env, pg_cluster):
    result = run_cli(["budget", "--workers=4"], server_env)
    assert result.returncode == 0, result.stderr
    for line in ("HTTP workers", "gevent process", "cron workers", "LISTEN (ImDispatch)",
                 "NOTIFY (after commit)", "PostgreSQL max_connections", "ok: rtbus may open"):
        assert line in result.stdout
    over = run_cli(["budget", "--workers=4", "--db-maxconn-gevent=5000"], server_env)
    assert over.returncode == 1
    assert "over budget" in over.stdout


def test_start_refuses_an_over_budget_deployment(server_env):
    result = run_cli(["--workers=1", "--db-maxconn-gevent=5000", "--http-port=0", "--gevent-port=0"],
                     server_env)
    assert result.returncode == 1
    assert "connection budget exceeded" in result.stderr
    assert "gevent process" in result.stderr and "5000" in result.stderr


def test_budget_check_warn_starts_anyway(start_server):
    server = start_server("--workers=1", "--max-cron-threads=0", "--db-maxconn-gevent=5000",
                          "--budget-check=warn")
    server.wait_log(r"connection budget exceeded \(budget_check = warn, starting anyway\)")
