"""Session management over JSON-RPC (API key) and the `rtbus-server session` command."""

from __future__ import annotations

import pytest

from http_client import post_json
from serverproc import run_cli

KEY = "session-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(module_servers):
    return module_servers(name="sessions", RTBUS_BUS_API_KEY=KEY)


def rpc(server, path, params, headers=AUTH):
    return post_json(server.http_port, path, {"jsonrpc": "2.0", "method": "call", "id": 1, "params": params},
                     headers)


def session_row(pg_cluster, db, sid):
    conn = pg_cluster.connect(db)
    try:
        with conn.cursor() as cr:
            cr.execute("SELECT uid, partner_id, group_ids, revoked, rotated_to IS NOT NULL "
                       "FROM rtbus_session WHERE sid = %s", (sid,))
            return cr.fetchone()
    finally:
        conn.close()


def test_create_rotate_revoke(server, pg_cluster, module_db):
    status, _, body = rpc(server, "/bus/session/create", {"uid": 5, "partner_id": 50, "group_ids": [1, 2]})
    assert status == 200, body
    sid = body["result"]["sid"]
    assert session_row(pg_cluster, module_db, sid) == (5, 50, [1, 2], False, False)
    status, _, body = rpc(server, "/bus/session/rotate", {"sid": sid})
    new_sid = body["result"]["sid"]
    assert new_sid != sid and session_row(pg_cluster, module_db, sid)[4] is True
    status, _, body = rpc(server, "/bus/session/rotate", {"sid": sid})
    assert body["error"]["code"] == -32602          # already rotated
    status, _, body = rpc(server, "/bus/session/revoke", {"sid": new_sid})
    assert status == 200 and session_row(pg_cluster, module_db, new_sid)[3] is True


def test_revoke_every_session_of_a_user(server):
    for _ in range(3):
        rpc(server, "/bus/session/create", {"uid": 6, "partner_id": 60})
    status, _, body = rpc(server, "/bus/session/revoke", {"uid": 6})
    assert body["result"] == {"revoked": 3}


def test_declare_groups(server, pg_cluster, module_db):
    status, _, body = rpc(server, "/bus/groups", {"groups": {"10": {"name": "User", "implied_ids": []},
                                                             "11": {"name": "Manager", "implied_ids": [10]}}})
    assert body["result"] == {"groups": 2}
    conn = pg_cluster.connect(module_db)
    try:
        with conn.cursor() as cr:
            cr.execute("SELECT rtbus_effective_groups(ARRAY[11])")
            assert cr.fetchone()[0] == [10, 11]
    finally:
        conn.close()


@pytest.mark.parametrize("path, params", [
    ("/bus/session/create", {"uid": "five"}),
    ("/bus/session/create", {"uid": 5, "partner_id": -1}),
    ("/bus/session/create", {"uid": 5, "group_ids": "1,2"}),
    ("/bus/session/create", {"uid": 5, "ttl": 0}),
    ("/bus/session/revoke", {}),
    ("/bus/session/revoke", {"sid": "a", "uid": 1}),
    ("/bus/groups", {"groups": {"x": {"name": "bad"}}}),
    ("/bus/groups", {"groups": [1, 2]}),
])
def test_bad_params_are_invalid_params(server, path, params):
    status, _, body = rpc(server, path, params)
    assert body["error"]["code"] == -32602, body


@pytest.mark.parametrize("path", ["/bus/session/create", "/bus/session/rotate", "/bus/session/revoke",
                                  "/bus/groups"])
def test_session_routes_need_the_api_key(server, path):
    assert rpc(server, path, {}, headers={})[0] == 401
    assert rpc(server, path, {}, headers={"Authorization": "Bearer nope"})[0] == 403


def test_session_command(server_env, pg_cluster, schema_db):
    env = dict(server_env, RTBUS_DB_NAME=schema_db)
    created = run_cli(["session", "create", "7", "70", "1,2"], env)
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    assert session_row(pg_cluster, schema_db, sid) == (7, 70, [1, 2], False, False)
    rotated = run_cli(["session", "rotate", sid], env)
    assert rotated.returncode == 0 and rotated.stdout.strip() != sid
    assert run_cli(["session", "revoke", rotated.stdout.strip()], env).returncode == 0
    assert run_cli(["session", "revoke-user", "7"], env).stdout.strip() == "0 sessions revoked"
    groups = run_cli(["session", "groups", '{"3": ["Staff", []], "4": ["Boss", [3]]}'], env)
    assert groups.stdout.strip() == "2 groups declared"
    for bad in (["session"], ["session", "create", "x", "1"], ["session", "groups", "[]"],
                ["session", "rotate", "no-such-sid"], ["session", "dance"]):
        result = run_cli(bad, env)
        assert result.returncode == 2, (bad, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
