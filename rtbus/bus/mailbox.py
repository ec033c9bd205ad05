"""The bounded outbound queue between ImDispatch and one client connection.

The dispatcher puts encoded batches (a JSON array of notifications, ready to send)
and must never block on a slow client; the transport takes them out at its pace. When
a client falls more than `max_bytes` behind, the mailbox refuses further batches, is
marked `overflowed` and calls `on_overflow` once: the transport then closes that
client as a slow consumer (it will reconnect and catch up with its `last`).

Waking the consumer is edge-triggered and cheap. A put takes one plain lock; it only
does more when the consumer is waiting for work:

* a consumer that blocks in `get()` parks on an event made for that one wait;
* an evented consumer (a websocket) never blocks here: it calls `pop()` until it
  returns None, and `on_ready` tells it when to come back. `on_ready` fires once per
  transition from "drained" (a pop or get found the mailbox empty) to "has something"
  (a put, a close or an overflow), so a steady stream of batches to a busy consumer
  costs no wake-up at all.

A consumer that can send without blocking (a websocket) may also give `send_now`: a put
that finds the mailbox empty first offers the batch to it, and a batch it takes never
enters the queue: no wake-up, no greenlet switch, no queue entry per delivery (see
`WebsocketConnection._write_through`). The size bound applies to what is queued.

A `threading.Condition` did this before; under gevent every wait allocated a lock and
every notify yielded to the event loop, about a fifth of the evented process's CPU
under fan-out.
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

    `on_ready(mailbox)` (optional) is called, outside the lock, from the thread or
    greenlet that put, closed or overflowed the mailbox, when its consumer had found
    it empty since the previous call (see the module docstring). It must not block.

    `send_now(batch, since)` (optional) is called, under the lock, by a put that finds
    the mailbox open and empty; True means the consumer took the batch (it is then not
    queued and wakes nobody). It must not block nor touch the mailbox.
    """

    __slots__ = ("max_bytes", "on_overflow", "on_ready", "send_now", "overflowed", "closed",
                 "last_id",
                 "last_since", "_batches", "_bytes", "_lock", "_drained", "_waiter")

    def __init__(self, max_bytes: int, on_overflow: Callable[[Mailbox], None] | None = None,
                 on_ready: Callable[[Mailbox], None] | None = None,
                 send_now: Callable[[bytes, float | None], bool] | None = None, lock=None):
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        self.on_ready = on_ready
        self.send_now = send_now
        self.overflowed = False
        self.closed = False
        self.last_id = 0              # highest notification id ever put
        # The `since` of the batch get()/pop() returned last: when its notifications
        # were announced (monotonic clock), for the delivery latency; None when unknown.
        self.last_since: float | None = None
        # Made with the first queued batch: an empty deque costs 760 bytes, and most
        # websockets' batches are written through without ever being queued.
        self._batches: collections.deque[tuple[bytes, float | None]] | None = None
        self._bytes = 0
        # `lock`: a context manager excluding the producers and consumers of this mailbox
        # from each other; by default a threading.Lock.
        self._lock = lock if lock is not None else threading.Lock()
        self._drained = True          # the consumer found it empty: the next put wakes it
        self._waiter: threading.Event | None = None   # a get() parked on an empty mailbox

    def put(self, batch: bytes, ids: Sequence[int], since: float | None = None) -> bool:
        """Queue one batch holding notifications `ids`; never blocks.

        `since` (time.monotonic()) is when the batch's notifications were announced;
        the consumer reads it back as `last_since` after get()/pop().

        Returns False (and queues nothing) when the mailbox is closed or overflowed,
        including by this very batch, in which case `on_overflow(self)` is called,
        once, from the caller's thread, outside the lock.
        """
        with self._lock:
            if self.closed or self.overflowed:
                return False
            if not self._batches and self.send_now is not None and self.send_now(batch, since):
                self._note_ids(ids)
                return True
            if self._batches and self._bytes + len(batch) > self.max_bytes:
                self.overflowed = True
                accepted = False
            else:
                if self._batches is None:
                    self._batches = collections.deque()
                self._batches.append((batch, since))
                self._bytes += len(batch)
                self._note_ids(ids)
                accepted = True
            wake = self._take_wakeup()
        if wake:
            self._wake()
        if not accepted and self.on_overflow is not None:
            self.on_overflow(self)
        return accepted

    def _note_ids(self, ids: Sequence[int]) -> None:
        if ids:
            top = ids[-1] if len(ids) == 1 else max(ids)
            if top > self.last_id:
                self.last_id = top

    def pop(self) -> bytes | None:
        """Return the oldest batch, or None at once when there is none.

        A None arms `on_ready` for the next put, close or overflow. Batches queued
        before an overflow or a close are still returned.
        """
        with self._lock:
            if not self._batches:
                self._drained = True
                return None
            batch, self.last_since = self._batches.popleft()
            self._bytes -= len(batch)
            return batch

    def peek(self) -> bytes | None:
        """The oldest batch, left in place; None when there is none."""
        with self._lock:
            return self._batches[0][0] if self._batches else None

    def get(self, timeout: float | None = None) -> bytes | None:
        """Return the oldest batch, waiting up to `timeout` seconds (None: forever).

        Returns None on timeout, or at once when the mailbox is closed or overflowed
        and empty. Batches queued before an overflow are still returned. One getter
        at a time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                if self._batches:
                    batch, self.last_since = self._batches.popleft()
                    self._bytes -= len(batch)
                    return batch
                self._drained = True
                if self.closed or self.overflowed:
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                waiter = self._waiter = threading.Event()
            waiter.wait(remaining)
            with self._lock:
                if self._waiter is waiter:
                    self._waiter = None

    def close(self) -> None:
        """Refuse further batches and wake the consumer (queued batches stay readable)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            wake = self._take_wakeup()
        if wake:
            self._wake()

    def _take_wakeup(self) -> bool:
        # Under the lock: is the consumer owed a wake-up? Clears the edge.
        if self._drained:
            self._drained = False
            return True
        return False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            waiter.set()
        if self.on_ready is not None:
            self.on_ready(self)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._batches) if self._batches is not None else 0
