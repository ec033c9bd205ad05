"""A well-behaved bus client over websocket-client, shared by the transport tests.

`connect` opens ``/websocket`` as a `BusSocket`; `subscribe` sends the event and
waits, bounded, until the server has handled it; `receive`/`receive_ids` read
notifications. For frames a good client never sends, use wsclient.RawWebsocket.

How `barrier` knows the server handled what came before: the server's reader
takes the bytes of one read, handles the messages in them one after the other
(a subscribe is then queued at the dispatcher, which delivers everything
committed afterwards, live or as its catch-up), and only then reads again. A
first pong proves the server has read past our earlier messages; a second ping,
sent after that pong, can only be in a later read, so its pong proves those
messages were handled (the first pong alone could be flushed by the writer
while a message was still being handled). No fixed sleep. Mind the rate limit
(10 frames in 2 s by default): a subscribe with its barrier is three frames.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time

import websocket

_tokens = itertools.count(1)


class BusSocket(websocket.WebSocket):
    """websocket-client's WebSocket; keeps the batches a barrier read past, and a close."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pending: list[list[dict]] = []      # batches read while waiting for a pong
        self.close_received: int | None = None   # the code of a close frame read meanwhile


def connect(port: int, *, sid: str | None = None, path: str = "/websocket", timeout: float = 5,
            **kwargs) -> BusSocket:
    """A websocket to 127.0.0.1:`port`, with the `session_id` cookie `sid` if given."""
    if sid is not None:
        kwargs["cookie"] = f"session_id={sid}"
    # recv() decodes text frames strictly anyway; websocket-client's pure-Python UTF-8
    # check on top costs about a second per megabyte (the catch-up tests read 37 MB).
    kwargs.setdefault("skip_utf8_validation", True)
    return websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout,
                                       class_=BusSocket, **kwargs)


def reconnect(port: int, deadline: float = 10.0, **kwargs) -> BusSocket:
    """connect(), retried the way a browser's bus client retries while a server restarts.

    A connection the kernel queued on a listener that then went away is reset or
    refused; the client tries again (here without its backoff) until `deadline`.
    """
    give_up = time.monotonic() + deadline
    while True:
        try:
            return connect(port, **kwargs)
        except (ConnectionResetError, ConnectionRefusedError, websocket.WebSocketConnectionClosedException):
            if time.monotonic() > give_up:
                raise
            time.sleep(0.05)      # the client's backoff, short


def send_event(ws, name: str, data) -> None:
    ws.send(json.dumps({"event_name": name, "data": data}))


def subscribe(ws, channels, last: int = 0, wait: bool = True) -> None:
    """Send ``subscribe``; with `wait`, return once the server has handled it (see barrier)."""
    send_event(ws, "subscribe", {"channels": channels, "last": last})
    if wait:
        barrier(ws)


def barrier(ws, timeout: float = 5.0) -> bool:
    """Ping twice, one after the other's pong: every message sent before was handled.

    Notifications read meanwhile are kept for `receive`. Returns False, without
    failing, when the server closed instead (the close code is kept for `close_code`).
    """
    assert isinstance(ws, BusSocket), "a barrier needs a busclient.connect() socket (it keeps what it reads)"
    deadline = time.monotonic() + timeout
    return _pong(ws, deadline, timeout) and _pong(ws, deadline, timeout)


def _pong(ws, deadline: float, timeout: float) -> bool:
    token = f"barrier-{os.getpid()}-{next(_tokens)}".encode()
    ws.ping(token)
    while True:
        ws.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            raise AssertionError(f"no pong within {timeout} s: the server did not read on") from None
        except websocket.WebSocketConnectionClosedException:
            return False
        if opcode == websocket.ABNF.OPCODE_PONG and frame.data == token:
            return True
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            ws.close_received = struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else None
            return False
        if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            ws.pending.append(json.loads(frame.data))


def _next_batch(ws, deadline: float) -> list[dict] | None:
    pending = getattr(ws, "pending", None)
    if pending:
        return pending.pop(0)
    ws.settimeout(max(deadline - time.monotonic(), 0.01))
    try:
        return json.loads(ws.recv())
    except websocket.WebSocketTimeoutException:
        return None


def receive(ws, count: int, timeout: float = 5.0) -> list[dict]:
    """Notifications until `count` arrived (batches may hold several) or `timeout` passed."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        batch = _next_batch(ws, deadline)
        if batch is None:
            break
        got.extend(batch)
    return got


def receive_ids(ws, ids, timeout: float = 5.0) -> list[int]:
    """Read until every id in `ids` arrived; return the ids received among `ids`, in order.

    Anything else (a backlog replayed on subscribe, other tests' notifications) is
    skipped; a duplicate of an expected id is kept, so an equality check catches it.
    """
    return [n["id"] for n in receive_wanted(ws, ids, timeout)]


def receive_wanted(ws, ids, timeout: float = 5.0) -> list[dict]:
    """Like receive_ids, but the notifications themselves."""
    wanted = set(ids)
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not wanted <= {n["id"] for n in got} and time.monotonic() < deadline:
        batch = _next_batch(ws, deadline)
        if batch is None:
            break
        got.extend(n for n in batch if n["id"] in wanted)
    return got


def received_before(ws, marker: int, timeout: float = 5.0) -> set[int]:
    """Ids received up to and including `marker` (published last): what the server sent
    before it, with no fixed wait, since a subscriber gets its notifications in id order."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while marker not in seen:
        batch = _next_batch(ws, deadline)
        assert batch is not None, f"notification {marker} did not arrive within {timeout} s"
        seen.update(n["id"] for n in batch)
    return seen


def nothing_more(ws, wait: float = 0.5) -> bool:
    """True when no data frame arrives within `wait` seconds."""
    if getattr(ws, "pending", None):
        return False
    ws.settimeout(wait)
    try:
        ws.recv()
    except websocket.WebSocketTimeoutException:
        return True
    return False


def close_code(ws, timeout: float = 5.0) -> int | None:
    """The code of the server's close frame (skipping anything else), None if none came."""
    if getattr(ws, "close_received", None) is not None:
        return ws.close_received
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ws.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            opcode, frame = ws.recv_data_frame(control_frame=True)
        except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]
    return None


def still_connected(ws, timeout: float = 3.0) -> bool:
    """True when the server still answers a barrier on `ws`; False once it closed or vanished."""
    try:
        return barrier(ws, timeout)
    except (websocket.WebSocketException, OSError):
        return False


def im_statuses(ws, partner_id: int, count: int, timeout: float = 10.0) -> list[str]:
    """The im_status values announced for `partner_id`, until `count` arrived or `timeout`."""
    found: list[str] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        for notification in receive(ws, 1, timeout=max(deadline - time.monotonic(), 0.01)):
            message = notification["message"]
            if message["type"] == "bus.bus/im_status_updated" and message["payload"]["partner_id"] == partner_id:
                found.append(message["payload"]["im_status"])
    return found


def check_presence_across_processes(watcher, tabs, conn, user_id: int, partner_id: int) -> None:
    """One user's two tabs, served by two processes: closing the first leaves the user online.

    The process losing its last tab of the user writes offline; the other, still
    holding a tab, hears the NOTIFY and writes online back (the watcher sees both). `watcher`
    listens to the partner's presence channel; `conn` reads rtbus_presence.
    """
    for ws in tabs:
        send_event(ws, "update_presence", {"inactivity_period": 0})
        barrier(ws)
    assert im_statuses(watcher, partner_id, 1) == ["online"]
    first, second = tabs
    first.close()           # the user's last tab in that process, not the user's last tab
    assert im_statuses(watcher, partner_id, 2) == ["offline", "online"]
    with conn.cursor() as cur:
        cur.execute("SELECT status FROM rtbus_presence WHERE user_id = %s", (user_id,))
        assert cur.fetchone() == ("online",)
    conn.rollback()
    second.close()          # now the user's very last tab
    assert im_statuses(watcher, partner_id, 1) == ["offline"]
