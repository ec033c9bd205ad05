"""Suite-wide fixtures: a real PostgreSQL started for the run, fresh databases, and a
per-test time bound."""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import signal
import sys
import threading

import pytest

# Importable under any --import-mode, not only pytest's default "prepend".
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgcluster  # noqa: E402
from buspublish import Publish  # noqa: E402

DEFAULT_TEST_TIMEOUT = 60.0   # seconds a test may run when nothing else sets a bound
HARD_TIMEOUT_GRACE = 15.0     # then the watchdog kills the run (a test stuck in C code)


def _have_pytest_timeout(pluginmanager) -> bool:
    """pytest-timeout, when active, owns the `timeout` marker and ini option; else we bound tests."""
    return pluginmanager.has_plugin("timeout")


def pytest_addoption(parser, pluginmanager):
    if not _have_pytest_timeout(pluginmanager):
        parser.addini("timeout", "default per-test time bound in seconds", default="")


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): bound the test's run time")
    atexit.register(pgcluster.destroy_all)


def pytest_collection_modifyitems(config, items):
    _mark_missing_programs(items)
    _bound_every_test(config, items)


def _mark_missing_programs(items) -> None:
    """Mark skipped, with the reason, the tests whose system program (nginx, Chromium) is missing."""
    import system_programs

    found: dict = {}
    for item in items:
        for fixture, (finder, reason) in system_programs.REQUIRED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                if finder not in found:
                    found[finder] = finder()
                item.add_marker(pytest.mark.skipif(found[finder] is None, reason=reason))


def _bound_every_test(config, items) -> None:
    """Give every test a bound even when nothing configures one (pytest-timeout's default is none)."""
    if _have_pytest_timeout(config.pluginmanager) and (config.getoption("timeout", None) is not None
                                 or config.getini("timeout") or os.environ.get("PYTEST_TIMEOUT")):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


def pytest_sessionfinish(session, exitstatus):
    pgcluster.destroy_all()


SERVER_LOG_TAIL = 8000    # characters of each server's log shown with a failed test
started_servers = pytest.StashKey[list]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the end of the log of every server it started."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for server in item.stash.get(started_servers, []):
        try:
            with open(server.log_path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        report.sections.append((f"rtbus-server log {server.log_path} (end)", text[-SERVER_LOG_TAIL:]))


class TimeBoundExceeded(Exception):
    """A test ran past its time bound."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Bound the test call: SIGALRM raises in the main thread at the limit; if the test is
    stuck where Python cannot run (a blocking C call), a watchdog dumps every thread's
    stack, removes the clusters and exits the run after a grace period."""
    if _have_pytest_timeout(item.config.pluginmanager) or threading.current_thread() is not threading.main_thread():
        yield
        return
    marker = item.get_closest_marker("timeout")
    limit = float(marker.args[0]) if marker and marker.args else float(
        item.config.getini("timeout") or DEFAULT_TEST_TIMEOUT)

    def on_alarm(signum, frame):
        raise TimeBoundExceeded(f"{item.nodeid} ran longer than {limit:.0f} s")

    watchdog = threading.Timer(limit + HARD_TIMEOUT_GRACE, _hard_timeout, args=(item.nodeid, limit))
    watchdog.daemon = True
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    watchdog.start()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        watchdog.cancel()


def _hard_timeout(nodeid: str, limit: float) -> None:
    sys.stderr.write(f"\n*** {nodeid} is stuck {limit + HARD_TIMEOUT_GRACE:.0f} s in: aborting the run\n")
    faulthandler.dump_traceback(all_threads=True)
    with contextlib.suppress(Exception):
        pgcluster.destroy_all()
    os._exit(3)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway rtbus.db.cluster.Cluster (fsync off, socket + 127.0.0.1) for the whole run."""
    with pgcluster.throwaway("rtbus-test-") as cluster:
        yield cluster


@pytest.fixture
def pg_env(pg_cluster) -> dict[str, str]:
    """A new dict of RTBUS_DB_HOST/RTBUS_DB_PORT/RTBUS_DB_USER pointing at pg_cluster over TCP."""
    return pgcluster.env_for(pg_cluster)


@pytest.fixture
def fresh_db(pg_cluster) -> str:
    """The name of a new empty database on pg_cluster (from template0), dropped after the test."""
    name = pgcluster.unique_name()
    pg_cluster.create_database(name, template="template0")
    try:
        yield name
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture
def schema_db(pg_cluster, fresh_db) -> str:
    """A fresh database (see fresh_db) with the rtbus schema applied."""
    return pgcluster.create_schema_db(pg_cluster, name=fresh_db)


@pytest.fixture(scope="module")
def module_db(pg_cluster) -> str:
    """A database with the rtbus schema shared by one test module (for its shared servers)."""
    name = pgcluster.create_schema_db(pg_cluster)
    try:
        yield name
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def module_conn(pg_cluster, module_db):
    """One connection to module_db for a module's tests (they commit what they write)."""
    conn = pg_cluster.connect(module_db)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def module_servers(pg_cluster, module_db, tmp_path_factory):
    """Factory for servers shared by one module's tests, stopped when the module ends.

    ``launch(*args, name="server", cluster=None, db=None, **env)`` starts
    ``rtbus-server --workers=1 --max-cron-threads=0`` (ports 0, overridable by
    `args`) on `cluster` (default pg_cluster) and database `db` (default
    module_db), with extra environment variables `env`, and returns the
    started ServerProcess.
    """
    from serverproc import ServerProcess, clean_environ

    started = []

    def launch(*args: str, name: str = "server", cluster=None, db: str | None = None, **env_extra: str):
        env = clean_environ()
        env.update(pgcluster.env_for(cluster or pg_cluster), RTBUS_DB_NAME=db or module_db, **env_extra)
        server = ServerProcess(["--workers=1", "--max-cron-threads=0", "--http-port=0", "--gevent-port=0",
                                *args], env, str(tmp_path_factory.mktemp(name) / "server.log"))
        started.append(server)
        return server.start()

    yield launch
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_publish(pg_cluster, module_db):
    """A `Publish` into module_db, for the module's tests."""
    publish = Publish(pg_cluster, module_db)
    yield publish
    publish.close()


@pytest.fixture(scope="module")
def publish(module_publish):
    """The module's `Publish` (module_publish), under the name the tests use."""
    return module_publish


@pytest.fixture(scope="module")
def crash_cluster():
    """A separate Cluster for tests that kill or restart PostgreSQL, so pg_cluster is never disturbed.

    Its commits are synchronous: an immediate stop must not lose what a test (or the
    server's migrations) committed just before, or recovery tests fail on lost rows.
    """
    with pgcluster.throwaway("rtbus-crash-", crash_safe=True) as cluster:
        yield cluster


@pytest.fixture
def server_env(pg_env) -> dict[str, str]:
    """The runner's environment minus rtbus/libpq settings, pointing rtbus at pg_cluster."""
    from serverproc import clean_environ

    env = clean_environ()
    env.update(pg_env)
    return env


@pytest.fixture
def start_server(server_env, tmp_path, request):
    """Factory: ``start_server(*args, env=None, wait=True)`` → a started ServerProcess.

    Ports default to 0 (the log says which were bound). Every server is stopped
    (SIGTERM, then SIGKILL of its process group) at teardown.
    """
    from serverproc import ServerProcess

    started = request.node.stash.setdefault(started_servers, [])

    def start(*args: str, env: dict | None = None, wait: bool = True, name: str = "server"):
        log_path = str(tmp_path / f"{name}-{len(started)}.log")
        server = ServerProcess(["--http-port=0", "--gevent-port=0", *args],
                               env if env is not None else server_env, log_path)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop(timeout=20)
