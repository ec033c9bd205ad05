"""``rtbus-bench``: the console script.

Exit status: 0 when every stage ran and nothing was lost or duplicated and every
client connected; 1 when the drill found a problem (or could not start: the
publisher or the server probe failed); 2 for a bad command line.
"""

from __future__ import annotations

import sys

from rtbus.bench.options import EXIT_USAGE, parse_or_exit

EXIT_OK = 0
EXIT_FAILED = 1
FD_RESERVE = 64     # descriptors kept for the publisher, probes, logs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["abuse"]:
        from rtbus.bench import abuse   # the abuse drill has its own options
        return abuse.main(argv[1:])
    options = parse_or_exit(argv)
    # Imported after parsing so that `--help` and usage errors stay instant.
    from rtbus.bench import probe as probes
    from rtbus.db.green import make_psycopg_green

    make_psycopg_green()
    limit = probes.raise_nofile_limit()
    needed = options.websockets + options.longpolls + FD_RESERVE
    if needed > limit:
        return _fail(f"{needed} open files needed but the limit is {limit}; raise `ulimit -n`",
                     EXIT_USAGE)
    if options.comparison is not None:
        return _compare(options)
    report, code = _measure(options)
    if report is None:
        return code
    from rtbus.bench.report import write
    write(report, options.json)
    return EXIT_OK if report["verdict"]["ok"] else EXIT_FAILED


def _compare(options) -> int:
    """Every run of --compare, alternated; one table (or one JSON document) for all."""
    from rtbus.bench import compare
    from rtbus.bench import report as reports

    sides = compare.sides(options)
    runs = []
    for round_, side in compare.schedule(options.comparison.rounds):
        label, side_options = sides[side]
        if not options.quiet:
            sys.stderr.write(f"rtbus-bench: {label} ({side_options.target}), run {round_}\n")
        report, code = _measure(side_options)
        if report is None:
            return _fail(f"{label} ({side_options.target}) could not be measured", code)
        runs.append((round_, side, report))
    labels = (sides[0][0], sides[1][0])
    comparison = compare.build(labels, runs)
    if options.json:
        reports.write({"comparison": comparison,
                       "runs": [{"round": r, "server": labels[s], "report": report}
                                for r, s, report in runs]}, True)
    else:
        sys.stdout.write(compare.render_text(comparison, _heading(options, sides, runs)) + "\n")
    return EXIT_OK if comparison["verdict"]["ok"] else EXIT_FAILED


def _heading(options, sides, runs) -> str:
    workload = (f"{options.websockets} websockets, {options.longpolls} long-polls, "
                f"{options.channels} channel(s), rate {options.rate or 'max'}/s, "
                f"stages {','.join(options.stages)}")
    measured = {side: report["server"] for _round, side, report in runs}
    servers = []
    for index, (label, side) in enumerate(sides):
        server = measured.get(index)
        cpu = (f"CPU of {server['title'][:40]!r} pid {server['pid']}" if server
               else "no server CPU (no pid given)")
        servers.append(f"{label}: {side.target} ({side.publish} publishing, {cpu})")
    return f"rtbus-bench --compare: {workload}\n" + "; ".join(servers)


def _measure(options) -> tuple[dict | None, int]:
    """One drill against `options.target`: (its report, 0), or (None, exit status) after
    saying on stderr why it could not start."""
    from rtbus.bench import probe as probes

    try:
        server = probes.ServerProbe(options.server_pid) if options.server_pid else None
    except OSError as exc:
        return None, _fail(f"--server-pid {options.server_pid}: {exc}", EXIT_USAGE)
    backends_dsn = options.pg_stats_dsn or (options.dsn if options.publish in ("sql", "python") else None)
    if server is not None and backends_dsn is not None:
        try:
            server.watch_backends(backends_dsn)
        except Exception as exc:   # psycopg2: the server's CPU is then the processes' alone
            sys.stderr.write(f"rtbus-bench: PostgreSQL backends not measured: {str(exc).strip()}\n")
    try:
        publishing = _publishing(options)
    except Exception as exc:   # psycopg2 or socket errors: say which path and why
        if server is not None:
            server.close()
        return None, _fail(f"cannot publish through {options.publish}: {str(exc).strip()}",
                           EXIT_FAILED)
    try:
        base = publishing.one(channel=options.marker_channel)
        if base is None:
            return None, _fail(f"the first publish through {options.publish} failed: "
                               f"{dict(publishing.meter.errors)}", EXIT_FAILED)
        return _run(options, publishing, base, server), EXIT_OK
    finally:
        publishing.close()
        if server is not None:
            server.close()


def _publishing(options):
    from rtbus.bench import wire
    from rtbus.bench.accounting import PublishLog
    from rtbus.bench.publishers import Publishing, make_publisher

    publisher = make_publisher(options.publish, dsn=options.dsn, imbus_db=options.imbus_db,
                               target=options.publish_target, api_key=options.api_key,
                               db=options.db)
    return Publishing(publisher, options.channel_names, PublishLog(options.channels),
                      wire.filler_text(options.payload_bytes))


def _run(options, publishing, base: int, server) -> dict:
    import gevent

    from rtbus.bench import probe as probes
    from rtbus.bench import report as reports
    from rtbus.bench.drill import Drill

    statements, unavailable = None, None
    if options.pg_stats_dsn:
        try:
            statements = probes.StatementCounter(options.pg_stats_dsn)
        except Exception as exc:   # not preloaded, no rights, no server: say so in the report
            unavailable = " ".join(str(exc).split())[:200]
    log_watch = probes.LogWatch(options.server_log) if options.server_log else None
    drill = Drill(options, publishing, base=base, server=server, statements=statements,
                  log_watch=log_watch)
    the_machine = reports.machine()
    aborted = False
    try:
        with gevent.Timeout(options.max_seconds):
            drill.run()
    except gevent.Timeout:
        aborted = True
    finally:
        if statements is not None:
            statements.close()
    return {
        "target": str(options.target),
        "options": _options_summary(options),
        "machine": the_machine,
        "server": {"pid": server.pid, "title": server.title} if server else None,
        "stages": drill.reports,
        "aborted": aborted,
        "statements_unavailable": unavailable,
        "verdict": reports.verdict(drill.reports, aborted),
    }


def _options_summary(options) -> dict:
    return {"websockets": options.websockets, "longpolls": options.longpolls,
            "channels": options.channels, "publish": options.publish, "rate": options.rate,
            "ramp_rate": options.ramp_rate, "notifications": options.notifications,
            "duration": options.duration, "payload_bytes": options.payload_bytes,
            "deflate": options.deflate,
            "stages": list(options.stages), "spike_notifications": options.spike_notifications,
            "spike_rate": options.spike_rate, "storm_seconds": options.storm_seconds}


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"rtbus-bench: error: {message}\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
