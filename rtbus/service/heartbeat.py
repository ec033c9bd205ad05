"""The pipe through which every child proves to the master that it is alive.

A child writes short newline-terminated messages; the master reads them in its
select loop. Any message counts as a sign of life:

- ``.``          the child's loop came round (it is idle or between requests);
- ``R <what>``   it started serving a request (``GET /path``), so the master
                 can name the request when it has to kill a stuck worker;
- ``D``          it finished that request.

Writes never block the child: if the master is not reading and the pipe is
full, the message is dropped (the next one will do as well).
"""

from __future__ import annotations

import dataclasses
import os
import time

MAX_DESCRIPTION = 200


class HeartbeatWriter:
    """The child's end of the pipe."""

    def __init__(self, fd: int):
        os.set_blocking(fd, False)
        self.fd = fd

    def _write(self, message: bytes) -> None:
        try:
            os.write(self.fd, message)
        except (BlockingIOError, BrokenPipeError, InterruptedError):
            pass

    def beat(self) -> None:
        self._write(b".\n")

    def request_started(self, description: str) -> None:
        text = description.replace("\n", " ")[:MAX_DESCRIPTION]
        self._write(b"R " + text.encode("utf-8", "replace") + b"\n")

    def request_done(self) -> None:
        self._write(b"D\n")

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


@dataclasses.dataclass
class HeartbeatState:
    """What the master knows about one child from its heartbeats."""

    last_seen: float
    ready: bool = False
    request: str | None = None
    request_started: float | None = None
    requests: int = 0


class HeartbeatReader:
    """The master's end of the pipe for one child."""

    def __init__(self, fd: int, now: float | None = None):
        os.set_blocking(fd, False)
        self.fd = fd
        self.state = HeartbeatState(last_seen=time.monotonic() if now is None else now)
        self._partial = b""
        self.eof = False

    def fileno(self) -> int:
        return self.fd

    def read(self, now: float | None = None) -> None:
        """Consume whatever the child wrote and update `state`."""
        try:
            data = os.read(self.fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return
        self.feed(data, time.monotonic() if now is None else now)

    def feed(self, data: bytes, now: float) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-4 * MAX_DESCRIPTION:]
        state = self.state
        for line in lines:
            state.last_seen = now
            state.ready = True
            if line.startswith(b"R "):
                state.request = line[2:].decode("utf-8", "replace")
                state.request_started = now
            elif line == b"D":
                state.request = None
                state.request_started = None
                state.requests += 1

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
