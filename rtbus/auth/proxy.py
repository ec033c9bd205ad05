"""AuthProxy: what the application behind ``auth_proxy_url`` says of a session, remembered.

One per process, built at start-up when ``auth_proxy_url`` is set. It asks
``POST <url>/subscribe`` (rtbus.auth documents the contract) through a ProxyClient,
remembers each answer for ``auth_proxy_cache_seconds`` per (database, sid, requested
channels), single-flight, and the latest answer about each session (its identity).

Ending sessions (NOTIFY rtbus_session, payload: a sid prefix). The payload names a
prefix, never a whole sid, and an application may keep that prefix across a rotation
(Odoo 19's "soft" rotation keeps the stored part of the sid). So an end does not refuse
the prefix outright: it refuses each session of that prefix *whose identity was
answered before the end*, for a while, and forgets the channel answers of the prefix;
a session first answered afterwards (the rotated-in one) is served normally.
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

_logger = logging.getLogger(__name__)

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

    def grant(self, dbname: str, sid: str | None, channels: tuple[str, ...],
              forwarded: tuple[tuple[str, str], ...] = ()) -> Grant:
        """The application's answer for `sid` (None: a visitor without a cookie) with the
        `forwarded` cookies, asking for `channels` in `dbname`: from the cache, or one
        call shared by every caller asking the same meanwhile. Raises AuthProxyUnavailable."""
        key = (dbname, sid, forwarded, channels)
        return self.grants.get(key, lambda: self._call(dbname, sid, channels, forwarded),
                               wait=self.client.timeout + 1.0)

    def identity(self, dbname: str, sid: str) -> tuple[Grant, bool] | None:
        """The latest answer about `sid` and whether it is fresh; None when unknown.
        An answer given before an end of its sid's prefix says ``valid: False``."""
        known = self.identities.peek((dbname, sid))
        if known is None:
            return None
        grant, fresh, asked_at = known
        if grant.valid and self.ended_since(dbname, sid, asked_at):
            self.counters["ended_refusals"] += 1
            return Grant(valid=False), fresh
        return grant, fresh

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
            # Answered from the cache (the identity fell out of its own bounded cache):
            # remember it as the identity again, dated from its own call.
            known = self.grants.peek((dbname, sid, (), IDENTITY_ONLY))
            if known is not None and self.identities.peek((dbname, sid)) is None:
                self.identities.put((dbname, sid), known[0], asked_at=known[2])
        except AuthProxyUnavailable as exc:
            _logger.warning("could not re-check session %s… of %s with the application: %s; "
                           "its open connections keep their channels", sid[:6], dbname, exc)
        finally:
            with self._lock:
                self._refreshing.discard((dbname, sid))

    def _call(self, dbname: str, sid: str | None, channels: tuple[str, ...],
              forwarded: tuple[tuple[str, str], ...] = ()) -> Grant:
        # An end arriving during the call must win over its answer: the identity is
        # dated from the call's start.
        started = self._clock()
        self.counters["calls"] += 1
        try:
            cookies = ({"session_id": sid} if sid else {}) | dict(forwarded)
            answer = self.client.post(SUBSCRIBE_PATH, {
                "db": dbname, "cookies": cookies, "channels": list(channels)},
                cookie="; ".join(f"{name}={value}" for name, value in cookies.items()) or None)
            grant = parse_answer(dbname, answer)
        except AuthProxyUnavailable:
            self.counters["errors"] += 1
            raise
        finally:
            self.latency.observe(self._clock() - started)
        if sid is not None:
            self.identities.put((dbname, sid), grant, asked_at=started)
        if not grant.valid:
            self.counters["refusals"] += 1
        return grant

    # -- ended sessions ----------------------------------------------------------------

    def end(self, dbname: str, prefix: str) -> int:
        """The application ended the sessions of `dbname` whose sid starts with `prefix`
        (NOTIFY rtbus_session; see the module docstring). Forgets the channel answers
        of that prefix and refuses, for max(ttl, 60) s, the sessions of the prefix
        answered before now. `prefix` "*" or shorter than SID_PREFIX_LENGTH (a whole
        database, or a LISTEN that reconnected and may have missed ends): forget every
        channel answer of `dbname`; identities stay until their ttl. Returns how many
        answers were forgotten."""
        if prefix == "*" or len(prefix) < SID_PREFIX_LENGTH:
            return self.grants.forget(lambda key: key[0] == dbname)
        prefix = prefix[:SID_PREFIX_LENGTH]
        now = self._clock()
        with self._lock:
            self._ended[(dbname, prefix)] = now
            self._ended.move_to_end((dbname, prefix))
            while len(self._ended) > self._max_entries:
                self._ended.popitem(last=False)
        self.counters["ended"] += 1
        return self.grants.forget(lambda key: key[0] == dbname and isinstance(key[1], str)
                                  and key[1].startswith(prefix))

    def ended_since(self, dbname: str, sid: str, asked_at: float | None) -> bool:
        """Whether `sid`'s prefix was ended after `asked_at` (None: at any time in the
        remembered window)."""
        key = (dbname, sid[:SID_PREFIX_LENGTH])
        with self._lock:
            ended_at = self._ended.get(key)
            if ended_at is None:
                return False
            if self._clock() - ended_at > max(self.ttl, 60.0):
                del self._ended[key]
                return False
        return asked_at is None or asked_at <= ended_at

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

    def session_for(self, dbname: str, sid: str | None, grant: Grant,
                    forwarded: tuple[tuple[str, str], ...] = ()) -> Session:
        """The Session that `grant` describes (a visitor when it names no user)."""
        return Session(sid=sid, dbname=dbname, uid=grant.uid,
                       partner_id=grant.partner_id if grant.uid is not None else None,
                       group_ids=(), is_websocket_session=True, forwarded_cookies=forwarded)
