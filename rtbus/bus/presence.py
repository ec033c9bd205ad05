"""User presence (online / away / offline) with Odoo 17–19 semantics, without write conflicts.

Semantics:

* `update_presence {inactivity_period}` (milliseconds since the user's last activity,
  sent by the client on connect, on going away and on coming back) records
  `last_poll = now`, `last_presence = now - inactivity` (never moving backwards) and
  the status: `away` past AWAY_TIMER (30 min) of inactivity, else `online`.
* When a user's last connection in this process closes (unless a new one opened by
  the time of the write: a page reload), or on `/websocket/on_closed`, the status
  becomes `offline`.
* Presences not polled for PRESENCE_OUTDATED_TIMER (12 h) are deleted by the garbage
  collector, which announces them offline.
* Every status change (and a first presence) publishes `bus.bus/im_status_updated`,
  payload `{"presence_status", "im_status", "partner_id", "guest_id": null}`, on the
  partner's presence subchannel `[db, "res.partner", <id>, "presence"]`, in the same
  transaction as the write: sent only if the write commits.

Why there are no serialization failures or deadlocks (the cross-tab story of Odoo 8
was exactly these on the presence table): each write is one statement touching one
row, `INSERT ... ON CONFLICT (user_id) DO UPDATE ... WHERE <worth writing>`, in a
READ COMMITTED transaction forced by the statement itself, whatever the connection's
default. Under READ COMMITTED an upsert never fails on a concurrent insert or update
of the same row, it waits for the row lock and re-evaluates on the latest version;
one row per transaction cannot deadlock. The garbage collector locks many rows but with
SKIP LOCKED, so it never waits and cannot close a cycle either. The WHERE clause makes the database itself
throttle: a same-status update within `presence_update_interval` changes nothing.

On top of that, `PresenceService` coalesces in process: while a write for a user is
in flight, identical updates (many tabs, many connections) wait for nothing and are
absorbed; an identical update within COALESCE_SECONDS of a write is absorbed too.
That window is kept short on purpose: another process may have set the user offline
meanwhile, and only the database knows.

Several evented processes (gevent workers, nodes) each count only their own
connections, so one of them sets a user offline when the user's last tab *there*
closes, while another tab is open on another process. Every offline write that
changed the status therefore also sends ``NOTIFY rtbus_presence, '<user id>'`` (at
commit); each evented process LISTENs to it, and one that still holds a connection
of that user writes the user's status back at once (from the inactivity its
clients last reported). Observers see offline, then the status again, within one
round trip; the user is never left offline while connected.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Iterable

import psycopg2.extensions

from rtbus.bus.authorization import SubscribeContext, Subscription
from rtbus.bus.publish import Notifier, publishing, sendone
from rtbus.errors import InvalidPresence
from rtbus.session import Session

_logger = logging.getLogger(__name__)

AWAY_TIMER = 1800                    # seconds of inactivity before "away" (Odoo)
PRESENCE_OUTDATED_TIMER = 12 * 3600  # seconds without poll before the GC removes (Odoo)
MISSED_PRESENCE_SECONDS = 2          # Odoo's window for presences pushed after subscribe
IM_STATUS_UPDATED = "bus.bus/im_status_updated"
STATUSES = ("online", "away", "offline")
DEFAULT_UPDATE_INTERVAL = 60.0
PRESENCE_NOTIFY_CHANNEL = "rtbus_presence"   # NOTIFY payload: the id of a user set offline

# A client-supplied inactivity is clamped to this (ten years, in ms) so that
# `now - inactivity` stays a valid timestamp.
_MAX_INACTIVITY_MS = 10 * 365 * 86400 * 1000

_RANK = {"online": 2, "away": 1, "offline": 0}

# The first statement makes the transaction READ COMMITTED whatever the session's
# default (a REPEATABLE READ default would turn a concurrent update into a
# serialization failure). previous_status is set from the locked, latest row version.
_UPSERT = """
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
INSERT INTO rtbus_presence AS p (user_id, partner_id, last_poll, last_presence, status)
VALUES (%(user_id)s, %(partner_id)s, now() at time zone 'utc',
        (now() at time zone 'utc') - %(inactivity_ms)s * interval '1 millisecond', %(status)s)
ON CONFLICT (user_id) DO UPDATE SET
    partner_id = EXCLUDED.partner_id,
    last_poll = EXCLUDED.last_poll,
    last_presence = GREATEST(p.last_presence, EXCLUDED.last_presence),
    previous_status = p.status,
    status = EXCLUDED.status
WHERE p.status <> EXCLUDED.status
   OR p.partner_id IS DISTINCT FROM EXCLUDED.partner_id
   OR p.last_poll <= EXCLUDED.last_poll - %(interval)s * interval '1 second'
RETURNING partner_id, status, previous_status
"""

_SET_OFFLINE = """
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
UPDATE rtbus_presence p SET previous_status = p.status, status = 'offline'
 WHERE p.user_id = %(user_id)s AND p.status <> 'offline'
RETURNING partner_id
"""

_GC_BATCH = """
SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
DELETE FROM rtbus_presence WHERE user_id IN (
    SELECT user_id FROM rtbus_presence
     WHERE last_poll < (now() at time zone 'utc') - %(outdated)s * interval '1 second'
     ORDER BY user_id LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
RETURNING partner_id, status
"""

_MISSED = """
SELECT partner_id, status FROM rtbus_presence
 WHERE partner_id = ANY(%(partner_ids)s)
   AND last_poll > (now() at time zone 'utc') - %(since)s * interval '1 second'
"""


# -- pure rules ---------------------------------------------------------------------------------


def status_for(inactivity_period_ms: float) -> str:
    """`away` when inactive for more than AWAY_TIMER, else `online` (Odoo's rule)."""
    return "away" if inactivity_period_ms > AWAY_TIMER * 1000 else "online"


def check_inactivity(value) -> float:
    """A client's `inactivity_period` as milliseconds in [0, ten years].

    Raises InvalidPresence when it is not a finite number (booleans included).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidPresence(f"inactivity_period must be a number of milliseconds, "
                              f"not {type(value).__name__}")
    if not math.isfinite(value):
        raise InvalidPresence("inactivity_period must be finite")
    return float(min(max(value, 0), _MAX_INACTIVITY_MS))


def presence_payload(partner_id: int, status: str) -> dict:
    """The `bus.bus/im_status_updated` payload for a partner's status (Odoo 19's shape)."""
    return {"presence_status": status, "im_status": status, "partner_id": partner_id,
            "guest_id": None}


def presence_channel(partner_id: int) -> tuple:
    """The partner's presence subchannel, unanchored."""
    return ("res.partner", partner_id, "presence")


# -- one statement per change ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WriteResult:
    """What one presence write did: `written` (the row was inserted or updated) and
    `changed` (its status is new: a notification was queued)."""

    written: bool
    changed: bool
    status: str | None = None


def write_presence(conn, user_id: int, partner_id: int | None, status: str,
                   inactivity_ms: float, interval_seconds: float) -> WriteResult:
    """Upsert one user's presence in `conn`'s current transaction (which must not have
    run anything yet: it is made READ COMMITTED here).

    The row is written when the status changes, the partner changes, or the last write
    is `interval_seconds` old. On a status change (or a first presence) the
    notification is queued with `sendone`, so `conn` must be inside `publishing()`
    or be a BusConnection. The caller commits.
    """
    if status not in ("online", "away"):
        raise ValueError(f"update_presence writes online or away, not {status!r}")
    with conn.cursor() as cur:
        cur.execute(_UPSERT, {"user_id": user_id, "partner_id": partner_id,
                              "inactivity_ms": inactivity_ms, "status": status,
                              "interval": interval_seconds})
        row = cur.fetchone()
    if row is None:
        return WriteResult(written=False, changed=False, status=status)
    written_partner, new_status, previous = row
    changed = previous != new_status
    if changed and written_partner is not None:
        sendone(conn, presence_channel(written_partner), IM_STATUS_UPDATED,
                presence_payload(written_partner, new_status))
    return WriteResult(written=True, changed=changed, status=new_status)


def write_offline(conn, user_id: int) -> WriteResult:
    """Set one user's presence offline in `conn`'s current transaction (as write_presence);
    queues the notification when it was not offline already. A user without a presence
    row is left without one. The caller commits."""
    with conn.cursor() as cur:
        cur.execute(_SET_OFFLINE, {"user_id": user_id})
        row = cur.fetchone()
    if row is None:
        return WriteResult(written=False, changed=False, status="offline")
    if row[0] is not None:
        sendone(conn, presence_channel(row[0]), IM_STATUS_UPDATED,
                presence_payload(row[0], "offline"))
    return WriteResult(written=True, changed=True, status="offline")


def missed_presences(conn, partner_ids: Iterable[int],
                     since_seconds: float = MISSED_PRESENCE_SECONDS) -> list[dict]:
    """Payloads for the partners among `partner_ids` whose presence was written in the
    last `since_seconds`, one per partner (its best status when several users share
    it), sorted by partner id. Reads in the caller's transaction."""
    ids = sorted({int(i) for i in partner_ids})
    if not ids:
        return []
    with conn.cursor() as cur:
        cur.execute(_MISSED, {"partner_ids": ids, "since": since_seconds})
        rows = cur.fetchall()
    best: dict[int, str] = {}
    for partner_id, status in rows:
        if partner_id not in best or _RANK[status] > _RANK[best[partner_id]]:
            best[partner_id] = status
    return [presence_payload(pid, best[pid]) for pid in sorted(best)]


def gc_presences(conn, notifier: Notifier | None = None, batch_size: int = 10_000,
                 max_batches: int = 100) -> int:
    """Delete presences not polled for PRESENCE_OUTDATED_TIMER; announce those that were
    not offline as offline. Commits per batch (rows locked by a concurrent update are
    skipped, not waited for); returns how many were deleted. `conn` must be idle.
    Suitable as a cron job.
    """
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise RuntimeError("gc_presences() commits per batch: the connection is in a transaction")
    deleted = 0
    for _ in range(max_batches):
        with publishing(conn, notifier):
            with conn.cursor() as cur:
                cur.execute(_GC_BATCH, {"outdated": PRESENCE_OUTDATED_TIMER, "batch": batch_size})
                rows = cur.fetchall()
            for partner_id, status in rows:
                if partner_id is not None and status != "offline":
                    sendone(conn, presence_channel(partner_id), IM_STATUS_UPDATED,
                            presence_payload(partner_id, "offline"))
        deleted += len(rows)
        if len(rows) < batch_size:
            break
    if deleted:
        _logger.info("presence GC removed %d presence(s) older than %d s from %s",
                    deleted, PRESENCE_OUTDATED_TIMER, conn.info.dbname)
    return deleted


# -- the per-process service ------------------------------------------------------------------


class _UserState:
    __slots__ = ("status", "confirmed_at", "inflight", "write_lock", "activity")

    def __init__(self):
        self.activity: tuple[float, float] | None = None   # (when, inactivity ms) last reported
        self.status: str | None = None        # last status this process wrote or confirmed
        self.confirmed_at = float("-inf")     # monotonic time of that write
        self.inflight: tuple[str, object] | None = None   # (status, token) being written
        # Serialises this user's writes from this process, so that "the last connection
        # closed" can check, in order, that no new connection came meanwhile.
        self.write_lock = threading.Lock()


class PresenceService:
    """Presence updates of one process: coalesced per user, written with the statements
    above through `pool`, and a count of each user's open connections so that the
    last one closing sets the user offline.

    Thread- and greenlet-safe. Created once per process at start-up.
    """

    COALESCE_SECONDS = 2.0        # an identical update this soon after a write is absorbed
    MAX_TRACKED_USERS = 100_000   # bound on the coalescing memory (least recent dropped)

    def __init__(self, pool, *, update_interval: float = DEFAULT_UPDATE_INTERVAL,
                 notifier: Notifier | None = None, coalesce_seconds: float | None = None,
                 clock=time.monotonic):
        self.pool = pool
        self.update_interval = float(update_interval)
        self.notifier = notifier
        coalesce = self.COALESCE_SECONDS if coalesce_seconds is None else coalesce_seconds
        self.coalesce_seconds = min(float(coalesce), self.update_interval)
        self._clock = clock
        self._lock = threading.Lock()
        self._users: collections.OrderedDict[tuple[str, int], _UserState] = (
            collections.OrderedDict())
        self._connections: dict[tuple[str, int], int] = {}
        self._partners: dict[tuple[str, int], int | None] = {}   # of the users connected here
        self._counters = dict.fromkeys(("updates", "absorbed", "statements", "writes",
                                        "changes", "offline", "reasserted"), 0)

    @classmethod
    def from_config(cls, pool, config, notifier: Notifier | None = None) -> PresenceService:
        return cls(pool, update_interval=config.presence_update_interval, notifier=notifier)

    def update_presence(self, session: Session, inactivity_period) -> str | None:
        """Handle `update_presence {inactivity_period}` for `session`; return the status
        now recorded for its user, or None for a public session (ignored, as in Odoo).

        Raises InvalidPresence for an invalid inactivity_period, PoolError and psycopg2
        errors other than conflicts (there are none to raise).
        """
        if session.is_public:
            return None
        inactivity = check_inactivity(inactivity_period)
        status = status_for(inactivity)
        with self._lock:
            self._counters["updates"] += 1
            state = self._state_locked((session.dbname, session.uid))
            state.activity = (self._clock(), inactivity)
            if self._absorbs_locked(state, status):
                self._counters["absorbed"] += 1
                return status
            token = self._reserve_locked(state, status)
        self._write(session.dbname, state, token, status, lambda conn: write_presence(
            conn, session.uid, session.partner_id, status, inactivity, self.update_interval))
        return status

    def set_offline(self, session: Session) -> bool:
        """Set the session's user offline (`/websocket/on_closed`). Returns True when that
        changed the status (and published it)."""
        return self._set_offline(session, unless_connected=False)

    def connection_opened(self, session: Session) -> int:
        """Count a new connection of the session's user; return how many it has here.

        A new connection also forgets the coalescing memory of the user, so its first
        update_presence always reaches the database.
        """
        if session.is_public:
            return 0
        key = (session.dbname, session.uid)
        with self._lock:
            count = self._connections.get(key, 0) + 1
            self._connections[key] = count
            self._partners[key] = session.partner_id
            state = self._users.get(key)
            if state is not None:
                state.confirmed_at = float("-inf")
        return count

    def connection_closed(self, session: Session) -> bool:
        """Uncount a connection; when it was the user's last one here, set the user
        offline, unless a new connection of the user opened by the time of the write (a
        page reload). Returns True when the status changed. Database errors propagate
        (the count is updated first)."""
        if session.is_public:
            return False
        key = (session.dbname, session.uid)
        with self._lock:
            count = self._connections.get(key, 0) - 1
            if count > 0:
                self._connections[key] = count
                return False
            self._connections.pop(key, None)
            self._partners.pop(key, None)
        return self._set_offline(session, unless_connected=True)

    def connections_of(self, dbname: str, uid: int) -> int:
        with self._lock:
            return self._connections.get((dbname, uid), 0)

    def stats(self) -> dict:
        """Counters: updates received, absorbed in process, statements run, rows
        written, status changes, offline writes; gauges: users tracked and connected."""
        with self._lock:
            return {**self._counters, "tracked_users": len(self._users),
                    "connected_users": len(self._connections)}

    # -- internals ---------------------------------------------------------------------------

    def _set_offline(self, session: Session, unless_connected: bool) -> bool:
        if session.is_public:
            return False
        key = (session.dbname, session.uid)
        with self._lock:
            state = self._state_locked(key)
            token = self._reserve_locked(state, "offline")

        def write(conn) -> WriteResult | None:
            # Checked under the user's write lock: a new connection's update_presence
            # either ran before (and we skip) or runs after us (and wins).
            if unless_connected and self.connections_of(*key) > 0:
                return None
            result = write_offline(conn, session.uid)
            if result.changed:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_notify(%s, %s)", (PRESENCE_NOTIFY_CHANNEL, str(session.uid)))
            return result

        result = self._write(session.dbname, state, token, "offline", write)
        if result is None:
            return False
        with self._lock:
            self._counters["offline"] += 1
        return result.changed

    def on_presence_notify(self, dbname: str, payload: str) -> None:
        """Callback for the ``rtbus_presence`` NOTIFY channel: another process set user
        `payload` offline. When that user still has connections here, write its status
        back, from the inactivity its clients last reported. Runs on the dispatcher:
        the write goes to a thread (a greenlet under gevent) of its own.
        """
        if not payload.isdigit():
            return      # "*": a LISTEN outage; the next update_presence of each tab mends it
        key = (dbname, int(payload))
        with self._lock:
            if self._connections.get(key, 0) <= 0:
                return
            partner_id = self._partners.get(key)
            state = self._state_locked(key)
            when, inactivity = state.activity or (self._clock(), 0.0)
            inactivity += (self._clock() - when) * 1000.0
            status = status_for(inactivity)
            token = self._reserve_locked(state, status)
            self._counters["reasserted"] += 1

        def reassert():
            try:
                self._write(dbname, state, token, status, lambda conn: write_presence(
                    conn, key[1], partner_id, status, inactivity, self.update_interval))
            except Exception as exc:
                _logger.warning("presence of user %d on %s not written back: %s", key[1], dbname, exc)

        threading.Thread(target=reassert, name=f"presence-{key[1]}", daemon=True).start()

    def _write(self, dbname: str, state: _UserState, token: object, status: str,
               write) -> WriteResult | None:
        """Run `write(conn)` in a publishing transaction, serialised per user; then record
        the outcome in the coalescing memory (or forget the reservation on error)."""
        result = None
        try:
            with state.write_lock:
                with self.pool.connection(dbname) as conn:
                    with publishing(conn, self.notifier):
                        result = write(conn)
        finally:
            with self._lock:
                # Another update of a different status may have taken over meanwhile:
                # its outcome, not ours, is what the memory must hold.
                mine = state.inflight is not None and state.inflight[1] is token
                if mine:
                    state.inflight = None
                if result is not None:
                    self._counters["statements"] += 1
                    self._counters["writes"] += result.written
                    self._counters["changes"] += result.changed
                    if mine:
                        state.status = status
                        state.confirmed_at = self._clock()
        return result

    def _state_locked(self, key: tuple[str, int]) -> _UserState:
        state = self._users.get(key)
        if state is None:
            state = self._users[key] = _UserState()
            while len(self._users) > self.MAX_TRACKED_USERS:
                self._users.popitem(last=False)
        else:
            self._users.move_to_end(key)
        return state

    def _absorbs_locked(self, state: _UserState, status: str) -> bool:
        if state.inflight is not None:
            # Someone is writing this very status: that write serves this update too.
            return state.inflight[0] == status
        return (state.status == status
                and self._clock() - state.confirmed_at < self.coalesce_seconds)

    @staticmethod
    def _reserve_locked(state: _UserState, status: str) -> object:
        token = object()
        state.inflight = (status, token)
        return token


# -- the after-subscribe hook -------------------------------------------------------------------


def push_missed_presences(session: Session, subscription: Subscription,
                          context: SubscribeContext) -> int:
    """After-subscribe hook: publish to the subscriber's own partner channel the
    presences it asked for that changed in the last MISSED_PRESENCE_SECONDS, which it
    may have missed while its subscription was on its way (Odoo's missed presences).
    Returns how many were sent."""
    if session.is_public or session.partner_id is None or not subscription.presence_partner_ids:
        return 0
    with context.pool.connection(session.dbname) as conn:
        with publishing(conn, context.notifier):
            payloads = missed_presences(conn, subscription.presence_partner_ids)
            for payload in payloads:
                sendone(conn, ("res.partner", session.partner_id), IM_STATUS_UPDATED, payload)
    return len(payloads)
