"""Per-process snapshot files (rtbus.metrics.snapshots) and merging figures (rtbus.metrics.collect)."""

from __future__ import annotations

import json
import os

from rtbus.metrics import collect, snapshots


def test_snapshots_of_dead_processes_are_skipped_and_pruned(tmp_path):
    writer = snapshots.SnapshotWriter(str(tmp_path), "http", lambda: {"rtbus_http_requests_total": 3})
    assert writer.write()
    dead = tmp_path / "http-999999999.json"
    dead.write_text(json.dumps({"kind": "http", "pid": 999999999, "metrics": {}}))
    (tmp_path / "garbage.json").write_text("{")
    found = snapshots.read_all(str(tmp_path))
    assert [s["pid"] for s in found] == [os.getpid()]
    removed = snapshots.prune(str(tmp_path), keep={os.getpid()})
    assert "http-999999999.json" in removed and not dead.exists()
    assert os.path.exists(writer.path)


def test_a_snapshot_holds_the_figures_and_the_extra_fields(tmp_path):
    writer = snapshots.SnapshotWriter(str(tmp_path), "gevent", lambda: {"rtbus_websockets_open": 2},
                                      extra=lambda: {"generation": 4})
    assert writer.write()
    (snapshot,) = snapshots.read_all(str(tmp_path))
    assert snapshot["kind"] == "gevent" and snapshot["pid"] == os.getpid()
    assert snapshot["metrics"] == {"rtbus_websockets_open": 2} and snapshot["generation"] == 4
    assert snapshot["started"] <= snapshot["written"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]   # renamed into place


def test_a_write_is_due_again_only_after_the_interval(tmp_path):
    calls = []
    writer = snapshots.SnapshotWriter(str(tmp_path), "cron", lambda: calls.append(1) or {}, interval=3600)
    assert writer.due()
    writer.maybe_write()
    assert not writer.due()
    writer.maybe_write()
    assert len(calls) == 1


def test_a_failing_write_returns_false_and_keeps_the_process_up(tmp_path, caplog):
    writer = snapshots.SnapshotWriter(str(tmp_path / "missing"), "http", lambda: {})
    assert writer.write() is False
    assert writer.write() is False
    assert len([r for r in caplog.records if "cannot write the metrics snapshot" in r.getMessage()]) == 1

    def broken():
        raise RuntimeError("figures unavailable")

    assert snapshots.SnapshotWriter(str(tmp_path), "http", broken).write() is False


def test_snapshots_are_read_master_first_then_by_kind_and_pid(tmp_path):
    me = os.getpid()
    parent = os.getppid()
    for kind, pid in (("http", me), ("master", parent), ("gevent", me)):
        (tmp_path / f"{kind}-{pid}.json").write_text(json.dumps({"kind": kind, "pid": pid, "metrics": {}}))
    (tmp_path / "notes.txt").write_text("not a snapshot")
    (tmp_path / f"cron-{me}.json").write_text(json.dumps({"kind": "cron", "pid": me}))   # no metrics
    assert [s["kind"] for s in snapshots.read_all(str(tmp_path))] == ["master", "gevent", "http"]
    assert snapshots.live_owner(str(tmp_path)) == parent
    assert snapshots.read_all(str(tmp_path / "nowhere")) == []


def test_prune_removes_leftover_temporary_files_too(tmp_path):
    (tmp_path / "http-999999999.json.999999999.tmp").write_text("{")
    (tmp_path / f"http-{os.getpid()}.json").write_text("{}")
    assert snapshots.prune(str(tmp_path), keep={os.getpid()}) == ["http-999999999.json.999999999.tmp"]
    assert os.listdir(tmp_path) == [f"http-{os.getpid()}.json"]


def test_merge_combines_labelled_values_and_keeps_histograms_whole():
    histogram = {"buckets": [1.0], "counts": [1, 0], "sum": 0.5, "count": 1}
    merged = collect.merge({"rtbus_pool_waiting": {"http": 1}, "rtbus_websockets_open": 2},
                           {"rtbus_pool_waiting": {"gevent": 3}, "rtbus_delivery_latency_seconds": histogram},
                           {"rtbus_websockets_open": 5})
    assert merged == {"rtbus_pool_waiting": {"http": 1, "gevent": 3}, "rtbus_websockets_open": 5,
                      "rtbus_delivery_latency_seconds": histogram}
