"""What a session id may cost before it is looked up: its MAC, and a budget per client.

A flood of never-issued session ids must not turn into a flood of database queries.
Two rules, applied by `SessionStore` before it asks the database:

- **Signed sids.** The sids rtbus issues (migration 0005) carry an HMAC of their nonce
  under a secret kept in each served database (`rtbus_session_secret`), read once per
  process. A sid of that shape whose MAC is wrong was not issued here: it is refused
  without a query. Checking costs a hash.
- **A budget for the rest.** Sids of any other shape (an application's own, or rtbus
  sessions older than the MAC) can only be checked by a query. Each client address
  (IPv6 by /64) holds `session_lookup_budget` look-ups per minute, and the process
  `session_lookup_budget_total`; a look-up takes one from both and gives it back when it
  found a session, so only failed look-ups use the budget up. A client with none left
  is refused (`LookupBudgetExceeded`: 503, close 1013) without a query.

Re-checks of sessions already established (`SessionStore.check`) are never budgeted.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import ipaddress
import logging
import threading
import time

from rtbus.errors import SchemaError

_logger = logging.getLogger(__name__)

SID_PREFIX = "rb1_"
NONCE_BYTES = 32
MAC_BYTES = 16
SIGNED_SID_LENGTH = len(SID_PREFIX) + 64       # base64 of 48 bytes, no padding
_SECRET_SQL = "SELECT key FROM rtbus_session_secret WHERE id = 1"

WARNING_INTERVAL = 60.0       # seconds between two warnings about exhausted budgets


def is_signed_shape(sid: str) -> bool:
    """Whether `sid` has the shape of a sid rtbus issues (its MAC still unchecked)."""
    return len(sid) == SIGNED_SID_LENGTH and sid.startswith(SID_PREFIX)


def sign(key: bytes, nonce: bytes) -> str:
    """The sid for `nonce` under `key`, as rtbus_session_new_sid() makes it in SQL."""
    mac = hmac.new(key, nonce, hashlib.sha256).digest()[:MAC_BYTES]
    return SID_PREFIX + base64.urlsafe_b64encode(nonce + mac).decode("ascii")


def mac_matches(key: bytes, sid: str) -> bool:
    """Whether a sid of the signed shape carries the MAC of its nonce under `key`."""
    try:
        raw = base64.urlsafe_b64decode(sid[len(SID_PREFIX):].encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False
    if len(raw) != NONCE_BYTES + MAC_BYTES:
        return False
    nonce, mac = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    return hmac.compare_digest(hmac.new(key, nonce, hashlib.sha256).digest()[:MAC_BYTES], mac)


def client_key(address: str | None) -> str:
    """The budget a client address draws on: itself for IPv4, its /64 for IPv6 (one
    subscriber usually holds a whole /64), ``"-"`` when unknown."""
    if not address:
        return "-"
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return "-"
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float):
        self.tokens = tokens
        self.stamp = stamp


class LookupBudget:
    """Token buckets: `per_client` look-ups a minute for each client key, `total` for all.

    A bucket starts full and refills continuously. 0 means no limit for that bucket.
    At most `max_clients` client buckets are kept (least recently used dropped first), so
    memory stays bounded however many addresses a flood comes from; the total bucket
    still bounds those. Thread-safe.
    """

    MAX_CLIENTS = 65536

    def __init__(self, per_client: int, total: int, *, max_clients: int | None = None,
                 clock=time.monotonic):
        self.per_client = per_client
        self.total = total
        self.max_clients = self.MAX_CLIENTS if max_clients is None else max_clients
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()
        self._total = _Bucket(float(total), clock())
        self.refusals = 0
        self._last_warning = float("-inf")
        self._unwarned = 0

    def take(self, client: str | None) -> bool:
        """Take one look-up for `client` (an address); False when its budget or the
        process's is spent."""
        key = client_key(client)
        now = self._clock()
        with self._lock:
            bucket = self._client_locked(key, now)
            self._refill(self._total, self.total, now)
            granted = not ((bucket is not None and bucket.tokens < 1)
                           or (self.total and self._total.tokens < 1))
            if granted:
                if bucket is not None:
                    bucket.tokens -= 1
                if self.total:
                    self._total.tokens -= 1
                return True
            self.refusals += 1
            unwarned = self._unwarned_locked(now)
        if unwarned:
            _logger.warning("session look-up budget spent: refused %d request(s) with unknown session "
                           "ids since the last warning without asking the database (last from %s; "
                           "session_lookup_budget %d/min per client, %d/min in all)",
                           unwarned, key, self.per_client, self.total)
        return False

    def give_back(self, client: str | None) -> None:
        """Return the look-up taken for `client` (it found a session)."""
        key = client_key(client)
        with self._lock:
            bucket = self._clients.get(key)
            if bucket is not None:
                bucket.tokens = min(bucket.tokens + 1, float(self.per_client))
            if self.total:
                self._total.tokens = min(self._total.tokens + 1, float(self.total))

    def _client_locked(self, key: str, now: float) -> _Bucket | None:
        if not self.per_client:
            return None
        bucket = self._clients.get(key)
        if bucket is None:
            bucket = self._clients[key] = _Bucket(float(self.per_client), now)
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
        else:
            self._clients.move_to_end(key)
            self._refill(bucket, self.per_client, now)
        return bucket

    @staticmethod
    def _refill(bucket: _Bucket, per_minute: int, now: float) -> None:
        if per_minute:
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.stamp) * per_minute / 60.0)
        bucket.stamp = now

    def _unwarned_locked(self, now: float) -> int:
        """Count a refusal; return how many to report now (0 within WARNING_INTERVAL)."""
        self._unwarned += 1
        if now - self._last_warning < WARNING_INTERVAL:
            return 0
        count, self._unwarned, self._last_warning = self._unwarned, 0, now
        return count


class SessionGuard:
    """The two rules of this module for one process: MAC keys per database, and the budget.

    `pool` lends the connections that read each database's secret, once.
    """

    def __init__(self, pool, budget: LookupBudget):
        self.pool = pool
        self.budget = budget
        self._keys: dict[str, bytes] = {}
        # One reader per process: a flood's first requests, all at once, would otherwise
        # each borrow a connection for the same row and drain a small pool (503s).
        self._key_lock = threading.Lock()

    @classmethod
    def from_config(cls, pool, config) -> SessionGuard:
        return cls(pool, LookupBudget(config.session_lookup_budget,
                                      config.session_lookup_budget_total))

    def signed(self, dbname: str, sid: str) -> bool | None:
        """True when `sid` is one rtbus issued (shape and MAC), False when it has the shape
        but not the MAC (forged: refuse it without a query), None for any other shape.
        Reads the database's secret on first use (PoolError, psycopg2 errors)."""
        if not is_signed_shape(sid):
            return None
        return mac_matches(self._key(dbname), sid)

    def _key(self, dbname: str) -> bytes:
        key = self._keys.get(dbname)
        if key is not None:
            return key
        with self._key_lock:
            return self._keys.get(dbname) or self._read_key(dbname)

    def _read_key(self, dbname: str) -> bytes:
        with self.pool.connection(dbname) as conn:
            with conn.cursor() as cur:
                cur.execute(_SECRET_SQL)
                row = cur.fetchone()
            conn.rollback()
        if row is None:
            raise SchemaError(f"database {dbname} has no rtbus_session_secret row "
                              f"(migration 0005 did not run?)")
        key = self._keys[dbname] = bytes(row[0])
        return key
