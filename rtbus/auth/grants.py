"""The application's answers, remembered: a bounded TTL cache with single-flight.

An answer (`Grant`) says who a session is and which channels it may hear. It is
kept for `ttl` seconds under the key the caller chose (database, sid, requested
channels), at most `max_entries` of them, least recently used dropped first. While
one call for a key is in flight, every other caller asking for that key waits for
its outcome instead of calling too: a thousand reconnects of one session make one
call. A failed call is not remembered; its waiters all get its error.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from rtbus.bus import channels as bus_channels
from rtbus.errors import AuthProxyUnavailable

_MAX_CHANNELS = 10_000


@dataclasses.dataclass(frozen=True)
class Grant:
    """One answer of the application about a session.

    `valid` False: the session ended (logged out, expired); nothing else matters then.
    `uid`/`partner_id` None: a visitor without a user. `channels`: encoded, anchored
    to the database, sorted and unique.
    """

    valid: bool
    uid: int | None = None
    partner_id: int | None = None
    channels: tuple[str, ...] = ()


def parse_answer(dbname: str, answer: dict) -> Grant:
    """The Grant in the application's JSON answer (see rtbus.auth), channels anchored
    to `dbname`. Raises AuthProxyUnavailable for an answer of the wrong shape."""
    valid = answer.get("valid")
    if not isinstance(valid, bool):
        raise AuthProxyUnavailable("the authorization proxy's answer has no boolean 'valid'")
    if not valid:
        return Grant(valid=False)
    uid = _optional_id(answer, "uid")
    partner_id = _optional_id(answer, "partner_id")
    raw = answer.get("channels", [])
    if not isinstance(raw, list) or len(raw) > _MAX_CHANNELS:
        raise AuthProxyUnavailable(f"the authorization proxy's 'channels' must be a list of at "
                                   f"most {_MAX_CHANNELS} channels")
    encoded = set()
    for channel in raw:
        if isinstance(channel, list):
            channel = tuple(channel)
        try:
            encoded.add(bus_channels.encode(dbname, channel))
        except (ValueError, TypeError) as exc:
            raise AuthProxyUnavailable(f"the authorization proxy granted a channel rtbus cannot "
                                       f"encode ({str(exc)[:120]})") from None
    return Grant(True, uid, partner_id, tuple(sorted(encoded)))


def _optional_id(answer: dict, name: str) -> int | None:
    value = answer.get(name)
    if value is None or value is False:      # Odoo's "no record" is False
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AuthProxyUnavailable(f"the authorization proxy's {name!r} must be a positive "
                                   f"integer or null, not {value!r:.40}")
    return value


class _Flight:
    __slots__ = ("done", "grant", "error")

    def __init__(self):
        self.done = threading.Event()
        self.grant: Grant | None = None
        self.error: BaseException | None = None


@dataclasses.dataclass
class _Entry:
    grant: Grant
    fresh_until: float
    asked_at: float           # when the call that gave `grant` began


class GrantCache:
    """Grants by key for `ttl` seconds, `max_entries` at most; thread/greenlet-safe."""

    def __init__(self, ttl: float, max_entries: int, *, clock=time.monotonic):
        self.ttl = float(ttl)
        self.max_entries = int(max_entries)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[Hashable, _Entry] = collections.OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self.counters = collections.Counter()

    def get(self, key: Hashable, fetch: Callable[[], Grant], *, wait: float) -> Grant:
        """The fresh grant of `key`, else the outcome of `fetch()`, called by one caller
        while the others wait for it (at most `wait` seconds: AuthProxyUnavailable).
        Errors of `fetch` propagate to the caller and to every waiter."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._clock() < entry.fresh_until:
                self._entries.move_to_end(key)
                self.counters["hits"] += 1
                return entry.grant
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
                self.counters["misses"] += 1
            else:
                self.counters["joined"] += 1
        if not leader:
            return self._await(flight, wait)
        asked_at = self._clock()
        try:
            flight.grant = fetch()
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            self.put(key, flight.grant, asked_at=asked_at)
            return flight.grant
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def put(self, key: Hashable, grant: Grant, *, asked_at: float | None = None) -> None:
        """Remember `grant` for `ttl` seconds; `asked_at`: when the call that gave it
        began (default: now)."""
        if self.ttl <= 0:
            return
        now = self._clock()
        with self._lock:
            self._entries[key] = _Entry(grant, now + self.ttl, now if asked_at is None else asked_at)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.counters["evictions"] += 1

    def peek(self, key: Hashable) -> tuple[Grant, bool, float] | None:
        """The grant remembered for `key`, whether it is still fresh and when it was
        asked for; None when nothing is remembered."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            return entry.grant, self._clock() < entry.fresh_until, entry.asked_at

    def forget(self, matches: Callable[[Any], bool]) -> int:
        """Drop every entry whose key `matches`; return how many."""
        with self._lock:
            keys = [key for key in self._entries if matches(key)]
            for key in keys:
                del self._entries[key]
        return len(keys)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _await(flight: _Flight, wait: float) -> Grant:
        if not flight.done.wait(wait):
            raise AuthProxyUnavailable(f"the authorization proxy's answer for this session took "
                                       f"more than {wait:.1f} s")
        if isinstance(flight.error, AuthProxyUnavailable):
            raise AuthProxyUnavailable(str(flight.error))    # a fresh one per waiter
        if flight.error is not None:
            raise AuthProxyUnavailable(f"the authorization proxy call failed: "
                                       f"{type(flight.error).__name__}")
        return flight.grant
