"""The deployment connection budget: pure computations, then one real server."""

from __future__ import annotations


from rtbus.config import load_config
from rtbus.db.budget import ServerInfo, check_budget, compute_budget, read_server_info

SERVER = ServerInfo(max_connections=100, superuser_reserved_connections=3)


def config(*flags, db_name=None):
    cfg = load_config(list(flags), environ={}).config
    return cfg.replace(db_name=db_name) if db_name is not None else cfg


def rows(budget):
    return {row.kind: (row.count, row.each, row.total) for row in budget.rows}


def test_prefork_deployment():
    budget = compute_budget(config("--workers", "40", "--db-maxconn", "16",
                                   "--db-maxconn-gevent", "32", "--max-cron-threads", "2"),
                            SERVER)
    assert rows(budget) == {
        "HTTP workers": (40, 2, 80),      # one request at a time: 2 each, whatever db_maxconn
        "gevent process": (1, 32, 32),
        "cron workers": (2, 2, 4),
        "LISTEN (ImDispatch)": (1, 2, 2),            # postgres + rtbus
        "NOTIFY (after commit)": (43, 1, 43),        # 40 HTTP + gevent + 2 crons
        "master": (1, 0, 0),
    }
    assert budget.total == 161 and budget.available == 97
    assert budget.verdict == "over"


def test_gevent_workers_each_count_their_pool_and_their_listen_connection():
    budget = compute_budget(config("--workers", "4", "--gevent-workers", "3", "--db-maxconn-gevent", "20",
                                   "--max-cron-threads", "1"), SERVER)
    assert rows(budget)["gevent workers"] == (3, 20, 60)
    assert rows(budget)["LISTEN (ImDispatch)"] == (3, 2, 6)         # one per worker, 2 databases
    assert rows(budget)["NOTIFY (after commit)"] == (8, 1, 8)       # 4 HTTP + 3 gevent + 1 cron
    assert budget.total == 4 * 2 + 60 + 2 + 6 + 8


def test_gevent_workers_auto_is_one_per_core():
    import os

    cores = len(os.sched_getaffinity(0))
    budget = compute_budget(config("--workers", "2", "--gevent-workers", "auto"), SERVER)
    gevent_row = [row for row in budget.rows if row.kind.startswith("gevent")][0]
    assert gevent_row.count == cores


def test_single_mode_ignores_gevent_workers():
    budget = compute_budget(config("--workers", "0", "--gevent-workers", "4"), SERVER)
    assert rows(budget)["single process"][0] == 1 and rows(budget)["LISTEN (ImDispatch)"][0] == 1


def test_defaults_fall_back_to_db_maxconn_for_gevent():
    budget = compute_budget(config("--workers", "2"), ServerInfo(500, 3, 0, 10))
    assert rows(budget)["gevent process"] == (1, 64, 64)
    assert budget.total == 2 * 2 + 64 + 2 + 2 + 4
    assert budget.available == 487 and budget.verdict == "ok"


def test_http_workers_pool_is_capped_by_db_maxconn():
    assert rows(compute_budget(config("--workers", "3", "--db-maxconn", "1"), SERVER))["HTTP workers"] == (3, 1, 3)


def test_single_mode_uses_the_gevent_pool_size():
    budget = compute_budget(config("--workers", "0", "--db-maxconn-gevent", "20",
                                   "--max-cron-threads", "1"), SERVER)
    assert rows(budget) == {
        "single process": (1, 20, 20),
        "cron greenlet": (1, 2, 2),
        "LISTEN (ImDispatch)": (1, 2, 2),
        "NOTIFY (after commit)": (1, 1, 1),
        "master": (1, 0, 0),
    }
    assert budget.total == 25 and budget.verdict == "ok"


def test_listen_connections_cover_every_served_database():
    budget = compute_budget(config("--workers", "1", "--max-cron-threads", "0",
                                   db_name="a, b,postgres"), SERVER)
    assert rows(budget)["LISTEN (ImDispatch)"] == (1, 3, 3)     # postgres, a, b
    assert "cron workers" not in rows(budget)
    # Serving only the imbus database: publishers NOTIFY on their own connection.
    budget = compute_budget(config("--workers", "1", db_name="postgres"), SERVER)
    assert rows(budget)["LISTEN (ImDispatch)"] == (1, 1, 1)
    assert rows(budget)["NOTIFY (after commit)"][2] == 0


def test_reserved_and_in_use_reduce_what_is_available():
    server = ServerInfo(max_connections=100, superuser_reserved_connections=3,
                        reserved_connections=5, in_use=40)
    budget = compute_budget(config("--workers", "0", "--db-maxconn-gevent", "50"), server)
    assert budget.available == 52
    assert budget.total == 55 and budget.verdict == "over"
    table = budget.format_table()
    assert "- reserved_connections" in table
    assert table.splitlines()[-1].startswith("over budget: rtbus may open up to 55")


def test_table_is_aligned_and_ends_with_the_verdict():
    budget = compute_budget(config("--workers", "4", "--db-maxconn", "16"), ServerInfo(400, 3))
    table = budget.format_table()
    lines = table.splitlines()
    assert lines[0].split() == ["process", "kind", "count", "x", "each", "=", "total", "note"]
    body = [line for line in lines[2:8]]
    assert len({line.index("=") for line in body}) == 1          # one column for totals
    assert "rtbus may open at most" in table and "= available to rtbus" in table
    assert lines[-1].startswith("ok: rtbus may open up to")
    print(table)


def test_against_the_real_server(pg_cluster):
    conn = pg_cluster.connect("postgres")
    other = pg_cluster.connect("postgres")
    try:
        info = read_server_info(conn)
        assert info.max_connections == pg_cluster.max_connections
        assert info.superuser_reserved_connections == 3
        assert info.server_version >= 100000
        assert info.in_use >= 1                     # `other`, but not `conn` itself
        budget = check_budget(config("--workers", "0", "--db-maxconn-gevent", "4"), conn)
        assert budget.server.max_connections == pg_cluster.max_connections
        assert budget.verdict == "ok"
        big = check_budget(config("--workers", "8", "--db-maxconn-gevent", "400"), conn)
        assert big.verdict == "over"
        assert "over budget" in big.format_table()
    finally:
        other.close()
        conn.close()
