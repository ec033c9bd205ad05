"""Per-process snapshots: each process writes ``<kind>-<pid>.json`` to the runtime directory.

A snapshot is ``{"kind", "pid", "started", "written", "metrics": {...}, ...}``
where ``metrics`` maps family names (see `families`) to values. Writes are
atomic (a temporary file renamed over the old one), so a reader never sees half
a file. The master removes the files of children that are gone; readers skip
files whose process no longer exists, so a crash leaves no ghost series behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable

_logger = logging.getLogger(__name__)

INTERVAL = 2.0           # seconds between two snapshots of a process
SUFFIX = ".json"
WARN_INTERVAL = 300.0    # seconds between two warnings about a failing write


class SnapshotWriter:
    """Writes this process's snapshot: `collect()` → {family: value}, plus `extra()` fields."""

    def __init__(self, directory: str, kind: str, collect: Callable[[], dict], *,
                 extra: Callable[[], dict] | None = None, interval: float = INTERVAL):
        self.directory = directory
        self.kind = kind
        self.pid = os.getpid()
        self.collect = collect
        self.extra = extra
        self.interval = interval
        self.started = time.time()
        self.path = os.path.join(directory, f"{kind}-{self.pid}{SUFFIX}")
        self._next = 0.0
        self._last_warning = float("-inf")

    def due(self) -> bool:
        """True when `interval` passed since the last write."""
        return time.monotonic() >= self._next

    def maybe_write(self) -> None:
        """Write if it is due."""
        if self.due():
            self.write()

    def write(self) -> bool:
        """Write the snapshot now; a failure is logged (rarely) and returns False."""
        self._next = time.monotonic() + self.interval
        try:
            snapshot = {"kind": self.kind, "pid": self.pid, "started": self.started,
                        "written": time.time(), "metrics": self.collect()}
            if self.extra is not None:
                snapshot.update(self.extra())
            temporary = f"{self.path}.{self.pid}.tmp"
            with open(temporary, "w") as f:
                json.dump(snapshot, f, separators=(",", ":"))
            os.replace(temporary, self.path)
            return True
        except Exception as exc:   # metrics must never take a worker down
            now = time.monotonic()
            if now - self._last_warning >= WARN_INTERVAL:
                self._last_warning = now
                _logger.warning("cannot write the metrics snapshot %s: %s", self.path, exc)
            return False

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass


def _pid_of(filename: str) -> int | None:
    if not filename.endswith(SUFFIX):
        return None
    _kind, _, pid = filename[:-len(SUFFIX)].rpartition("-")
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_all(directory: str) -> list[dict]:
    """The snapshots of live processes in `directory`, master first, then by kind and pid."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    snapshots = []
    for name in names:
        pid = _pid_of(name)
        if pid is None or not _alive(pid):
            continue
        try:
            with open(os.path.join(directory, name)) as f:
                snapshot = json.load(f)
        except (OSError, ValueError):
            continue   # removed meanwhile, or not ours
        if isinstance(snapshot, dict) and isinstance(snapshot.get("metrics"), dict):
            snapshots.append(snapshot)
    order = {"master": 0, "single": 1, "gevent": 2, "http": 3, "cron": 4}
    return sorted(snapshots, key=lambda s: (order.get(s.get("kind"), 9), s.get("pid", 0)))


def prune(directory: str, keep: set[int]) -> list[str]:
    """Remove the snapshots (and leftover temporary files) of pids not in `keep`."""
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        base = name.split(SUFFIX, 1)[0] + SUFFIX if SUFFIX in name else name
        pid = _pid_of(base)
        if pid is None or pid in keep:
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def live_owner(directory: str, kinds=("master", "single")) -> int | None:
    """The pid of a live master (or single process) that wrote a snapshot in `directory`."""
    for snapshot in read_all(directory):
        if snapshot.get("kind") in kinds and snapshot.get("pid") != os.getpid():
            return snapshot["pid"]
    return None
