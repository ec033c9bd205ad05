"""Floods of never-issued session ids against real servers: forged rtbus sids cost no query,
other unknown sids cost at most the client's look-up budget, and the pool and the health
check hold. Client addresses come from X-Forwarded-For, as behind nginx (proxy_mode)."""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import http.client
import json
import re
import secrets
import threading
import time

import pytest

from rtbus.session import create_session
from rtbus.session_guard import SID_PREFIX, mac_matches, sign
from serverproc import http_get

pytestmark = pytest.mark.timeout(180)

PEEK = "/websocket/peek_notifications"
BODY = json.dumps({"jsonrpc": "2.0", "method": "call", "id": 1,
                   "params": {"channels": [], "last": 0, "is_first_poll": True}}).encode()
BUDGET = 60


@pytest.fixture(scope="module")
def server(module_servers):
    # A small pool, as a flood of look-ups would find it: health must stay green anyway.
    return module_servers("--proxy-mode", "--db-maxconn-gevent=4", f"--session-lookup-budget={BUDGET}",
                          name="sessions")


@pytest.fixture(scope="module")
def direct(module_servers):
    return module_servers(f"--session-lookup-budget={BUDGET}", name="sessions-direct")


def peek(port: int, sid: str, client: str | None = "198.51.100.1") -> tuple[int, dict | None]:
    headers = {"Content-Type": "application/json", "Cookie": f"session_id={sid}"}
    if client is not None:
        headers.update({"X-Forwarded-For": client, "X-Forwarded-Host": "bus.example"})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("POST", PEEK, body=BODY, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def outcome(status: int, answer: dict | None) -> str:
    if status == 200 and answer and "error" in answer:
        return f"error {answer['error']['code']}"
    return str(status) if status != 200 else "result"


def figures(port: int) -> dict[str, float]:
    """This evented process's session figures, from /metrics (refreshed by the scrape)."""
    _status, _headers, body = http_get(port, "/metrics")
    found = {}
    for name, reason, value in re.findall(
            r'^(rtbus_session_\w+_total)\{process="\w+-\d+",kind="gevent"(?:,worker="\d+")?'
            r'(?:,reason="(\w+)")?\} (\S+)$',
            body.decode(), re.M):
        found[f"{name}:{reason}" if reason else name] = float(value)
    return found


def spend_budget(port: int, client: str) -> None:
    """Present unknown sids from `client`, one at a time, until one is refused: its budget
    is then spent. (A flood's refusals are not all the budget's: look-ups beyond the
    pool's slots are refused too, and give their token back; the bucket also refills one
    look-up a second.)"""
    answers = []
    for _ in range(BUDGET + 10):
        answers.append(outcome(*peek(port, random_sid(), client)))
        if answers[-1] == "503":
            return
    pytest.fail(f"{client} was never refused: {collections.Counter(answers)}")


def pool_errors(port: int) -> float:
    """Borrowers of this evented process's pools that got a PoolError, from /metrics."""
    _status, _headers, body = http_get(port, "/metrics")
    return sum(float(value) for value in re.findall(
        r'^rtbus_pool_errors_total\{[^}]*kind="gevent"[^}]*\} (\S+)$', body.decode(), re.M))


def flood(port: int, sids, client="198.51.100.1", concurrency: int = 50) -> collections.Counter:
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return collections.Counter(pool.map(lambda sid: outcome(*peek(port, sid, client)), sids))


class HealthWatch:
    """GET /websocket/health?db_server_status=1 in a loop meanwhile: every status seen."""

    def __init__(self, port: int):
        self.port = port
        self.statuses: collections.Counter = collections.Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                status = http_get(self.port, "/websocket/health?db_server_status=1", timeout=5)[0]
            except OSError:
                status = 0
            self.statuses[status] += 1
            self._stop.wait(0.05)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def random_sid() -> str:
    return secrets.token_urlsafe(48)


def forged_sid() -> str:
    return SID_PREFIX + secrets.token_urlsafe(48)


def test_2000_forged_rtbus_sids_cost_no_query(server):
    port = server.longpolling_port
    before = figures(port)
    with HealthWatch(port) as health:
        seen = flood(port, [forged_sid() for _ in range(2000)])
    after = figures(port)
    assert seen == {"error 100": 2000}
    assert after["rtbus_session_lookups_total"] == before["rtbus_session_lookups_total"]
    assert after["rtbus_session_refusals_total:forged"] - before["rtbus_session_refusals_total:forged"] == 2000
    assert set(health.statuses) == {200}, health.statuses


def test_2000_random_sids_cost_at_most_the_budget_and_the_pool_holds(server):
    port = server.longpolling_port
    client = "198.51.100.2"
    before = figures(port)
    before_pool_errors = pool_errors(port)
    started = time.monotonic()
    with HealthWatch(port) as health:
        seen = flood(port, [random_sid() for _ in range(2000)], client)
    elapsed = time.monotonic() - started
    after = figures(port)
    lookups = after["rtbus_session_lookups_total"] - before["rtbus_session_lookups_total"]
    # At most the budget, plus what it refilled (one a second) while the flood ran. (Fewer
    # when the pool's slots refused some first: those gave their token back.)
    assert 0 < lookups <= BUDGET + elapsed + 2, (lookups, elapsed)
    assert seen["error 100"] == lookups and seen["503"] == 2000 - lookups, seen
    # Every other request was refused before any query: over the budget, or (on a loaded
    # machine) after waiting in vain for one of the 4 pooled connections.
    over_budget = after["rtbus_session_refusals_total:over_budget"] - before[
        "rtbus_session_refusals_total:over_budget"]
    pool_timeouts = pool_errors(port) - before_pool_errors
    assert 2000 - lookups - pool_timeouts <= over_budget <= 2000 - lookups, (
        over_budget, pool_timeouts, lookups)
    assert set(health.statuses) == {200}, health.statuses
    # Whatever the flood left of the budget goes one request at a time, and then the
    # whole run has still cost no more than the budget and its refill.
    spend_budget(port, client)
    total = figures(port)["rtbus_session_lookups_total"] - before["rtbus_session_lookups_total"]
    assert BUDGET <= total <= BUDGET + (time.monotonic() - started) + 2, total
    server.wait_log(r"session look-up budget spent: refused \d+ request\(s\) with unknown session ids")


def test_sessions_keep_working_for_everyone_during_a_flood(server, module_conn):
    port = server.longpolling_port
    flooder = "203.0.113.66"
    signed = create_session(module_conn, 81, 8100, [])
    # An application's own sids (or rtbus sessions made before migration 0005): unsigned.
    own, flooders_own = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    with module_conn.cursor() as cur:
        for sid, uid in ((own, 82), (flooders_own, 83)):
            cur.execute("INSERT INTO rtbus_session (sid, uid, partner_id, expires) VALUES"
                        " (%s, %s, %s, (now() at time zone 'utc') + interval '1 hour')", (sid, uid, uid))
    module_conn.commit()
    seen = flood(port, [random_sid() for _ in range(BUDGET + 20)], flooder)
    assert seen["503"] >= 1, seen
    spend_budget(port, flooder)
    # Asked at once after a refusal, the flooder's own unsigned session must wait for the
    # refill like any unknown sid.
    assert outcome(*peek(port, flooders_own, flooder)) == "503"
    # Signed sessions need no budget; another client has its own budget.
    assert outcome(*peek(port, signed, flooder)) == "result"
    assert outcome(*peek(port, own, "203.0.113.67")) == "result"


def test_ipv6_clients_share_their_64(server):
    port = server.longpolling_port
    seen = flood(port, [random_sid() for _ in range(BUDGET + 10)], "2001:db8:aa:bb::1")
    assert seen["503"] >= 1
    spend_budget(port, "2001:db8:aa:bb::1")
    assert outcome(*peek(port, random_sid(), "2001:db8:aa:bb:ffff::2")) == "503"
    assert outcome(*peek(port, random_sid(), "2001:db8:aa:cc::1")) == "error 100"


def test_without_proxy_mode_forwarded_addresses_are_ignored(direct):
    port = direct.longpolling_port
    sids = [random_sid() for _ in range(BUDGET + 40)]
    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        seen = collections.Counter(pool.map(
            lambda item: outcome(*peek(port, item[1], f"198.51.100.{item[0] % 250}")), enumerate(sids)))
    assert seen["503"] >= 30, seen


def test_sql_and_python_agree_on_signed_sids(module_conn):
    with module_conn.cursor() as cur:
        cur.execute("SELECT key FROM rtbus_session_secret")
        (key,) = cur.fetchone()
        cur.execute("SELECT rtbus_session_new_sid() FROM generate_series(1, 50)")
        sids = [row[0] for row in cur.fetchall()]
    module_conn.rollback()
    key = bytes(key)
    assert all(mac_matches(key, sid) for sid in sids)
    nonce = base64.urlsafe_b64decode(sids[0][len(SID_PREFIX):])[:32]
    assert sign(key, nonce) == sids[0]
    with module_conn.cursor() as cur:
        cur.execute("SELECT rtbus_session_rotate(%s)", (create_session(module_conn, 90, 9000, []),))
        (rotated,) = cur.fetchone()
    module_conn.commit()
    assert mac_matches(key, rotated)
