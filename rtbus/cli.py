"""``rtbus-server``: the command line.

``rtbus-server [COMMAND] [OPTIONS]`` where COMMAND is one of:

- ``serve`` (default): run the server, prefork (``--workers N``) or single process (``--workers 0``);
- ``initdb``: create the served databases and upgrade their schema, then exit;
- ``send CHANNEL TYPE [PAYLOAD]``: publish one notification (PAYLOAD is JSON, or a plain string);
- ``budget``: print the deployment's database connection budget; exit 1 when it is over;
- ``session create UID PARTNER_ID [GROUP_ID,...]`` / ``session rotate SID`` /
  ``session revoke SID`` / ``session revoke-user UID`` / ``session groups JSON``:
  manage the sessions of the application's users (see rtbus/session.py);
- ``status``: show every process of the running deployment (pid, kind, age, requests, memory).

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

_logger = logging.getLogger(__name__)

PROG = "rtbus-server"
COMMANDS = ("serve", "initdb", "send", "budget", "session", "status")


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
    runner = {"serve": serve, "initdb": initdb, "send": send, "budget": budget,
              "session": session, "status": status}[invocation.command]
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

    # The command line may carry a secret (--bus-api-key): out of ps before anything slow.
    process.set_title("rtbus: master")
    log_notes(_logger, config.notes)
    database = open_database(config, budget=True)
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
    payload = config.to_json()
    read_fd, write_fd = os.pipe()
    if len(payload) > 60000:
        raise StartupError("the configuration is too large to hand over to the server process")
    os.write(write_fd, payload)
    os.close(write_fd)
    process.exec_evented("single", {"config": read_fd})


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


def _parse_channel(text: str):
    """A channel argument: a plain string, or JSON for records (``'["res.partner", 7]'``)."""
    import orjson

    if text.startswith("["):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"CHANNEL {text!r} looks like JSON but is not valid: {exc}") from None
    return text


def send(config, argv, args) -> int:
    """Publish one notification and print its id."""
    import orjson
    import psycopg2

    from rtbus.bus.channels import InvalidChannel
    from rtbus.bus.publish import Publisher
    from rtbus.db.connect import connect_kwargs, served_databases
    from rtbus.service.bootstrap import open_database

    if len(args) not in (2, 3):
        raise ConfigError("usage: rtbus-server send CHANNEL TYPE [PAYLOAD]")
    channel = _parse_channel(args[0])
    notification_type = args[1]
    payload = None
    if len(args) == 3:
        try:
            payload = orjson.loads(args[2])
        except orjson.JSONDecodeError:
            payload = args[2]   # not JSON: send it as a string
    database = open_database(config)
    config = database.config
    dbname = served_databases(config)[0]
    publisher = Publisher.from_config(config)
    conn = None
    try:
        conn = psycopg2.connect(**connect_kwargs(config, dbname=dbname, application_name="rtbus:send"))
        (notification_id,) = publisher.publish(conn, dbname, [(channel, notification_type, payload)])
    except (InvalidChannel, TypeError) as exc:
        raise ConfigError(f"cannot send: {exc}") from None
    except psycopg2.Error as exc:
        raise StartupError(f"cannot send to database {dbname}: {str(exc).strip()}") from None
    finally:
        publisher.notifier.close()
        if conn is not None:
            conn.close()
        database.close()
    print(f"sent notification {notification_id} to {dbname}")
    return process.EXIT_OK


def budget(config, argv, args) -> int:
    """Print the connection budget table; exit 1 when the deployment is over budget."""
    from rtbus.service.bootstrap import open_database, read_budget

    _no_args("budget", args)
    database = open_database(config, upgrade_schema=False)
    try:
        result = read_budget(database.config)
    finally:
        database.close()
    print(result.format_table())
    return process.EXIT_OK if result.verdict == "ok" else process.EXIT_STARTUP


SESSION_USAGE = ("usage: rtbus-server session create UID PARTNER_ID [GROUP_ID,...] | rotate SID | "
                 "revoke SID | revoke-user UID | groups '{\"ID\": [\"NAME\", [IMPLIED_ID,...]]}'")


def _positive(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {text!r}")
    return value


def _session_action(conn, config, action: str, rest: list[str]) -> str:
    """Run one `session` sub-command on `conn`; return what to print. The caller commits."""
    import orjson

    from rtbus.session import (SessionNotFound, create_session, revoke_session, revoke_user_sessions,
                               rotate_session, set_groups)

    if action == "create" and len(rest) in (2, 3):
        groups = [_positive(g, "GROUP_ID") for g in rest[2].split(",") if g] if len(rest) == 3 else []
        return create_session(conn, _positive(rest[0], "UID"), _positive(rest[1], "PARTNER_ID"), groups,
                              ttl=config.session_ttl)
    if action == "rotate" and len(rest) == 1:
        try:
            return rotate_session(conn, rest[0])
        except SessionNotFound as exc:
            raise ConfigError(f"cannot rotate: {exc}") from None
    if action == "revoke" and len(rest) == 1:
        revoke_session(conn, rest[0])
        return "revoked"
    if action == "revoke-user" and len(rest) == 1:
        return f"{revoke_user_sessions(conn, _positive(rest[0], 'UID'))} sessions revoked"
    if action == "groups" and len(rest) == 1:
        try:
            spec = orjson.loads(rest[0])
            groups = {_positive(gid, "group id"): (str(name), [_positive(str(i), "implied id") for i in implied])
                      for gid, (name, implied) in spec.items()}
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            raise ConfigError("groups takes a JSON object {\"ID\": [\"NAME\", [IMPLIED_ID, ...]], ...}") from None
        set_groups(conn, groups)
        return f"{len(groups)} groups declared"
    raise ConfigError(SESSION_USAGE)


def session(config, argv, args) -> int:
    """Create, rotate or revoke a session, or declare groups, in the first served database."""
    import psycopg2

    from rtbus.db.connect import connect_kwargs, served_databases
    from rtbus.service.bootstrap import open_database

    if not args:
        raise ConfigError(SESSION_USAGE)
    database = open_database(config)
    conn = None
    try:
        dbname = served_databases(database.config)[0]
        conn = psycopg2.connect(**connect_kwargs(database.config, dbname=dbname,
                                                 application_name="rtbus:session"))
        output = _session_action(conn, database.config, args[0], list(args[1:]))
        conn.commit()
    except psycopg2.Error as exc:
        raise StartupError(f"session {args[0]}: {str(exc).strip()}") from None
    finally:
        if conn is not None:
            conn.close()
        database.close()
    print(output)
    return process.EXIT_OK


def status(config, argv, args) -> int:
    """Print every process of the running deployment; exit 1 when it is not running."""
    from rtbus.service import runtime
    from rtbus.service import status as status_table

    _no_args("status", args)
    snapshot = status_table.read(runtime.deployment_dir(config))
    print(status_table.render(snapshot))
    return process.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
