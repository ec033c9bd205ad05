"""db_statement_timeout and db_lock_timeout: applied to rtbus's own sessions, default off."""

from __future__ import annotations

import pytest

import pgcluster
from ops_helpers import API_KEY, ops_env
from http_client import post_json
from rtbus.bus.dispatch import STATEMENT_TIMEOUT_MS, ImDispatch
from rtbus.db.connect import process_pool
from serverproc import ServerProcess

pytestmark = pytest.mark.timeout(90)


def _show(conn, parameter: str) -> str:
    with conn.cursor() as cur:
        cur.execute(f"SHOW {parameter}")
        return cur.fetchone()[0]


def test_pooled_sessions_carry_the_timeouts_across_rollbacks(pg_cluster, schema_db):
    config = pgcluster.config_for(pg_cluster, db_statement_timeout=1.5, db_lock_timeout=0.25)
    pool = process_pool(config, name="guard", maxconn=1)
    try:
        with pool.connection(schema_db) as conn:
            assert _show(conn, "statement_timeout") == "1500ms"
            assert _show(conn, "lock_timeout") == "250ms"
            conn.rollback()
        with pool.connection(schema_db) as conn:   # the same session, after the pool's reset
            assert _show(conn, "statement_timeout") == "1500ms"
            assert _show(conn, "lock_timeout") == "250ms"
    finally:
        pool.close_all()


def test_off_by_default(pg_cluster, schema_db):
    pool = process_pool(pgcluster.config_for(pg_cluster), name="plain", maxconn=1)
    try:
        with pool.connection(schema_db) as conn:
            assert _show(conn, "statement_timeout") == "0"
            assert _show(conn, "lock_timeout") == "0"
    finally:
        pool.close_all()


def test_the_dispatcher_uses_them_when_set(pg_cluster):
    default = ImDispatch.from_config(pgcluster.config_for(pg_cluster))
    assert (default.statement_timeout_ms, default.lock_timeout_ms) == (STATEMENT_TIMEOUT_MS, 0)
    tight = ImDispatch.from_config(pgcluster.config_for(pg_cluster, db_statement_timeout=2,
                                                        db_lock_timeout=0.5))
    assert (tight.statement_timeout_ms, tight.lock_timeout_ms) == (2000, 500)


@pytest.fixture(scope="module")
def locked_server(pg_cluster, ops_db, tmp_path_factory):
    base = tmp_path_factory.mktemp("guard")
    server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0", "--gevent-port=0",
                            "--db-lock-timeout=0.3", f"--runtime-dir={base / 'run'}"],
                           ops_env(pg_cluster, ops_db), str(base / "server.log"))
    server.start()
    yield server
    server.stop()


def _publish(port: int):
    return post_json(port, "/bus/publish", {"jsonrpc": "2.0", "method": "call", "id": 1,
                                            "params": {"channel": "room", "type": "guard", "payload": 1}},
                     headers={"Authorization": f"Bearer {API_KEY}"}, timeout=20)


def test_a_locked_bus_table_fails_a_publish_fast_with_503(locked_server, pg_cluster, ops_db):
    blocker = pg_cluster.connect(ops_db)
    try:
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE bus_bus IN ACCESS EXCLUSIVE MODE")
        status, headers, answer = _publish(locked_server.http_port)
        assert status == 503, answer
        assert headers.get("Retry-After")
        assert "lock timeout" in answer["error"]["data"]["message"]
    finally:
        blocker.rollback()
        blocker.close()
    status, _headers, answer = _publish(locked_server.http_port)   # the same pooled session, unlocked
    assert status == 200, answer
    assert answer["result"]["ids"]
