"""The settings table, and the one frozen `Config` built from it at start-up.

Every setting rtbus-server understands is declared once, in `SETTINGS`. The
command-line parser, the configuration file reader, the environment mapping,
the reference page (docs/configuration.md) and the sample file
(conf/rtbus.conf) are all derived from that table.

`load_config(argv, environ)` merges, from weakest to strongest: defaults, the
`[options]` section of the configuration file, the environment, the command
line. It returns an `Invocation` (the `Config`, the command and its
arguments) or raises `ConfigError` with one line an operator can act on.
Nothing in this module reads configuration at import time.

    python -m rtbus.config --markdown      # prints docs/configuration.md
    python -m rtbus.config --sample-conf   # prints conf/rtbus.conf
"""

from __future__ import annotations

import argparse
import configparser
import dataclasses
import importlib.metadata
import json
import math
import os
import re
import sys
import textwrap
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Protocol

from rtbus.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# ---------------------------------------------------------------------------
# Checks: the constraints a parsed value must meet, beyond its type.
# ---------------------------------------------------------------------------


class Check(Protocol):
    def accepts(self, value: Any) -> bool: ...
    def describe(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Range:
    """A closed numeric interval; either end may be open-ended (None)."""

    low: float | None = None
    high: float | None = None

    def accepts(self, value: Any) -> bool:
        return ((self.low is None or value >= self.low)
                and (self.high is None or value <= self.high))

    def describe(self) -> str:
        if self.high is None:
            return f">= {self.low}"
        if self.low is None:
            return f"<= {self.high}"
        return f"between {self.low} and {self.high}"


@dataclasses.dataclass(frozen=True)
class SqlIdentifier:
    """An unquoted SQL identifier, optionally qualified by a schema (`schema.name`)."""

    _PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?")

    def accepts(self, value: Any) -> bool:
        return self._PATTERN.fullmatch(value) is not None

    def describe(self) -> str:
        return "that is an SQL identifier, optionally schema-qualified (schema.name)"


PORT = Range(0, 65535)
COUNT = Range(0)
TIMEOUT = Range(0)


@dataclasses.dataclass(frozen=True)
class Fallback:
    """What `Config.effective()` uses when a setting holds the value `when`:
    the effective value of another `setting`, or else the constant `value`."""

    when: Any = None
    setting: str | None = None
    value: Any = None

    def describe(self) -> str:
        trigger = "unset" if self.when is None else f"{_format_plain(self.when)}"
        target = f"`{self.setting}`" if self.setting else f"`{_format_plain(self.value)}`"
        return f"{trigger} means {target}"


# ---------------------------------------------------------------------------
# The Setting record: one row of the table, and how its values are parsed.
# ---------------------------------------------------------------------------

TYPES = ("int", "float", "bool", "str", "path", "bytes", "choice", "list")
_TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
_FALSE_WORDS = frozenset({"0", "no", "false", "off"})
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(k|kib|m|mib|g|gib)?", re.IGNORECASE)
_SIZE_UNITS = {"k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}
_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "str": "a string", "path": "a file path",
    "bool": "a boolean (true/false, yes/no, on/off, 1/0)",
    "bytes": "a size in bytes, or a number with a K, M or G suffix (powers of 1024)",
    "list": "a comma-separated list",
}
_METAVARS = {"int": "N", "float": "SECONDS", "str": "VALUE", "path": "PATH",
             "bytes": "SIZE", "list": "A,B,..."}


class _Unset:
    """Marker for an Odoo-style 'no value here' (`None`, empty, `False` on a non-bool)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its file key, type, default, help sentence and spellings.

    `flags` are the command-line option strings (each long flag is also accepted,
    hidden from --help, with underscores instead of dashes); `aliases` are other
    names for the same setting, valid as file keys, as `--alias-flags` and as
    `RTBUS_<ALIAS>`; `env` lists environment names besides `RTBUS_<NAME>`.
    """

    name: str
    type: str
    default: Any
    help: str
    flags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    choice_aliases: tuple[tuple[str, str], ...] = ()
    secret: bool = False
    section: str = ""
    cli: bool = True
    check: Check | None = None
    fallback: Fallback | None = None
    metavar: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"setting {self.name}: unknown type {self.type!r}")
        if (self.type == "choice") != bool(self.choices):
            raise ValueError(f"setting {self.name}: choices go with type 'choice' only")
        if self.cli != bool(self.flags):
            raise ValueError(f"setting {self.name}: flags go with cli=True and vice versa")

    @property
    def file_keys(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def env_names(self) -> tuple[str, ...]:
        return tuple(f"RTBUS_{key.upper()}" for key in self.file_keys) + self.env

    @property
    def optional(self) -> bool:
        """Whether the setting may hold None ("unset")."""
        return self.default is None

    def expected(self) -> str:
        """What a valid value looks like, as the end of "expected ..."."""
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        words = _TYPE_WORDS[self.type]
        return f"{words} {self.check.describe()}" if self.check else words

    def parse(self, raw: str | bool) -> Any:
        """Turn a raw file/env/CLI value into a checked value, or UNSET.

        Raises ValueError (without a message: the caller knows the context).
        """
        if isinstance(raw, bool):          # a CLI switch such as --no-proxy-mode
            return raw
        text = raw.strip()
        if text == "" or text.lower() == "none":
            return UNSET
        value = getattr(self, f"_parse_{self.type}")(text)
        self._check(value)
        return value

    def coerce(self, value: Any) -> Any:
        """Validate a Python value (from `Config.replace` or JSON).

        Strings are parsed as in a file, except for string settings, taken as
        they are; None is accepted by settings whose default is None.
        Raises ValueError.
        """
        if value is None and self.optional:
            return None
        if isinstance(value, str) and self.type != "str":
            parsed = self.parse(value)
            return self.default if parsed is UNSET else parsed
        value = self._coerce_typed(value)
        self._check(value)
        return value

    def format(self, value: Any) -> str:
        """The value as it would be written in the configuration file."""
        if value is None:
            return "None"
        if self.type == "bytes":
            return format_size(value)
        if self.type == "list":
            return ",".join(value)
        return _format_plain(value)

    def display(self, value: Any) -> str:
        """`format(value)`, or *** for a secret that is set: safe to log."""
        return "***" if self.secret and value is not None else self.format(value)

    def _check(self, value: Any) -> None:
        if self.check is not None and not self.check.accepts(value):
            raise ValueError()

    def _coerce_typed(self, value: Any) -> Any:
        if self.type == "int" and type(value) is int:
            return value
        if self.type == "bytes" and type(value) is int and value >= 0:
            return value
        if self.type == "float" and type(value) in (int, float) and math.isfinite(value):
            return float(value)
        if self.type == "bool" and type(value) is bool:
            return value
        if self.type == "str" and isinstance(value, str):
            return value
        if self.type == "list" and isinstance(value, (list, tuple)):
            if all(isinstance(item, str) for item in value):
                return tuple(value)
        raise ValueError()

    @staticmethod
    def _parse_int(text: str) -> int:
        return int(text, 10)

    @staticmethod
    def _parse_float(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError()
        return value

    @staticmethod
    def _parse_bool(text: str) -> bool:
        word = text.lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise ValueError()

    @staticmethod
    def _parse_str(text: str) -> str:
        return text

    @staticmethod
    def _parse_path(text: str) -> str:
        # Absolute from the start, so a later chdir() cannot change what it points to.
        return os.path.abspath(os.path.expanduser(text))

    @staticmethod
    def _parse_bytes(text: str) -> int:
        return parse_size(text)

    @staticmethod
    def _parse_list(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(","))
        if not all(items):
            raise ValueError()
        return items

    def _parse_choice(self, text: str) -> str:
        word = dict(self.choice_aliases).get(text.lower(), text.lower())
        if word not in self.choices:
            raise ValueError()
        return word


def parse_size(text: str) -> int:
    """Parse "4194304", "4M", "4 MiB", "1.5g"... into a number of bytes.

    A bare number must be an integer; suffixes are powers of 1024 and
    case-insensitive. Raises ValueError for anything else.
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    if unit is None:
        return int(number)
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def format_size(value: int) -> str:
    """Write a number of bytes with the largest suffix that divides it exactly."""
    for suffix, unit in (("G", GIB), ("M", MIB), ("K", KIB)):
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def _format_plain(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _in_section(title: str, *settings: Setting) -> tuple[Setting, ...]:
    return tuple(dataclasses.replace(setting, section=title) for setting in settings)


# ---------------------------------------------------------------------------
# The table.
# ---------------------------------------------------------------------------

SETTINGS: tuple[Setting, ...] = (
    *_in_section(
        "Processes",
        Setting("workers", "int", 0, check=COUNT, flags=("--workers",), help=(
            "Number of prefork HTTP worker processes; 0 runs one threaded server that also "
            "serves websockets on http_port, more starts a master with that many HTTP workers, "
            "the cron workers and one gevent process for websockets on gevent_port.")),
        Setting("max_cron_threads", "int", 1, check=COUNT, flags=("--max-cron-threads",), help=(
            "Number of cron workers (prefork mode) or cron threads (threaded mode) running "
            "periodic jobs such as the bus garbage collection; 0 runs none.")),
        Setting("http_interface", "str", "127.0.0.1", flags=("--http-interface",),
                metavar="ADDRESS", help=(
            "Address the HTTP and gevent listeners bind to; 0.0.0.0 listens on every IPv4 "
            "interface.")),
        Setting("http_port", "int", 8069, check=PORT, flags=("-p", "--http-port"),
                metavar="PORT", help=(
            "TCP port of the HTTP listener (JSON-RPC, health checks and, in threaded mode, "
            "websockets); 0 picks a free port.")),
        Setting("gevent_port", "int", 8072, check=PORT, flags=("--gevent-port",),
                aliases=("longpolling_port",), metavar="PORT", help=(
            "TCP port of the gevent process that serves /websocket and /longpolling in prefork "
            "mode; 0 picks a free port.")),
        Setting("proxy_mode", "bool", False, flags=("--proxy-mode",), help=(
            "Trust the X-Forwarded-For, X-Forwarded-Host and X-Forwarded-Proto headers of a "
            "reverse proxy; enable it only behind one, as clients could otherwise forge them.")),
        Setting("pidfile", "path", None, flags=("--pidfile",), help=(
            "File the master process writes its process id to.")),
        Setting("runtime_dir", "path", None, flags=("--runtime-dir",), help=(
            "Directory of this deployment's status and metrics snapshots (one small JSON file "
            "per process, read by /metrics and 'rtbus-server status'); unset uses "
            "$XDG_RUNTIME_DIR/rtbus/<http_port>, else /tmp/rtbus-<uid>/<http_port>.")),
        Setting("graceful_timeout", "float", 30.0, check=TIMEOUT, flags=("--graceful-timeout",),
                help=(
            "Seconds workers get, on a graceful stop or reload, to finish their requests and "
            "close their websockets before the master kills them.")),
        Setting("gevent_watchdog_timeout", "float", 30.0, check=TIMEOUT,
                flags=("--gevent-watchdog-timeout",), help=(
            "Seconds the gevent event loop may go without a heartbeat before the master "
            "replaces the process.")),
        Setting("gevent_max_connections", "int", 10000, check=Range(1),
                flags=("--gevent-max-connections",), help=(
            "Maximum number of connections (websockets and long-polls) the gevent process "
            "serves at once; further clients wait in the listen backlog.")),
        Setting("http_socket_timeout", "float", 2.0, check=TIMEOUT, cli=False, help=(
            "Seconds a prefork HTTP worker waits on a client socket, for a request or to send "
            "a response, before giving up on it.")),
    ),
    *_in_section(
        "WebSocket",
        Setting("websocket_keep_alive_timeout", "float", 3600.0, check=TIMEOUT, cli=False, help=(
            "Lifetime of a websocket in seconds, plus a random part up to half of it so that "
            "connections do not all expire together; then it is closed with 4002 and the client "
            "reconnects at once. 0 means no limit.")),
        Setting("websocket_rate_limit_burst", "int", 10, check=Range(1), cli=False, help=(
            "Frames a client may send within websocket_rate_limit_burst x "
            "websocket_rate_limit_delay seconds; one more closes the connection with 1013.")),
        Setting("websocket_rate_limit_delay", "float", 0.2, check=TIMEOUT, cli=False, help=(
            "Seconds per frame of the websocket rate limit (see websocket_rate_limit_burst).")),
        Setting("websocket_max_message_size", "bytes", 1 * MIB, check=Range(126), cli=False, help=(
            "Largest message a client may send; a larger frame or message is refused with close "
            "1009 before its payload is read.")),
        Setting("websocket_receive_budget", "bytes", 64 * MIB, check=COUNT, cli=False, help=(
            "Bytes all the websockets of one evented process may hold in messages they have "
            "not finished receiving (a frame cut short, the fragments of a message, the "
            "inflater of a compressed one); a connection that would pass it is closed with "
            "1013 and the others keep theirs. 0 means no limit beyond "
            "websocket_max_message_size per connection.")),
        Setting("websocket_compression", "bool", True, cli=False, help=(
            "Accept permessage-deflate (RFC 7692), which browsers always offer. The server "
            "asks for no context takeover both ways, so that a batch is compressed once for "
            "all its subscribers and no compression state is kept between messages.")),
        Setting("websocket_compression_threshold", "bytes", 512, check=COUNT, cli=False,
                help=(
            "Batches shorter than this are sent uncompressed even when permessage-deflate was "
            "negotiated: deflate saves a few dozen bytes on them (a presence update) for a "
            "zlib stream each; a Discuss message with its records (about 800 bytes) shrinks by "
            "almost half.")),
        Setting("websocket_compression_level", "int", 1, check=Range(1, 9), cli=False, help=(
            "zlib compression level of outgoing batches, from 1 (fastest) to 9 (smallest); on "
            "typical batches level 6 saves a few percent more bytes for up to twice the CPU.")),
        Setting("websocket_ping_interval", "float", 40.0, check=Range(1), cli=False, help=(
            "Seconds without any frame in either direction after which the server pings the "
            "client; kept below the usual 60 s proxy idle timeout.")),
        Setting("websocket_response_timeout", "float", 15.0, check=Range(0.1), cli=False, help=(
            "Seconds a client has to answer a ping or a close before the TCP connection is "
            "dropped.")),
        Setting("websocket_send_timeout", "float", 10.0, check=Range(0.1), cli=False, help=(
            "Seconds a send to a websocket may block; a client that does not read for that long "
            "is dropped as a slow consumer.")),
        Setting("websocket_close_batch", "int", 0, check=COUNT, cli=False,
                fallback=Fallback(when=0, setting="db_maxconn_gevent"), help=(
            "Number of websockets closed per batch on a graceful stop, so that reconnecting "
            "clients do not flood the next process's database pool; 0 means the gevent pool "
            "size (db_maxconn_gevent).")),
        Setting("websocket_close_interval", "float", 0.1, check=TIMEOUT, cli=False, help=(
            "Seconds between two batches of websocket closures on a graceful stop.")),
    ),
    *_in_section(
        "Long-polling",
        Setting("longpolling_timeout", "float", 50.0, check=Range(0.1, 3600), cli=False, help=(
            "Seconds a /longpolling/poll waits for notifications before answering an empty "
            "list (Odoo's 50 s); keep it below the reverse proxy's read timeout.")),
        Setting("longpolling_max_polls", "int", 5000, check=Range(1),
                flags=("--longpolling-max-polls",), help=(
            "Long-polls one evented process holds at once; more are answered 503 with "
            "Retry-After. Keep it below gevent_max_connections so that websockets still "
            "get in.")),
    ),
    *_in_section(
        "Limits",
        Setting("limit_request", "int", 65536, check=Range(1), flags=("--limit-request",),
                help="Number of requests a prefork HTTP worker serves before it is recycled."),
        Setting("limit_memory_soft", "bytes", 2048 * MIB, flags=("--limit-memory-soft",), help=(
            "Virtual memory size above which a worker is recycled once its current request "
            "is done.")),
        Setting("limit_memory_hard", "bytes", 2560 * MIB, flags=("--limit-memory-hard",), help=(
            "Virtual memory limit (RLIMIT_AS) of each worker; allocations beyond it fail.")),
        Setting("limit_memory_soft_gevent", "bytes", None, flags=("--limit-memory-soft-gevent",),
                fallback=Fallback(setting="limit_memory_soft"), help=(
            "limit_memory_soft for the gevent process, which holds every connection and so "
            "needs more memory; unset means limit_memory_soft.")),
        Setting("limit_memory_hard_gevent", "bytes", None, flags=("--limit-memory-hard-gevent",),
                fallback=Fallback(setting="limit_memory_hard"), help=(
            "limit_memory_hard for the gevent process; unset means limit_memory_hard.")),
        Setting("limit_time_cpu", "int", 60, check=TIMEOUT, flags=("--limit-time-cpu",), help=(
            "CPU seconds a prefork HTTP worker may spend on one request before it is killed.")),
        Setting("limit_time_real", "int", 120, check=TIMEOUT, flags=("--limit-time-real",),
                help=(
            "Wall-clock seconds a prefork HTTP worker may spend on one request before it is "
            "killed; websockets and long-polls in the gevent process are not subject to it.")),
        Setting("http_max_body_size", "bytes", 1 * MIB, check=Range(1024),
                flags=("--http-max-body-size",), help=(
            "Largest request body accepted (a JSON-RPC call, a publish); a larger one is refused "
            "with 413 as soon as it is declared or, for a chunked body, as soon as that many bytes "
            "were read.")),
        Setting("limit_time_real_cron", "int", -1, check=Range(-1),
                flags=("--limit-time-real-cron",),
                fallback=Fallback(when=-1, setting="limit_time_real"), help=(
            "Wall-clock seconds a cron job may run; -1 means limit_time_real and 0 means no "
            "limit.")),
    ),
    *_in_section(
        "Database",
        Setting("db_host", "str", None, flags=("--db-host",), env=("PGHOST",), metavar="HOST",
                help=(
            "PostgreSQL host name, address or socket directory; unset connects through the "
            "default local UNIX socket.")),
        Setting("db_port", "int", None, check=Range(1, 65535), flags=("--db-port",),
                env=("PGPORT",), metavar="PORT", help=(
            "PostgreSQL port; unset uses libpq's default (5432).")),
        Setting("db_user", "str", None, flags=("-r", "--db-user"), env=("PGUSER",),
                metavar="USER", help=(
            "PostgreSQL role to connect as; unset uses libpq's default, the operating system "
            "user.")),
        Setting("db_password", "str", None, secret=True, flags=("-w", "--db-password"),
                env=("PGPASSWORD",), metavar="PASSWORD", help=(
            "Password of db_user; prefer PGPASSWORD, ~/.pgpass or the configuration file, "
            "since command-line arguments are visible to every local user.")),
        Setting("db_name", "str", None, flags=("-d", "--db-name", "--database"),
                env=("PGDATABASE",), fallback=Fallback(value="rtbus"),
                metavar="NAME[,NAME...]", help=(
            "Comma-separated list of the databases whose buses this server serves; unset "
            "means rtbus.")),
        Setting("db_sslmode", "choice", "prefer", flags=("--db-sslmode",),
                choices=("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
                help="libpq sslmode of every database connection."),
        Setting("db_maxconn", "int", 64, check=Range(1), flags=("--db-maxconn",), help=(
            "Maximum number of PostgreSQL connections in the pool of each process.")),
        Setting("db_maxconn_gevent", "int", None, check=Range(1), flags=("--db-maxconn-gevent",),
                fallback=Fallback(setting="db_maxconn"), help=(
            "Pool size of the gevent process, which serves many clients at once; unset means "
            "db_maxconn.")),
        Setting("db_connect_timeout", "int", 5, check=TIMEOUT, flags=("--db-connect-timeout",),
                help=(
            "Seconds to wait for a new PostgreSQL connection to be established; 0 waits "
            "forever.")),
        Setting("db_pool_timeout", "float", 1.0, check=TIMEOUT, flags=("--db-pool-timeout",),
                help=(
            "Seconds a request waits for a free pooled connection before it fails as "
            "temporarily unavailable (HTTP 503, websocket close code 1013).")),
        Setting("db_pool_max_waiting", "int", 1024, check=COUNT,
                flags=("--db-pool-max-waiting",), help=(
            "Maximum number of requests waiting for a pooled connection at once; requests "
            "beyond it fail at once (0 means no bound).")),
        Setting("db_statement_timeout", "float", 0.0, check=TIMEOUT,
                flags=("--db-statement-timeout",), help=(
            "Seconds a statement of rtbus's own pooled sessions may run before PostgreSQL "
            "cancels it (statement_timeout); the request then fails with HTTP 503. 0 means "
            "no limit. The dispatcher's reads use it too, when set.")),
        Setting("db_lock_timeout", "float", 0.0, check=TIMEOUT, flags=("--db-lock-timeout",),
                help=(
            "Seconds a statement of rtbus's own sessions may wait for a lock (lock_timeout), "
            "so that a publish blocked by a locked bus_bus fails fast with HTTP 503 instead of "
            "holding a worker. 0 means no limit.")),
        Setting("db_keepalives_idle", "int", 10, check=COUNT, flags=("--db-keepalives-idle",),
                help=(
            "Seconds a PostgreSQL connection (pooled or listening) may stay silent before TCP "
            "keepalive probes check that the server is still there; 0 keeps the system's "
            "default (often 2 hours).")),
        Setting("db_keepalives_interval", "int", 3, check=COUNT,
                flags=("--db-keepalives-interval",), help=(
            "Seconds between two TCP keepalive probes of a PostgreSQL connection; 0 keeps the "
            "system's default.")),
        Setting("db_keepalives_count", "int", 3, check=COUNT, flags=("--db-keepalives-count",),
                help=(
            "Unanswered TCP keepalive probes after which a PostgreSQL connection is given up as "
            "dead (a server that vanished without closing: power loss, partition); 0 keeps "
            "the system's default.")),
        Setting("db_tcp_user_timeout", "float", 20.0, check=TIMEOUT,
                flags=("--db-tcp-user-timeout",), help=(
            "Seconds data sent to PostgreSQL may stay unacknowledged before the connection is "
            "given up as dead (TCP_USER_TIMEOUT; keepalives only cover silent connections); 0 "
            "keeps the system's default.")),
        Setting("embedded_db_dir", "path", None, flags=("--embedded-db-dir",), help=(
            "Directory of an embedded PostgreSQL cluster that rtbus creates and starts itself, "
            "for development and tests; unset uses the server given by db_host and db_port.")),
        Setting("imbus_db_name", "str", "postgres", flags=("--imbus-db-name",), metavar="NAME",
                help="Database whose LISTEN/NOTIFY channel imbus carries notifications."),
    ),
    *_in_section(
        "Bus",
        Setting("notify_payload_max_length", "int", 8000, check=Range(1),
                flags=("--notify-payload-max-length",), env=("ODOO_NOTIFY_PAYLOAD_MAX_LENGTH",),
                help=(
            "Largest NOTIFY payload, in bytes, sent as one notification; longer payloads are "
            "split.")),
        Setting("notify_function", "str", "pg_notify", check=SqlIdentifier(),
                flags=("--notify-function",), env=("ODOO_NOTIFY_FUNCTION",),
                metavar="FUNCTION", help=(
            "SQL function called as function(channel, payload) to send notifications, for "
            "databases that wrap pg_notify in a security layer.")),
        Setting("gc_retention_seconds", "int", 86400, check=COUNT,
                flags=("--gc-retention-seconds",), help=(
            "Seconds notifications are kept in bus_bus before the garbage collector deletes "
            "them; a client reconnecting later than that misses them.")),
        Setting("gc_interval_seconds", "int", 3600, check=Range(60), flags=("--gc-interval-seconds",),
                help=(
            "Seconds between two runs of the bus garbage collector (a cron job); its last "
            "run is what /bus/get_autovacuum_info reports.")),
        Setting("bus_api_key", "str", None, secret=True, flags=("--bus-api-key",),
                metavar="KEY", help=(
            "Secret that other services must present to publish through rtbus's HTTP API; "
            "unset disables publishing over HTTP. A value given on the command line shows in ps "
            "until the process retitles itself: prefer bus_api_key_file or RTBUS_BUS_API_KEY.")),
        Setting("bus_api_key_file", "path", None, flags=("--bus-api-key-file",), help=(
            "File holding bus_api_key (its first line), read at start-up and on every reload; "
            "keeps the key out of the command line and the environment. Giving both is an "
            "error.")),
        Setting("budget_check", "choice", "error", choices=("error", "warn", "off"),
                flags=("--budget-check",), help=(
            "What to do at start-up when the connection pools of all processes could exceed "
            "what PostgreSQL allows: refuse to start (error), log a warning (warn) or skip "
            "the check (off).")),
        Setting("mailbox_max_bytes", "bytes", 4 * MIB, cli=False, help=(
            "Bound on the bytes queued for one subscriber that has not read them yet; a "
            "client falling further behind is disconnected and catches up on reconnection.")),
    ),
    *_in_section(
        "Sessions and channels",
        Setting("session_ttl", "int", 7 * 86400, check=Range(60), flags=("--session-ttl",),
                help=(
            "Lifetime in seconds of a session created without an explicit one (through the "
            "JSON-RPC route or the CLI); rotating a session keeps its lifetime.")),
        Setting("session_check_cache_seconds", "float", 10.0, check=Range(0, 60), cli=False,
                help=(
            "Seconds a process may reuse a session check instead of asking the database "
            "again. Revocations and rotations reach every process at once through NOTIFY "
            "rtbus_session; this bound only matters if that notification is lost "
            "(0 checks every message and every dispatch).")),
        Setting("public_channels", "list", ("*",), flags=("--public-channels",),
                metavar="PATTERN,...", help=(
            "fnmatch patterns (case-sensitive) a channel name requested by a session without "
            "a user (no cookie, or an anonymous session) must match; other names are dropped. "
            "The default \"*\" allows any name (Odoo's rule); \"broadcast\" alone allows "
            "nothing beyond broadcast.")),
        Setting("channel_allowlist", "list", (), flags=("--channel-allowlist",),
                metavar="PATTERN,...", help=(
            "fnmatch patterns (case-sensitive) a channel name requested by any session must "
            "match; other names are dropped. Empty allows any name, relying on names being "
            "unguessable as Odoo does. Server channels (partner, groups, presence) are not "
            "filtered.")),
        Setting("session_lookup_budget", "int", 60, check=COUNT,
                flags=("--session-lookup-budget",), help=(
            "Lookups of session ids that rtbus did not issue (no valid signature: an "
            "application's own sids, or sessions made before migration 0005) that one client "
            "address may cause per minute and per process when they find no session (an IPv6 "
            "client counts by /64; with proxy_mode, the forwarded address). Beyond it its "
            "requests with such a sid are refused (503 Retry-After, close 1013) without "
            "asking the database. Forged rtbus sids are refused without a query at all. 0 means "
            "no limit.")),
        Setting("session_lookup_budget_total", "int", 1200, check=COUNT,
                flags=("--session-lookup-budget-total",), help=(
            "The same budget for every client address together, per minute and per process, so "
            "that a flood from many addresses cannot exhaust the connection pool either; 0 "
            "means no limit.")),
        Setting("max_channels_per_subscription", "int", 1000, check=Range(1, 100000),
                flags=("--max-channels-per-subscription",), help=(
            "Most channels one subscribe or poll may ask for; a longer list is refused.")),
    ),
    *_in_section(
        "Cross-origin requests",
        Setting("allowed_origins", "list", (), flags=("--allowed-origins",),
                metavar="ORIGIN,...", help=(
            "Origins (scheme://host[:port]) of the pages, besides the request's own origin, "
            "whose requests may act with the visitor's session cookie (websocket, long-poll, "
            "JSON-RPC); they may also read long-poll answers across origins (CORS). The page "
            "on http_port of the same host is always allowed to use the gevent port.")),
        Setting("cross_origin_sessions", "choice", "public", choices=("public", "refuse"),
                flags=("--cross-origin-sessions",), help=(
            "What a browser request gets when its Origin is neither its own nor allowed and "
            "it carries the session cookie: public serves it as a visitor without a session "
            "(Odoo's ODOO_BUS_PUBLIC_SAMESITE_WS, always on here), so that embedded public "
            "widgets keep working; refuse answers 403. Requests without an Origin "
            "(non-browser clients) are not concerned.")),
    ),
    *_in_section(
        "Presence",
        Setting("presence_update_interval", "float", 60.0, check=Range(0, 3600),
                flags=("--presence-update-interval",), help=(
            "Minimum seconds between two writes of one user's presence that do not change "
            "its status; updates in between are absorbed (a status change is always "
            "written).")),
    ),
    *_in_section(
        "Browser client and demo",
        Setting("longpolling_public_url", "str", None, flags=("--longpolling-public-url",),
                metavar="URL", help=(
            "Base URL browsers use to reach /websocket and /longpolling/poll, such as "
            "https://bus.example.com or http://127.0.0.1:8072; the page served at / tells its "
            "shared worker. Unset means the page's own origin in single mode and with "
            "proxy_mode (nginx routes both), else the page's host on gevent_port.")),
        Setting("demo_mode", "bool", False, flags=("--demo-mode",), help=(
            "Serve the demo routes (/demo/*) behind the live board at /: anyone who reaches "
            "the HTTP port can then create demo sessions and publish to demo.* channels. "
            "For development and demonstrations only; never enable it in production.")),
    ),
    *_in_section(
        "Logging",
        Setting("log_level", "choice", "info", flags=("--log-level",),
                choices=("debug", "info", "warning", "error", "critical"),
                choice_aliases=(("warn", "warning"),), help=(
            "Minimum level of the log records written; warn is accepted for warning.")),
        Setting("logfile", "path", None, flags=("--logfile",), help=(
            "File the log is written to; unset writes it to standard error.")),
    ),
)

CONFIG_ENV = "RTBUS_CONFIG"

# Lookup tables derived from SETTINGS.
BY_NAME: Mapping[str, Setting] = MappingProxyType({s.name: s for s in SETTINGS})
BY_FILE_KEY: Mapping[str, Setting] = MappingProxyType(
    {key: s for s in SETTINGS for key in s.file_keys})
SECTIONS: tuple[str, ...] = tuple(dict.fromkeys(s.section for s in SETTINGS))


def _setting(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        hint = f" ({name} is an alias of {BY_FILE_KEY[name].name})" if name in BY_FILE_KEY else ""
        raise ConfigError(f"unknown setting {name!r}{hint}") from None


# ---------------------------------------------------------------------------
# Config: the frozen result.
# ---------------------------------------------------------------------------

_JSON_FORMAT = "rtbus.config/1"


class Config:
    """Every setting's value and where it came from; immutable.

    Read values as attributes (`config.workers`) or with `get(name)`;
    `effective(name)` applies fallbacks (e.g. db_maxconn_gevent unset ->
    db_maxconn). `notes` are warnings and information gathered while loading,
    to log once logging is configured.
    """

    __slots__ = ("_values", "_sources", "notes", "config_file")

    def __init__(self, values: Mapping[str, Any], sources: Mapping[str, str],
                 notes: Iterable[str] = (), config_file: str | None = None) -> None:
        missing = set(BY_NAME) - set(values)
        if missing:
            raise ConfigError(f"missing settings: {', '.join(sorted(missing))}")
        set_ = object.__setattr__
        set_(self, "_values", MappingProxyType({s.name: values[s.name] for s in SETTINGS}))
        set_(self, "_sources", MappingProxyType(
            {s.name: sources.get(s.name, "default") for s in SETTINGS}))
        set_(self, "notes", tuple(notes))
        set_(self, "config_file", config_file)

    @classmethod
    def defaults(cls) -> Config:
        """A Config holding every default, as if nothing were configured."""
        return cls({s.name: s.default for s in SETTINGS}, {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"Config has no setting {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Config is frozen; use Config.replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Config is frozen; use Config.replace()")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self._state() == other._state()

    def __hash__(self) -> int:
        return hash((tuple(self._values.items()), tuple(self._sources.items()), self.notes))

    def __reduce__(self):
        return (Config, (dict(self._values), dict(self._sources), self.notes, self.config_file))

    def __repr__(self) -> str:
        changed = ", ".join(f"{name}={self._shown(name)}" for name, source in
                            self._sources.items() if source != "default")
        return f"Config({changed})"

    def _state(self) -> tuple:
        return (dict(self._values), dict(self._sources), self.notes, self.config_file)

    def _shown(self, name: str) -> str:
        return BY_NAME[name].display(self._values[name])

    def get(self, name: str) -> Any:
        """The value of setting `name`; ConfigError if there is no such setting."""
        return self._values[_setting(name).name]

    def source(self, name: str) -> str:
        """Where the value came from: "default", "file /path", "env RTBUS_X",
        "command line --x" or "runtime"."""
        return self._sources[_setting(name).name]

    def effective(self, name: str) -> Any:
        """The value with the setting's fallback applied (see `Setting.fallback`)."""
        fallback = _setting(name).fallback
        value = self._values[name]
        if fallback is None or value != fallback.when:
            return value
        return self.effective(fallback.setting) if fallback.setting else fallback.value

    def replace(self, **changes: Any) -> Config:
        """A new Config with `changes` validated and recorded as set at "runtime".

        Strings are parsed like file values; other values must have the
        setting's type. Raises ConfigError for unknown names or bad values.
        """
        values, sources = dict(self._values), dict(self._sources)
        for name, value in changes.items():
            setting = _setting(name)
            values[name] = _coerce(setting, value, "runtime")
            sources[name] = "runtime"
        return Config(values, sources, self.notes, self.config_file)

    def to_json(self) -> bytes:
        """Serialize values (secrets included), sources and notes, for a child process."""
        return json.dumps({
            "format": _JSON_FORMAT,
            "values": dict(self._values),
            "sources": dict(self._sources),
            "notes": list(self.notes),
            "config_file": self.config_file,
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Config:
        """Rebuild a Config written by `to_json`; ConfigError if it is not one."""
        try:
            state = json.loads(data)
            if state.get("format") != _JSON_FORMAT:
                raise ValueError("not an rtbus configuration")
            values, sources = dict(state["values"]), dict(state["sources"])
            notes, config_file = tuple(state["notes"]), state["config_file"]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"cannot decode a serialized configuration: {exc}") from None
        checked = {s.name: s.default for s in SETTINGS}
        for name, value in values.items():
            checked[name] = _coerce(_setting(name), value, "serialized configuration")
        return cls(checked, sources, notes, config_file)

    def dump(self) -> str:
        """One "key = value  # source" line per setting, secrets masked."""
        pairs = [(f"{name} = {self._shown(name)}", self._sources[name]) for name in self._values]
        width = max(len(left) for left, _ in pairs)
        return "\n".join(f"{left:<{width}}  # {source}" for left, source in pairs)


def _coerce(setting: Setting, value: Any, origin: str) -> Any:
    try:
        return setting.coerce(value)
    except ValueError:
        raise ConfigError(_invalid(setting, value, origin)) from None


def _invalid(setting: Setting, raw: Any, origin: str) -> str:
    shown = "***" if setting.secret else repr(raw)
    return f"invalid value {shown} for {setting.name} from {origin}: expected {setting.expected()}"


@dataclasses.dataclass(frozen=True)
class Invocation:
    """What the command line asks for: a configuration, a command and its arguments."""

    config: Config
    command: str
    args: tuple[str, ...]


# ---------------------------------------------------------------------------
# Loading: raw values from each source, then one merge.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Given:
    """One raw value for a setting, as found in one source."""

    setting: Setting
    key: str        # the name used: the setting's name or one of its aliases
    raw: str | bool
    source: str     # for Config.source(): "file /etc/rtbus.conf", "env PGHOST", ...
    label: str      # for messages: "longpolling_port in /etc/rtbus.conf", ...
    rank: int = 0   # within one source, the lowest rank present wins (RTBUS_X over PGX)


def load_config(argv: list[str], environ: Mapping[str, str] | None = None, *,
                commands: tuple[str, ...] = ("serve",), default_command: str = "serve",
                prog: str = "rtbus-server") -> Invocation:
    """Build the Config from defaults < config file < environment < command line.

    `argv` excludes the program name; `environ` defaults to os.environ. The first
    positional argument, if any, must be one of `commands`; the rest are
    returned as its arguments. Raises ConfigError (one line) for any bad flag,
    value or file; --help and --version print and raise SystemExit(0).
    """
    environ = os.environ if environ is None else environ
    namespace = build_parser(commands, prog).parse_intermixed_args(argv)
    command, args = _split_command(namespace.command, commands, default_command)
    config_file = namespace.config or environ.get(CONFIG_ENV) or None
    if config_file:
        config_file = os.path.abspath(config_file)
    notes: list[str] = []
    layers = [
        _from_file(config_file, notes) if config_file else [],
        _from_environ(environ),
        getattr(namespace, "_rtbus_given", []),
    ]
    values, sources = _merge(layers, notes)
    _read_secret_files(values, sources)
    _warn_secrets_on_command_line(sources, notes)
    return Invocation(Config(values, sources, notes, config_file), command, tuple(args))


# Secret setting -> the setting naming a file that holds it.
_SECRET_FILES = (("bus_api_key", "bus_api_key_file"),)


def _read_secret_files(values: dict, sources: dict) -> None:
    """Replace each secret that has a file setting by the first line of that file."""
    for secret, file_setting in _SECRET_FILES:
        path = values[file_setting]
        if path is None:
            continue
        if values[secret] is not None:
            raise ConfigError(f"{secret} ({sources[secret]}) and {file_setting} "
                              f"({sources[file_setting]}) are both given; keep only one")
        try:
            with open(path, encoding="utf-8") as file:
                value = file.readline().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read {file_setting} {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_setting} {path} is not valid UTF-8") from None
        if not value:
            raise ConfigError(f"{file_setting} {path} is empty: its first line must hold {secret}")
        values[secret] = value
        sources[secret] = f"file {path} ({file_setting})"


def _warn_secrets_on_command_line(sources: Mapping[str, str], notes: list[str]) -> None:
    for setting in SETTINGS:
        if setting.secret and sources[setting.name].startswith("command line"):
            better = dict(_SECRET_FILES).get(setting.name)
            instead = f"{better}, " if better else ""
            notes.append(f"{setting.name} was given on the command line, which every local user "
                         f"can read (ps) until the process retitles itself; use {instead}the "
                         f"configuration file or RTBUS_{setting.name.upper()} instead")


def _split_command(positionals: list[str], commands: tuple[str, ...],
                   default_command: str) -> tuple[str, list[str]]:
    if not positionals:
        return default_command, []
    if positionals[0] not in commands:
        raise ConfigError(f"unknown command {positionals[0]!r} "
                          f"(expected one of: {', '.join(commands)})")
    return positionals[0], positionals[1:]


def _from_file(path: str, notes: list[str]) -> list[_Given]:
    parser = _read_ini(path)
    if not parser.has_section("options"):
        notes.append(f"configuration file {path} has no [options] section; nothing read from it")
        return []
    given = []
    for key, raw in parser.items("options"):
        setting = BY_FILE_KEY.get(key)
        if setting is None:
            notes.append(f"unknown option {key!r} in {path} (ignored)")
            continue
        # Odoo's old --save wrote "key = False" for every unset non-boolean option.
        if setting.type != "bool" and raw.strip() == "False":
            continue
        given.append(_Given(setting, key, raw, f"file {path}", f"{key} in {path}"))
    return given


def _read_ini(path: str) -> configparser.RawConfigParser:
    # default_section="" because no "[...]" header can be empty: a [DEFAULT]
    # section then stays an ordinary, ignored section instead of leaking
    # its keys into [options].
    parser = configparser.RawConfigParser(default_section="")
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file, source=path)
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: "
                          f"{exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not valid UTF-8") from None
    except configparser.Error as exc:
        raise ConfigError(f"malformed configuration file {path}: {_ini_problem(exc)}") from None
    return parser


def _ini_problem(exc: configparser.Error) -> str:
    # Our own wording: configparser's messages span lines and quote the
    # offending line, which may hold a password.
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return f"line {exc.lineno}: a setting before any [section] header"
    if isinstance(exc, configparser.DuplicateOptionError):
        return f"line {exc.lineno}: {exc.option!r} appears twice in [{exc.section}]"
    if isinstance(exc, configparser.DuplicateSectionError):
        return f"line {exc.lineno}: section [{exc.section}] appears twice"
    if isinstance(exc, configparser.ParsingError):
        lines = ", ".join(str(lineno) for lineno, _ in exc.errors)
        return f"cannot parse line {lines} (expected 'key = value')"
    return " ".join(str(exc).split())


def _from_environ(environ: Mapping[str, str]) -> list[_Given]:
    given = []
    for setting in SETTINGS:
        for index, env_name in enumerate(setting.env_names):
            if env_name not in environ:
                continue
            is_rtbus = index < len(setting.file_keys)
            key = setting.file_keys[index] if is_rtbus else setting.name
            given.append(_Given(setting, key, environ[env_name], f"env {env_name}",
                                f"{env_name} in the environment",
                                rank=0 if is_rtbus else index))
    return given


def _merge(layers: list[list[_Given]], notes: list[str]) -> tuple[dict, dict]:
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}
    winners: dict[str, _Given] = {}
    for level, layer in enumerate(layers):
        resets = level == len(layers) - 1   # "None" on the command line restores the default
        for setting in SETTINGS:
            chosen = _resolve(setting, [g for g in layer if g.setting is setting], resets)
            if chosen is not None:
                values[setting.name], winner = chosen
                sources[setting.name] = winner.source
                winners[setting.name] = winner
    for setting in SETTINGS:
        if setting.aliases and _alias_used(setting, layers):
            winner = winners.get(setting.name)
            by = f"set by {winner.label}" if winner else "the default"
            notes.append(f"{setting.name} = {setting.display(values[setting.name])} ({by}; "
                         f"{', '.join(setting.aliases)} is an alias of {setting.name})")
    return values, sources


def _alias_used(setting: Setting, layers: list[list[_Given]]) -> bool:
    return any(g.setting is setting and g.key != setting.name for layer in layers for g in layer)


def _resolve(setting: Setting, given: list[_Given], resets: bool) -> tuple[Any, _Given] | None:
    """The value one source gives a setting, or None if it gives none.

    Within a source the last spelling of each name wins (repeated flags); two
    different names (the setting and an alias) must agree.
    """
    if not given:
        return None
    best_rank = min(g.rank for g in given)
    last_by_key = {g.key: g for g in given if g.rank == best_rank}
    parsed = []
    for g in last_by_key.values():
        value = _parse(g)
        if value is UNSET and not resets:
            continue
        parsed.append((setting.default if value is UNSET else value, g))
    if not parsed:
        return None
    for value, g in parsed[1:]:
        if value != parsed[0][0]:
            first = parsed[0][1]
            raise ConfigError(
                f"conflicting values for {setting.name}: {first.label} gives "
                f"{setting.display(parsed[0][0])} but {g.label} gives {setting.display(value)}; "
                f"they name the same setting, keep only one")
    return next((p for p in parsed if p[1].key == setting.name), parsed[0])


def _parse(given: _Given) -> Any:
    try:
        return given.setting.parse(given.raw)
    except ValueError:
        raise ConfigError(_invalid(given.setting, given.raw, given.label)) from None


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigError, without usage or SystemExit."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


class _Record(argparse.Action):
    """Remember each use of a setting's flag, in order and with its spelling.

    Values are parsed later, by the setting itself, so that command-line errors
    read like file and environment ones and the alias check can see names.
    """

    def __init__(self, option_strings, dest, *, setting: Setting, key: str, const=None,
                 **kwargs):
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS,
                         const=const, nargs=0 if const is not None else None, **kwargs)
        self.setting, self.key = setting, key

    def __call__(self, parser, namespace, values, option_string=None):
        raw = self.const if self.const is not None else values
        given = _Given(self.setting, self.key, raw, f"command line {option_string}",
                       f"{option_string} on the command line")
        namespace._rtbus_given = [*getattr(namespace, "_rtbus_given", []), given]


def build_parser(commands: tuple[str, ...] = ("serve",),
                 prog: str = "rtbus-server") -> argparse.ArgumentParser:
    """The argparse parser for `prog`; --help groups the options by section."""
    parser = _Parser(prog=prog, allow_abbrev=False, add_help=False,
                     usage="%(prog)s [OPTION ...] [COMMAND [ARG ...]]",
                     description="A real-time bus server speaking Odoo's bus protocol.",
                     epilog=("Every option can also be set in the [options] section of the "
                             "configuration file or as an RTBUS_<KEY> environment variable; "
                             "see docs/configuration.md."))
    general = parser.add_argument_group("General")
    general.add_argument("-h", "--help", action="help", help="Show this help and exit.")
    general.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                         help="Show the version and exit.")
    general.add_argument("-c", "--config", metavar="PATH", help=(
        f"Configuration file to read (section [options]); also ${CONFIG_ENV}."))
    general.add_argument("command", nargs="*", metavar="COMMAND", help=(
        f"Command to run, one of: {', '.join(commands)}; the default is the first, and "
        f"any further arguments are the command's."))
    for section in SECTIONS:
        group = parser.add_argument_group(section)
        for setting in SETTINGS:
            if setting.section == section and setting.cli:
                _add_setting(group, setting)
    return parser


def _add_setting(group: argparse._ArgumentGroup, setting: Setting) -> None:
    help_text = f"{setting.help} [default: {_help_default(setting)}]".replace("%", "%%")
    spellings = [(setting.name, setting.flags, help_text)] + [
        (alias, (_long_flag(alias),), f"Alias of --{setting.name.replace('_', '-')}.")
        for alias in setting.aliases]
    for key, flags, text in spellings:
        if setting.type == "bool":
            _add_switches(group, setting, key, flags, text)
        else:
            metavar = setting.metavar or _METAVARS.get(setting.type)
            if setting.type == "choice":
                metavar = "{" + ",".join(setting.choices) + "}"
            _add_flags(group, setting, key, flags, text, metavar=metavar)


def _add_switches(group, setting: Setting, key: str, flags: tuple[str, ...], text: str) -> None:
    negated = tuple(f"--no-{flag[2:]}" for flag in flags if flag.startswith("--"))
    _add_flags(group, setting, key, flags, text, const=True)
    _add_flags(group, setting, key, negated, f"Turn off {flags[-1]}.", const=False)


def _add_flags(group, setting: Setting, key: str, flags: tuple[str, ...], text: str,
               **kwargs: Any) -> None:
    group.add_argument(*flags, action=_Record, setting=setting, key=key, help=text, **kwargs)
    hidden = tuple(flag.replace("-", "_").replace("__", "--", 1) for flag in flags
                   if flag.startswith("--") and "-" in flag[2:])
    if hidden:
        group.add_argument(*hidden, action=_Record, setting=setting, key=key,
                           help=argparse.SUPPRESS, **kwargs)


def _long_flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _help_default(setting: Setting) -> str:
    if setting.default is None:
        return "unset"
    return setting.format(setting.default)


def _version() -> str:
    try:
        return importlib.metadata.version("rtbus")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def cli_flags() -> tuple[str, ...]:
    """Every option string --help shows for the settings."""
    return tuple(flag for setting in SETTINGS for flag in _visible_flags(setting))


def _visible_flags(setting: Setting) -> tuple[str, ...]:
    """The setting's flags, its aliases' flags, and the --no- forms of booleans."""
    if not setting.cli:
        return ()
    own = setting.flags + tuple(_long_flag(alias) for alias in setting.aliases)
    if setting.type != "bool":
        return own
    return own + tuple(f"--no-{flag[2:]}" for flag in own if flag.startswith("--"))


# ---------------------------------------------------------------------------
# Generated documents.
# ---------------------------------------------------------------------------

REGENERATE_DOCS = "python -m rtbus.config --markdown > docs/configuration.md"
REGENERATE_SAMPLE = "python -m rtbus.config --sample-conf > conf/rtbus.conf"

_MARKDOWN_INTRO = f"""\
# Configuration reference

<!-- Generated from rtbus/config.py; do not edit. Regenerate with:
     {REGENERATE_DOCS} -->

rtbus-server reads every setting from four places. From weakest to strongest:

1. the built-in default;
2. the `[options]` section of the configuration file named by `-c/--config` or
   `${CONFIG_ENV}` (other sections are ignored; there is no implicit file);
3. the environment: `RTBUS_<KEY>` (the file key in upper case), plus the extra
   names listed below, such as libpq's `PGHOST`; `RTBUS_<KEY>` wins over them;
4. the command line.

The strongest source that gives a value wins; the loaded configuration
remembers which source set each value.

## Values

- The file is read without interpolation: `%` is an ordinary character.
- `None` (any case) and an empty value mean "not set here" in the file and the
  environment, so the weaker source shows through; on the command line they
  restore the default.
- Booleans accept `true`/`false`, `yes`/`no`, `on`/`off` and `1`/`0`.
- `key = False` on a non-boolean key is read as unset, as written by Odoo's
  old `--save`.
- Sizes take a number of bytes or a number with a `K`, `M` or `G` suffix
  (also `KiB`, `MiB`, `GiB`; any case; powers of 1024): `2048M`, `2.5G`.
- Paths are made absolute, after `~` expansion, when the configuration is read.
- An unknown key in the file is ignored with a warning naming it and the file.
- Any invalid value, unknown flag or unreadable file stops the server with a
  one-line error (exit status 2).

## Aliases

`longpolling_port` (`--longpolling-port`, `RTBUS_LONGPOLLING_PORT`) is another
name for `gevent_port`. Giving both names different values in the same source
(both keys in the file, both flags, or both variables) is an error; across
sources the usual precedence applies. The log says which name set the value.

## Command line

Every long flag is also accepted with underscores instead of dashes
(`--db_maxconn` for `--db-maxconn`). Boolean flags have a `--no-` form.
"""


def render_markdown() -> str:
    """The content of docs/configuration.md, derived from SETTINGS."""
    parts = [_MARKDOWN_INTRO]
    for section in SECTIONS:
        parts.append(f"\n## {section}\n")
        for setting in SETTINGS:
            if setting.section == section:
                parts.append(_markdown_setting(setting))
    return "".join(parts)


def _markdown_setting(setting: Setting) -> str:
    flags = ", ".join(f"`{flag}`" for flag in _visible_flags(setting))
    lines = [
        f"\n### `{setting.name}`\n",
        f"\n{setting.help}\n\n",
        f"- Type: {setting.expected()}\n",
        f"- Default: {_markdown_default(setting)}\n",
        f"- Command line: {flags or 'none (file and environment only)'}\n",
        f"- Environment: {', '.join(f'`{env}`' for env in setting.env_names)}\n",
    ]
    if setting.aliases:
        lines.append(f"- Aliases: {', '.join(f'`{alias}`' for alias in setting.aliases)}\n")
    if setting.fallback:
        lines.append(f"- Fallback: {setting.fallback.describe()}\n")
    if setting.secret:
        lines.append("- Secret: never logged; shown as `***`\n")
    return "".join(lines)


def _markdown_default(setting: Setting) -> str:
    if setting.default is None:
        return "unset"
    shown = f"`{setting.format(setting.default)}`"
    if setting.type == "bytes":
        shown += f" ({setting.default} bytes)"
    return shown


def render_sample_conf() -> str:
    """The content of conf/rtbus.conf: every file key, commented out, at its default."""
    lines = [
        "; Sample rtbus-server configuration; every key is shown at its default.",
        "; Read with: rtbus-server -c /etc/rtbus.conf (or RTBUS_CONFIG=/etc/rtbus.conf).",
        "; Uncomment and change what you need; docs/configuration.md explains each key.",
        f"; Generated by: {REGENERATE_SAMPLE}",
        "",
        "[options]",
    ]
    for section in SECTIONS:
        lines += ["", f"; {'=' * 8} {section} {'=' * (66 - len(section))}"]
        for setting in SETTINGS:
            if setting.section == section:
                lines += ["", *_sample_setting(setting)]
    return "\n".join(lines) + "\n"


def _sample_setting(setting: Setting) -> list[str]:
    text = setting.help
    if setting.aliases:
        text += f" Also accepted as: {', '.join(setting.aliases)}."
    comment = textwrap.wrap(text, width=76, break_on_hyphens=False)
    return [*(f"; {line}" for line in comment),
            f";{setting.name} = {setting.format(setting.default)}"]


def main(argv: list[str] | None = None) -> int:
    """`python -m rtbus.config --markdown|--sample-conf`: print a generated document."""
    parser = argparse.ArgumentParser(prog="python -m rtbus.config")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--markdown", action="store_true", help="print docs/configuration.md")
    which.add_argument("--sample-conf", action="store_true", help="print conf/rtbus.conf")
    options = parser.parse_args(argv)
    sys.stdout.write(render_markdown() if options.markdown else render_sample_conf())
    return 0


if __name__ == "__main__":
    sys.exit(main())
