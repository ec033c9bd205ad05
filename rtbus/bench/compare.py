"""``--compare``: the same workload against a second server, one table for both.

Sans-I/O: the second server's address (`parse_spec`), the options of each side
(`sides`), the order of the runs (`schedule`) and the comparison built from their
reports (`build`, `render_text`). `cli` runs the drills.

The second server is named ``KIND:URL``:

- ``nchan:http://HOST:PORT[/PREFIX]``: nginx with the Nchan module; websocket
  subscribers on ``PREFIX/websocket`` for the channel the clients use (the channel
  prefix, ``bench`` by default: one channel, no subscribe message), publishing by
  ``POST PREFIX/pub/<channel>`` (`publishers.NchanPublisher`);
- ``rtbus:http://HOST:PORT[/PREFIX]``: another rtbus (or Odoo), driven exactly like the
  first, published to through ``--compare-dsn`` (sql, python) or ``--compare-publish-url``
  (http), by default the first server's.
"""

from __future__ import annotations

import dataclasses
import statistics

from rtbus.bench import wire

KINDS = ("nchan", "rtbus")
# Stages Nchan can run: its clients cannot resume from an id (the storm) and it has no
# /longpolling/poll.
NCHAN_STAGES = ("ramp", "hold", "spike")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The second server and how it is measured."""

    kind: str                       # one of KINDS
    target: wire.Target
    pid: int | None                 # its process (nginx or rtbus master) for CPU per delivery
    dsn: str | None                 # rtbus kind: where sql/python publishing goes (None: --dsn)
    publish_target: wire.Target | None    # rtbus kind, http publishing (None: --publish-url)
    label: str                      # the other side's name in the table
    this_label: str                 # the first side's name
    rounds: int                     # runs per side, alternated: this, other, this, other...


def parse_spec(text: str) -> tuple[str, wire.Target]:
    """``KIND:URL`` → (kind, target); raises ValueError with a sentence."""
    kind, sep, url = text.partition(":")
    if not sep or kind not in KINDS or not url:
        raise ValueError(f"--compare {text!r}: give KIND:URL with KIND one of {', '.join(KINDS)}, "
                         "e.g. nchan:http://127.0.0.1:18272")
    return kind, wire.Target.parse(url)


def check_nchan(websockets_only: bool, channels: int, stages: tuple[str, ...],
                flag: str) -> None:
    """Raise ValueError when the workload cannot run against Nchan's locations."""
    if not websockets_only:
        raise ValueError(f"{flag}: Nchan has no long-polling endpoint here; use -m 0")
    if channels != 1:
        raise ValueError(f"{flag}: Nchan's websocket location serves one channel; use -k 1")
    unfit = [stage for stage in stages if stage not in NCHAN_STAGES]
    if unfit:
        raise ValueError(f"{flag}: Nchan cannot run the {unfit[0]} stage (its clients cannot "
                         f"resume from an id); stages for it: {', '.join(NCHAN_STAGES)}")


def sides(options) -> list[tuple[str, object]]:
    """[(label, options of that run)] for the first server and the second, each without
    a comparison; the second takes the first's workload and its own address, process
    and publishing path."""
    comparison = options.comparison
    this = dataclasses.replace(options, comparison=None)
    origin = (comparison.target.origin if options.origin == options.target.origin
              else options.origin)
    common = dict(comparison=None, target=comparison.target, origin=origin,
                  server_pid=comparison.pid, server_log=None, pg_stats_dsn=None)
    if comparison.kind == "nchan":
        other = dataclasses.replace(options, **common, publish="nchan",
                                    publish_target=comparison.target)
    else:
        other = dataclasses.replace(
            options, **common, dsn=comparison.dsn or options.dsn,
            publish_target=comparison.publish_target or options.publish_target)
    return [(comparison.this_label, this), (comparison.label, other)]


def schedule(rounds: int) -> list[tuple[int, int]]:
    """(round, side index) in run order: alternated, so that drift over the session
    (load, a warm cache, memory the first run freed) falls on both sides."""
    return [(round_, side) for round_ in range(1, rounds + 1) for side in (0, 1)]


def _cells(stage: dict) -> dict:
    latency, server = stage["latency_ms"], stage.get("server") or {}
    postgres = server.get("postgres") or {}
    connections, memory = stage.get("connections") or {}, stage.get("memory") or {}
    return {"p50_ms": latency["p50"], "p99_ms": latency["p99"],
            "publish_per_s": stage["publish_per_s"], "deliveries_per_s": stage["deliveries_per_s"],
            "lost": stage["lost"], "duplicated": stage["duplicated"],
            "cpu_us_per_delivery": server.get("cpu_us_per_delivery"),
            "postgres_cpu_us_per_delivery": postgres.get("cpu_us_per_delivery"),
            # The ramp's own figures (None in other stages).
            "handshakes_per_s": connections.get("handshakes_per_s"),
            "handshake_p99_ms": (connections.get("handshake_ms") or {}).get("p99"),
            "kb_per_connection": memory.get("kb_per_connection")}


RATIO_KEYS = ("p50_ms", "p99_ms", "deliveries_per_s", "cpu_us_per_delivery", "handshakes_per_s",
              "handshake_p99_ms", "kb_per_connection")


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(this: float | None, other: float | None) -> float | None:
    if this is None or not other:
        return None
    return round(this / other, 2)


def build(labels: tuple[str, str], runs: list[tuple[int, int, dict]]) -> dict:
    """The comparison of `runs` [(round, side index, report)]: per stage, one row per
    run and the ratio first/second of the medians over the rounds."""
    stages: dict[str, dict] = {}
    for round_, side, report in runs:
        for stage in report["stages"]:
            entry = stages.setdefault(stage["stage"], {"stage": stage["stage"], "rows": []})
            entry["rows"].append({"round": round_, "server": labels[side], "side": side,
                                  **_cells(stage)})
    for entry in stages.values():
        medians = [{key: _median([row[key] for row in entry["rows"] if row["side"] == side])
                    for key in RATIO_KEYS} for side in (0, 1)]
        entry["ratio"] = {key: _ratio(medians[0][key], medians[1][key]) for key in RATIO_KEYS}
    problems = [f"{labels[side]} (round {round_}): {problem}"
                for round_, side, report in runs for problem in report["verdict"]["problems"]]
    return {"labels": list(labels), "stages": list(stages.values()),
            "verdict": {"ok": not problems, "problems": problems}}


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cpu(row: dict) -> str:
    text = _num(row["cpu_us_per_delivery"], 2)
    if row["postgres_cpu_us_per_delivery"] is not None:
        text += f" (PostgreSQL {_num(row['postgres_cpu_us_per_delivery'], 2)})"
    return text


def render_text(comparison: dict, heading: str) -> str:
    """Markdown tables: every run of every stage with the ratio row of each stage, then
    the ramp's handshakes and memory."""
    first, second = comparison["labels"]
    lines = [heading, "",
             "| stage | server | p50 ms | p99 ms | published/s | deliveries/s | lost | dup "
             "| server CPU µs per delivery |",
             "|---|---|---|---|---|---|---|---|---|"]
    for entry in comparison["stages"]:
        for row in entry["rows"]:
            lines.append(f"| {entry['stage']} | {row['server']} (run {row['round']}) "
                         f"| {_num(row['p50_ms'])} | {_num(row['p99_ms'])} "
                         f"| {_num(row['publish_per_s'])} | {_num(row['deliveries_per_s'], 0)} "
                         f"| {row['lost']} | {row['duplicated']} | {_cpu(row)} |")
        ratio = entry["ratio"]
        lines.append(f"| {entry['stage']} | **{first}/{second}** | {_times(ratio['p50_ms'])} "
                     f"| {_times(ratio['p99_ms'])} | | {_times(ratio['deliveries_per_s'])} | | "
                     f"| {_times(ratio['cpu_us_per_delivery'])} |")
    ramps = [entry for entry in comparison["stages"] if entry["stage"] == "ramp"]
    for entry in ramps:
        lines.extend(["", "| ramp | handshakes/s | handshake p99 ms | server KB per connection |",
                      "|---|---|---|---|"])
        for row in entry["rows"]:
            lines.append(f"| {row['server']} (run {row['round']}) | {_num(row['handshakes_per_s'])} "
                         f"| {_num(row['handshake_p99_ms'])} | {_num(row['kb_per_connection'], 2)} |")
        ratio = entry["ratio"]
        lines.append(f"| **{first}/{second}** | {_times(ratio['handshakes_per_s'])} "
                     f"| {_times(ratio['handshake_p99_ms'])} | {_times(ratio['kb_per_connection'])} |")
    verdict = comparison["verdict"]
    lines.append("")
    lines.append("verdict: " + ("OK: nothing lost, nothing duplicated on either side"
                                if verdict["ok"] else "FAILED: " + "; ".join(verdict["problems"])))
    return "\n".join(lines)


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"
