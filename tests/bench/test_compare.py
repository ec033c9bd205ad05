"""rtbus-bench --compare: the second server's address and options, the run order, and the
table built from the reports (no server), then one real run against two Nchans."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rtbus.bench import compare, nchan
from rtbus.bench.options import UsageError, parse

RTBUS_BENCH = os.path.join(os.path.dirname(sys.executable), "rtbus-bench")
FIRST = "http://127.0.0.1:8072"


def test_nchan_side_takes_the_workload_and_its_own_address_publishing_and_process():
    options = parse([FIRST, "-n", "1000", "--rate", "50", "--duration", "20", "--dsn", "dbname=x",
                     "--server-pid", "11", "--server-log", "/tmp/log", "--pg-stats-dsn", "dbname=y",
                     "--compare", "nchan:http://127.0.0.1:18272/nc", "--compare-pid", "22",
                     "--compare-rounds", "2"])
    assert options.comparison.kind == "nchan" and options.comparison.rounds == 2
    (first_label, first), (second_label, second) = compare.sides(options)
    assert (first_label, second_label) == ("rtbus", "nchan")
    assert first.comparison is None and second.comparison is None
    assert str(first.target) == FIRST and first.publish == "sql" and first.server_pid == 11
    assert str(second.target) == str(second.publish_target) == "http://127.0.0.1:18272/nc"
    assert second.publish == "nchan" and second.server_pid == 22
    assert second.origin == "http://127.0.0.1:18272"
    # The rtbus side's log and pg_stat_statements say nothing about the other server.
    assert second.server_log is None and second.pg_stats_dsn is None
    for name in ("websockets", "rate", "duration", "stages", "channel_prefix", "settle"):
        assert getattr(second, name) == getattr(first, name), name


def test_rtbus_side_publishes_to_its_own_database_or_address():
    options = parse([FIRST, "--dsn", "dbname=a", "--compare", "rtbus:http://127.0.0.1:9072",
                     "--compare-dsn", "dbname=b", "--labels", "before,after"])
    (before_label, before), (after_label, after) = compare.sides(options)
    assert (before_label, after_label) == ("before", "after")
    assert (before.dsn, after.dsn) == ("dbname=a", "dbname=b")
    assert after.publish == "sql" and str(after.target) == "http://127.0.0.1:9072"
    http = parse([FIRST, "--publish", "http", "--api-key", "k", "--publish-url", "http://h:1",
                  "--compare", "rtbus:http://127.0.0.1:9072"])
    (label, first), (default_label, second) = compare.sides(http)
    assert default_label == "rtbus-2" and str(second.publish_target) == "http://h:1"
    assert second.dsn == first.dsn
    explicit = parse([FIRST, "--publish", "http", "--api-key", "k", "--compare",
                      "rtbus:http://127.0.0.1:9072", "--compare-publish-url", "http://h:2"])
    assert str(compare.sides(explicit)[1][1].publish_target) == "http://h:2"


def test_an_explicit_origin_is_kept_for_both_sides():
    options = parse([FIRST, "--origin", "http://app.example", "--compare", "nchan:http://h:1"])
    assert [side.origin for _label, side in compare.sides(options)] == ["http://app.example"] * 2


@pytest.mark.parametrize("args, sentence", [
    (["--compare", "http://127.0.0.1:1"], "give KIND:URL with KIND one of nchan, rtbus"),
    (["--compare", "nchan:"], "give KIND:URL"),
    (["--compare", "nchan:https://h:1"], "TLS is not supported"),
    (["--compare", "nchan:http://h:1", "-m", "3"], "use -m 0"),
    (["--compare", "nchan:http://h:1", "-k", "2"], "use -k 1"),
    (["--compare", "nchan:http://h:1", "--drill"], "cannot run the storm stage"),
    (["--compare", "nchan:http://h:1", "--compare-dsn", "x"], "are for --compare rtbus:URL"),
    (["--compare", "rtbus:http://h:1", "--compare-rounds", "0"], "--compare-rounds must be 1"),
    (["--compare", "rtbus:http://h:1", "--labels", "a"], "two different names"),
    (["--compare", "rtbus:http://h:1", "--labels", "a,a"], "two different names"),
    (["--compare-pid", "3"], "--compare-pid needs --compare KIND:URL"),
    (["--compare-rounds", "2"], "--compare-rounds needs --compare"),
    (["--publish", "nchan", "-k", "3"], "--publish nchan: Nchan's websocket location serves one"),
])
def test_bad_comparisons_are_one_sentence(args, sentence):
    with pytest.raises(UsageError) as caught:
        parse([FIRST, *args])
    assert sentence in str(caught.value)


def test_runs_alternate_between_the_servers():
    assert compare.schedule(1) == [(1, 0), (1, 1)]
    assert compare.schedule(2) == [(1, 0), (1, 1), (2, 0), (2, 1)]


def test_the_ramp_gets_its_handshakes_and_memory_compared():
    def ramp(rate, p99, kb):
        return {"stages": [{"stage": "ramp", "latency_ms": {"p50": 1.0, "p99": 2.0},
                            "publish_per_s": 1.0, "deliveries_per_s": None, "lost": 0,
                            "duplicated": 0, "server": None, "memory": {"kb_per_connection": kb},
                            "connections": {"handshakes_per_s": rate,
                                            "handshake_ms": {"p99": p99}}}],
                "verdict": {"ok": True, "problems": []}}
    built = compare.build(("rtbus", "nchan"), [(1, 0, ramp(900.0, 120.0, 15.3)),
                                               (1, 1, ramp(1800.0, 40.0, 10.2))])
    ratio = built["stages"][0]["ratio"]
    assert (ratio["handshakes_per_s"], ratio["handshake_p99_ms"], ratio["kb_per_connection"]) == (
        0.5, 3.0, 1.5)
    lines = compare.render_text(built, "h").splitlines()
    assert "| rtbus (run 1) | 900.0 | 120.0 | 15.30 |" in lines
    assert "| **rtbus/nchan** | 0.50× | 3.00× | 1.50× |" in lines


def _report(hold: dict, lost: int = 0, postgres: float | None = None) -> dict:
    stage = {"stage": "hold", "latency_ms": {"p50": hold["p50"], "p99": hold["p99"]},
             "publish_per_s": 50.0, "deliveries_per_s": hold["rate"], "lost": lost,
             "duplicated": 0, "server": {"cpu_us_per_delivery": hold["cpu"],
                                         "postgres": {"status": "measured",
                                                      "cpu_us_per_delivery": postgres}}}
    problems = [f"hold: {lost} lost"] if lost else []
    return {"stages": [stage], "verdict": {"ok": not lost, "problems": problems}}


def test_table_has_every_run_and_the_ratio_of_medians():
    runs = [(1, 0, _report({"p50": 10.0, "p99": 30.0, "rate": 48000.0, "cpu": 14.0}, postgres=2.0)),
            (1, 1, _report({"p50": 5.0, "p99": 12.0, "rate": 50000.0, "cpu": 4.0})),
            (2, 0, _report({"p50": 12.0, "p99": 34.0, "rate": 47000.0, "cpu": 16.0}, postgres=2.5)),
            (2, 1, _report({"p50": 5.0, "p99": 8.0, "rate": 50000.0, "cpu": 6.0}, lost=3))]
    built = compare.build(("rtbus", "nchan"), runs)
    (hold,) = built["stages"]
    assert [(row["server"], row["round"]) for row in hold["rows"]] == [
        ("rtbus", 1), ("nchan", 1), ("rtbus", 2), ("nchan", 2)]
    assert hold["ratio"] == {"p50_ms": 2.2, "p99_ms": 3.2, "deliveries_per_s": 0.95,
                             "cpu_us_per_delivery": 3.0, "handshakes_per_s": None,
                             "handshake_p99_ms": None, "kb_per_connection": None}
    assert built["verdict"] == {"ok": False, "problems": ["nchan (round 2): hold: 3 lost"]}
    text = compare.render_text(built, "heading line")
    lines = text.splitlines()
    assert lines[0] == "heading line"
    assert "| hold | rtbus (run 1) | 10.0 | 30.0 | 50.0 | 48,000 | 0 | 0 | 14.00 (PostgreSQL 2.00) |" in lines
    assert "| hold | nchan (run 2) | 5.0 | 8.0 | 50.0 | 50,000 | 3 | 0 | 6.00 |" in lines
    assert "| hold | **rtbus/nchan** | 2.20× | 3.20× | | 0.95× | | | 3.00× |" in lines
    assert lines[-1] == "verdict: FAILED: nchan (round 2): hold: 3 lost"


def test_a_side_without_cpu_figures_gives_no_ratio():
    runs = [(1, 0, _report({"p50": 10.0, "p99": 30.0, "rate": None, "cpu": None})),
            (1, 1, _report({"p50": 0.0, "p99": 12.0, "rate": 50000.0, "cpu": 4.0}))]
    (hold,) = compare.build(("a", "b"), runs)["stages"]
    assert {key: hold["ratio"][key] for key in compare.RATIO_KEYS[:4]} == {
        "p50_ms": None, "p99_ms": 2.5, "deliveries_per_s": None, "cpu_us_per_delivery": None}
    assert "| hold | **a/b** | - | 2.50× | | - | | | - |" in compare.render_text(
        compare.build(("a", "b"), runs), "h")


@pytest.mark.timeout(60)
@pytest.mark.skipif(nchan.available() is not None, reason=f"{nchan.available()} (make test installs it)")
def test_two_nchans_compared_in_one_command():
    """The whole path with real servers: nginx masters resolved to their workers for CPU,
    Nchan publishing, one table. Two Nchans, so that no PostgreSQL is needed."""
    from rtbus.bench.probe import resolve_server_pids
    from serverproc import clean_environ
    with nchan.NchanServer() as first, nchan.NchanServer() as second:
        workers, title = resolve_server_pids(first.pid)
        assert len(workers) == 1 and workers != [first.pid] and title.startswith("nginx: worker")
        result = subprocess.run(
            [RTBUS_BENCH, first.url, "--publish", "nchan", "--server-pid", str(first.pid),
             "--compare", f"nchan:{second.url}", "--compare-pid", str(second.pid),
             "--labels", "left,right", "-n", "10", "--notifications", "40", "--rate", "0",
             "--settle", "5", "--max-seconds", "30", "-q"],
            env=clean_environ(), capture_output=True, text=True, timeout=50,
            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "left: " + first.url in lines[1] and "right: " + second.url in lines[1]
    for side in ("left", "right"):
        (row,) = [line for line in lines if line.startswith(f"| hold | {side} (run 1) |")]
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert int(cells[5].replace(",", "")) > 0 and cells[6:8] == ["0", "0"], row
        assert float(cells[8]) >= 0, row         # the nginx worker's CPU was read
    assert any(line.startswith("| hold | **left/right** |") for line in lines)
    assert lines[-1] == "verdict: OK: nothing lost, nothing duplicated on either side"
