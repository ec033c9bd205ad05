"""The handshake route's own path (issue 17): the 101 the edge writes from `Accepted` is
the one pywsgi writes for the routing map's werkzeug response and is sent whole, and the
headers it checks give check_request the answer werkzeug's EnvironHeaders gives."""

import pytest
from werkzeug.datastructures import EnvironHeaders
from werkzeug.wrappers import Response

from rtbus.http.websocket_route import Accepted, _extension_offers, _request_headers
from rtbus.websocket import handshake
from rtbus.websocket.connection import send_all

KEY = "dGhlIHNhbXBsZSBub25jZQ=="   # RFC 6455 §1.3


def _as_pywsgi_writes(response: Response) -> bytes:
    """Status line and headers as gevent's pywsgi writes a 101 (no Date, no length)."""
    written = {}

    def start_response(status, headers, exc_info=None):
        written["status"], written["headers"] = status, headers

    response({"REQUEST_METHOD": "GET", "SERVER_NAME": "x", "SERVER_PORT": "80",
              "wsgi.url_scheme": "http"}, start_response)
    lines = [f"HTTP/1.1 {written['status']}", *(f"{name}: {value}" for name, value in written["headers"])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize("extensions", [None, "permessage-deflate; server_no_context_takeover"])
def test_the_101_is_the_same_on_both_paths(extensions):
    response = Response(status=101, headers=handshake.response_headers(KEY, extensions))
    del response.headers["Content-Type"]
    head = Accepted(KEY, extensions, serve=None).head()
    assert head == _as_pywsgi_writes(response)
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head


def _environ(**headers):
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/websocket", "SERVER_NAME": "x",
               "SERVER_PORT": "80", "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": ""}
    environ.update({f"HTTP_{name}": value for name, value in headers.items()})
    return environ


_GOOD = dict(HOST="bus.example.com", ORIGIN="http://bus.example.com", UPGRADE="websocket",
             CONNECTION="keep-alive, Upgrade", SEC_WEBSOCKET_KEY=KEY, SEC_WEBSOCKET_VERSION="13")


@pytest.mark.parametrize("changes", [
    {},
    {"UPGRADE": "WebSocket"},
    {"UPGRADE": "websocket,websocket"},             # a repeated header, as pywsgi joins it
    {"SEC_WEBSOCKET_KEY": f"{KEY},{KEY}"},
    {"SEC_WEBSOCKET_VERSION": "8"},
    {"CONNECTION": "close"},
    {"ORIGIN": "  "},
    {"HOST": None},
    {"CONTENT_TYPE": "text/plain"},                  # werkzeug skips HTTP_CONTENT_TYPE
])
def test_the_headers_checked_give_werkzeugs_answer(changes):
    headers = {**_GOOD, **changes}
    environ = _environ(**{name: value for name, value in headers.items() if value is not None})

    def answer(mapping):
        try:
            return handshake.check_request("GET", mapping)
        except handshake.HandshakeError as exc:
            return exc.status, exc.message

    assert answer(_request_headers(environ)) == answer(EnvironHeaders(environ))


class _Kernel:
    """A socket whose send takes at most `take` bytes, recording what was sent and how."""

    def __init__(self, take: int):
        self.take, self.calls, self.data = take, [], b""

    def send(self, data, flags=0, timeout=None):
        assert timeout == 0.0           # the first send never waits
        self.calls.append("send")
        self.data += bytes(data[:self.take])
        return min(self.take, len(data))

    def sendall(self, data):
        self.calls.append("sendall")
        self.data += bytes(data)


@pytest.mark.parametrize("take, calls", [(1000, ["send"]), (10, ["send", "sendall"])])
def test_the_101_is_sent_whole_in_one_send_or_finished_by_sendall(take, calls):
    head = Accepted(KEY, None, None).head()
    sock = _Kernel(take)
    send_all(sock, head)
    assert sock.data == head
    assert sock.calls == calls


@pytest.mark.parametrize("offers", [None, "permessage-deflate", "permessage-deflate, x-webkit-deflate-frame"])
def test_the_extension_offers_read_from_the_environ_are_werkzeugs(offers):
    environ = _environ(**({} if offers is None else {"SEC_WEBSOCKET_EXTENSIONS": offers}))
    assert _extension_offers(environ) == EnvironHeaders(environ).getlist("Sec-WebSocket-Extensions")
