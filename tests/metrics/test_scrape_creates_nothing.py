"""Reading /metrics creates nothing: a scrape only reads the parts a process built at start.

Each served process (an HTTP worker, the gevent process, single mode's one process) is
scraped several times. Before the first scrape its state is read from outside: the
PostgreSQL backends its processes hold (pg_stat_activity, matched to the server's own
TCP sockets) and the snapshot file it wrote by itself (the runtime directory). After
the scrapes the same state is read again and must be the same, and every scrape must
expose the same families and series (values may move: memory, requests served).

In one process, the parts a library user builds (`build`, then `Application`) are read
through /metrics and `Services.figures()`: no rtbus object may outlive the reads. That
is the check 6263e61 fails (its figures called `default_notifier()`, which made a
Notifier when the process had not installed one); its servers installed one at start,
so through a real server the old code passes the first check too.
"""

from __future__ import annotations

import collections
import gc
import os
import time

import pytest
import werkzeug.test

import pgcluster
from rtbus.http.app import Application
from rtbus.metrics import snapshots
from rtbus.service.services import build
from waiting import parse_samples, scrape_text, wait_until

pytestmark = pytest.mark.timeout(90)

SCRAPES = 5

# The figures of a process's parts: a part created (or connected) by a scrape moves one of them.
PART_FAMILIES = (
    "rtbus_pool_connections_max", "rtbus_pool_connections_in_use", "rtbus_pool_connections_idle",
    "rtbus_pool_connects_total", "rtbus_pool_errors_total",
    "rtbus_listen_connections", "rtbus_listen_reconnects_total",
    "rtbus_notify_payloads_total", "rtbus_notify_errors_total",
    "rtbus_dispatch_subscribers", "rtbus_dispatch_channels", "rtbus_websockets_open", "rtbus_longpolls_open",
)


def _socket_owners(pids) -> dict[str, int]:
    """{socket inode link: pid} for every open file of `pids` that is a socket."""
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners[link] = pid
    return owners


def _local_ports(pids) -> dict[int, int]:
    """{local TCP port: pid} of the IPv4 sockets held by `pids`."""
    owners = _socket_owners(pids)
    ports = {}
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            owner = owners.get(f"socket:[{fields[9]}]")
            if owner is not None:
                ports[int(fields[1].rsplit(":", 1)[1], 16)] = owner
    return ports


def server_backends(pg_cluster, server) -> collections.Counter:
    """How many PostgreSQL backends each of `server`'s processes holds, by
    (process title, application_name, database)."""
    titles = {server.pid: "rtbus-server", **server.children()}   # the master, or single mode itself
    ports = _local_ports(titles)
    conn = pg_cluster.connect("postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT client_port, application_name, datname FROM pg_stat_activity"
                        " WHERE client_port IS NOT NULL AND pid <> pg_backend_pid()")
            rows = cur.fetchall()
    finally:
        conn.close()
    return collections.Counter((titles[ports[port]], name, db) for port, name, db in rows if port in ports)


def own_snapshots(server, since: float) -> dict:
    """{(kind, pid): metrics} of every process of `server`, each written after `since`
    by the process itself (every snapshots.INTERVAL s), so no scrape asked for it."""
    expected = {server.pid, *server.children()}

    def written():
        found = {s["pid"]: s for s in snapshots.read_all(server.runtime_dir)}
        if set(found) >= expected and all(found[pid]["written"] > since for pid in expected):
            return {(found[pid]["kind"], pid): found[pid]["metrics"] for pid in expected}
        return None

    return wait_until(written, 3 * snapshots.INTERVAL + 5, message="a fresh snapshot of every process")


def parts(metrics: dict) -> dict:
    """The part figures of one process's snapshot, and the names of all its families."""
    return {"families": sorted(metrics), **{name: metrics.get(name) for name in PART_FAMILIES}}


def series(text: str) -> set:
    """Every (family, labels) of an exposition, without the values."""
    return {(name, tuple(sorted(labels.items()))) for name, labels, _value in parse_samples(text)}


@pytest.fixture(scope="module")
def launch_with_runtime_dir(module_servers, tmp_path_factory):
    def launch(*args: str, name: str):
        runtime_dir = str(tmp_path_factory.mktemp(f"{name}-run"))
        server = module_servers(f"--runtime-dir={runtime_dir}", *args, name=name)
        server.runtime_dir = runtime_dir
        return server
    return launch


def assert_scrapes_create_nothing(pg_cluster, server, *ports: int) -> None:
    before = {key: parts(metrics) for key, metrics in own_snapshots(server, since=time.time()).items()}
    backends = server_backends(pg_cluster, server)
    assert backends, "the server holds no PostgreSQL backend: nothing to compare"
    for port in ports:
        texts = [scrape_text(port) for _ in range(SCRAPES)]
        assert server_backends(pg_cluster, server) == backends
        first = series(texts[0])
        assert all(series(text) == first for text in texts[1:]), f"the series moved between scrapes of {port}"
    # The answering processes rewrote their snapshots at each scrape; the others kept theirs.
    after = {(s["kind"], s["pid"]): parts(s["metrics"]) for s in snapshots.read_all(server.runtime_dir)}
    assert after == before
    assert server_backends(pg_cluster, server) == backends


def test_scraping_the_http_worker_and_the_gevent_process_creates_nothing(pg_cluster, launch_with_runtime_dir):
    server = launch_with_runtime_dir(name="prefork")
    assert_scrapes_create_nothing(pg_cluster, server, server.http_port, server.longpolling_port)


def test_scraping_single_mode_creates_nothing(pg_cluster, launch_with_runtime_dir):
    server = launch_with_runtime_dir("--workers=0", name="single")
    assert_scrapes_create_nothing(pg_cluster, server, server.http_port)


# -- in one process: the WSGI application's /metrics and Services.figures() -------------------


def rtbus_objects() -> collections.Counter:
    """How many live instances of each rtbus class there are, after a full collection."""
    gc.collect()
    names = (f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    return collections.Counter(name for name in names if name.startswith("rtbus."))


@pytest.mark.parametrize("role", ["http", "gevent", "single"])
def test_reading_the_figures_leaves_no_new_object_and_opens_no_connection(pg_cluster, schema_db, tmp_path, role):
    """What a library user builds (the parts, then the Application), read through /metrics
    and figures(): no rtbus object outlives a read (a Notifier made on first read, say)."""
    config = pgcluster.config_for(pg_cluster, db_name=schema_db, runtime_dir=str(tmp_path),
                                  max_cron_threads=0)
    services = build(config, role)
    try:
        client = werkzeug.test.Client(Application(services))
        parts_before = dict(vars(services))
        objects_before = rtbus_objects()
        pool_before = services.pool.stats()
        for _ in range(SCRAPES):
            response = client.get("/metrics")
            assert response.status_code == 200 and b"rtbus_pool_connections_max" in response.data
            services.figures()
        created = rtbus_objects() - objects_before
        assert not created, f"left behind by reading the figures: {dict(created)}"
        assert all(vars(services)[name] is part for name, part in parts_before.items())
        assert services.pool.stats() == pool_before and pool_before["connects"] == 0
    finally:
        services.close()
