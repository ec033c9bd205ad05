"""A small real HTTP application answering rtbus's authorization proxy (rtbus.auth).

It stands in for Odoo in the tests: a ThreadingHTTPServer on a loopback port, run in a
thread of the test process. Its rules:

- `sessions` maps sid → (uid, partner_id); any other sid is answered ``valid: false``.
  No cookie: a visitor (uid null).
- A requested channel is granted unless it starts with ``secret.``; the server adds
  ``broadcast``, for a user ``["res.partner", partner_id]``, and for a guest (a ``dgid``
  cookie, Odoo's guest token) ``guest.<token>``.
- `behaviour[sid]` overrides the answer for one sid: ``"slow"`` answers after `delay`
  seconds, ``"error"`` answers HTTP 500, ``"gate"`` holds the call until `gate` is set.
- Every POST must carry a valid signature under `secret` (else 403, counted); a GET
  answers ``{"served_by": "application"}``, standing in for the rest of Odoo.

`calls` counts subscribe calls per sid, `events` keeps every forwarded event.
"""

from __future__ import annotations

import collections
import http.cookies
import http.server
import json
import socket
import threading

from rtbus.auth.client import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature

SECRET = "proxy-test-secret"


class AuthApp:
    def __init__(self, secret: str = SECRET):
        self.secret = secret.encode()
        self.sessions: dict[str, tuple[int, int]] = {}
        self.behaviour: dict[str, str] = {}
        self.delay = 5.0
        self.gate = threading.Event()
        self.calls: collections.Counter = collections.Counter()
        self.requests: list[dict] = []
        self.events: list[dict] = []
        self.bad_signatures = 0
        self._lock = threading.Lock()
        self._open: set = set()        # connections being served (kept alive between calls)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rtbus"

    def stop(self) -> None:
        """Stop answering, close the listening socket and every kept-alive connection:
        the application is down."""
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            open_now = list(self._open)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def total_calls(self) -> int:
        with self._lock:
            return sum(self.calls.values())

    def answer(self, body: dict, header_cookies: dict) -> tuple[int, dict]:
        cookies = body.get("cookies") or {}
        assert cookies == header_cookies, "the Cookie header and the body carry the same cookies"
        sid = cookies.get("session_id")
        with self._lock:
            self.calls[sid] += 1
            self.requests.append(body)
        how = self.behaviour.get(sid)
        if how == "slow":
            threading.Event().wait(self.delay)
        elif how == "gate":
            self.gate.wait(30)
        elif how == "error":
            return 500, {"error": "boom"}
        if sid is None:
            uid = partner_id = None
        elif sid in self.sessions:
            uid, partner_id = self.sessions[sid]
        else:
            return 200, {"valid": False}
        channels = [c for c in body["channels"] if not c.startswith("secret.")] + ["broadcast"]
        if partner_id is not None:
            channels.append(["res.partner", partner_id])
        if cookies.get("dgid"):
            channels.append(f"guest.{cookies['dgid']}")
        return 200, {"valid": True, "uid": uid, "partner_id": partner_id, "channels": channels}

    def _handler(self):
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with app._lock:
                    app._open.add(self.connection)

            def finish(self):
                with app._lock:
                    app._open.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self):
                # Standing in for the rest of Odoo (the web client) behind nginx.
                return self._send(200, {"served_by": "application", "path": self.path})

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not verify_signature(app.secret, self.headers.get(TIMESTAMP_HEADER),
                                        self.headers.get(SIGNATURE_HEADER), data):
                    app.bad_signatures += 1
                    return self._send(403, {"error": "bad signature"})
                body = json.loads(data)
                if self.path == "/rtbus/subscribe":
                    jar = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
                    status, answer = app.answer(body, {name: m.value for name, m in jar.items()})
                    return self._send(status, answer)
                if self.path == "/rtbus/events":
                    with app._lock:
                        app.events.extend(body["events"])
                    return self._send(200, {"ok": True})
                return self._send(404, {"error": "no route"})

            def _send(self, status: int, answer: dict) -> None:
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:          # rtbus gave up waiting (the slow answers)
                    self.close_connection = True

        return Handler
