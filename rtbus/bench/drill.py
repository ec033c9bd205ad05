"""The staged drill: ramp, hold, spike and storm, each measured and reported.

- ramp: open the clients at --ramp-rate, then publish one notification per channel
  and wait until every client has it (this proves the subscriptions and, for
  long-polls, wakes every held poll with one publish);
- hold: publish at --rate for --duration (or --notifications);
- spike: publish --spike-notifications back to back (or at --spike-rate);
- storm: every client loses its connection at once and comes straight back with
  its `last` while publishing goes on; every client must catch up, nothing lost.

A stage's lost count covers the clients subscribed when it began: a client the
server closes during a stage is not reconnected (except in the storm), so what it
misses afterwards counts as lost, as in Odoo's own measurements.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import gevent
import gevent.pool

from rtbus.bench import probe as probes
from rtbus.bench.accounting import Histogram, Meter
from rtbus.bench.clients import ClientContext, LongPollClient, Reactor, WebsocketClient

POLL_INTERVAL = 0.05        # seconds between checks of a bounded wait
PROGRESS_INTERVAL = 1.0
SUBSCRIBE_GRACE = 0.3         # seconds between the ramp and its wake-up publish


@dataclasses.dataclass
class _StageRun:
    """What a stage notes at its start, to measure against at its end."""

    name: str
    meter: Meter
    mark: list[int]
    subscribers: list
    started: float
    own: dict
    server: dict | None
    statements: dict | None


class Drill:
    """Runs the stages of `options` against the server; `run()` returns their reports."""

    def __init__(self, options, publishing, *, base: int, server=None, statements=None,
                 log_watch=None, progress=sys.stderr):
        self.options = options
        self.publishing = publishing
        self.log = publishing.log
        self.server = server                # probes.ServerProbe or None
        self.statements = statements        # probes.StatementCounter or None
        self.log_watch = log_watch          # probes.LogWatch or None
        self.progress_stream = None if options.quiet else progress
        self.ctx = ClientContext(options.target, options.origin, base, cookie=options.cookie,
                                 db=options.db, connect_timeout=options.connect_timeout,
                                 poll_timeout=options.poll_timeout, deflate=options.deflate,
                                 subscribe=options.publish != "nchan")
        names = options.channel_names
        k = len(names)
        self.reactor = Reactor()
        self.websockets = [WebsocketClient(i, i % k, names[i % k], self.ctx, self.reactor)
                           for i in range(options.websockets)]
        self.longpolls = [LongPollClient(i, i % k, names[i % k], self.ctx)
                          for i in range(options.longpolls)]
        self.reports: list[dict] = []
        self.current = "start"
        self._progress_meter = None
        self._progress_previous = (0.0, 0, 0)

    # -- the run ---------------------------------------------------------------
    def run(self) -> list[dict]:
        """Run every stage in order (bounded), then close every client."""
        ticker = gevent.spawn(self._progress_loop) if self.progress_stream else None
        try:
            for stage in self.options.stages:
                self.current = stage
                self.reports.append(getattr(self, f"_stage_{stage}")())
                if self.progress_stream:
                    self._progress_line()     # every stage shows at least once
        finally:
            if ticker is not None:
                ticker.kill(block=False)
                self.progress_stream.write("\n" if self.progress_stream.isatty() else "")
            self.close()
        return self.reports

    def close(self) -> None:
        for client in self.longpolls:
            client.stop()
        for client in self.websockets:
            client.drop()
        self.reactor.close()

    # -- stages ----------------------------------------------------------------
    def _stage_ramp(self) -> dict:
        run = self._begin("ramp", subscribers=[])
        started = time.monotonic()
        self._open(self.websockets + self.longpolls, self.options.ramp_rate)
        connect_seconds = time.monotonic() - started
        lp_started = sum(c.running for c in self.longpolls)
        held = self._wait(lambda: self.ctx.polls_held >= lp_started, self.options.settle)
        run.subscribers = self._connected()
        # The subscribe frames are sent; give the server a moment to apply them, so
        # that what follows measures the wake-up of held connections, not that race.
        gevent.sleep(SUBSCRIBE_GRACE)
        run.mark = self.log.mark()
        woken_started = time.monotonic()
        for channel_index in range(self.options.channels):
            self.publishing.one(channel_index)
        all_woken = self._wait_delivered(run, self.options.settle)
        woken_seconds = time.monotonic() - woken_started
        report = self._end(run)
        meter = run.meter
        opened = sum(c.connected for c in self.websockets)
        report["connections"] = {
            "websockets_attempted": len(self.websockets), "websockets_open": opened,
            "longpolls_started": lp_started, "longpolls_held": self.ctx.polls_held,
            "all_longpolls_held": held, "seconds": round(connect_seconds, 3),
            "handshakes_per_s": round(meter.handshake.count / connect_seconds, 1)
            if connect_seconds > 0 else None,
            "handshake_ms": meter.handshake.summary(),
        }
        report["wake"] = {"all_woken": all_woken, "seconds": round(woken_seconds, 3)}
        report["memory"] = _memory(report["server"], opened + lp_started)
        return report

    def _stage_hold(self) -> dict:
        run = self._begin("hold")
        options = self.options
        self.publishing.run(rate=options.rate, count=options.notifications,
                            duration=None if options.notifications else options.duration)
        self._wait_delivered(run, options.settle)
        return self._end(run)

    def _stage_spike(self) -> dict:
        run = self._begin("spike")
        self.publishing.run(rate=self.options.spike_rate, count=self.options.spike_notifications,
                            duration=None)
        self._wait_delivered(run, self.options.settle)
        return self._end(run)

    def _stage_storm(self) -> dict:
        run = self._begin("storm")
        dropped_at = time.time()
        for client in run.subscribers:
            client.caught_up_at = None
            if client.kind == "lp":
                self._expect_catch_up(client)
            client.drop()           # long-polls poll again at once, from their `last`
        publisher = gevent.spawn(self.publishing.run, rate=self.options.rate, count=None,
                                 duration=self.options.storm_seconds)
        started = time.monotonic()
        self._open([c for c in run.subscribers if c.kind == "ws"], 0.0)
        reconnect_seconds = time.monotonic() - started
        publisher.join(self.options.storm_seconds + self.options.settle)
        publisher.kill(block=False)
        self._wait_delivered(run, self.options.settle)
        report = self._end(run)
        handshake = run.meter.handshake
        report["reconnect"] = {"websockets": handshake.count, "seconds": round(reconnect_seconds, 3),
                               "handshake_ms": handshake.summary()}
        report["caught_up_s"] = _catch_up(run.subscribers, dropped_at)
        return report

    # -- helpers -----------------------------------------------------------------
    def _open(self, clients: list, rate: float) -> None:
        """Start `clients` at `rate` per second (0: at once), at most
        --connect-concurrency handshakes in flight; bounded by the connect timeout."""
        pool = gevent.pool.Pool(self.options.connect_concurrency)
        started = time.monotonic()
        for i, client in enumerate(clients):
            if rate > 0:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    gevent.sleep(delay)
            pool.spawn(self._open_one, client)
        pool.join(timeout=self.options.connect_timeout + 5.0)
        pool.kill(block=False)

    def _open_one(self, client) -> None:
        if client.kind == "lp":
            client.start(client.last)
            return
        self._expect_catch_up(client)
        if client.open(client.last) and not client.catchup_target:
            client.caught_up_at = time.time()

    def _expect_catch_up(self, client) -> None:
        """Note the id `client` must reach to have caught up with its channel; a
        long-poll with nothing to catch up is caught up at once."""
        target = self.log.last_on(client.channel_index)
        client.catchup_target = target if target > client.last else 0
        if client.kind == "lp" and not client.catchup_target:
            client.caught_up_at = time.time()

    def _connected(self) -> list:
        return ([c for c in self.websockets if c.connected]
                + [c for c in self.longpolls if c.running])

    def _wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(POLL_INTERVAL)
        return True

    def _wait_delivered(self, run: _StageRun, timeout: float) -> bool:
        """Wait until every subscriber has the last id published on its channel
        (ids on a channel come in order), at most `timeout` seconds."""
        targets = [self.log.last_on(i) for i in range(self.options.channels)]
        pending = list(run.subscribers)

        def done() -> bool:
            nonlocal pending
            # A client closed by the server will not get anything more: no use waiting.
            pending = [c for c in pending
                       if c.received.max_id < targets[c.channel_index] and _alive(c)]
            return not pending
        return self._wait(done, timeout)

    def _begin(self, name: str, subscribers: list | None = None) -> _StageRun:
        meter = Meter(name)
        self.ctx.meter = meter
        self.publishing.meter = meter
        if self.log_watch is not None:
            self.log_watch.count_new()
        return _StageRun(
            name=name, meter=meter, mark=self.log.mark(),
            subscribers=self._connected() if subscribers is None else subscribers,
            started=time.monotonic(), own=probes.own_cpu(),
            server=self.server.sample() if self.server else None,
            statements=self.statements.snapshot() if self.statements else None)

    def _end(self, run: _StageRun) -> dict:
        meter = run.meter
        now = time.monotonic()
        own = probes.own_cpu()
        server = self.server.sample() if self.server else None
        lost = 0
        for client in run.subscribers:
            lost += client.received.missing(self.log.since(run.mark, client.channel_index))
        expected = sum(len(self.log.since(run.mark, c.channel_index)) for c in run.subscribers)
        delivery_window = ((meter.last_delivery - meter.first_delivery)
                           if meter.first_delivery is not None else 0.0)
        return {
            "stage": run.name,
            "seconds": round(now - run.started, 3),
            "subscribers": {"websockets": sum(c.kind == "ws" for c in run.subscribers),
                            "longpolls": sum(c.kind == "lp" for c in run.subscribers)},
            "published": meter.published,
            "publish_per_s": round(meter.published / (now - run.started), 1),
            "expected_deliveries": expected,
            "deliveries": meter.deliveries,
            "websocket_bytes_received": meter.wire_bytes,
            "websocket_bytes_per_delivery": round(meter.wire_bytes / meter.deliveries, 1)
            if meter.deliveries else None,
            "deliveries_per_s": round(meter.deliveries / delivery_window, 1)
            if delivery_window > 0 else None,
            "latency_ms": meter.latency.summary(),
            "latency_ms_websocket": meter.latency_by_kind["ws"].summary(),
            "latency_ms_longpoll": meter.latency_by_kind["lp"].summary(),
            "publish_ms": meter.publish.summary(),
            "lost": lost,
            "duplicated": meter.duplicates,
            "closes": {str(code): n for code, n in sorted(meter.closes.items())},
            "errors": dict(sorted(meter.errors.items())),
            "bench_cpu_percent": probes.cpu_percent(run.own, own),
            "bench_max_rss_kb": own["max_rss_kb"],
            "server": _server(self.server, run.server, server, meter.deliveries),
            "statements": (self.statements.delta(run.statements, self.statements.snapshot(),
                                                 meter.published)
                           if self.statements else None),
            "pool_errors_in_log": self.log_watch.count_new() if self.log_watch else None,
        }

    def _progress_loop(self) -> None:
        while True:
            gevent.sleep(PROGRESS_INTERVAL)
            self._progress_line()

    def _progress_line(self) -> None:
        """One status line on the progress stream: rates since the previous line."""
        stream, meter, now = self.progress_stream, self.ctx.meter, time.monotonic()
        if meter is not self._progress_meter:
            self._progress_meter, self._progress_previous = meter, (meter.started, 0, 0)
        then, published, delivered = self._progress_previous
        span = max(now - then, 1e-6)
        line = (f"[{self.current}] {now - meter.started:5.1f}s"
                f" ws {sum(c.connected for c in self.websockets)}/{len(self.websockets)}"
                f" lp held {self.ctx.polls_held}/{len(self.longpolls)}"
                f" pub {meter.published} ({(meter.published - published) / span:.0f}/s)"
                f" recv {meter.deliveries} ({(meter.deliveries - delivered) / span:.0f}/s)"
                f" p99 {meter.latency.quantile(0.99) or 0:.0f}ms"
                f" closes {sum(meter.closes.values())} errors {sum(meter.errors.values())}")
        stream.write(line.ljust(120) + ("\r" if stream.isatty() else "\n"))
        stream.flush()
        self._progress_previous = (now, meter.published, meter.deliveries)


def _alive(client) -> bool:
    return client.running if client.kind == "lp" else client.connected


def _server(probe, before: dict | None, after: dict | None, deliveries: int) -> dict | None:
    """The server's figures for a stage: CPU per delivery counts the processes and, when
    they are watched and local, their PostgreSQL backends."""
    if probe is None:
        return None
    measured = bool(before and after and deliveries)
    process_s = after["cpu_s"] - before["cpu_s"] if measured else 0.0
    postgres = _postgres(probe, before, after, deliveries)
    total_s = process_s + (postgres.get("cpu_s") or 0.0)
    per = (lambda seconds: round(1e6 * seconds / deliveries, 2)) if measured else (lambda _s: None)
    return {"pid": probe.pid, "pids": probe.pids, "title": probe.title,
            "rss_kb_before": before and before["rss_kb"], "rss_kb_after": after and after["rss_kb"],
            "cpu_percent": probes.cpu_percent(before, after), "cpu_us_per_delivery": per(total_s),
            "process_cpu_us_per_delivery": per(process_s), "postgres": postgres}


def _postgres(probe, before: dict | None, after: dict | None, deliveries: int) -> dict:
    """{"status": "measured" | "excluded" (the database is remote) | "not watched", ...}."""
    backends = probe.backends
    if backends is None:
        return {"status": "not watched"}
    if backends.remote:
        return {"status": "excluded", "why": "the database's backends are not on this machine"}
    if not (before and after and before["postgres"] and after["postgres"]):
        return {"status": "not watched"}
    spent, seen = backends.delta(before["postgres"], after["postgres"])
    return {"status": "measured", "backends": seen, "cpu_s": round(spent, 3),
            "cpu_us_per_delivery": round(1e6 * spent / deliveries, 2) if deliveries else None}


def _memory(server: dict | None, connections: int) -> dict | None:
    if not server or not server["rss_kb_before"] or not server["rss_kb_after"] or not connections:
        return None
    grown = server["rss_kb_after"] - server["rss_kb_before"]
    return {"connections": connections, "rss_growth_kb": grown,
            "kb_per_connection": round(grown / connections, 2)}


def _catch_up(subscribers: list, dropped_at: float) -> dict:
    """Seconds from the drop until each subscriber had every id published before it
    came back: p50, p99, max, and how many never caught up."""
    histogram = Histogram()
    behind = 0
    for client in subscribers:
        if client.caught_up_at is None or client.catchup_target:
            behind += 1
        else:
            histogram.record(max(client.caught_up_at - dropped_at, 0.0))
    summary = histogram.summary()
    seconds = {key: (round(summary[key] / 1000.0, 3) if summary[key] is not None else None)
               for key in ("p50", "p99", "max")}
    return {**seconds, "caught_up": histogram.count, "not_caught_up": behind}
