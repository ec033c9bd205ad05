"""Getting a database ready before any worker starts: embedded cluster, reachability, schema.

Shared by the prefork master and single mode, so both fail the same way and
early: a dead or misconfigured database is one clear error at start-up, not a
respawn loop of workers that each find out alone.
"""

from __future__ import annotations

import dataclasses
import logging

from rtbus.log import current_dbname

_logger = logging.getLogger(__name__)


@dataclasses.dataclass
class DatabaseHandle:
    """The database rtbus runs on, and the embedded cluster behind it if rtbus started one."""

    config: object
    cluster: object | None = None
    owns_cluster: bool = False
    schema_versions: dict = dataclasses.field(default_factory=dict)   # dbname -> (before, after)

    def apply(self, config):
        """Point a (re)loaded configuration at the embedded cluster, when there is one."""
        if self.cluster is None:
            return config
        return config.replace(db_host=self.cluster.host, db_port=self.cluster.port,
                              db_user=self.cluster.superuser)

    def close(self) -> None:
        """Stop the embedded cluster if this process started it."""
        if self.cluster is not None and self.owns_cluster:
            _logger.info("stopping the embedded PostgreSQL in %s", self.cluster.datadir)
            self.cluster.stop()
            self.owns_cluster = False


def open_database(config, *, upgrade_schema: bool = True, budget: bool = False) -> DatabaseHandle:
    """Make the configured (or embedded) database usable; raise StartupError if it is not.

    Starts the embedded cluster when no database is configured, checks that the
    server answers with the configured credentials, creates the served databases
    and upgrades their schema. With `budget`, also checks the deployment's
    connection budget (see `enforce_budget`).
    """
    from rtbus.db import connect, embedded, schema

    handle = DatabaseHandle(config)
    if embedded.wants_embedded(config):
        cluster, started, config = embedded.start_embedded(config)
        handle = DatabaseHandle(config, cluster, started)
    try:
        connect.check_server(config)
        if upgrade_schema:
            for dbname in connect.served_databases(config):
                token = current_dbname.set(dbname)
                try:
                    handle.schema_versions[dbname] = schema.prepare(config, dbname=dbname)
                finally:
                    current_dbname.reset(token)
        if budget:
            enforce_budget(config)
    except BaseException:
        handle.close()
        raise
    return handle


def read_budget(config):
    """The connection budget of this configuration against its PostgreSQL server."""
    import psycopg2

    from rtbus.db import budget, connect

    kwargs = connect.connect_kwargs(config, dbname="postgres", application_name="rtbus:budget")
    conn = psycopg2.connect(**kwargs)
    try:
        return budget.check_budget(config, conn)
    finally:
        conn.close()


def enforce_budget(config) -> None:
    """Refuse to start when the deployment may open more connections than PostgreSQL allows.

    ``budget_check = error`` (default) raises StartupError with the whole table;
    ``warn`` logs it; ``off`` skips the check.
    """
    from rtbus.errors import StartupError

    if config.budget_check == "off":
        return
    result = read_budget(config)
    if result.verdict == "ok":
        _logger.info("connection budget %s", result.sentence())
        return
    if config.budget_check == "warn":
        _logger.warning("connection budget exceeded (budget_check = warn, starting anyway):\n%s",
                        result.format_table())
        return
    raise StartupError("connection budget exceeded (set budget_check = warn to start anyway):\n"
                       + result.format_table())
