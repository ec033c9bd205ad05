"""rtbus.auth.grants and the client's signature, without a server: the answer's shape,
the TTL cache, its bound, and single-flight with real threads."""

from __future__ import annotations

import threading

import pytest

from rtbus.auth.client import ProxyClient, signature, verify_signature
from rtbus.auth.grants import Grant, GrantCache, parse_answer
from rtbus.errors import AuthProxyUnavailable, ConfigError
from waiting import wait_until


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_answers_are_anchored_to_the_database():
    grant = parse_answer("db", {"valid": True, "uid": 2, "partner_id": 3,
                                "channels": ["broadcast", ["res.partner", 3], ["res.partner", 3],
                                             ["res.partner", 9, "presence"]]})
    assert grant == Grant(True, 2, 3, ('["db","broadcast"]', '["db","res.partner",3]',
                                       '["db","res.partner",9,"presence"]'))
    assert parse_answer("db", {"valid": False, "uid": 5}) == Grant(valid=False)
    assert parse_answer("db", {"valid": True, "uid": False, "partner_id": None}).uid is None


@pytest.mark.parametrize("answer", [
    {}, {"valid": "yes"}, {"valid": True, "uid": -1}, {"valid": True, "uid": "2"},
    {"valid": True, "channels": "broadcast"}, {"valid": True, "channels": [{"a": 1}]},
    {"valid": True, "channels": [["res.partner", "x", 1, 2, 3]]},
])
def test_answers_of_the_wrong_shape_are_refused(answer):
    with pytest.raises(AuthProxyUnavailable):
        parse_answer("db", answer)


def test_cache_reuses_an_answer_until_its_ttl():
    clock = Clock()
    cache = GrantCache(10, 100, clock=clock)
    calls = []

    def fetch():
        calls.append(1)
        return Grant(True, len(calls))

    assert cache.get("k", fetch, wait=1).uid == 1
    clock.now += 9.9
    assert cache.get("k", fetch, wait=1).uid == 1
    clock.now += 0.2
    assert cache.get("k", fetch, wait=1).uid == 2
    assert cache.counters["hits"] == 1 and cache.counters["misses"] == 2


def test_cache_is_bounded_and_failures_are_not_remembered():
    cache = GrantCache(10, 2)
    for key in "abc":
        cache.get(key, lambda: Grant(True), wait=1)
    assert len(cache) == 2 and cache.peek("a") is None and cache.counters["evictions"] == 1

    def failing():
        raise AuthProxyUnavailable("down")

    with pytest.raises(AuthProxyUnavailable):
        cache.get("d", failing, wait=1)
    assert cache.peek("d") is None


def test_concurrent_askers_share_one_call_and_its_error():
    cache = GrantCache(10, 100)
    release = threading.Event()
    calls = []
    outcomes = []

    def fetch():
        calls.append(1)
        release.wait(5)
        raise AuthProxyUnavailable("the application answered HTTP 500")

    def ask():
        try:
            cache.get("k", fetch, wait=5)
        except AuthProxyUnavailable as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    wait_until(lambda: cache.counters["joined"] == 19, 5, message="19 askers joined the call")
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(calls) == 1
    assert outcomes == ["the application answered HTTP 500"] * 20


def test_a_waiter_gives_up_after_its_bound():
    cache = GrantCache(10, 100)
    release = threading.Event()
    leader = threading.Thread(target=lambda: cache.get("k", lambda: release.wait(5) and Grant(True),
                                                       wait=5))
    leader.start()
    wait_until(lambda: cache.counters["misses"] == 1, 5, message="the leader's call started")
    with pytest.raises(AuthProxyUnavailable, match="more than 0.1 s"):
        cache.get("k", lambda: Grant(True), wait=0.1)
    release.set()
    leader.join(5)


def test_signatures_bind_body_and_time():
    secret = b"s3cret"
    sent = signature(secret, "1000", b'{"a":1}')
    assert verify_signature(secret, "1000", sent, b'{"a":1}', now=1100)
    assert not verify_signature(secret, "1000", sent, b'{"a":2}', now=1100)
    assert not verify_signature(b"other", "1000", sent, b'{"a":1}', now=1100)
    assert not verify_signature(secret, "1000", sent, b'{"a":1}', now=2000)     # too old
    assert not verify_signature(secret, None, sent, b'{"a":1}', now=1100)


def test_client_needs_an_http_url_and_a_secret():
    with pytest.raises(ConfigError, match="http"):
        ProxyClient("ftp://app/x", "s")
    with pytest.raises(ConfigError, match="auth_proxy_secret"):
        ProxyClient("http://app/x", "")


def test_client_reports_a_refused_connection():
    import socket

    with socket.socket() as probe:       # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ProxyClient(f"http://127.0.0.1:{port}/rtbus", "s", timeout=1)
    with pytest.raises(AuthProxyUnavailable, match="authorization proxy"):
        client.post("subscribe", {})


class StubClient:
    """Answers every subscribe call with the next of `answers` (a real client is tested
    against a real application in test_proxy_server)."""

    timeout = 1.0
    base_url = "http://app.invalid/rtbus"

    def __init__(self):
        self.calls = []

    def post(self, path, payload, *, cookie=None):
        self.calls.append((path, payload, cookie))
        return {"valid": True, "uid": 5, "partner_id": 50, "channels": payload["channels"]}


def test_an_end_refuses_sessions_answered_before_it_only():
    from rtbus.auth.proxy import AuthProxy

    clock = Clock()
    client = StubClient()
    proxy = AuthProxy(client, ttl=30, max_entries=100, clock=clock)
    old, rotated = "a" * 16 + "-old-session", "a" * 16 + "-new-session"
    proxy.grant("db", old, ("x",))
    assert client.calls[0][2] == f"session_id={old}"
    clock.now += 1
    proxy.end("db", old[:16])
    assert proxy.identity("db", old)[0].valid is False
    clock.now += 1
    assert proxy.grant("db", rotated, ("x",)).valid
    assert proxy.identity("db", rotated)[0].valid
    clock.now += 61          # the end is forgotten after max(ttl, 60) s
    assert proxy.identity("db", old)[0].valid
    assert proxy.stats()["ended"] == 1 and proxy.stats()["calls"] == 2


def test_a_refresh_answered_from_the_cache_restores_the_identity():
    from rtbus.auth.proxy import AuthProxy

    client = StubClient()
    proxy = AuthProxy(client, ttl=30, max_entries=100, clock=Clock())
    sid = "b" * 16 + "-session"
    proxy.grant("db", sid, ())
    proxy.identities.forget(lambda key: True)       # as an eviction would
    proxy._refresh("db", sid)
    assert proxy.identity("db", sid)[0].uid == 5
    assert proxy.stats()["calls"] == 1
