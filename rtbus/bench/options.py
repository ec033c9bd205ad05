"""The rtbus-bench command line, validated into one frozen `BenchOptions`.

Any mistake is reported as one line, ``rtbus-bench: error: <sentence>``, with exit
status 2, before anything is connected.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from rtbus.bench import compare, wire
from rtbus.bench.publishers import PATHS

STAGES = ("ramp", "hold", "spike", "storm")
DRILL_STAGES = STAGES
EXIT_USAGE = 2

DESCRIPTION = """\
Open N websocket and M long-polling clients on K channels of a running rtbus (or Odoo)
bus server, publish notifications through SQL, the Python API or HTTP, and report
connects/s, handshake and delivery latency, lost and duplicated notifications, close
codes and the server's memory per connection. It only ever connects to the addresses
it is given, bounds every wait, and stops by itself."""


class UsageError(Exception):
    """A bad command line; the message is the one line printed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # argparse prints usage + message; we want one line
        raise UsageError(message)


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    target: wire.Target
    websockets: int
    longpolls: int
    channels: int
    channel_prefix: str
    ramp_rate: float
    connect_concurrency: int
    connect_timeout: float
    poll_timeout: float
    publish: str
    dsn: str
    imbus_db: str
    publish_target: wire.Target
    api_key: str | None
    db: str | None
    cookie: str | None
    origin: str
    rate: float
    notifications: int | None
    duration: float
    payload_bytes: int
    deflate: bool
    stages: tuple[str, ...]
    spike_notifications: int
    spike_rate: float
    storm_seconds: float
    settle: float
    server_pid: int | None
    server_log: str | None
    pg_stats_dsn: str | None
    max_seconds: float
    json: bool
    quiet: bool
    comparison: compare.Comparison | None = None

    @property
    def channel_names(self) -> list[str]:
        if self.channels == 1:
            return [self.channel_prefix]
        return [f"{self.channel_prefix}{i}" for i in range(self.channels)]

    @property
    def marker_channel(self) -> str:
        """Where the bench publishes its own markers: a channel no client listens to."""
        return f"{self.channel_prefix}-marker"


# The --compare flags (the second server); rtbus.bench.compare runs them.
COMPARE_FLAGS = (
    ("--compare", dict(metavar="KIND:URL", help=(
        "run the same workload against a second server too and print one table: "
        "nchan:http://HOST:PORT (Nchan: websockets on /websocket, POST /pub/<channel>) "
        "or rtbus:http://HOST:PORT"))),
    ("--compare-pid", dict(type=int, metavar="PID", help=(
        "the second server's process for its CPU (an nginx master: its workers; an rtbus "
        "master: its gevent children)"))),
    ("--compare-dsn", dict(metavar="DSN", help=(
        "rtbus:URL, sql and python publishing: its database (default --dsn)"))),
    ("--compare-publish-url", dict(metavar="URL", help=(
        "rtbus:URL, http publishing: its /bus/publish address (default --publish-url)"))),
    ("--compare-rounds", dict(type=int, default=1, metavar="R", help=(
        "runs per server, alternated (first, second, first, ...; default 1)"))),
    ("--labels", dict(metavar="FIRST,SECOND", help=(
        "the two servers' names in the table (default rtbus,nchan or rtbus,rtbus-2)"))),
)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rtbus-bench", description=DESCRIPTION,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="the server's longpolling address (websockets, long-polls), "
                   "e.g. http://127.0.0.1:8072, or a proxy in front of it")
    clients = p.add_argument_group("clients")
    clients.add_argument("-n", "--websockets", type=int, default=100, metavar="N")
    clients.add_argument("-m", "--longpolls", type=int, default=0, metavar="M")
    clients.add_argument("-k", "--channels", type=int, default=1, metavar="K",
                         help="clients are spread round robin over K channels (default 1)")
    clients.add_argument("--channel-prefix", default="bench",
                         help="channel names: PREFIX when K=1, else PREFIX0..PREFIX{K-1} "
                         "(a server locked down with public_channels must let them through)")
    clients.add_argument("--ramp-rate", type=float, default=500.0, metavar="PER_S",
                         help="new connections per second while ramping up; 0: as fast as possible")
    clients.add_argument("--connect-concurrency", type=int, default=100, metavar="C",
                         help="handshakes in flight at once (default 100)")
    clients.add_argument("--connect-timeout", type=float, default=10.0, metavar="S")
    clients.add_argument("--poll-timeout", type=float, default=65.0, metavar="S",
                         help="longest wait for a long-poll answer (default 65)")
    clients.add_argument("--cookie", help="Cookie header sent by every client, e.g. session_id=...")
    clients.add_argument("--origin", help="Origin header (default: the target's origin)")
    clients.add_argument("--db", help="database to use (websocket ?db= and publish param)")
    clients.add_argument("--deflate", action="store_true",
                         help="websockets offer permessage-deflate, as browsers do, and inflate "
                              "the compressed frames they get")
    publishing = p.add_argument_group("publishing")
    publishing.add_argument("--publish", choices=PATHS, default="sql",
                            help="sql: rtbus_sendone + COMMIT; python: rtbus.bus.publish; "
                            "http: POST /bus/publish (default sql)")
    publishing.add_argument("--dsn", default=os.environ.get("RTBUS_BENCH_DSN", ""),
                            help="libpq connection string to the served database (sql, python); "
                            "default $RTBUS_BENCH_DSN, then libpq's PG* variables")
    publishing.add_argument("--imbus-db", default="postgres",
                            help="database the python path NOTIFYs in (default postgres)")
    publishing.add_argument("--publish-url", help="HTTP address of /bus/publish (default: target)")
    publishing.add_argument("--api-key", default=os.environ.get("RTBUS_BENCH_API_KEY"),
                            help="bus_api_key for the http path (default $RTBUS_BENCH_API_KEY)")
    publishing.add_argument("-r", "--rate", type=float, default=50.0, metavar="PER_S",
                            help="notifications per second in hold and storm; 0: back to back")
    publishing.add_argument("--notifications", type=int, metavar="COUNT",
                            help="notifications in the hold stage (default: --duration)")
    publishing.add_argument("--duration", type=float, default=10.0, metavar="S",
                            help="length of the hold stage when --notifications is not given")
    publishing.add_argument("--payload-bytes", type=int, default=0, metavar="B",
                            help="padding added to each notification's payload")
    drill = p.add_argument_group("stages")
    drill.add_argument("--stages", default="ramp,hold",
                       help=f"comma list among {', '.join(STAGES)}, ramp first (default ramp,hold)")
    drill.add_argument("--drill", action="store_true",
                       help="the staged load drill: ramp, hold, spike, storm")
    drill.add_argument("--spike-notifications", type=int, default=500, metavar="COUNT")
    drill.add_argument("--spike-rate", type=float, default=0.0, metavar="PER_S",
                       help="0 (default): back to back")
    drill.add_argument("--storm-seconds", type=float, default=5.0, metavar="S",
                       help="publishing goes on at --rate this long after every client dropped")
    drill.add_argument("--settle", type=float, default=10.0, metavar="S",
                       help="longest wait for deliveries after a stage's last publish")
    drill.add_argument("--max-seconds", type=float, default=900.0, metavar="S",
                       help="hard bound on the whole run (default 900)")
    observe = p.add_argument_group("observing the server")
    observe.add_argument("--server-pid", type=int, metavar="PID",
                         help="measure this process (an rtbus master: its 'rtbus: gevent' children) and, "
                         "through --pg-stats-dsn or --dsn, the PostgreSQL backends it holds")
    observe.add_argument("--server-log", metavar="PATH", help="count new PoolError lines in this log")
    observe.add_argument("--pg-stats-dsn", metavar="DSN",
                         help="read pg_stat_statements through this connection")
    versus = p.add_argument_group("comparing with a second server")
    for flag, settings in COMPARE_FLAGS:
        versus.add_argument(flag, **settings)
    output = p.add_argument_group("output")
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("-q", "--quiet", action="store_true", help="no progress line on stderr")
    return p


def parse(argv: list[str] | None = None) -> BenchOptions:
    """Parse and check `argv`; raises UsageError with a one-line sentence."""
    args = build_parser().parse_args(argv)
    try:
        target = wire.Target.parse(args.target)
        publish_target = wire.Target.parse(args.publish_url) if args.publish_url else target
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stages = DRILL_STAGES if args.drill else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    _check(args, stages)
    comparison = _comparison(args, stages)
    return BenchOptions(
        target=target, websockets=args.websockets, longpolls=args.longpolls,
        channels=args.channels, channel_prefix=args.channel_prefix, ramp_rate=args.ramp_rate,
        connect_concurrency=args.connect_concurrency, connect_timeout=args.connect_timeout,
        poll_timeout=args.poll_timeout, publish=args.publish, dsn=args.dsn,
        imbus_db=args.imbus_db, publish_target=publish_target, api_key=args.api_key, db=args.db,
        cookie=args.cookie, origin=args.origin or target.origin, rate=args.rate,
        notifications=args.notifications, duration=args.duration,
        payload_bytes=args.payload_bytes, deflate=args.deflate, stages=stages,
        spike_notifications=args.spike_notifications, spike_rate=args.spike_rate,
        storm_seconds=args.storm_seconds, settle=args.settle, server_pid=args.server_pid,
        server_log=args.server_log, pg_stats_dsn=args.pg_stats_dsn,
        max_seconds=args.max_seconds, json=args.json, quiet=args.quiet, comparison=comparison,
    )


def _comparison(args, stages: tuple[str, ...]) -> compare.Comparison | None:
    extras = [flag for flag, value in (("--compare-pid", args.compare_pid),
                                       ("--compare-dsn", args.compare_dsn),
                                       ("--compare-publish-url", args.compare_publish_url),
                                       ("--labels", args.labels)) if value is not None]
    if args.compare is None:
        if extras or args.compare_rounds != 1:
            raise UsageError(f"{(extras or ['--compare-rounds'])[0]} needs --compare KIND:URL")
        return None
    try:
        kind, target = compare.parse_spec(args.compare)
        publish_target = (wire.Target.parse(args.compare_publish_url)
                          if args.compare_publish_url else None)
        if kind == "nchan":
            compare.check_nchan(args.longpolls == 0, args.channels, stages, "--compare nchan")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if kind == "nchan" and (args.compare_dsn or args.compare_publish_url):
        raise UsageError("--compare-dsn and --compare-publish-url are for --compare rtbus:URL; "
                         "Nchan is published to on its own address")
    if args.compare_rounds < 1:
        raise UsageError("--compare-rounds must be 1 or more")
    default_labels = "rtbus,rtbus-2" if kind == "rtbus" else f"rtbus,{kind}"
    labels = [name.strip() for name in (args.labels or default_labels).split(",")]
    if len(labels) != 2 or not all(labels) or labels[0] == labels[1]:
        raise UsageError("--labels takes two different names, FIRST,SECOND")
    return compare.Comparison(kind=kind, target=target, pid=args.compare_pid,
                              dsn=args.compare_dsn, publish_target=publish_target,
                              label=labels[1], this_label=labels[0], rounds=args.compare_rounds)


def _check(args, stages: tuple[str, ...]) -> None:
    for name in ("websockets", "longpolls", "payload_bytes", "spike_notifications"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 or more")
    if args.websockets + args.longpolls < 1:
        raise UsageError("nothing to measure: give --websockets and/or --longpolls above 0")
    if args.channels < 1:
        raise UsageError("--channels must be 1 or more")
    if args.connect_concurrency < 1:
        raise UsageError("--connect-concurrency must be 1 or more")
    for name in ("ramp_rate", "rate", "spike_rate"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be 0 (as fast as possible) or more")
    for name in ("connect_timeout", "poll_timeout", "duration", "storm_seconds", "settle",
                 "max_seconds"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be more than 0 seconds")
    if args.notifications is not None and args.notifications < 1:
        raise UsageError("--notifications must be 1 or more")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    if not stages or stages[0] != "ramp" or stages.count("ramp") != 1:
        raise UsageError("--stages must start with ramp, once (clients connect there)")
    if args.publish == "nchan":
        try:
            compare.check_nchan(args.longpolls == 0, args.channels, stages, "--publish nchan")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.publish == "http" and not args.api_key:
        raise UsageError("--publish=http needs --api-key (or $RTBUS_BENCH_API_KEY)")
    if not args.channel_prefix or any(c in args.channel_prefix for c in '"\\'):
        raise UsageError("--channel-prefix must be a non-empty name without quotes or backslashes")


def parse_or_exit(argv: list[str] | None = None) -> BenchOptions:
    try:
        return parse(argv)
    except UsageError as exc:
        sys.stderr.write(f"rtbus-bench: error: {exc}\n")
        raise SystemExit(EXIT_USAGE) from None
