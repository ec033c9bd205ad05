"""The bounded body reader on werkzeug requests built from environs: no server needed."""

from __future__ import annotations

import pytest
from werkzeug.wrappers import Request

from rtbus.errors import RequestTooLarge
from rtbus.http.body import BUFFER, read_body


class CountingStream:
    """An endless (or `size`-byte) stream that counts what was read from it."""

    def __init__(self, size: int | None = None):
        self.size = size
        self.read_bytes = 0

    def read(self, n=-1):
        if n is None or n < 0:
            raise AssertionError("the body reader must never read without a bound")
        if self.size is not None:
            n = min(n, self.size - self.read_bytes)
        self.read_bytes += n
        return b" " * n


def request(stream, content_length=None, chunked=False) -> Request:
    env = {"REQUEST_METHOD": "POST", "wsgi.input": stream, "SERVER_NAME": "x", "SERVER_PORT": "80",
           "wsgi.url_scheme": "http", "PATH_INFO": "/"}
    if content_length is not None:
        env["CONTENT_LENGTH"] = str(content_length)
    if chunked:
        env["HTTP_TRANSFER_ENCODING"] = "chunked"
        env["wsgi.input_terminated"] = True     # the server de-chunks
    return Request(env)


def test_a_declared_length_over_the_limit_is_refused_unread():
    stream = CountingStream()
    with pytest.raises(RequestTooLarge, match="2000 bytes is larger than the 1000"):
        read_body(request(stream, content_length=2000), 1000)
    assert stream.read_bytes == 0


def test_an_endless_chunked_body_is_refused_after_the_limit_plus_one_byte():
    stream = CountingStream()
    limit = 3 * BUFFER + 17
    with pytest.raises(RequestTooLarge):
        read_body(request(stream, chunked=True), limit)
    assert stream.read_bytes == limit + 1


@pytest.mark.parametrize("size", [0, 1, BUFFER, 5 * BUFFER])
def test_bodies_up_to_the_limit_are_read_whole(size):
    stream = CountingStream(size)
    assert read_body(request(stream, chunked=True), 5 * BUFFER) == b" " * size
    stream = CountingStream(size)
    assert read_body(request(stream, content_length=size), 5 * BUFFER) == b" " * size


def test_a_request_with_neither_length_nor_chunking_has_an_empty_body():
    stream = CountingStream()
    assert read_body(request(stream), 1000) == b""
    assert stream.read_bytes == 0
