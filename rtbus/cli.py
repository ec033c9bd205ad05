"""``rtbus-server``: the command line.

``rtbus-server [COMMAND] [OPTIONS]`` where COMMAND is one of:

- ``serve`` (default): run the server, prefork (``--workers N``) or single process (``--workers 0``);
- ``initdb``: create the served databases and upgrade their schema, then exit.

Errors in flags, values or the configuration file print one line and exit 2;
a server that cannot start (port in use, database unreachable) prints one line
and exits 1. Neither prints a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from rtbus.errors import ConfigError, RtbusError, StartupError
from rtbus.log import log_notes, setup_logging
from rtbus.service import process

_logger = logging.getLogger("rtbus.cli")

PROG = "rtbus-server"
COMMANDS = ("serve", "initdb")


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    from rtbus.config import load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        invocation = load_config(argv, os.environ, commands=COMMANDS, prog=PROG)
    except ConfigError as exc:
        return _fail(str(exc), process.EXIT_CONFIG)
    config = invocation.config
    try:
        setup_logging(config.log_level, config.logfile)
    except OSError as exc:
        return _fail(f"cannot open the log file {config.logfile}: {exc.strerror}", process.EXIT_CONFIG)
    runner = {"serve": serve, "initdb": initdb}[invocation.command]
    try:
        return runner(config, argv, invocation.args)
    except ConfigError as exc:
        return _fail(str(exc), process.EXIT_CONFIG)
    except StartupError as exc:
        _logger.error("%s", exc)
        if config.logfile:
            _fail(str(exc), process.EXIT_STARTUP)
        return process.EXIT_STARTUP
    except RtbusError as exc:
        _logger.error("%s", exc)
        return process.EXIT_STARTUP
    except KeyboardInterrupt:
        return process.EXIT_OK


def _no_args(command: str, args) -> None:
    if args:
        raise ConfigError(f"'{command}' takes no arguments (got {' '.join(args)!r})")


def serve(config, argv, args) -> int:
    """Run the server until it is stopped."""
    _no_args("serve", args)
    if config.workers == 0:
        _exec_single(config)   # does not return
    return _serve_prefork(config, argv)


def _serve_prefork(config, argv) -> int:
    from rtbus.config import load_config
    from rtbus.service.bootstrap import open_database
    from rtbus.service.master import Master

    log_notes(_logger, config.notes)
    database = open_database(config)
    try:
        def reload_config():
            return database.apply(load_config(argv, os.environ, commands=COMMANDS, prog=PROG).config)

        master = Master(database.config, reload_config=reload_config)
        master.bind()
        return master.run()
    finally:
        database.close()


def _exec_single(config) -> None:
    """Replace this process by a fresh interpreter running the single evented process.

    gevent has to patch the standard library before it is imported, which is
    too late here; the configuration travels over a pipe, as it does to the
    gevent process of a prefork deployment.
    """
    import rtbus

    payload = config.to_json()
    read_fd, write_fd = os.pipe()
    if len(payload) > 60000:
        raise StartupError("the configuration is too large to hand over to the server process")
    os.write(write_fd, payload)
    os.close(write_fd)
    os.set_inheritable(read_fd, True)
    env = dict(os.environ)
    env["RTBUS_CHILD_FDS"] = f"config={read_fd}"
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(rtbus.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "rtbus.service.evented", "single"], env)


def initdb(config, argv, args) -> int:
    """Create and upgrade the schema of every served database, then stop."""
    from rtbus.db.connect import served_databases
    from rtbus.service.bootstrap import open_database

    _no_args("initdb", args)
    log_notes(_logger, config.notes)
    database = open_database(config)
    try:
        for dbname in served_databases(database.config):
            before, after = database.schema_versions[dbname]
            if before == after:
                print(f"{dbname}: schema up to date (version {after})")
            else:
                print(f"{dbname}: schema upgraded from version {before} to {after}")
    finally:
        database.close()
    return process.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
