"""LongPolls without sockets or a database: a fake dispatcher fills the mailboxes."""

from __future__ import annotations

import contextlib
import threading

import pytest

from rtbus import errors
from rtbus.bus.poll import EMPTY_BATCH, LongPolls, Outcome, merge_batches


class FakeDispatcher:
    """Records subscriptions; `deliver()` puts a batch in every current mailbox."""

    def __init__(self, *backlog: bytes):
        self.backlog = backlog
        self.subscribers: dict = {}
        self.calls: list = []
        self.subscribed = threading.Condition()

    def subscribe(self, key, dbname, channels, last, mailbox):
        self.calls.append((dbname, tuple(channels), last))
        for batch in self.backlog:      # queued before the poll starts waiting
            mailbox.put(batch, [1])
        with self.subscribed:
            self.subscribers[key] = mailbox
            self.subscribed.notify_all()

    def unsubscribe(self, key):
        with self.subscribed:
            self.subscribers.pop(key, None)

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        with self.subscribed:
            return self.subscribed.wait_for(lambda: len(self.subscribers) >= count, timeout)

    def deliver(self, batch: bytes, ids) -> None:
        with self.subscribed:
            mailboxes = list(self.subscribers.values())
        for mailbox in mailboxes:
            mailbox.put(batch, ids)


def polls(dispatcher, **kwargs) -> LongPolls:
    settings = {"timeout": 5.0, "max_polls": 10, "mailbox_max_bytes": 1 << 20, **kwargs}
    return LongPolls(dispatcher, **settings)


def in_thread(func, *args, **kwargs):
    box = {}

    def run():
        try:
            box["result"] = func(*args, **kwargs)
        except BaseException as exc:     # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_merge_batches_splices_arrays_without_decoding():
    assert merge_batches([b'[{"id":1}]', b"[]", b'[{"id":2},{"id":3}]']) == \
        b'[{"id":1},{"id":2},{"id":3}]'
    assert merge_batches([]) == b"[]"


def test_backlog_is_answered_at_once_and_the_subscriber_removed():
    dispatcher = FakeDispatcher(b'[{"id":1,"message":{}}]')
    service = polls(dispatcher)
    result = service.wait("db", ['["db","broadcast"]'], 0)
    assert result.outcome is Outcome.DELIVERED
    assert result.batch == b'[{"id":1,"message":{}}]'
    assert dispatcher.calls == [("db", ('["db","broadcast"]',), 0)]
    assert dispatcher.subscribers == {}
    assert service.stats()["held"] == 0 and service.stats()["delivered"] == 1


def test_a_waiting_poll_wakes_on_delivery():
    dispatcher = FakeDispatcher()
    service = polls(dispatcher)
    thread, box = in_thread(service.wait, "db", [], 7)
    assert dispatcher.wait_for(1)
    assert service.held == 1
    dispatcher.deliver(b'[{"id":8}]', [8])
    thread.join(5)
    assert box["result"].batch == b'[{"id":8}]'
    assert box["result"].outcome is Outcome.DELIVERED
    assert service.held == 0


def test_batches_already_queued_go_into_one_answer():
    service = polls(FakeDispatcher(b'[{"id":8}]', b"[]", b'[{"id":9}]'))
    assert service.wait("db", [], 7).batch == b'[{"id":8},{"id":9}]'


def test_timeout_answers_an_empty_list():
    service = polls(FakeDispatcher())
    result = service.wait("db", [], 0, timeout=0.05)
    assert (result.batch, result.outcome) == (EMPTY_BATCH, Outcome.TIMEOUT)
    assert service.stats()["timeout"] == 1


def test_a_client_that_leaves_releases_its_wait():
    dispatcher = FakeDispatcher()
    service = polls(dispatcher)
    held = []

    @contextlib.contextmanager
    def watch(poll):
        held.append(poll)
        yield

    thread, box = in_thread(service.wait, "db", [], 0, watch=watch)
    assert dispatcher.wait_for(1)
    held[0].abandon()
    thread.join(5)
    assert box["result"].outcome is Outcome.LEFT
    assert box["result"].batch == EMPTY_BATCH
    assert dispatcher.subscribers == {}
    assert service.stats()["left"] == 1 and service.held == 0


def test_polls_beyond_the_bound_are_refused():
    dispatcher = FakeDispatcher()
    service = polls(dispatcher, max_polls=2)
    threads = [in_thread(service.wait, "db", [], 0) for _ in range(2)]
    assert dispatcher.wait_for(2)
    with pytest.raises(errors.Overloaded) as caught:
        service.wait("db", [], 0)
    assert errors.wire_outcome(caught.value).http_status == 503
    assert errors.wire_outcome(caught.value).retry_after
    dispatcher.deliver(b'[{"id":1}]', [1])
    for thread, box in threads:
        thread.join(5)
        assert box["result"].outcome is Outcome.DELIVERED
    stats = service.stats()
    assert (stats["refused"], stats["peak_held"], stats["held"]) == (1, 2, 0)


def test_close_all_answers_held_polls_and_refuses_new_ones():
    dispatcher = FakeDispatcher()
    service = polls(dispatcher)
    thread, box = in_thread(service.wait, "db", [], 0)
    assert dispatcher.wait_for(1)
    assert service.close_all() == 1
    thread.join(5)
    assert box["result"].outcome is Outcome.STOPPED
    with pytest.raises(errors.Overloaded):
        service.wait("db", [], 0)


def test_a_refused_subscription_releases_the_slot():
    class Refusing(FakeDispatcher):
        def subscribe(self, *args):
            raise ValueError("database 'other' is not served")

    service = polls(Refusing(), max_polls=1)
    for _ in range(2):
        with pytest.raises(ValueError):
            service.wait("other", [], 0)
    assert service.held == 0
    assert service.stats()["failed"] == 2 and service.stats()["timeout"] == 0
