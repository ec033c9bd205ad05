"""Run the real ``rtbus-server`` as a subprocess and watch it from the outside.

Every wait is bounded. The server runs in its own session, so teardown can kill
exactly the processes this harness started (its process group), by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys

import pytest

from waiting import wait_until  # noqa: F401  (re-exported: the suite's one bounded wait)

RTBUS_SERVER = os.path.join(os.path.dirname(sys.executable), "rtbus-server")

_HTTP_RE = re.compile(r"HTTP on [\w.:\[\]]+?:(\d+) with")
_LONGPOLLING_RE = re.compile(r"longpolling on [\w.:\[\]]+?:(\d+)")
_SINGLE_RE = re.compile(r"serving every route on [\w.:\[\]]+?:(\d+)")
_EVENTED_RE = re.compile(r"evented service \(longpolling\) running on [\w.:\[\]]+?:(\d+)")


def clean_environ() -> dict[str, str]:
    """The test runner's environment without anything that configures rtbus or libpq."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("RTBUS_", "PG", "ODOO_"))}


def children_of(pid: int) -> dict[int, str]:
    """Direct children of `pid` as {pid: command line (process title)}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != pid or fields[0] == b"Z":
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry)] = cmdline
    return found


def is_alive(pid: int) -> bool:
    """Whether any thread of process `pid` still runs.

    A zombie main thread is not enough: when a threaded process is killed its
    main thread can turn zombie while the others are still exiting, and the
    process's files (its listening socket among them) close only with the last.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state != b"Z":
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def http_get(port: int, path: str, timeout: float = 5.0, headers: dict | None = None):
    """GET `path` on 127.0.0.1:`port`; returns (status, headers dict, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def health_ok(port: int) -> bool:
    try:
        status, _headers, body = http_get(port, "/websocket/health", timeout=2)
    except OSError:
        return False
    return status == 200 and json.loads(body) == {"status": "pass"}


class ServerProcess:
    """One ``rtbus-server`` run: start it, read its log, signal it, inspect its children."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: str):
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.http_port: int | None = None
        self.longpolling_port: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, wait: bool = True, timeout: float = 30) -> "ServerProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [RTBUS_SERVER, *self.args], env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    def log(self) -> str:
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def wait_log(self, pattern: str, timeout: float = 10, count: int = 1) -> list[re.Match]:
        """Wait until `pattern` (a regexp) matches `count` times in the log."""
        regexp = re.compile(pattern)

        def found():
            matches = list(regexp.finditer(self.log()))
            if len(matches) >= count:
                return matches
            if self.proc.poll() is not None:
                pytest.fail(f"rtbus-server exited ({self.proc.returncode}) before logging "
                            f"{pattern!r}:\n{self.log()[-3000:]}")
            return None
        return wait_until(found, timeout, message=f"log line {pattern!r}")

    def wait_ready(self, timeout: float = 30) -> None:
        if "--workers=0" in self.args or self._workers() == 0:
            self.http_port = int(self.wait_log(_SINGLE_RE.pattern, timeout)[0].group(1))
            wait_until(lambda: health_ok(self.http_port), timeout, message="single process health")
            return
        self.read_ports(timeout)
        self.wait_log(_EVENTED_RE.pattern, timeout)
        wait_until(lambda: health_ok(self.http_port) and health_ok(self.longpolling_port), timeout,
                   message="health on both ports")

    def read_ports(self, timeout: float = 30) -> None:
        """Learn the HTTP and longpolling ports from the master's start-up line."""
        text = self.wait_log(_HTTP_RE.pattern, timeout)[0].string
        self.http_port = int(_HTTP_RE.search(text).group(1))
        self.longpolling_port = int(_LONGPOLLING_RE.search(text).group(1))

    def _workers(self) -> int | None:
        for i, arg in enumerate(self.args):
            if arg.startswith("--workers="):
                return int(arg.split("=", 1)[1])
            if arg == "--workers" and i + 1 < len(self.args):
                return int(self.args[i + 1])
        return None

    def children(self) -> dict[int, str]:
        return children_of(self.pid)

    def children_titled(self, title: str) -> list[int]:
        return sorted(pid for pid, cmd in self.children().items() if cmd.startswith(title))

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rtbus-server did not exit within {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; then kill whatever of this run is left (teardown safety)."""
        if self.proc is None:
            return None
        code = None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(5)
        self._log.close()
        return code if code is not None else self.proc.returncode


def run_cli(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    """Run ``rtbus-server ARGS`` to completion (for commands and start-up failures)."""
    return subprocess.run([RTBUS_SERVER, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def serving_process(sock, pids) -> int | None:
    """Which of `pids` holds the server end of the TCP connection `sock` (a client socket on
    127.0.0.1): the socket whose peer is `sock`'s own address, found in /proc."""
    host, port = sock.getsockname()[:2]
    peer = f"{''.join(reversed([f'{int(part):02X}' for part in host.split('.')]))}:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if fields[2] == peer:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None
