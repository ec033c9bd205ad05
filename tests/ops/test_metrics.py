"""/metrics of a running deployment: every process kind, the figures the issue lists
(the text format itself is unit-tested in tests/metrics/)."""

from __future__ import annotations

import json
import os
import signal

import pytest
import websocket

import busclient
from rtbus.bus.publish import Notifier
from rtbus.metrics import exposition
from serverproc import http_get, wait_until
from waiting import parse_samples as parse, values

pytestmark = pytest.mark.timeout(120)


def scrape(port: int) -> list:
    status, headers, body = http_get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == exposition.CONTENT_TYPE
    return parse(body.decode())


# -- units that need a database ---------------------------------------------------------


def test_notify_splits_are_counted(pg_cluster, schema_db):
    notifier = Notifier(max_payload_length=64)
    conn = pg_cluster.connect(schema_db)
    try:
        notifier.notify(conn, [json.dumps([schema_db, "res.partner", n]) for n in range(10)])
    finally:
        notifier.close()
        conn.close()
    assert notifier.counters["splits"] == 1
    assert notifier.counters["notifies"] > 1


# -- a running deployment -------------------------------------------------------------------


def test_every_process_kind_is_scraped_from_either_port(ops_server):
    children = ops_server.children()
    for port in (ops_server.http_port, ops_server.longpolling_port):
        samples = wait_until(lambda: _all_kinds(scrape(port)), 15, message="snapshots of every process")
        processes = set(labels["process"] for _name, labels, _value in samples)
        assert f"master-{ops_server.pid}" in processes
        for pid in children:
            assert any(p.endswith(f"-{pid}") for p in processes), (pid, processes)
        assert values(samples, "rtbus_children", child_kind="http") == [2]
        assert values(samples, "rtbus_children", child_kind="gevent") == [1]
        assert values(samples, "rtbus_pool_connections_max", kind="gevent", pool="gevent")
        assert values(samples, "rtbus_pool_errors_total", kind="http")
        assert values(samples, "rtbus_listen_connections", kind="gevent") == [2]
        assert values(samples, "rtbus_listen_outage", kind="gevent") == [0]


def _all_kinds(samples):
    kinds = set(labels.get("kind") for _name, labels, _value in samples)
    return samples if {"master", "http", "gevent", "cron"} <= kinds else None


def test_websocket_figures(ops_server, ops_publish):
    port = ops_server.longpolling_port
    ws = busclient.connect(port)
    try:
        busclient.subscribe(ws, ["room"])
        (wanted,) = ops_publish("room", "metrics.test", None)
        assert busclient.receive_ids(ws, [wanted]) == [wanted]
        # Subscribed now: this one comes live, woken by its NOTIFY (a catch-up has no latency).
        (wanted,) = ops_publish("room", "metrics.live", None)
        assert busclient.receive_ids(ws, [wanted]) == [wanted]
        samples = scrape(port)   # the answering process refreshes its own snapshot first
        assert values(samples, "rtbus_websockets_open") >= [1]
        assert values(samples, "rtbus_dispatch_subscribers")[0] >= 1
        assert values(samples, "rtbus_notifications_dispatched_total")[0] >= 1
        assert values(samples, "rtbus_delivery_latency_seconds_count")[0] >= 1
        assert values(samples, "rtbus_websocket_subscriptions_total")[0] >= 1
    finally:
        ws.close()
    # Rate limit: a burst of frames closes with 1013, counted by code and as a rate-limit close.
    ws = busclient.connect(port)
    try:
        for _ in range(40):
            try:
                ws.send("\x00")
            except (websocket.WebSocketException, OSError):
                break
    finally:
        ws.close()
    samples = wait_until(lambda: (lambda s: s if values(s, "rtbus_rate_limit_closes_total")[0] >= 1 else None)(
        scrape(port)), 10, message="a rate-limit close in the metrics")
    assert values(samples, "rtbus_websocket_closes_total", code="1013")[0] >= 1


def test_restarts_by_reason_and_no_ghost_series(ops_server):
    victim = ops_server.children_titled("rtbus: http worker")[0]
    os.kill(victim, signal.SIGKILL)

    def restarted():
        samples = scrape(ops_server.longpolling_port)
        died = values(samples, "rtbus_worker_restarts_total", reason="died")
        ghosts = [labels for _n, labels, _v in samples if labels.get("process") == f"http-{victim}"]
        return samples if died and died[0] >= 1 and not ghosts else None

    samples = wait_until(restarted, 20, message="the restart counted and the dead worker's series gone")
    wait_until(lambda: len(ops_server.children_titled("rtbus: http worker")) == 2, 20,
               message="the HTTP worker respawned")
    assert values(samples, "rtbus_master_generation") == [0]
