"""The heartbeat pipe (rtbus.service.heartbeat) on a real pipe, without a master."""

from __future__ import annotations

import os

import pytest

from rtbus.service.heartbeat import MAX_DESCRIPTION, HeartbeatReader, HeartbeatWriter


@pytest.fixture
def pipe():
    """(reader, writer) on the two ends of one os.pipe(), both closed after the test."""
    r, w = os.pipe()
    reader, writer = HeartbeatReader(r, now=100.0), HeartbeatWriter(w)
    yield reader, writer
    reader.close()
    writer.close()


def test_a_new_child_is_not_ready_and_counts_from_its_start(pipe):
    reader, _writer = pipe
    assert (reader.state.last_seen, reader.state.ready, reader.state.requests) == (100.0, False, 0)
    assert reader.fileno() == reader.fd


def test_any_line_is_a_sign_of_life(pipe):
    reader, writer = pipe
    writer.beat()
    reader.read(now=101.5)
    assert reader.state.ready and reader.state.last_seen == 101.5
    assert reader.state.request is None and not reader.eof


def test_a_request_is_named_while_it_runs_and_counted_when_done(pipe):
    reader, writer = pipe
    writer.request_started("GET /longpolling/poll")
    reader.read(now=110.0)
    assert (reader.state.request, reader.state.request_started) == ("GET /longpolling/poll", 110.0)
    writer.beat()                       # a beat in between does not end the request
    reader.read(now=111.0)
    assert reader.state.request == "GET /longpolling/poll" and reader.state.request_started == 110.0
    writer.request_done()
    reader.read(now=112.0)
    assert (reader.state.request, reader.state.request_started, reader.state.requests) == (None, None, 1)
    assert reader.state.last_seen == 112.0


def test_descriptions_are_one_line_and_bounded(pipe):
    reader, writer = pipe
    writer.request_started("GET /a\nD\nR forged" + "x" * 1000)
    reader.read(now=120.0)
    assert reader.state.request.startswith("GET /a D R forged")
    assert len(reader.state.request) == MAX_DESCRIPTION
    assert reader.state.requests == 0          # the embedded "D" was not taken as a line


def test_undecodable_bytes_do_not_break_the_reader(pipe):
    reader, _writer = pipe
    reader.feed(b"R GET /\xff\xfe\n", now=101.0)
    assert reader.state.request == "GET /\ufffd\ufffd"


def test_lines_split_across_reads_are_joined(pipe):
    reader, _writer = pipe
    reader.feed(b"R GET /lo", now=101.0)
    assert not reader.state.ready and reader.state.request is None    # no complete line yet
    reader.feed(b"ng\nD\n.\nR POST /x\n", now=102.0)
    assert reader.state.requests == 1 and reader.state.request == "POST /x"
    assert reader.state.last_seen == 102.0


def test_an_endless_line_keeps_only_a_bounded_tail(pipe):
    reader, _writer = pipe
    for _ in range(100):
        reader.feed(b"y" * 10_000, now=101.0)
    assert len(reader._partial) <= 4 * MAX_DESCRIPTION
    reader.feed(b"\nD\n", now=102.0)
    assert reader.state.requests == 1


def test_nothing_to_read_changes_nothing_and_a_closed_writer_is_eof():
    r, w = os.pipe()
    reader, writer = HeartbeatReader(r, now=100.0), HeartbeatWriter(w)
    try:
        reader.read(now=130.0)                 # the pipe is empty: no block, no change
        assert not reader.eof and reader.state.last_seen == 100.0
        writer.close()
        reader.read(now=131.0)
        assert reader.eof and reader.state.last_seen == 100.0
    finally:
        reader.close()


def test_a_full_pipe_drops_beats_instead_of_blocking_the_child(pipe):
    reader, writer = pipe
    for _ in range(200_000):                   # far more than a pipe holds (64 KiB by default)
        writer.beat()
    reader.read(now=140.0)                     # the child is still running: we got here
    assert reader.state.ready and reader.state.last_seen == 140.0


def test_writing_to_a_master_that_is_gone_is_harmless():
    r, w = os.pipe()
    writer = HeartbeatWriter(w)
    os.close(r)
    writer.beat()                              # EPIPE (SIGPIPE is ignored by Python)
    writer.request_started("GET /")
    writer.request_done()
    writer.close()
