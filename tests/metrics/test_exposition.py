"""The Prometheus text exposition format (rtbus.metrics.exposition) and the families table."""

from __future__ import annotations

import math
import re

import pytest

from rtbus.metrics import exposition
from rtbus.metrics.families import FAMILIES, SERVER_TOTALS
from rtbus.metrics.histogram import Histogram
from waiting import parse_samples, values


def render_one(metrics: dict, kind: str = "gevent", pid: int = 7, started: float | None = 1.0) -> str:
    return exposition.render([{"kind": kind, "pid": pid, "started": started, "metrics": metrics}])


def test_histogram_buckets_are_cumulative_in_the_text_format():
    histogram = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.05, 0.05, 5.0):
        histogram.observe(value)
    text = render_one({"rtbus_delivery_latency_seconds": histogram.snapshot()})
    samples = parse_samples(text)
    buckets = {labels["le"]: value for name, labels, value in samples
               if name == "rtbus_delivery_latency_seconds_bucket"}
    assert buckets == {"0.01": 1, "0.1": 3, "1": 3, "+Inf": 4}
    assert values(samples, "rtbus_delivery_latency_seconds_count") == [4]
    assert values(samples, "rtbus_delivery_latency_seconds_sum") == [pytest.approx(5.105)]
    assert "# TYPE rtbus_delivery_latency_seconds histogram" in text


def test_an_observation_on_a_bound_falls_in_that_bucket_and_negatives_count_as_zero():
    histogram = Histogram((0.1, 1.0))
    for value in (0.1, 1.0, -3.0):
        histogram.observe(value)
    assert histogram.snapshot() == {"buckets": [0.1, 1.0], "counts": [2, 1, 0], "sum": 1.1, "count": 3}


def test_histogram_buckets_must_increase():
    with pytest.raises(ValueError, match="increasing and distinct"):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError):
        Histogram((0.5, 0.5))


def test_labels_are_escaped_and_every_process_is_labelled():
    text = exposition.render([
        {"kind": "master", "pid": 1, "started": 2.0,
         "metrics": {"rtbus_worker_restarts_total": {'odd "reason"\\\n': 2}}},
        {"kind": "http", "pid": 2, "started": 3.0, "metrics": {"rtbus_http_requests_total": 5}},
    ])
    assert 'reason="odd \\"reason\\"\\\\\\n"} 2' in text
    assert 'rtbus_http_requests_total{process="http-2",kind="http"} 5' in text
    assert text.count("# TYPE rtbus_process_start_time_seconds gauge") == 1
    assert values(parse_samples(text), "rtbus_process_start_time_seconds") == [2.0, 3.0]


def test_every_family_has_help_and_type_once_before_its_samples():
    text = exposition.render([
        {"kind": "gevent", "pid": 10, "started": 1.0, "metrics": {"rtbus_websockets_open": 3}},
        {"kind": "gevent", "pid": 11, "started": 1.0, "metrics": {"rtbus_websockets_open": 4}},
    ])
    lines = text.splitlines()
    help_at = lines.index("# HELP rtbus_websockets_open Open websocket connections.")
    assert lines[help_at + 1] == "# TYPE rtbus_websockets_open gauge"
    assert lines[help_at + 2:help_at + 4] == [
        'rtbus_websockets_open{process="gevent-10",kind="gevent"} 3',
        'rtbus_websockets_open{process="gevent-11",kind="gevent"} 4']
    assert text.endswith("\n") and text.count("# HELP rtbus_websockets_open ") == 1


def test_a_gevent_workers_samples_carry_its_number():
    text = exposition.render([
        {"kind": "gevent", "pid": 10, "worker": 1, "started": 1.0, "metrics": {"rtbus_websockets_open": 3}},
        {"kind": "http", "pid": 12, "started": 1.0, "metrics": {"rtbus_http_requests_total": 5}},
    ])
    assert 'rtbus_websockets_open{process="gevent-10",kind="gevent",worker="1"} 3' in text
    assert 'rtbus_http_requests_total{process="http-12",kind="http"} 5' in text


def test_families_come_in_table_order_and_absent_ones_are_left_out():
    text = render_one({"rtbus_listen_connections": 2, "rtbus_websockets_open": 1}, started=None)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert names == ["rtbus_websockets_open", "rtbus_listen_connections",   # FAMILIES' order
                     "rtbus_server_evented_processes", "rtbus_server_websockets_open"]  # then totals
    assert "rtbus_process_start_time_seconds" not in text                   # no start time given
    assert exposition.render([]) == "\n"


def test_unknown_figures_are_not_exported():
    assert "rtbus_made_up" not in render_one({"rtbus_made_up": 1, "rtbus_websockets_open": 1})


@pytest.mark.parametrize("value, shown", [
    (3, "3"), (3.0, "3"), (0, "0"), (-2, "-2"), (0.25, "0.25"), (1e15, "1000000000000000.0"), (10**16, "1e+16"), (2.5e-7, "2.5e-07"),
    (True, "1"), (float("nan"), "NaN"), (float("inf"), "+Inf"), (float("-inf"), "-Inf"),
])
def test_numbers_are_written_as_prometheus_reads_them(value, shown):
    line = [line for line in render_one({"rtbus_websockets_open": value}).splitlines()
            if line.startswith("rtbus_websockets_open{")][0]
    assert line.rsplit(" ", 1)[1] == shown
    parsed = float(shown)
    assert parsed == float(value) or (math.isnan(parsed) and math.isnan(value))


def test_labelled_values_are_sorted_numbers_first_then_text():
    text = render_one({"rtbus_websocket_closes_total": {"1013": 2, "4001": 1, "1001": 5, "other": 1, 1000: 3}})
    codes = [labels["code"] for name, labels, _ in parse_samples(text) if name == "rtbus_websocket_closes_total"]
    assert codes == ["1000", "1001", "1013", "4001", "other"]


def test_a_mapping_for_a_family_without_a_label_gets_a_generic_one():
    text = render_one({"rtbus_websockets_open": {"x": 1}})
    assert 'rtbus_websockets_open{process="gevent-7",kind="gevent",label="x"} 1' in text


def test_help_text_is_escaped():
    # No family's help holds a newline or a backslash today; the escaping is the format's.
    assert exposition._escape_help("a\\b\nc") == "a\\\\b\\nc"


def test_a_snapshot_without_kind_or_pid_is_still_labelled():
    text = exposition.render([{"metrics": {"rtbus_websockets_open": 1}}])
    assert 'rtbus_websockets_open{process="?-?",kind="?"} 1' in text


def test_server_totals_sum_the_evented_processes_once():
    text = exposition.render([
        {"kind": "master", "pid": 1, "started": 1.0, "metrics": {}},
        {"kind": "gevent", "pid": 10, "worker": 0, "started": 1.0,
         "metrics": {"rtbus_websockets_open": 3, "rtbus_notifications_dispatched_total": 100}},
        {"kind": "gevent", "pid": 11, "worker": 1, "started": 1.0,
         "metrics": {"rtbus_websockets_open": 4, "rtbus_notifications_dispatched_total": 50}},
        {"kind": "http", "pid": 12, "started": 1.0, "metrics": {"rtbus_websockets_open": 99}},
    ])
    samples = parse_samples(text)
    assert values(samples, "rtbus_server_websockets_open") == [7]
    assert values(samples, "rtbus_server_evented_processes", kind="server") == [2]
    assert values(samples, "rtbus_server_notifications_dispatched_total") == [150]
    assert values(samples, "rtbus_server_longpolls_open") == []      # no process reported it
    assert text.count("# TYPE rtbus_server_websockets_open gauge") == 1
    assert exposition.render([{"kind": "http", "pid": 12, "started": 1.0, "metrics": {}}]).count(
        "rtbus_server_") == 0


def test_server_total_families_are_well_formed():
    for name, (family, source) in SERVER_TOTALS.items():
        assert name == family.name and name.startswith("rtbus_server_") and name not in FAMILIES
        assert family.name.endswith("_total") == (family.type == "counter"), name
        assert source is None or source in FAMILIES, name


# -- the families table ---------------------------------------------------------------------


def test_families_are_well_formed():
    assert FAMILIES and all(name == family.name for name, family in FAMILIES.items())
    for family in FAMILIES.values():
        assert re.fullmatch(r"rtbus_[a-z_]+", family.name), family.name
        assert family.type in ("counter", "gauge", "histogram"), family.name
        assert family.name.endswith("_total") == (family.type == "counter"), family.name
        assert family.help and family.help.endswith(".") and "\n" not in family.help, family.name
        assert family.label is None or re.fullmatch(r"[a-z_]+", family.label), family.name
        assert family.label not in ("process", "kind", "worker", "le"), family.name   # taken by samples


def test_the_whole_table_renders_as_valid_text():
    metrics = {}
    for name, family in FAMILIES.items():
        if family.type == "histogram":
            metrics[name] = Histogram().snapshot()
        else:
            metrics[name] = {"a": 1} if family.label else 1
    samples = parse_samples(render_one(metrics))
    assert {name for name, _labels, _value in samples} >= {
        name for name, family in FAMILIES.items() if family.type != "histogram"}
