"""The bench's report: one dict (printed as JSON with --json) and its text rendering."""

from __future__ import annotations

import os
import platform
import sys


def machine() -> dict:
    """What the numbers were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import gevent
    return {"cpu": model or platform.processor(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "gevent": gevent.__version__,
            "platform": platform.platform(), "load_average": _load()}


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def verdict(stages: list[dict], aborted: bool) -> dict:
    """ok when every stage ran, nothing was lost or duplicated, and every client connected."""
    problems = []
    if aborted:
        problems.append("the run hit --max-seconds and was cut short")
    for stage in stages:
        if stage["lost"]:
            problems.append(f"{stage['stage']}: {stage['lost']} lost")
        if stage["duplicated"]:
            problems.append(f"{stage['stage']}: {stage['duplicated']} duplicated")
        connections = stage.get("connections")
        if connections and connections["websockets_open"] < connections["websockets_attempted"]:
            missing = connections["websockets_attempted"] - connections["websockets_open"]
            problems.append(f"ramp: {missing} websockets could not connect")
        if stage.get("wake") and not stage["wake"]["all_woken"]:
            problems.append("ramp: not every client received the wake-up notification")
        caught = stage.get("caught_up_s")
        if caught and caught["not_caught_up"]:
            problems.append(f"storm: {caught['not_caught_up']} clients never caught up")
    return {"ok": not problems, "problems": problems}


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _codes(counts: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in counts.items()) or "-"


def render_text(report: dict) -> str:
    options, lines = report["options"], []
    lines.append(f"rtbus-bench -> {report['target']}  ({options['publish']} publishing, "
                 f"{options['websockets']} websockets, {options['longpolls']} long-polls, "
                 f"{options['channels']} channel(s), rate {options['rate'] or 'max'}/s"
                 f"{', permessage-deflate offered' if options['deflate'] else ''})")
    m = report["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cpus']} CPUs, Python {m['python']}, "
                 f"gevent {m['gevent']}, load {m['load_average']}")
    lines.append("")
    header = (f"{'stage':<6} {'secs':>6} {'ws':>6} {'lp':>5} {'pub':>6} {'pub/s':>7} "
              f"{'deliveries':>10} {'deliv/s':>8} {'p50':>7} {'p90':>7} {'p99':>7} {'max ms':>8} "
              f"{'lost':>6} {'dup':>4} {'srv cpu':>7} {'bench':>6}  closes / errors")
    lines.append(header)
    for s in report["stages"]:
        lat, server = s["latency_ms"], s["server"] or {}
        lines.append(
            f"{s['stage']:<6} {s['seconds']:>6.1f} {s['subscribers']['websockets']:>6} "
            f"{s['subscribers']['longpolls']:>5} {s['published']:>6} {s['publish_per_s']:>7.1f} "
            f"{s['deliveries']:>10} {s['deliveries_per_s'] or 0:>8.0f} {_ms(lat['p50']):>7} "
            f"{_ms(lat['p90']):>7} {_ms(lat['p99']):>7} {_ms(lat['max']):>8} {s['lost']:>6} "
            f"{s['duplicated']:>4} {_pct(server.get('cpu_percent')):>7} "
            f"{_pct(s['bench_cpu_percent']):>6}  {_codes(s['closes'])} / {_codes(s['errors'])}")
    lines.append("")
    for s in report["stages"]:
        lines.extend(_details(s))
    if report.get("statements_unavailable"):
        lines.append(f"pg_stat_statements: unavailable ({report['statements_unavailable']})")
    v = report["verdict"]
    lines.append("verdict: " + ("OK: nothing lost, nothing duplicated" if v["ok"]
                                else "FAILED: " + "; ".join(v["problems"])))
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _details(s: dict) -> list[str]:
    out = []
    if "connections" in s:
        c, hs = s["connections"], s["connections"]["handshake_ms"]
        out.append(f"ramp: {c['websockets_open']}/{c['websockets_attempted']} websockets open in "
                    f"{c['seconds']:.2f} s ({c['handshakes_per_s']}/s), handshake p50 {_ms(hs['p50'])} "
                    f"p99 {_ms(hs['p99'])} max {_ms(hs['max'])} ms; long-polls held "
                    f"{c['longpolls_held']}/{c['longpolls_started']}; one publish per channel "
                    f"reached {'every' if s['wake']['all_woken'] else 'NOT every'} client in "
                    f"{s['wake']['seconds']:.2f} s")
    ws, lp = s["latency_ms_websocket"], s["latency_ms_longpoll"]
    if ws["count"] and lp["count"]:
        out.append(f"{s['stage']}: latency ms websockets p50 {_ms(ws['p50'])} p99 {_ms(ws['p99'])} "
                   f"max {_ms(ws['max'])}; long-polls p50 {_ms(lp['p50'])} p99 {_ms(lp['p99'])} "
                   f"max {_ms(lp['max'])}")
    if s.get("memory"):
        mem = s["memory"]
        out.append(f"server memory: {s['server']['rss_kb_before']} -> {s['server']['rss_kb_after']} KB "
                   f"RSS for {mem['connections']} connections: {mem['kb_per_connection']} KB each")
    if "reconnect" in s:
        r, hs, cu = s["reconnect"], s["reconnect"]["handshake_ms"], s["caught_up_s"]
        out.append(f"storm: {r['websockets']} websockets back in {r['seconds']:.2f} s (handshake p99 "
                   f"{_ms(hs['p99'])} ms); caught up after the drop: p50 {cu['p50']} s, p99 "
                   f"{cu['p99']} s, max {cu['max']} s; not caught up: {cu['not_caught_up']}")
    if (s.get("server") or {}).get("cpu_us_per_delivery") is not None:
        server, postgres = s["server"], s["server"].get("postgres") or {}
        if postgres.get("status") == "measured":
            split = (f"processes {server['process_cpu_us_per_delivery']} + their "
                     f"{postgres['backends']} PostgreSQL backends {postgres['cpu_us_per_delivery']}")
        elif postgres.get("status") == "excluded":
            split = f"processes only; PostgreSQL excluded: {postgres['why']}"
        else:
            split = "processes only; PostgreSQL backends not watched"
        out.append(f"{s['stage']}: server CPU {server['cpu_us_per_delivery']} µs per delivery "
                   f"({split}; process {server['pid']})")
    if s.get("websocket_bytes_per_delivery"):
        out.append(f"{s['stage']}: websockets read {s['websocket_bytes_received']} bytes, "
                   f"{s['websocket_bytes_per_delivery']} per delivery")
    if s.get("statements"):
        st = s["statements"]
        out.append(f"{s['stage']}: SQL statements per notification (pg_stat_statements): server "
                   f"{st['per_notification_server']}, publisher {st['per_notification_publisher']}, "
                   f"BEGIN/COMMIT {st['per_notification_transaction']}")
    if s.get("pool_errors_in_log") is not None:
        out.append(f"{s['stage']}: PoolError lines in the server log: {s['pool_errors_in_log']}")
    return out


def write(report: dict, as_json: bool, stream=sys.stdout) -> None:
    if as_json:
        import orjson
        stream.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        stream.write(render_text(report) + "\n")
    stream.flush()
