"""AuthProxy: what the application behind ``auth_proxy_url`` says of a session, remembered.

One per process, built at start-up when ``auth_proxy_url`` is set. It asks
``POST <url>/subscribe`` (rtbus.auth documents the contract) through a ProxyClient,
remembers each answer for ``auth_proxy_cache_seconds`` per (database, sid, requested
channels), single-flight, and remembers the sessions the application said ended
(a refusal, or NOTIFY rtbus_session) so that they are refused without asking again.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

from rtbus.auth.client import ProxyClient
from rtbus.auth.grants import Grant, GrantCache, parse_answer
from rtbus.errors import AuthProxyUnavailable
from rtbus.metrics.histogram import Histogram
from rtbus.session import SID_PREFIX_LENGTH, Session

logger = logging.getLogger("rtbus.auth.proxy")

SUBSCRIBE_PATH = "subscribe"
IDENTITY_ONLY = ()        # the channel list of an identity re-check


class AuthProxy:
    """Asks the application, through `client`, with answers kept in a GrantCache.

    `ttl`: seconds an answer is reused; `max_entries`: the bound of each cache
    (answers, identities, ended sessions).
    """

    def __init__(self, client: ProxyClient, *, ttl: float, max_entries: int,
                 clock=time.monotonic):
        self.client = client
        self.ttl = float(ttl)
        self._clock = clock
        self.grants = GrantCache(ttl, max_entries, clock=clock)
        # The latest answer about each (database, sid), whatever channels it was for:
        # what re-checks of open connections read.
        self.identities = GrantCache(ttl, max_entries, clock=clock)
        self._ended: collections.OrderedDict[tuple[str, str], float] = collections.OrderedDict()
        self._max_entries = int(max_entries)
        self._lock = threading.Lock()
        self._refreshing: set[tuple[str, str]] = set()
        self.latency = Histogram()
        self.counters = collections.Counter()

    @classmethod
    def from_config(cls, config) -> AuthProxy:
        return cls(ProxyClient.from_config(config), ttl=config.auth_proxy_cache_seconds,
                   max_entries=config.auth_proxy_cache_size)

    # -- asking ------------------------------------------------------------------------

    def grant(self, dbname: str, sid: str | None, channels: tuple[str, ...]) -> Grant:
        """The application's answer for `sid` (None: a visitor without a cookie) asking
        for `channels` in `dbname`: from the cache, or one call shared by every caller
        asking the same meanwhile. Raises AuthProxyUnavailable."""
        if sid is not None and self.has_ended(dbname, sid):
            self.counters["ended_refusals"] += 1
            return Grant(valid=False)
        key = (dbname, sid, channels)
        return self.grants.get(key, lambda: self._call(dbname, sid, channels),
                               wait=self.client.timeout + 1.0)

    def identity(self, dbname: str, sid: str) -> tuple[Grant, bool] | None:
        """The latest answer about `sid` and whether it is fresh, or None if unknown."""
        return self.identities.peek((dbname, sid))

    def refresh_soon(self, dbname: str, sid: str) -> None:
        """Re-ask the application about `sid` in the background (once at a time per sid).
        A refusal ends the session; an error leaves the last answer in place."""
        key = (dbname, sid)
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
        threading.Thread(target=self._refresh, args=key, daemon=True,
                         name="rtbus.auth.refresh").start()

    def _refresh(self, dbname: str, sid: str) -> None:
        try:
            self.grant(dbname, sid, IDENTITY_ONLY)
        except AuthProxyUnavailable as exc:
            logger.warning("could not re-check session %s… of %s with the application: %s; "
                           "its open connections keep their channels", sid[:6], dbname, exc)
        finally:
            with self._lock:
                self._refreshing.discard((dbname, sid))

    def _call(self, dbname: str, sid: str | None, channels: tuple[str, ...]) -> Grant:
        started = self._clock()
        self.counters["calls"] += 1
        try:
            answer = self.client.post(SUBSCRIBE_PATH, {
                "db": dbname, "cookies": {"session_id": sid} if sid else {},
                "channels": list(channels)}, cookie=f"session_id={sid}" if sid else None)
            grant = parse_answer(dbname, answer)
        except AuthProxyUnavailable:
            self.counters["errors"] += 1
            raise
        finally:
            self.latency.observe(self._clock() - started)
        if sid is not None:
            self.identities.put((dbname, sid), grant)
            if not grant.valid:
                self.counters["refusals"] += 1
                self.end(dbname, sid)
        return grant

    # -- ended sessions ----------------------------------------------------------------

    def end(self, dbname: str, prefix: str) -> int:
        """Note that the sessions of `dbname` whose sid starts with `prefix` (at least
        SID_PREFIX_LENGTH characters; "*": all of them) ended: forget what was said of
        them, and refuse them for `ttl` seconds without asking (NOTIFY rtbus_session).
        Returns how many answers were forgotten."""
        if prefix != "*":
            prefix = prefix[:SID_PREFIX_LENGTH]
        if prefix == "*" or len(prefix) < SID_PREFIX_LENGTH:
            # Whole database (or a LISTEN reconnected, so notifications may be lost):
            # forget every answer; nothing is refused unasked.
            return (self.grants.forget(lambda key: key[0] == dbname)
                    + self.identities.forget(lambda key: key[0] == dbname))
        with self._lock:
            self._ended[(dbname, prefix)] = self._clock() + max(self.ttl, 1.0)
            self._ended.move_to_end((dbname, prefix))
            while len(self._ended) > self._max_entries:
                self._ended.popitem(last=False)
        self.counters["ended"] += 1

        def named(key) -> bool:
            return key[0] == dbname and isinstance(key[1], str) and key[1].startswith(prefix)

        return self.grants.forget(named) + self.identities.forget(named)

    def has_ended(self, dbname: str, sid: str) -> bool:
        key = (dbname, sid[:SID_PREFIX_LENGTH])
        with self._lock:
            until = self._ended.get(key)
            if until is None:
                return False
            if self._clock() < until:
                return True
            del self._ended[key]
            return False

    # -- figures -----------------------------------------------------------------------

    def stats(self) -> dict:
        """Calls made, errors, refusals (valid false), cache hits / misses / joined
        (waited for a call in flight), sessions ended, cached answers."""
        grants = self.grants.counters
        return {"calls": self.counters["calls"], "errors": self.counters["errors"],
                "refusals": self.counters["refusals"], "ended": self.counters["ended"],
                "ended_refusals": self.counters["ended_refusals"],
                "hits": grants["hits"], "misses": grants["misses"], "joined": grants["joined"],
                "evictions": grants["evictions"], "cached": len(self.grants)}

    def session_for(self, dbname: str, sid: str | None, grant: Grant) -> Session:
        """The Session that `grant` describes (a visitor when it names no user)."""
        return Session(sid=sid, dbname=dbname, uid=grant.uid,
                       partner_id=grant.partner_id if grant.uid is not None else None,
                       group_ids=(), is_websocket_session=True)
