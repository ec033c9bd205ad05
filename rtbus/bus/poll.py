"""Long-polls: wait once for the notifications after `last`, without touching a socket.

A long-poll is a subscription that lives for one answer. `LongPolls.wait()` registers
a temporary subscriber with the process's ImDispatch (a fresh Mailbox, under a key of
its own), waits until the first batch arrives, the timeout passes, the client leaves
or the server stops, and always unsubscribes. The dispatcher does the reading, so no
database connection is held while a poll waits, and a thousand polls woken by one
NOTIFY cost one query.

The answer is a batch exactly as the dispatcher encoded it (a JSON array of
``{"id", "message"}``), or ``[]``. Batches already queued when the first one arrives
are spliced into the same answer, still without decoding them, as long as the answer
stays within the batch limits (bus_batch_max_notifications, bus_batch_max_bytes); the
client's next poll, with the id of the last notification it got, continues exactly
from there (the dispatcher replays in stream order).

The I/O belongs to the transport: it passes `watch`, a callable that watches the
client while the poll waits and calls `Poll.abandon()` when the client goes away
(rtbus.http.longpolling does that with the request's socket).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import ContextManager

import orjson

from rtbus.bus.delivery import Limits
from rtbus.bus.mailbox import Mailbox
from rtbus.errors import Overloaded

_logger = logging.getLogger(__name__)

EMPTY_BATCH = b"[]"
REFUSAL_LOG_INTERVAL = 60.0   # seconds between two warnings about refused polls

_ids = itertools.count(1)


class Outcome(str, enum.Enum):
    """How a poll ended."""

    DELIVERED = "delivered"
    TIMEOUT = "timeout"
    LEFT = "left"          # the client disconnected while waiting
    STOPPED = "stopped"    # the server is stopping
    SESSION_CHANGED = "session_changed"   # its session changed: the client polls again


class Poll:
    """One held long-poll: the dispatcher's subscriber key and the handle given to `watch`."""

    __slots__ = ("id", "mailbox", "outcome", "started")

    def __init__(self, mailbox: Mailbox, started: float):
        self.id = next(_ids)
        self.mailbox = mailbox
        self.outcome: Outcome | None = None    # set when the wait is cut short
        self.started = started

    def abandon(self) -> None:
        """The client left: end the wait now (callable from any thread or greenlet)."""
        self._end(Outcome.LEFT)

    def stop(self) -> None:
        """The server is stopping: end the wait now with an empty answer."""
        self._end(Outcome.STOPPED)

    def session_changed(self) -> None:
        """Its session changed (groups, user, a revocation): end the wait now with an
        empty answer, so that the client's next poll is authorized anew. Must not block."""
        self._end(Outcome.SESSION_CHANGED)

    def _end(self, outcome: Outcome) -> None:
        if self.outcome is None:
            self.outcome = outcome
        self.mailbox.close()

    def __repr__(self) -> str:
        return f"long-poll #{self.id}"


def merge_batches(batches: Iterable[bytes]) -> bytes:
    """Splice JSON arrays of notifications into one array without decoding them.

    Each batch must be a compact JSON array (``[`` first, ``]`` last), as ImDispatch
    encodes them; empty arrays are skipped.
    """
    inner = [batch[1:-1] for batch in batches if len(batch) > 2]
    return b"[" + b",".join(inner) + b"]"


class PollResult:
    """The answer of one poll: `batch` (JSON array bytes), how it ended, seconds waited."""

    __slots__ = ("batch", "outcome", "waited")

    def __init__(self, batch: bytes, outcome: Outcome, waited: float):
        self.batch = batch
        self.outcome = outcome
        self.waited = waited

    def __repr__(self) -> str:
        return f"PollResult({self.outcome.value}, {len(self.batch)} bytes, {self.waited:.2f} s)"


Watch = Callable[[Poll], ContextManager]


class LongPolls:
    """The long-polls held by one process, at most `max_polls` at once.

    `dispatcher` is the process's ImDispatch (anything with its subscribe/unsubscribe);
    `timeout` the default wait in seconds; `mailbox_max_bytes` bounds what one poll
    may have queued. Thread- and greenlet-safe.
    """

    def __init__(self, dispatcher, *, timeout: float, max_polls: int,
                 mailbox_max_bytes: int, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic):
        self.dispatcher = dispatcher
        self.timeout = float(timeout)
        self.max_polls = int(max_polls)
        self.mailbox_max_bytes = int(mailbox_max_bytes)
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._held: dict[int, Poll] = {}
        self._stopping = False
        self._peak = 0
        self._last_refusal_log = float("-inf")
        self._refused_since_log = 0
        self._counters = dict.fromkeys(
            ("polls", "refused", "failed", *(outcome.value for outcome in Outcome)), 0)

    @classmethod
    def from_config(cls, dispatcher, config) -> LongPolls:
        return cls(dispatcher, timeout=config.longpolling_timeout,
                   max_polls=config.longpolling_max_polls,
                   mailbox_max_bytes=config.mailbox_max_bytes,
                   limits=Limits.from_config(config))

    def wait(self, dbname: str, channels: Sequence[str], last: int, *,
             timeout: float | None = None, watch: Watch | None = None) -> PollResult:
        """Hold a poll on `channels` (encoded, anchored to `dbname`) after `last`.

        Returns as soon as notifications arrive (DELIVERED), or with ``[]`` after
        `timeout` seconds (default: the service's), when `watch` reports that the
        client left, or when the server stops. Raises Overloaded when `max_polls`
        polls are already held or the server is stopping, and what
        ImDispatch.subscribe raises for channels it refuses.
        """
        poll = self._admit()
        outcome = None
        try:
            self.dispatcher.subscribe(poll, dbname, channels, last, poll.mailbox)
            with watch(poll) if watch is not None else contextlib.nullcontext():
                first = poll.mailbox.get(self.timeout if timeout is None else timeout)
            if first is not None:
                outcome = Outcome.DELIVERED
                batch = merge_batches([first, *self._drain(poll.mailbox, first)])
            else:
                outcome = poll.outcome or Outcome.TIMEOUT
                batch = EMPTY_BATCH
            return PollResult(batch, outcome, self._clock() - poll.started)
        finally:
            self.dispatcher.unsubscribe(poll)
            poll.mailbox.close()
            self._release(poll, outcome)

    def close_all(self) -> int:
        """Answer every held poll at once with ``[]`` and refuse new ones (graceful stop).

        Returns how many polls were held.
        """
        with self._lock:
            self._stopping = True
            held = list(self._held.values())
        for poll in held:
            poll.stop()
        if held:
            _logger.info("answered %d held long-poll(s): the server is stopping", len(held))
        return len(held)

    @property
    def held(self) -> int:
        """Polls waiting right now."""
        return len(self._held)

    def stats(self) -> dict:
        """Counters since start (polls, refused, failed, and one per Outcome value) and the gauges
        `held` (now), `peak_held` and `max_polls`."""
        with self._lock:
            return {**self._counters, "held": len(self._held), "peak_held": self._peak,
                    "max_polls": self.max_polls}

    # -- internals ---------------------------------------------------------------------------

    def _admit(self) -> Poll:
        with self._lock:
            if self._stopping:
                self._counters["refused"] += 1
                raise Overloaded("the server is stopping: poll again on the next process")
            if len(self._held) >= self.max_polls:
                self._counters["refused"] += 1
                self._log_refusal_locked()
                raise Overloaded(f"{len(self._held)} long-polls already held, the most this "
                                 f"process takes (longpolling_max_polls); retry later")
            poll = Poll(Mailbox(self.mailbox_max_bytes), self._clock())
            self._held[poll.id] = poll
            self._counters["polls"] += 1
            self._peak = max(self._peak, len(self._held))
            return poll

    def _release(self, poll: Poll, outcome: Outcome | None) -> None:
        with self._lock:
            self._held.pop(poll.id, None)
            self._counters[outcome.value if outcome is not None else "failed"] += 1
            held = len(self._held)
        if outcome is Outcome.LEFT:
            _logger.debug("%s released after %.1f s: the client disconnected (%d held)",
                         poll, self._clock() - poll.started, held)

    def _log_refusal_locked(self) -> None:
        self._refused_since_log += 1
        now = self._clock()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL:
            _logger.warning("refused %d long-poll(s): %d held, longpolling_max_polls is %d",
                           self._refused_since_log, len(self._held), self.max_polls)
            self._last_refusal_log = now
            self._refused_since_log = 0

    def _drain(self, mailbox: Mailbox, first: bytes) -> list[bytes]:
        """The batches queued behind `first` that fit in the same answer, without waiting.

        What does not fit is left behind: the poll ends, and the next one replays it.
        """
        batches = []
        size = len(first)
        count = None
        while (batch := mailbox.peek()) is not None:
            if size + len(batch) > self.limits.max_bytes:
                break
            if count is None:
                count = len(orjson.loads(first))
            more = len(orjson.loads(batch))
            if count + more > self.limits.notifications:
                break
            batches.append(mailbox.get(0))
            size, count = size + len(batch), count + more
        return batches
