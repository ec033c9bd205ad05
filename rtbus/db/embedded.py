"""The embedded default database: a private PostgreSQL cluster rtbus runs for itself
when the configuration names no database server at all.
"""

from __future__ import annotations

import logging
import os
import pathlib

from rtbus.db.cluster import Cluster

_logger = logging.getLogger(__name__)

# Setting any one of these means "use that server", never the embedded one.
_SERVER_SETTINGS = ("db_host", "db_port", "db_user", "db_password", "db_name")


def wants_embedded(config) -> bool:
    """True when none of db_host, db_port, db_user, db_password, db_name is set (all None)."""
    return all(getattr(config, name) is None for name in _SERVER_SETTINGS)


def default_datadir() -> pathlib.Path:
    """Where the embedded cluster lives unless config.embedded_db_dir says otherwise.

    root: /var/lib/rtbus/pgdata; anyone else: $XDG_DATA_HOME (or ~/.local/share)/rtbus/pgdata.
    """
    if os.geteuid() == 0:
        return pathlib.Path("/var/lib/rtbus/pgdata")
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return pathlib.Path(base) / "rtbus" / "pgdata"


def start_embedded(config, *, timeout: float = 60) -> tuple[Cluster, bool, object]:
    """Initialise if needed and start the embedded cluster; reuse it if already running.

    The cluster listens on a Unix socket only. Returns (cluster, started_by_us, config)
    where the new config points db_host/db_port/db_user at the cluster; the caller
    should stop the cluster at shutdown only if started_by_us. Raises ClusterError
    when there are no server binaries or the cluster cannot be created or started.
    """
    datadir = config.embedded_db_dir or default_datadir()
    cluster = Cluster(datadir, tcp=False)
    cluster.init()
    started = cluster.start(timeout=timeout)
    _logger.info("embedded PostgreSQL in %s (socket %s, port %d)", cluster.datadir, cluster.host, cluster.port)
    if not started:
        _logger.info("embedded PostgreSQL was already running (pid %s): it will be left running",
                    cluster.pid())
    return cluster, started, config.replace(db_host=cluster.host, db_port=cluster.port,
                                            db_user=Cluster.superuser)
