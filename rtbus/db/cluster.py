"""A PostgreSQL cluster in one data directory, driven with the server binaries.

`Cluster` initialises (initdb), starts, stops, restarts and kills a cluster that rtbus
owns: the embedded default database and the throwaway clusters of the test suite.
It never touches a cluster it did not find in its own data directory.

PostgreSQL refuses to run as root. When this process is root, every server binary
runs as an unprivileged account (`postgres` if it exists, else `nobody`) and the
data directory, socket directory and log file are handed to that account.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psycopg2
from psycopg2 import sql

from rtbus.errors import ClusterError

_logger = logging.getLogger(__name__)

# sun_path is 108 bytes on Linux, one of which is the terminating NUL.
MAX_SOCKET_PATH = 107
SOCKET_NAME = ".s.PGSQL.{port}"

# The settings file rtbus rewrites before every start; postgresql.conf includes it.
SETTINGS_FILE = "rtbus.conf"

# Positions of the lines of postmaster.pid that we read (0-based).
PIDFILE_PID, PIDFILE_PORT, PIDFILE_SOCKET_DIR = 0, 3, 4

_REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bindir() -> pathlib.Path:
    """Return a directory holding initdb, pg_ctl and postgres.

    Looked up in order: the RTBUS_PG_BINDIR environment variable (which, when set,
    must be right), `pg_config --bindir`, the highest /usr/lib/postgresql/<N>/bin,
    then the binaries bundled with the `pgserver` Python package.
    Raises ClusterError when none is found.
    """
    explicit = os.environ.get("RTBUS_PG_BINDIR")
    if explicit:
        path = pathlib.Path(explicit)
        if not _has_server_binaries(path):
            raise ClusterError(
                f"RTBUS_PG_BINDIR={explicit} does not contain the PostgreSQL server "
                f"binaries ({', '.join(_REQUIRED_BINARIES)})."
            )
        return path
    for candidate in _bindir_candidates():
        if _has_server_binaries(candidate):
            return candidate
    raise ClusterError(
        "no PostgreSQL server binaries found: install PostgreSQL (e.g. the "
        "postgresql package), or the pgserver Python package, or set RTBUS_PG_BINDIR "
        "to the directory holding initdb and postgres; or point rtbus at an existing "
        "server with db_host/db_port/db_user."
    )


def _bindir_candidates():
    """Yield candidate binary directories, most preferred first (lazily: pg_config runs only if needed)."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                yield pathlib.Path(out)
    versions = []
    with contextlib.suppress(OSError):
        for entry in pathlib.Path("/usr/lib/postgresql").iterdir():
            if re.fullmatch(r"\d+(\.\d+)?", entry.name):
                versions.append((tuple(int(p) for p in entry.name.split(".")), entry))
    for _, entry in sorted(versions, reverse=True):
        yield entry / "bin"
    # Importing pgserver has side effects, so only locate it.
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            yield pathlib.Path(location) / "pginstall" / "bin"


def _has_server_binaries(path: pathlib.Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in _REQUIRED_BINARIES)


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (it may be taken later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _RunAs:
    """The account the server binaries run as: this process, or an unprivileged one when root."""

    def __init__(self):
        if os.geteuid() != 0:
            self.uid, self.gid, self.name = os.geteuid(), os.getegid(), None
            return
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                self.uid, self.gid, self.name = entry.pw_uid, entry.pw_gid, name
                return
        raise ClusterError(
            "running as root, and neither a 'postgres' nor a 'nobody' account exists "
            "to run PostgreSQL as (PostgreSQL refuses to run as root)."
        )

    @property
    def switches(self) -> bool:
        return self.name is not None

    def subprocess_kwargs(self) -> dict:
        if not self.switches:
            return {}
        # Dropping root's supplementary groups too, so the server holds no root group.
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def give(self, path: pathlib.Path) -> None:
        """Make `path` owned by the run-as account (a no-op when not root)."""
        if self.switches:
            os.chown(path, self.uid, self.gid)

    def can_traverse(self, path: pathlib.Path) -> bool:
        """Whether the run-as account may search every directory from / down to `path`."""
        if not self.switches:
            return True
        for directory in [path, *path.parents]:
            st = directory.stat()
            if st.st_uid == self.uid:
                allowed = st.st_mode & 0o100
            elif st.st_gid == self.gid:
                allowed = st.st_mode & 0o010
            else:
                allowed = st.st_mode & 0o001
            if not allowed:
                return False
        return True


class Cluster:
    """One PostgreSQL cluster living in `datadir`.

    `port=None` picks a free loopback port, unless the cluster is already running,
    in which case the running server's port (and socket directory) are adopted.
    `socket_dir=None` puts the Unix socket in the data directory when the socket path
    fits in 107 bytes, else in a short private directory under /tmp.
    `tcp=True` also listens on 127.0.0.1:port. `fast=True` turns off fsync and other
    durability guarantees: for tests only. `crash_safe=True` keeps commits synchronous
    under `fast`, so a commit that returned survives an immediate stop (a killed
    postmaster, not a lost machine: fsync stays off). The superuser role is always
    `postgres` with trust authentication, whatever the OS account.
    """

    superuser = "postgres"

    def __init__(self, datadir, *, port: int | None = None, socket_dir=None, tcp: bool = False,
                 bindir=None, log_path=None, fast: bool = False, crash_safe: bool = False,
                 max_connections: int = 200):
        self.datadir = pathlib.Path(datadir).absolute()
        self.bindir = pathlib.Path(bindir) if bindir is not None else find_bindir()
        self.tcp = tcp
        self.fast = fast
        self.crash_safe = crash_safe
        self.max_connections = max_connections
        self.log_path = pathlib.Path(log_path).absolute() if log_path else self.datadir / "postgres.log"
        self._run_as = _RunAs()
        self._owned_socket_dir: pathlib.Path | None = None
        running = self._read_pidfile() if self.is_running() else None
        if port is None and running and running[PIDFILE_PORT].isdigit():
            port = int(running[PIDFILE_PORT])
        self.port = port if port is not None else free_loopback_port()
        if socket_dir is None and running and len(running) > PIDFILE_SOCKET_DIR and running[PIDFILE_SOCKET_DIR]:
            socket_dir = running[PIDFILE_SOCKET_DIR]
        self._socket_dir = pathlib.Path(socket_dir).absolute() if socket_dir is not None else None

    def __repr__(self):
        return f"Cluster({str(self.datadir)!r}, port={self.port})"

    # -- locations -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The socket directory, usable as libpq's `host`."""
        return str(self._ensure_socket_dir(create=False))

    def _ensure_socket_dir(self, *, create: bool) -> pathlib.Path:
        if self._socket_dir is None:
            in_datadir = self.datadir / SOCKET_NAME.format(port=self.port)
            if len(os.fsencode(str(in_datadir))) <= MAX_SOCKET_PATH:
                self._socket_dir = self.datadir
            else:
                # The data directory is too deep for a socket path: use a short private dir.
                self._socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="rtbus-pg-", dir="/tmp"))
                self._owned_socket_dir = self._socket_dir
                self._run_as.give(self._socket_dir)
        if create and not self._socket_dir.exists():
            self._socket_dir.mkdir(parents=True, mode=0o700)
            self._run_as.give(self._socket_dir)
        return self._socket_dir

    # -- lifecycle -------------------------------------------------------------------------

    def init(self) -> bool:
        """Create the cluster with initdb unless PG_VERSION already exists.

        Returns True if it was created. Raises ClusterError if initdb fails (the
        message quotes its output) or the run-as account cannot reach the directory.
        """
        if (self.datadir / "PG_VERSION").exists():
            return False
        self.datadir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._run_as.give(self.datadir)
        os.chmod(self.datadir, 0o700)
        if not self._run_as.can_traverse(self.datadir.parent):
            raise ClusterError(
                f"the {self._run_as.name} account that PostgreSQL runs as cannot reach "
                f"{self.datadir}: make its parent directories searchable (chmod o+x) or "
                "choose a data directory elsewhere."
            )
        command = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.superuser,
                   "--auth=trust", "--encoding=UTF8", "--locale=C"]
        if self.fast:
            command.append("--no-sync")
        self._run(command, what="initdb", timeout=120)
        with open(self.datadir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write(f"\n# Settings managed by rtbus, rewritten at each start.\ninclude_if_exists = '{SETTINGS_FILE}'\n")
        _logger.info("initialised PostgreSQL cluster in %s", self.datadir)
        return True

    def start(self, timeout: float = 30) -> bool:
        """Start the server and wait, at most `timeout` seconds, until it accepts connections.

        Returns False if it was already running (then it only waits for it to accept
        connections), True if this call started it. Raises ClusterError on failure,
        quoting the end of the server log.
        """
        if self.is_running():
            self._wait_accepting(time.monotonic() + timeout)
            return False
        if not (self.datadir / "PG_VERSION").exists():
            raise ClusterError(f"no PostgreSQL cluster in {self.datadir}: call init() first.")
        socket_dir = self._ensure_socket_dir(create=True)
        # Lock files left by a killed server: PostgreSQL refuses to start while the pid in
        # them exists, and a killed postmaster may linger as an unreaped zombie.
        _remove_stale_lock(self.datadir / "postmaster.pid")
        _remove_stale_lock(socket_dir / (SOCKET_NAME.format(port=self.port) + ".lock"))
        self._write_settings(socket_dir)
        if not self.log_path.exists():
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.touch()
        self._run_as.give(self.log_path)
        deadline = time.monotonic() + timeout
        self._run([str(self.bindir / "pg_ctl"), "start", "-D", str(self.datadir), "-l", str(self.log_path),
                   "-w", "-t", str(max(1, int(timeout)))], what="pg_ctl start", timeout=timeout + 5)
        self._wait_accepting(deadline)
        _logger.info("started PostgreSQL in %s (pid %s, socket %s, port %d)",
                    self.datadir, self.pid(), socket_dir, self.port)
        return True

    def stop(self, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server (`mode` is pg_ctl's: smart, fast or immediate); a no-op if not running."""
        if not self.is_running():
            return
        self._run([str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", mode,
                   "-w", "-t", str(max(1, int(timeout)))], what="pg_ctl stop", timeout=timeout + 5)
        _logger.info("stopped PostgreSQL in %s", self.datadir)

    def restart(self, timeout: float = 30) -> None:
        """Stop (fast) then start the server, keeping its port and socket directory."""
        self.stop(timeout=timeout)
        self.start(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would; a no-op if not running.

        Returns once every one of those processes has gone, so that start() can run
        straight away (a surviving backend would pin the old shared memory).
        """
        pid = self.pid()
        if pid is None:
            return
        # Freeze the postmaster first so it cannot fork children we would miss.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(_process_alive(v) for v in victims):
            if time.monotonic() > deadline:
                raise ClusterError(f"PostgreSQL processes {victims} survived SIGKILL for 10 s.")
            time.sleep(0.02)
        _logger.info("killed PostgreSQL in %s (pid %d)", self.datadir, pid)

    def destroy(self) -> None:
        """Stop the server (immediate mode) and delete the data directory and any private socket directory."""
        with contextlib.suppress(ClusterError):
            self.stop(mode="immediate", timeout=15)
        if self.is_running():
            self.kill()
        shutil.rmtree(self.datadir, ignore_errors=True)
        if self._owned_socket_dir is not None:
            shutil.rmtree(self._owned_socket_dir, ignore_errors=True)

    # -- state -----------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The postmaster's pid if it is alive, else None (a stale postmaster.pid is ignored)."""
        lines = self._read_pidfile()
        if not lines or not lines[PIDFILE_PID].strip().isdigit():
            return None
        pid = int(lines[PIDFILE_PID])
        return pid if _process_alive(pid) else None

    def is_running(self) -> bool:
        """Whether a live postmaster owns this data directory."""
        return self.pid() is not None

    def _read_pidfile(self) -> list[str] | None:
        try:
            return (self.datadir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except (FileNotFoundError, PermissionError, NotADirectoryError):
            return None

    # -- connections -----------------------------------------------------------------------

    def connect_kwargs(self, dbname: str = "postgres") -> dict:
        """Keyword arguments for psycopg2.connect() reaching this cluster over its Unix socket."""
        return {"host": self.host, "port": self.port, "user": self.superuser, "dbname": dbname}

    def connect(self, dbname: str = "postgres", **kw):
        """A new psycopg2 connection to `dbname`; `kw` overrides or adds connect arguments."""
        return psycopg2.connect(**{**self.connect_kwargs(dbname), **kw})

    def create_database(self, name: str, *, template: str | None = None) -> None:
        """CREATE DATABASE `name` (from `template` if given). Raises psycopg2 errors as they come."""
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        self._admin(query)

    def drop_database(self, name: str) -> None:
        """Terminate the backends connected to `name`, then drop it if it exists."""
        self._admin(
            sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = {} AND pid <> pg_backend_pid()").format(sql.Literal(name)),
            sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)),
        )

    def _admin(self, *queries) -> None:
        conn = self.connect("postgres", connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for query in queries:
                    cur.execute(query)
        finally:
            conn.close()

    # -- helpers ---------------------------------------------------------------------------

    def _write_settings(self, socket_dir: pathlib.Path) -> None:
        settings = {
            "port": str(self.port),
            "unix_socket_directories": f"'{socket_dir}'",
            "listen_addresses": "'127.0.0.1'" if self.tcp else "''",
            "max_connections": str(self.max_connections),
            "logging_collector": "off",
        }
        if self.fast:
            settings.update(fsync="off", full_page_writes="off", shared_buffers="'32MB'",
                            synchronous_commit="on" if self.crash_safe else "off")
        path = self.datadir / SETTINGS_FILE
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()), encoding="utf-8")
        self._run_as.give(path)

    def _run(self, command: list[str], *, what: str, timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            # cwd=/ because the run-as account may not be able to enter our working directory.
            result = subprocess.run(command, cwd="/", env=env, capture_output=True, text=True,
                                    timeout=timeout, **self._run_as.subprocess_kwargs())
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"{what} for {self.datadir} did not finish within {timeout:.0f} s."
                               f"{self._log_tail()}") from exc
        except OSError as exc:
            raise ClusterError(f"could not run {what} for {self.datadir}: {exc}") from exc
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise ClusterError(f"{what} failed for {self.datadir} (exit status {result.returncode}): "
                               f"{output}{self._log_tail()}")

    def _wait_accepting(self, deadline: float) -> None:
        """Poll until a connection succeeds; raise ClusterError when `deadline` passes."""
        while True:
            try:
                psycopg2.connect(**self.connect_kwargs(), connect_timeout=2).close()
                return
            except psycopg2.OperationalError as exc:
                if time.monotonic() >= deadline or not self.is_running():
                    raise ClusterError(f"PostgreSQL in {self.datadir} does not accept connections: "
                                       f"{str(exc).strip()}{self._log_tail()}") from exc
            time.sleep(0.05)

    def _log_tail(self, lines: int = 10) -> str:
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
            if tail:
                return "\nlast lines of " + str(self.log_path) + ":\n" + "\n".join(tail)
        return ""


def _process_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (our PID 1 may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The state follows the parenthesised command name, which may contain spaces.
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except OSError:
        return True
    return state not in ("Z", "X")


def _remove_stale_lock(path: pathlib.Path) -> None:
    """Delete a PostgreSQL lock file whose first line names a process that is not alive."""
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    except (FileNotFoundError, PermissionError):
        return
    if not first.lstrip("-").isdigit() or not _process_alive(abs(int(first))):
        path.unlink(missing_ok=True)


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children
