"""A small pooled JSON-over-HTTP client to the application behind ``auth_proxy_url``.

stdlib http.client, which gevent's monkey-patching makes cooperative: a call waiting
on the application parks its greenlet, never the event loop. At most `max_connections`
connections are open at once (idle ones are kept for reuse); a call that cannot get
one, connect, send or read its answer within `timeout` seconds raises
AuthProxyUnavailable, as does a non-2xx status or a body that is not a JSON object.

Every request is signed: ``X-Rtbus-Timestamp`` (Unix seconds) and
``X-Rtbus-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>." + body>`` under the
shared secret, so the application can refuse requests that do not come from rtbus and
replays older than it tolerates (`verify_signature` is the reference check).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import threading
import time
import urllib.parse

import orjson

from rtbus.errors import AuthProxyUnavailable, ConfigError

_logger = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Rtbus-Timestamp"
SIGNATURE_HEADER = "X-Rtbus-Signature"
MAX_ANSWER_BYTES = 4 << 20


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The value of X-Rtbus-Signature for `body` sent at `timestamp`."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(secret: bytes, timestamp: str | None, sent: str | None, body: bytes,
                     *, max_age: float = 300.0, now: float | None = None) -> bool:
    """Whether a request carries a valid signature made less than `max_age` s ago."""
    if not timestamp or not sent:
        return False
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    if abs(age) > max_age:
        return False
    return hmac.compare_digest(signature(secret, timestamp, body), sent)


class ProxyClient:
    """POSTs JSON objects to paths under one base URL; thread- and greenlet-safe."""

    def __init__(self, base_url: str, secret: str, *, timeout: float = 3.0,
                 max_connections: int = 8):
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ConfigError(f"auth_proxy_url must be an http:// or https:// URL, not {base_url!r}")
        if not secret:
            raise ConfigError("auth_proxy_url is set but auth_proxy_secret is not: the application "
                              "could not tell rtbus's requests from anybody's")
        self.base_url = base_url.rstrip("/")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._prefix = parsed.path.rstrip("/")
        self._secret = secret.encode("utf-8")
        self.timeout = float(timeout)
        self.max_connections = int(max_connections)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config) -> ProxyClient:
        return cls(config.auth_proxy_url, config.auth_proxy_secret or "",
                   timeout=config.auth_proxy_timeout, max_connections=config.auth_proxy_connections)

    def post(self, path: str, payload: dict, *, cookie: str | None = None) -> dict:
        """POST `payload` to `<base>/<path>` (with `cookie` as its Cookie header); return
        the JSON object answered.

        Raises AuthProxyUnavailable (timeout, connection refused or reset, status not
        2xx, answer not a JSON object, all connections busy for `timeout` seconds).
        """
        body = orjson.dumps(payload)
        deadline = time.monotonic() + self.timeout
        if not self._slots.acquire(timeout=self.timeout):
            raise AuthProxyUnavailable(f"all {self.max_connections} connections to the "
                                       f"authorization proxy stayed busy for {self.timeout:.1f} s")
        try:
            return self._exchange(path, body, deadline, cookie)
        finally:
            self._slots.release()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _exchange(self, path: str, body: bytes, deadline: float, cookie: str | None) -> dict:
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", TIMESTAMP_HEADER: timestamp,
                   SIGNATURE_HEADER: signature(self._secret, timestamp, body)}
        if cookie:
            headers["Cookie"] = cookie
        url = f"{self._prefix}/{path.lstrip('/')}"
        # A kept connection may have been closed by the application meanwhile: one
        # retry on a fresh connection, only for a reused one and only if time is left.
        for attempt in range(2):
            conn, reused = self._connection(deadline)
            try:
                conn.request("POST", url, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read(MAX_ANSWER_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                if reused and attempt == 0 and time.monotonic() < deadline:
                    continue
                raise AuthProxyUnavailable(f"authorization proxy {self.base_url}: {_describe(exc)}") from None
            if response.will_close:
                conn.close()
            else:
                self._keep(conn)
            return self._decode(response.status, data)
        raise AssertionError("unreachable")

    def _connection(self, deadline: float) -> tuple[http.client.HTTPConnection, bool]:
        left = max(deadline - time.monotonic(), 0.01)
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is not None:
            conn.timeout = left
            if conn.sock is not None:
                conn.sock.settimeout(left)
            return conn, True
        factory = (http.client.HTTPSConnection if self._scheme == "https"
                   else http.client.HTTPConnection)
        return factory(self._host, self._port, timeout=left), False

    def _keep(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_connections:
                self._idle.append(conn)
                return
        conn.close()

    def _decode(self, status: int, data: bytes) -> dict:
        if not 200 <= status < 300:
            raise AuthProxyUnavailable(f"authorization proxy {self.base_url} answered HTTP {status}")
        if len(data) > MAX_ANSWER_BYTES:
            raise AuthProxyUnavailable(f"authorization proxy {self.base_url} answered more than "
                                       f"{MAX_ANSWER_BYTES} bytes")
        try:
            answer = orjson.loads(data)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise AuthProxyUnavailable(f"authorization proxy {self.base_url} answered something "
                                       f"that is not a JSON object")
        return answer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) or "timed out" in str(exc):
        return "no answer in time"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
