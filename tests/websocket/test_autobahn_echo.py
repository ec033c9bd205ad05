"""The Autobahn echo harness (scripts/autobahn_echo.py) echoes through the bus's codec: what
Autobahn|Testsuite checks, in a few seconds and without Python 2."""

from __future__ import annotations

import os
import sys

import pytest
from websockets.sync.client import connect

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "scripts"))
import autobahn_echo  # noqa: E402


@pytest.fixture(scope="module")
def echo():
    server = autobahn_echo.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("compression", ["deflate", None])
def test_messages_come_back_as_sent(echo, compression):
    messages = ["", "héllo", "x" * 70_000, b"\x00\xff" * 40_000, os.urandom(3000)]
    with connect(f"ws://127.0.0.1:{echo.port}", compression=compression, max_size=2**24) as ws:
        negotiated = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert (negotiated is not None) == (compression == "deflate")
        for message in messages:
            ws.send(message)
            assert ws.recv(timeout=5) == message
        ws.send(["frag", "mented ", "é" * 5000])          # a fragmented message
        assert ws.recv(timeout=5) == "fragmented " + "é" * 5000
