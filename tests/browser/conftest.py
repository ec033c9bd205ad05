"""Fixtures of the browser tests: headless Chromium driven by Playwright, and a prefork
rtbus with the demo routes on, whose page is served on one port and whose websockets
on another (two origins, as without a proxy).

Chromium is Debian's package (`make test` installs it with scripts/ensure-program.sh
where it can); Playwright's own browser downloads are never used.
"""

from __future__ import annotations

import os
import sys

import pytest

import pgcluster
from buspublish import Publish
from serverproc import ServerProcess, clean_environ
from system_programs import chromium_binary

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "ops"))
from ops_helpers import free_port  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARTIFACTS = os.path.join(REPO, "test-artifacts")
WAIT_MS = 20_000     # bound of every wait inside the browser


@pytest.fixture(scope="session")
def browser():
    executable = chromium_binary()     # present: tests using this fixture are skipped otherwise
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' installs playwright")
    playwright = sync_api.sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        playwright.stop()


@pytest.fixture
def context(browser):
    """A fresh browser profile (cookies, storage, shared workers) for one test."""
    ctx = browser.new_context(viewport={"width": 1360, "height": 900})
    ctx.set_default_timeout(WAIT_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def board_db_fixture(pg_cluster, prefix):
    return pgcluster.create_schema_db(pg_cluster, prefix)


@pytest.fixture(scope="module")
def board_db(pg_cluster):
    name = board_db_fixture(pg_cluster, "rtbus_board")
    yield name
    pg_cluster.drop_database(name)


def start_board_server(pg_cluster, dbname: str, directory, *extra: str) -> ServerProcess:
    """A prefork rtbus (2 HTTP workers, the gevent process, no cron) with demo_mode on."""
    env = clean_environ()
    env.update(pgcluster.env_for(pg_cluster), RTBUS_DB_NAME=dbname)
    server = ServerProcess(
        ["--workers=2", "--max-cron-threads=0", f"--http-port={free_port()}",
         f"--gevent-port={free_port()}", "--demo-mode", f"--runtime-dir={directory / 'run'}", *extra],
        env, str(directory / "server.log"))
    return server.start()


@pytest.fixture(scope="module")
def board_server(pg_cluster, board_db, tmp_path_factory):
    server = start_board_server(pg_cluster, board_db, tmp_path_factory.mktemp("board"))
    server.base_url = f"http://127.0.0.1:{server.http_port}"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def publish(pg_cluster, board_db):
    """publish(channel, type, payload) -> id, from outside the browser (straight into the database)."""
    publisher = Publish(pg_cluster, board_db)
    yield publisher.one
    publisher.close()
