"""Server-side sessions: who a cookie stands for, checked against PostgreSQL.

rtbus serves another application's users, so that application owns the sessions. It
writes them into `rtbus_session` of each served database, through the functions here
or the SQL functions of migration 0003 (any language, inside its own transaction), and
gives the browser the session id in the `session_id` cookie, as Odoo does.

A session is valid while it exists, is not expired, not revoked and not rotated. A
browser without the cookie is a public visitor (`SessionStore.public`). A cookie
naming a session that is not valid is *not* downgraded to public: the connection or
poll presenting it is refused with `SessionExpired` (close 4001, JSON-RPC error 100),
so a logout or a rotation is noticed by the client instead of silently hiding its
private channels.

Transports re-check the session on every client message and before every dispatch
(`SessionStore.check`). Checks are cached per process for at most
`session_check_cache_seconds`, which bounds how late a revoke takes effect.

Before a sid reaches the database, rtbus.session_guard applies its two rules: a sid
rtbus issued must carry a valid MAC (a forged one is refused without a query), and
look-ups of any other sid are budgeted per client address.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping

import psycopg2.extensions
import psycopg2.extras

from rtbus.errors import LookupBudgetExceeded, RtbusError, SessionExpired  # noqa: F401
from rtbus.session_guard import SessionGuard

_logger = logging.getLogger(__name__)

COOKIE_NAME = "session_id"          # Odoo's cookie
DEFAULT_TTL = 7 * 86400             # Odoo's session lifetime
# What the rtbus_session NOTIFY carries of a sid (migration 0004): enough to find
# the cache entry, never the whole bearer credential.
SID_PREFIX_LENGTH = 16
NOTIFY_CHANNEL = "rtbus_session"

# What a sid can look like: ours are 64 base64url characters; Odoo's and other
# applications' fit too. Anything else is refused before reaching the database.
_SID = re.compile(r"[A-Za-z0-9_-]{16,128}")

_UTC = datetime.timezone.utc

_VALID = ("NOT revoked AND rotated_to IS NULL"
          " AND expires > (now() at time zone 'utc')")

_LOOKUP = (
    "SELECT uid, partner_id, rtbus_effective_groups(group_ids), is_websocket_session,"
    " expires, extract(epoch FROM expires - (now() at time zone 'utc'))"
    " FROM rtbus_session WHERE sid = %s AND " + _VALID)

_MARK_WEBSOCKET = ("UPDATE rtbus_session SET is_websocket_session = true"
                   " WHERE sid = %s AND " + _VALID + " RETURNING 1")

_GC_BATCH = """
DELETE FROM rtbus_session WHERE sid IN (
    SELECT sid FROM rtbus_session WHERE expires <= (now() at time zone 'utc')
     ORDER BY expires LIMIT %(batch)s FOR UPDATE SKIP LOCKED)
"""


class SessionNotFound(RtbusError, LookupError):
    """An application asked to change a session that is not valid (rotate_session)."""


@dataclasses.dataclass(frozen=True)
class Session:
    """A checked session. `group_ids` are the *effective* groups: those held directly
    and every group they imply, transitively (Odoo 19's all_group_ids), sorted.

    A public session has `sid` None (no cookie) or is a stored session with no user;
    its `expires_at` is None when it was not stored. `forwarded_cookies`: the request's
    other cookies that an authorization proxy forwards (``auth_proxy_cookies``, such as
    Odoo's guest token), as sorted (name, value) pairs; empty otherwise.
    """

    sid: str | None
    dbname: str
    uid: int | None
    partner_id: int | None
    group_ids: tuple[int, ...]
    is_websocket_session: bool = False
    expires_at: datetime.datetime | None = None
    forwarded_cookies: tuple[tuple[str, str], ...] = ()

    @property
    def is_public(self) -> bool:
        return self.uid is None

    def __repr__(self) -> str:
        # Never log a whole sid: it is a bearer credential.
        shown = f"{self.sid[:6]}…" if self.sid else None
        return (f"Session(sid={shown!r}, dbname={self.dbname!r}, uid={self.uid}, "
                f"partner_id={self.partner_id}, groups={len(self.group_ids)})")


# -- the application's side: create, rotate, revoke ------------------------------------------


def create_session(conn, uid: int | None, partner_id: int | None,
                   group_ids: Iterable[int] = (), ttl: int = DEFAULT_TTL) -> str:
    """Create a session in `conn`'s database and transaction; return its sid.

    `uid` None makes a public session. `group_ids` are the groups the user holds
    directly; implied ones are added at each check. `ttl` is the lifetime in seconds.
    The caller commits. Raises psycopg2 errors (a non-positive ttl is refused).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT rtbus_session_create(%s, %s, %s::integer[], %s)",
                    (uid, partner_id, sorted({int(g) for g in group_ids}), int(ttl)))
        return cur.fetchone()[0]


def rotate_session(conn, sid: str) -> str:
    """Replace valid session `sid` by a new one (same user, groups and lifetime); return
    the new sid. The old one stops being valid when the caller commits.

    Raises SessionNotFound when `sid` is missing, expired, revoked or already rotated.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT rtbus_session_rotate(%s)", (sid,))
        new_sid = cur.fetchone()[0]
    if new_sid is None:
        raise SessionNotFound("cannot rotate a session that is missing, expired, revoked "
                              "or already rotated")
    return new_sid


def revoke_session(conn, sid: str) -> None:
    """Revoke `sid` and every session it was rotated into. Unknown sids are ignored.
    The caller commits."""
    with conn.cursor() as cur:
        cur.execute("SELECT rtbus_session_revoke(%s)", (sid,))


def revoke_user_sessions(conn, uid: int) -> int:
    """Revoke every session of user `uid`; return how many were valid. The caller commits."""
    with conn.cursor() as cur:
        cur.execute("SELECT rtbus_session_revoke_user(%s)", (uid,))
        return cur.fetchone()[0]


def set_groups(conn, groups: Mapping[int, tuple[str, Iterable[int]]], *,
               replace: bool = False) -> None:
    """Declare groups as `{id: (name, implied_ids)}`, inserting or updating each.

    With `replace=True` the groups not listed are deleted, so the table mirrors the
    application's. Takes effect at the next session check of each session (within
    session_check_cache_seconds). The caller commits.
    """
    rows = [(int(gid), str(name), sorted({int(i) for i in implied}))
            for gid, (name, implied) in groups.items()]
    with conn.cursor() as cur:
        if replace:
            cur.execute("DELETE FROM rtbus_group WHERE NOT (id = ANY(%s))",
                        ([gid for gid, _, _ in rows],))
        if rows:
            psycopg2.extras.execute_values(
                cur, "INSERT INTO rtbus_group (id, name, implied_ids) VALUES %s"
                     " ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name,"
                     " implied_ids = EXCLUDED.implied_ids",
                rows, template="(%s, %s, %s::integer[])")


def gc_sessions(conn, batch_size: int = 10_000, max_batches: int = 100) -> int:
    """Delete expired sessions, `batch_size` per transaction (each committed); return how many.

    Rotated and revoked sessions are kept until they expire, so a revoke presenting
    an old sid still reaches the sessions it was rotated into. `conn` must be idle;
    it is left idle. Suitable as a cron job.
    """
    if conn.info.transaction_status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        raise RuntimeError("gc_sessions() commits per batch: the connection is in a transaction")
    deleted = 0
    try:
        for _ in range(max_batches):
            with conn.cursor() as cur:
                cur.execute(_GC_BATCH, {"batch": batch_size})
                count = cur.rowcount
            conn.commit()
            deleted += count
            if count < batch_size:
                break
    except BaseException:
        conn.rollback()
        raise
    if deleted:
        _logger.info("session GC deleted %d expired session(s) from %s", deleted, conn.info.dbname)
    return deleted


# -- reading the cookie ------------------------------------------------------------------------


def well_formed_sid(sid) -> bool:
    """Whether `sid` has a shape any session id may have (checked before any look-up)."""
    return isinstance(sid, str) and _SID.fullmatch(sid) is not None


def sid_from_cookie_header(source) -> str | None:
    """The `session_id` cookie's value, or None when absent or empty.

    `source` is a WSGI environ (its HTTP_COOKIE is read), a raw Cookie header value, or
    a mapping of cookie names to values (werkzeug's request.cookies). Malformed
    cookies of other names are skipped, not fatal. The value is not checked here:
    SessionStore refuses anything that is not a valid sid.
    """
    if isinstance(source, (bytes, bytearray)):
        source = bytes(source).decode("latin-1")
    if isinstance(source, str):
        header = source
    elif isinstance(source, Mapping):
        if "HTTP_COOKIE" in source or "wsgi.version" in source or "REQUEST_METHOD" in source:
            header = source.get("HTTP_COOKIE") or ""
        else:
            value = source.get(COOKIE_NAME)
            return value or None
    else:
        return None
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() == COOKIE_NAME:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            # The first one wins: browsers send the cookie of the most specific path first.
            return value or None
    return None


# -- the server's side: checking sessions ------------------------------------------------------


@dataclasses.dataclass
class _Cached:
    session: Session
    fresh_until: float        # monotonic: recheck after this


class SessionStore:
    """Looks sessions up in the served databases, with a small per-process cache.

    Thread-safe (and greenlet-safe under gevent's monkey-patching). A positive check
    is reused for at most `session_check_cache_seconds` (and never past the session's
    expiry); invalid sids are not cached. `cache_size` bounds the entries (least
    recently used evicted first). `config` (a Config; None: the defaults) also gives
    the look-up budget of `guard`, made from it when not given.
    """

    CACHE_SIZE = 10_000

    def __init__(self, pool, config=None, *, cache_size: int | None = None,
                 clock=time.monotonic, guard: SessionGuard | None = None):
        if config is None:
            from rtbus.config import Config
            config = Config.defaults()
        self.pool = pool
        self.cache_seconds = float(config.session_check_cache_seconds)
        self.cache_size = self.CACHE_SIZE if cache_size is None else int(cache_size)
        self.guard = guard if guard is not None else SessionGuard.from_config(pool, config)
        # Look-ups of sids rtbus did not sign hold at most all but one of the pool's
        # connections at once: a flood of them, even within its budget, then never
        # starves the rest of the process (health checks, presence, the valid sessions).
        self._unknown_slots = threading.BoundedSemaphore(max(1, pool.maxconn - 1))
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[tuple[str, str], _Cached] = collections.OrderedDict()
        self._public: dict[str, Session] = {}     # served databases only: bounded
        self._counters = dict.fromkeys(("hits", "misses", "refused", "forged", "over_budget",
                                        "evictions", "invalidations", "lookups"), 0)

    # -- lookups -------------------------------------------------------------------------

    def get(self, dbname: str, sid: str | None, *, client: str | None = None) -> Session | None:
        """The valid session `sid` of `dbname`, or None when it is malformed, forged,
        missing, expired, revoked or rotated.

        `client` is the address of the client presenting `sid` (None: an unknown one),
        whose look-up budget pays for a sid rtbus did not sign. Raises
        LookupBudgetExceeded when that budget is spent, PoolError and psycopg2 errors.
        """
        return self._get(dbname, sid, client=client, budgeted=True)

    def _get(self, dbname: str, sid: str | None, *, client: str | None,
             budgeted: bool) -> Session | None:
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            self._count("refused")
            return None
        key = (dbname, sid)
        now = self._clock()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                if now < cached.fresh_until:
                    self._cache.move_to_end(key)
                    self._counters["hits"] += 1
                    return cached.session
                del self._cache[key]
            self._counters["misses"] += 1
        signed = self.guard.signed(dbname, sid)
        if signed is False:
            self._count("forged")
            return None
        charged = budgeted and signed is None
        if charged:
            self._take_unknown_slot(client)
        try:
            session, seconds_left = self._fetch(dbname, sid)
        except BaseException:
            if charged:
                self.guard.budget.give_back(client)
            raise
        finally:
            if charged:
                self._unknown_slots.release()
        if session is None:
            self._count("refused")
            return None
        if charged:
            self.guard.budget.give_back(client)
        self._remember(key, session, now + min(self.cache_seconds, seconds_left))
        return session

    def _take_unknown_slot(self, client: str | None) -> None:
        """Charge `client`'s budget and take a slot for one look-up of an unknown sid;
        LookupBudgetExceeded (nothing taken) when either is spent."""
        if not self.guard.budget.take(client):
            self._count("over_budget")
            raise LookupBudgetExceeded("too many unknown session ids from this address; "
                                       "retry later")
        if not self._unknown_slots.acquire(blocking=False):
            self.guard.budget.give_back(client)
            self._count("over_budget")
            raise LookupBudgetExceeded("too many unknown session ids being checked at once; "
                                       "retry later")

    def public(self, dbname: str) -> Session:
        """The session of a visitor without a cookie: no user, no partner, no groups.

        One immutable object per database, shared by every visitor's connection."""
        session = self._public.get(dbname)
        if session is None:
            session = Session(sid=None, dbname=dbname, uid=None, partner_id=None, group_ids=())
            self._public[dbname] = session
        return session

    def authenticate(self, dbname: str, sid: str | None, *, client: str | None = None,
                     cookies=None) -> Session:
        """The session a new connection or request from `client` (an address) runs as.
        (`cookies`, the request's others, are for stores that forward them: unused here,
        an rtbus session depends on its sid alone.)

        No sid (no cookie): the public session. A sid: its valid session, else
        SessionExpired (a stale cookie is refused, not downgraded to public);
        LookupBudgetExceeded when `client` presented too many unknown sids.
        """
        if not sid:
            return self.public(dbname)
        session = self.get(dbname, sid, client=client)
        if session is None:
            raise SessionExpired("session expired")
        return session

    def check(self, session: Session) -> Session:
        """Re-check an established connection's session, before handling each client
        message and before each dispatch; return its current state.

        A public session without sid is always valid. Raises SessionExpired when the
        session stopped being valid.
        """
        if session.sid is None:
            return session
        # Never budgeted: this sid already proved itself when the connection began.
        current = self._get(session.dbname, session.sid, client=None, budgeted=False)
        if current is None:
            raise SessionExpired("session expired")
        return current

    def check_cached(self, session: Session) -> Session | None:
        """check() when the answer needs no query: the session's current state when it is
        public or freshly cached as valid, else None (only check() can tell). Never
        blocks, never raises; for callers that must not wait (a write-through send)."""
        if session.sid is None:
            return session
        with self._lock:
            cached = self._cache.get((session.dbname, session.sid))
            if cached is None or self._clock() >= cached.fresh_until:
                return None
            self._counters["hits"] += 1
            return cached.session

    def check_poll(self, dbname: str, sid: str | None, is_first_poll: bool, *,
                   client: str | None = None, cookies=None) -> Session:
        """The session of a `/websocket/peek_notifications` call (Odoo's rule).

        The first poll marks the session as a websocket session; a later poll of a
        session that was never marked means the user logged in or out in between
        (the cookie now names another session): SessionExpired. A visitor without a
        cookie carries no mark: its first poll passes (there is nothing to mark,
        rtbus does not mint sessions), any other is SessionExpired, as Odoo answers a
        client that did not keep the cookie of its first poll.
        """
        session = self.authenticate(dbname, sid, client=client)
        if session.sid is None:
            if not is_first_poll:
                raise SessionExpired("session expired: no session did a first poll")
            return session
        if is_first_poll:
            if not session.is_websocket_session:
                if not self.mark_websocket_session(dbname, session.sid):
                    raise SessionExpired("session expired")
                session = dataclasses.replace(session, is_websocket_session=True)
        elif not session.is_websocket_session:
            raise SessionExpired("session expired")
        return session

    # -- changes -------------------------------------------------------------------------

    def mark_websocket_session(self, dbname: str, sid: str) -> bool:
        """Flag valid session `sid` as used by a bus client (committed); False if not valid."""
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            return False
        with self.pool.connection(dbname) as conn:
            with conn.cursor() as cur:
                cur.execute(_MARK_WEBSOCKET, (sid,))
                marked = cur.fetchone() is not None
            conn.commit()
        with self._lock:
            cached = self._cache.get((dbname, sid))
            if cached is not None:
                if marked:
                    cached.session = dataclasses.replace(cached.session, is_websocket_session=True)
                else:
                    del self._cache[(dbname, sid)]
        return marked

    def revoke(self, dbname: str, sid: str) -> None:
        """revoke_session() in a transaction of its own, effective at once in this process."""
        with self.pool.connection(dbname) as conn:
            revoke_session(conn, sid)
            conn.commit()
        self.invalidate(dbname)

    def invalidate(self, dbname: str | None = None, sid: str | None = None) -> None:
        """Forget cached checks: of one sid, of one database, or all. The next check of
        those sessions asks the database."""
        with self._lock:
            if dbname is not None and sid is not None:
                self._cache.pop((dbname, sid), None)
            elif dbname is not None:
                for key in [k for k in self._cache if k[0] == dbname]:
                    del self._cache[key]
            else:
                self._cache.clear()

    def on_session_notify(self, dbname: str, payload: str) -> None:
        """Callback for the ``rtbus_session`` NOTIFY channel (see migration 0004).

        `payload` is a sid prefix, or ``"*"`` for every session of `dbname`.
        Runs on the dispatcher thread: only touches the cache.
        """
        if payload == "*" or len(payload) < SID_PREFIX_LENGTH:
            self.invalidate(dbname)
            return
        with self._lock:
            for key in [k for k in self._cache if k[0] == dbname and k[1].startswith(payload)]:
                del self._cache[key]
        self._count("invalidations")

    def stats(self) -> dict:
        """Counters (hits, misses, lookups: the queries made; refused: malformed or not
        found, forged: a wrong MAC, over_budget: refused unasked; evictions,
        invalidations) and the cache's current size."""
        with self._lock:
            return {**self._counters, "cached": len(self._cache)}

    # -- internals -----------------------------------------------------------------------

    def _fetch(self, dbname: str, sid: str) -> tuple[Session | None, float]:
        with self.pool.connection(dbname) as conn:
            # Counted once a connection is lent: a borrower that timed out on the pool
            # sent no query (and its budget token was given back).
            self._count("lookups")
            with conn.cursor() as cur:
                cur.execute(_LOOKUP, (sid,))
                row = cur.fetchone()
            conn.rollback()
        if row is None:
            return None, 0.0
        uid, partner_id, group_ids, is_ws, expires, seconds_left = row
        session = Session(sid=sid, dbname=dbname, uid=uid, partner_id=partner_id,
                          group_ids=tuple(group_ids or ()), is_websocket_session=is_ws,
                          expires_at=expires.replace(tzinfo=_UTC))
        return session, float(seconds_left)

    def _remember(self, key: tuple[str, str], session: Session, fresh_until: float) -> None:
        if self.cache_seconds <= 0 or self.cache_size <= 0:
            return
        with self._lock:
            self._cache[key] = _Cached(session, fresh_until)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
                self._counters["evictions"] += 1

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1
