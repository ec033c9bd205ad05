"""The queue of children that leave one at a time (the evented kinds, on a stop or a reload).

Their clients reconnect to the processes still running: one process's share of
websockets at a time (closed in batches by the process itself), never all at once.
The queue only decides whose turn it is; the master asks that child to stop.
"""

from __future__ import annotations

import collections


class DrainQueue:
    """Pids waiting for their turn to stop, and the one stopping now."""

    def __init__(self):
        self._waiting: collections.deque[int] = collections.deque()
        self.current: int | None = None

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, pid: int) -> None:
        self._waiting.append(pid)

    def next_due(self, children: dict) -> object | None:
        """The child whose turn it is now, or None.

        `children` maps the live pids to their `Child`. None while the current one is
        still among them, or when none is waiting; a waiting child that is gone or was
        killed meanwhile loses its turn to the next.
        """
        if self.current in children:
            return None
        self.current = None
        while self._waiting:
            child = children.get(self._waiting.popleft())
            if child is not None and child.killed_because is None:
                self.current = child.pid
                return child
        return None
