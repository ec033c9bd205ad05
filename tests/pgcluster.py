"""Throwaway PostgreSQL clusters for the test suite.

Every cluster made here is registered so that `destroy_all()` can stop and delete
whatever is left, from a fixture finaliser, a session hook, atexit or the hard-timeout
watchdog: several nets, because a leaked postmaster outlives the test run.
"""

from __future__ import annotations

import contextlib

import os
import pathlib
import shutil
import tempfile
import threading
import uuid

from rtbus.db.cluster import Cluster

_live: dict[int, tuple[Cluster, pathlib.Path]] = {}
_live_lock = threading.Lock()


def start_throwaway(prefix: str = "rtbus-test-", **kwargs) -> Cluster:
    """Create and start a fast (fsync=off) cluster listening on a socket and on 127.0.0.1.

    Its directory is made under /tmp, traversable by the unprivileged account the
    server runs as when we are root (pytest's tmp_path is not).
    """
    base = pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(base, 0o755)
    options = {"fast": True, "tcp": True, **kwargs}
    cluster = Cluster(base / "data", **options)
    with _live_lock:
        _live[id(cluster)] = (cluster, base)
    try:
        cluster.init()
        cluster.start()
    except BaseException:
        destroy(cluster)
        raise
    return cluster


def destroy(cluster: Cluster) -> None:
    """Stop `cluster` at once and delete its directory; safe to call twice."""
    with _live_lock:
        _, base = _live.pop(id(cluster), (cluster, None))
    try:
        cluster.destroy()
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


def destroy_all() -> None:
    """Destroy every cluster still registered."""
    with _live_lock:
        clusters = [cluster for cluster, _ in _live.values()]
    for cluster in clusters:
        destroy(cluster)


def unique_name(prefix: str = "rtbus_test") -> str:
    """A database (or role) name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def env_for(cluster: Cluster) -> dict[str, str]:
    """Environment variables pointing rtbus at `cluster` over TCP."""
    return {
        "RTBUS_DB_HOST": "127.0.0.1",
        "RTBUS_DB_PORT": str(cluster.port),
        "RTBUS_DB_USER": cluster.superuser,
    }


def config_for(cluster: Cluster, **changes):
    """A Config pointing at `cluster` (over TCP), with `changes` applied."""
    from rtbus.config import load_config

    config = load_config([], environ=env_for(cluster)).config
    return config.replace(**changes) if changes else config


def create_schema_db(cluster: Cluster, prefix: str = "rtbus_test", name: str | None = None) -> str:
    """Create a database on `cluster` (from template0) with the rtbus schema; return its name."""
    from rtbus.db import schema

    name = name or unique_name(prefix)
    if name not in _existing_databases(cluster):
        cluster.create_database(name, template="template0")
    conn = cluster.connect(name)
    try:
        schema.upgrade(conn)
    finally:
        conn.close()
    return name


def _existing_databases(cluster: Cluster) -> set[str]:
    conn = cluster.connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return {row[0] for row in cur.fetchall()}
    finally:
        conn.close()


@contextlib.contextmanager
def throwaway(prefix: str, **kwargs):
    """A started throwaway cluster for a `with` block (a fixture's lifetime), destroyed after."""
    cluster = start_throwaway(prefix, **kwargs)
    try:
        yield cluster
    finally:
        destroy(cluster)
