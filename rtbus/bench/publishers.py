"""The three publishing paths the bench can drive, and the loop that paces them.

- ``sql``: ``SELECT rtbus_sendone(channel, type, payload)`` then COMMIT, in the served
  database (what an application in any language does);
- ``python``: `rtbus.bus.publish.Publisher` on a connection to the served database;
- ``http``: ``POST /bus/publish`` (JSON-RPC, ``Authorization: Bearer <key>``);
- ``nchan``: ``POST /pub/<channel>`` on an nginx with the Nchan module, for a side-by-side
  comparison: the body is the batch a bus client would receive (numbered here, since
  Nchan does not number messages the rtbus way), so the same clients read both servers.

Every notification carries its publish time (``time.time()`` taken just before its
transaction starts) under ``t``, so latency is measured from the publisher's clock to
the client's, both in this process. One notification per transaction.
"""

from __future__ import annotations

import time

import gevent
import gevent.lock
import orjson
from gevent import socket

from rtbus.bench import wire
from rtbus.bench.accounting import Meter, PublishLog

PATHS = ("sql", "python", "http", "nchan")


class PublishError(Exception):
    """A publish failed; `kind` names the failure in reports."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


def _payload(pad: str) -> dict:
    payload = {"t": time.time()}
    if pad:
        payload["pad"] = pad
    return payload


class SqlPublisher:
    """rtbus_sendone + COMMIT on one connection to the served database."""

    def __init__(self, dsn: str):
        import psycopg2
        self.conn = psycopg2.connect(dsn)

    def publish(self, channel: str, pad: str) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT rtbus_sendone(%s::jsonb, %s, %s::jsonb)",
                        (orjson.dumps(channel).decode(), wire.NOTIFICATION_TYPE,
                         orjson.dumps(_payload(pad)).decode()))
            (notification_id,) = cur.fetchone()
        self.conn.commit()
        return notification_id

    def close(self) -> None:
        self.conn.close()


class PythonPublisher:
    """rtbus.bus.publish.Publisher on one connection to the served database."""

    def __init__(self, dsn: str, imbus_db: str):
        import psycopg2
        from rtbus.bus.publish import Notifier, Publisher
        self.conn = psycopg2.connect(dsn)
        self.dbname = self.conn.info.dbname
        self.publisher = Publisher(Notifier(imbus_db_name=imbus_db))

    def publish(self, channel: str, pad: str) -> int:
        ids = self.publisher.publish(self.conn, self.dbname,
                                     [(channel, wire.NOTIFICATION_TYPE, _payload(pad))])
        return ids[0]

    def close(self) -> None:
        self.publisher.notifier.close()
        self.conn.close()


class HttpPublisher:
    """``POST /bus/publish`` on a keep-alive connection, reopened when the server closes it."""

    def __init__(self, target: wire.Target, api_key: str, db: str | None, timeout: float = 10.0):
        self.target = target
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.db = db
        self.timeout = timeout
        self.sock = None

    def publish(self, channel: str, pad: str) -> int:
        params = {"channel": channel, "type": wire.NOTIFICATION_TYPE, "payload": _payload(pad)}
        if self.db:
            params["db"] = self.db
        status, body = self._call(wire.jsonrpc_request(self.target, "/bus/publish", params,
                                                       headers=self.headers))
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise PublishError(f"http-{status}", "the answer is not JSON") from None
        result = answer.get("result") if isinstance(answer, dict) else None
        if isinstance(result, dict) and result.get("ids"):
            return result["ids"][0]
        error = answer.get("error") if isinstance(answer, dict) else None
        detail = str((error or {}).get("data", {}).get("message", ""))[:120]
        raise PublishError(f"http-{status}", detail)

    def _call(self, request: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):   # a kept-alive connection may have been closed meanwhile
            if self.sock is None:
                self.sock = socket.create_connection((self.target.host, self.target.port),
                                                     timeout=self.timeout)
            try:
                self.sock.sendall(request)
                status, keep_alive, body = _read_response(self.sock)
            except (OSError, wire.WireError):
                self.close()
                if attempt == 2:
                    raise
                continue
            if not keep_alive:
                self.close()
            return status, body
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class NchanPublisher(HttpPublisher):
    """``POST /pub/<channel>`` of one bus-shaped batch per notification, numbered here."""

    def __init__(self, target: wire.Target, timeout: float = 10.0):
        super().__init__(target, "", None, timeout)
        self.next_id = 0

    def publish(self, channel: str, pad: str) -> int:
        self.next_id += 1
        body = orjson.dumps([{"id": self.next_id, "message": {
            "type": wire.NOTIFICATION_TYPE, "payload": _payload(pad)}}])
        head = (f"POST {self.target.prefix}/pub/{channel} HTTP/1.1\r\nHost: {self.target.netloc}"
                f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        status, _body = self._call(head.encode("latin-1") + body)
        if status not in (200, 201, 202):
            raise PublishError(f"http-{status}", "Nchan refused the message")
        return self.next_id


def _read_response(sock) -> tuple[int, bool, bytes]:
    reader = wire.HttpResponseReader()
    while True:
        data = sock.recv(65536)
        response = reader.feed(data) if data else reader.eof()
        if response is not None:
            return response
        if not data:
            raise wire.WireError("eof-in-response")


def make_publisher(path: str, *, dsn: str | None, imbus_db: str, target: wire.Target | None,
                   api_key: str | None, db: str | None):
    """The publisher for `path`; raises psycopg2 errors or OSError when it cannot connect."""
    if path == "sql":
        return SqlPublisher(dsn)
    if path == "python":
        return PythonPublisher(dsn, imbus_db)
    if path == "nchan":
        return NchanPublisher(target)
    return HttpPublisher(target, api_key, db)


class Publishing:
    """Publishes on the bench channels through one publisher, books ids, paces loops."""

    def __init__(self, publisher, channels: list[str], log: PublishLog, pad: str):
        self.publisher = publisher
        self.channels = channels
        self.log = log
        self.pad = pad
        self.meter = Meter()
        self._lock = gevent.lock.Semaphore()
        self._next_channel = 0

    def one(self, channel_index: int | None = None, channel: str | None = None) -> int | None:
        """Publish one notification (round robin over the channels unless told);
        returns its id, or None after a failure (counted in the meter's errors)."""
        if channel is None and channel_index is None:
            channel_index = self._next_channel
            self._next_channel = (channel_index + 1) % len(self.channels)
        with self._lock:
            started = time.perf_counter()
            try:
                notification_id = self.publisher.publish(
                    channel if channel is not None else self.channels[channel_index], self.pad)
                self.meter.publish.record(time.perf_counter() - started)
            except Exception as exc:   # any path's failure is a counted outcome
                self.meter.errors["publish-" + getattr(exc, "kind", type(exc).__name__)] += 1
                gevent.sleep(0.05)
                return None
        if channel is None:
            self.log.add(channel_index, notification_id)
            self.meter.published += 1
        return notification_id

    def run(self, *, rate: float, count: int | None, duration: float | None,
            until=None) -> None:
        """Publish `count` notifications, or for `duration` s, or until `until()` is
        true, at `rate` per second (0: back to back). Falls behind rather than
        bursting to catch up by more than one notification."""
        started = time.monotonic()
        sent = 0
        while True:
            now = time.monotonic()
            if count is not None and sent >= count:
                return
            if duration is not None and now - started >= duration:
                return
            if until is not None and until():
                return
            if rate > 0:
                due = started + sent / rate
                if due > now:
                    gevent.sleep(due - now)
                elif now - due > 1.0 / rate:
                    started += (now - due) - 1.0 / rate   # behind: do not burst
            self.one()
            sent += 1
            if rate <= 0 and sent % 10 == 0:
                gevent.sleep(0)   # back to back, but let the clients read

    def close(self) -> None:
        self.publisher.close()
