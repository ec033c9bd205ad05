"""Who holds each session open in this process, so that a change of the session reaches them.

An open websocket or a held long-poll was authorized with the session as it was when it
began. When the session changes (its groups, user or partner, a revocation, a rotation),
the ``rtbus_session`` NOTIFY of migration 0004 tells every process, with the sid's first
16 characters (or ``*``: every session of the database). The evented process's callback
lets the session store (or the authorization proxy's) drop what it cached, then calls
`changed` here, which calls back every follower of the sessions named: a websocket re-checks its session and re-authorizes its channels (or
closes 4001), a held long-poll ends so that its client polls again under the new rules.

The callbacks run on the dispatcher's thread (a greenlet in the evented processes): they
must not block; they only queue work.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

from rtbus.session import SID_PREFIX_LENGTH

_logger = logging.getLogger(__name__)


class SessionFollowers:
    """Callbacks per session, indexed by (database, sid prefix). Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._by_db: dict[str, dict[str, dict[int, Callable[[], None]]]] = {}
        self._tokens = itertools.count(1)
        self.notified = 0        # callbacks called since start

    def follow(self, session, callback: Callable[[], None]):
        """Call `callback()` whenever `session` may have changed; returns the handle that
        `unfollow` takes, or None for a session without sid (a visitor: nothing to follow)."""
        if session.sid is None:
            return None
        token = next(self._tokens)
        prefix = session.sid[:SID_PREFIX_LENGTH]
        with self._lock:
            self._by_db.setdefault(session.dbname, {}).setdefault(prefix, {})[token] = callback
        return session.dbname, prefix, token

    def unfollow(self, handle) -> None:
        if handle is None:
            return
        dbname, prefix, token = handle
        with self._lock:
            prefixes = self._by_db.get(dbname, {})
            callbacks = prefixes.get(prefix)
            if callbacks is not None:
                callbacks.pop(token, None)
                if not callbacks:
                    del prefixes[prefix]

    def __len__(self) -> int:
        with self._lock:
            return sum(len(callbacks) for prefixes in self._by_db.values()
                       for callbacks in prefixes.values())

    def changed(self, dbname: str, payload: str) -> int:
        """Call the followers of the sessions a NOTIFY `payload` names; return how many."""
        with self._lock:
            prefixes = self._by_db.get(dbname, {})
            if payload == "*" or len(payload) < SID_PREFIX_LENGTH:
                called = [cb for callbacks in prefixes.values() for cb in callbacks.values()]
            else:
                called = list(prefixes.get(payload[:SID_PREFIX_LENGTH], {}).values())
            self.notified += len(called)
        for callback in called:
            try:
                callback()
            except Exception:
                _logger.exception("a follower of a changed session failed")
        return len(called)
