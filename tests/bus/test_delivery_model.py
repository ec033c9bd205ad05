"""Randomized interleavings checked against a simple model: every committed row, once.

Transactions begin, insert, commit and abort in any order; several "processes" wake
up and read the stream (rtbus_bus_stream_next, real PostgreSQL) and hand the rows to
rtbus.bus.delivery; clients reconnect to another process with the id of the last
notification they got and are caught up (rtbus_bus_replay, tiny pages). The model:
a client has received each committed row of its channels exactly once, and nothing
else. The visibility rule lives in SQL, so the model runs against the real thing.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rtbus.bus import delivery, stream
from rtbus.bus.delivery import Limits, Subscriber

BACKLOG = 50.0
LIMITS = Limits(notifications=2, max_bytes=1 << 20)
CHANNELS = ("a", "b")
TRANSACTIONS = 3
PROCESSES = 2
CLIENTS = 3


class Process:
    """A dispatcher reduced to its rules: read the stream, run catch-ups, fan out."""

    def __init__(self, conn):
        self.conn = conn
        with conn.cursor() as cur:
            self.epoch, _, _ = stream.read_next(cur, None, BACKLOG)
        self.live: dict[str, set[Subscriber]] = {}
        self.catchups: list[Subscriber] = []

    def subscribe(self, sub: Subscriber, last: int) -> None:
        delivery.start_catchup(sub, frozenset(sub.mailbox.channels), last)
        self.catchups.append(sub)

    def leave(self, sub: Subscriber) -> None:
        for subs in self.live.values():
            subs.discard(sub)
        if sub in self.catchups:
            self.catchups.remove(sub)

    def wake(self) -> None:
        with self.conn.cursor() as cur:
            epoch, live, regressed = stream.read_next(cur, self.epoch, BACKLOG)
            assert not regressed
            pages = [(sub, stream.replay(cur, sub.catchup, epoch, sub.catchup.channels,
                                         BACKLOG, LIMITS.notifications)) for sub in self.catchups]
        self.epoch = epoch
        for sub, rows in delivery.fan_out(self.live, live).items():
            sub.mailbox.take(rows)
            sub.given(rows)
        for sub, page in pages:
            rows = delivery.finish_page(sub, sub.catchup, page, epoch, LIMITS)
            sub.mailbox.take(rows)
            sub.given(rows)
            if sub.catchup is None:
                self.catchups.remove(sub)
                for channel in sub.channels:
                    self.live.setdefault(channel, set()).add(sub)


class Client:
    def __init__(self, channels):
        self.channels = channels
        self.received: list[int] = []

    def take(self, rows) -> None:
        self.received.extend(r.id for r in rows)


OPS = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.integers(0, TRANSACTIONS - 1), st.sampled_from(CHANNELS)),
    st.tuples(st.just("commit"), st.integers(0, TRANSACTIONS - 1), st.none()),
    st.tuples(st.just("abort"), st.integers(0, TRANSACTIONS - 1), st.none()),
    st.tuples(st.just("wake"), st.integers(0, PROCESSES - 1), st.none()),
    st.tuples(st.just("reconnect"), st.integers(0, CLIENTS - 1), st.none()),
), max_size=40)


@pytest.fixture(scope="module")
def model_db(module_db, pg_cluster):
    conns = [pg_cluster.connect(module_db) for _ in range(TRANSACTIONS + PROCESSES + 1)]
    for conn in conns[TRANSACTIONS:]:
        conn.autocommit = True
    yield conns[:TRANSACTIONS], conns[TRANSACTIONS:TRANSACTIONS + PROCESSES], conns[-1]
    for conn in conns:
        conn.close()


LATE_COMMIT = [("insert", 0, "a"), ("insert", 1, "a"), ("commit", 1, None), ("wake", 0, None),
               ("reconnect", 2, None), ("commit", 0, None), ("wake", 1, None), ("wake", 0, None)]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
@example(ops=LATE_COMMIT)
def test_every_committed_row_reaches_every_client_once(model_db, ops):
    txs, process_conns, admin = model_db
    with admin.cursor() as cur:
        cur.execute("TRUNCATE bus_bus, rtbus_bus_stream, rtbus_bus_late RESTART IDENTITY")
    processes = [Process(conn) for conn in process_conns]
    clients = [Client({"a"}), Client({"b"}), Client({"a", "b"})]
    subs = []
    for n, client in enumerate(clients):
        sub = Subscriber(n, "db", client)
        processes[n % PROCESSES].subscribe(sub, 0)
        subs.append((sub, processes[n % PROCESSES]))
    pending: dict[int, list[tuple[int, str]]] = {n: [] for n in range(TRANSACTIONS)}
    committed: list[tuple[int, str]] = []
    for op, n, channel in ops:
        if op == "insert":
            with txs[n].cursor() as cur:
                cur.execute("INSERT INTO bus_bus (channel, message) VALUES (%s, '{}') RETURNING id",
                            (channel,))
                pending[n].append((cur.fetchone()[0], channel))
        elif op in ("commit", "abort"):
            (txs[n].commit if op == "commit" else txs[n].rollback)()
            if op == "commit":
                committed.extend(pending[n])
            pending[n] = []
        elif op == "wake":
            processes[n].wake()
        else:
            sub, process = subs[n]
            process.leave(sub)
            client = sub.mailbox
            other = processes[(processes.index(process) + 1) % PROCESSES]
            fresh = Subscriber(n, "db", client)
            other.subscribe(fresh, client.received[-1] if client.received else 0)
            subs[n] = (fresh, other)
    for n in range(TRANSACTIONS):
        txs[n].commit()
        committed.extend(pending[n])
    for _ in range(len(ops) + 3):
        for process in processes:
            process.wake()
    for client in clients:
        wanted = sorted(row_id for row_id, channel in committed if channel in client.channels)
        assert sorted(client.received) == wanted, (client.channels, client.received)
