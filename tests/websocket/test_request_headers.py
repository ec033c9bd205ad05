"""RequestHeaders reads a request's header block as pywsgi's email-based reader does."""

from __future__ import annotations

import http.client
import io

import pytest
from gevent.pywsgi import headers_factory

from rtbus.websocket.request_headers import MAX_HEADERS, MAX_LINE, RequestHeaders

BLOCKS = [
    b"Host: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nbody",
    b"host:a\r\nHOST: second\r\nCookie: x=1\r\ncookie: y=2\r\n\r\n",
    b"X-Folded: one\r\n\ttwo\r\n  three\r\nNext: n\r\n\r\n",
    b"Spaces:    lots   \r\nTabs:\t\tv\r\nEmpty:\r\n\r\n",
    b"Name : with space\r\n\r\n",
    b"  leading continuation\r\nHost: a\r\n\r\n",
    b": no name\r\nHost: a\r\n\r\n",
    b"Host: a\r\nnot a header line\r\nAfter: ignored\r\n\r\n",
    b"Host: a\nBare: lf\n\n",
    b"Latin: caf\xe9\r\n\r\n",
    b"\r\n",
    b"Host: a\r\n",          # the peer stopped before the empty line
]


def _reference(block: bytes):
    return headers_factory(io.BytesIO(block))


@pytest.mark.parametrize("block", BLOCKS)
def test_the_same_headers_as_pywsgis_reader(block):
    ours, theirs = RequestHeaders.read(io.BytesIO(block)), _reference(block)
    assert ours.status == theirs.status == ""
    assert list(ours.headers) == list(theirs.headers)
    for name in ("host", "HOST", "cookie", "x-folded", "spaces", "tabs", "empty", "name ",
                 "latin", "missing", "after", "bare"):
        assert ours.get(name) == theirs.get(name)
        assert ours.getheader(name, "d") == theirs.getheader(name, "d")
    assert ours.typeheader == theirs.typeheader


def test_reading_stops_at_the_empty_line():
    fp = io.BytesIO(b"Host: a\r\n\r\nGET / HTTP/1.1\r\n")
    RequestHeaders.read(fp)
    assert fp.read() == b"GET / HTTP/1.1\r\n"


def test_delete_removes_every_occurrence_and_tolerates_a_missing_name():
    block = b"Content-Length: 3\r\nX: 1\r\ncontent-length: 4\r\n\r\n"
    ours, theirs = RequestHeaders.read(io.BytesIO(block)), _reference(block)
    del ours["content-length"]
    del theirs["content-length"]
    del ours["nothing"]
    assert list(ours.headers) == list(theirs.headers) == ["X: 1\r\n"]
    assert "x" in ours and "content-length" not in ours


def test_a_line_too_long_is_reported_like_pywsgi():
    block = b"X: " + b"a" * MAX_LINE + b"\r\n\r\n"
    assert RequestHeaders.read(io.BytesIO(block)).status == _reference(block).status == "Line too long"


def test_too_many_headers_raise_like_http_client():
    block = b"".join(b"X%d: v\r\n" % i for i in range(MAX_HEADERS + 1)) + b"\r\n"
    with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
        _reference(block)
    with pytest.raises(http.client.HTTPException, match="got more than 100 headers"):
        RequestHeaders.read(io.BytesIO(block))
    exactly = b"".join(b"X%d: v\r\n" % i for i in range(MAX_HEADERS - 1)) + b"\r\n"
    assert len(list(RequestHeaders.read(io.BytesIO(exactly)).headers)) == MAX_HEADERS - 1
