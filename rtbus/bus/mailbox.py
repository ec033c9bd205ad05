"""The bounded outbound queue between ImDispatch and one client connection.

The dispatcher puts encoded batches (a JSON array of notifications, ready to send)
and must never block on a slow client; the transport takes them out at its pace. When
a client falls more than `max_bytes` behind, the mailbox refuses further batches, is
marked `overflowed` and calls `on_overflow` once: the transport then closes that
client as a slow consumer (it will reconnect and catch up with its `last`).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence


class Mailbox:
    """A FIFO of encoded batches bounded by their total size in bytes. Thread-safe.

    A batch larger than `max_bytes` is still accepted into an empty mailbox (a large
    catch-up must not make a client unservable); anything that would push a non-empty
    mailbox past `max_bytes` overflows it.
    """

    def __init__(self, max_bytes: int, on_overflow: Callable[[Mailbox], None] | None = None):
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self.overflowed = False
        self.closed = False
        self.last_id = 0              # highest notification id ever put
        # The `since` of the batch get() returned last: when its notifications were
        # announced (monotonic clock), for the delivery latency; None when unknown.
        self.last_since: float | None = None
        self._batches: collections.deque[bytes] = collections.deque()
        self._since: collections.deque[float | None] = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition(threading.Lock())

    def put(self, batch: bytes, ids: Sequence[int], since: float | None = None) -> bool:
        """Queue one batch holding notifications `ids`; never blocks.

        `since` (time.monotonic()) is when the batch's notifications were announced;
        the consumer reads it back as `last_since` after get().

        Returns False (and queues nothing) when the mailbox is closed or overflowed,
        including by this very batch, in which case `on_overflow(self)` is called,
        once, from the caller's thread, outside the lock.
        """
        with self._cond:
            if self.closed or self.overflowed:
                return False
            if self._batches and self._bytes + len(batch) > self.max_bytes:
                self.overflowed = True
                self._cond.notify_all()
                callback = self.on_overflow
            else:
                self._batches.append(batch)
                self._since.append(since)
                self._bytes += len(batch)
                if ids:
                    self.last_id = max(self.last_id, max(ids))
                self._cond.notify()
                return True
        if callback is not None:
            callback(self)
        return False

    def get(self, timeout: float | None = None) -> bytes | None:
        """Return the oldest batch, waiting up to `timeout` seconds (None: forever).

        Returns None on timeout, or at once when the mailbox is closed or overflowed
        and empty. Batches queued before an overflow are still returned.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._batches:
                if self.closed or self.overflowed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            batch = self._batches.popleft()
            self.last_since = self._since.popleft()
            self._bytes -= len(batch)
            return batch

    def close(self) -> None:
        """Refuse further batches and wake any getter (queued batches stay readable)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._batches)
