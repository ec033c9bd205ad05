"""The delivery rules of the bus, without I/O: what each subscription gets, how cursors move.

Rows come in with their stream position ``(epoch, id)`` (rtbus.db migration 0006: the
first recorded epoch whose snapshot sees the row's transaction, then the id). Every
subscriber receives the rows of its channels in position order, each once:

* A subscriber starts with a *catch-up*: the rows after its start (the position of
  the `last` it sent, or the last 50 s when `last` is 0) up to the dispatcher's
  current epoch, read page by page (`Limits`), then it goes *live*: it gets the rows
  of every later epoch as the dispatcher reads them. Its `floor` is the position up
  to which it has everything: live rows at or below it are not given again (a client
  whose `last` came from a process ahead of this one).
* A channel added later is caught up from the position of the last row delivered to
  the subscriber, the same way, then joins the live channels.

This module knows no sockets, no psycopg2 and no gevent; rtbus.bus.dispatch feeds it
the rows it read and does what it says.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence

from rtbus.config.table import BY_NAME

Position = tuple[int, int]

MAX_ID = 2 ** 63 - 1
START: Position = (-1, 0)           # before every row


def after_epoch(epoch: int) -> Position:
    """The position just after every row of `epoch`."""
    return (epoch, MAX_ID)


class Row:
    """One bus_bus row at its stream position; `blob` is its wire form, built once."""

    __slots__ = ("epoch", "id", "channel", "blob", "recent")

    def __init__(self, epoch: int, row_id: int, channel: str, message: str | None,
                 recent: bool = True):
        self.epoch = epoch
        self.id = row_id
        self.channel = channel
        self.blob = b'{"id":%d,"message":%s}' % (row_id, (message or "null").encode("utf-8"))
        self.recent = recent

    @property
    def position(self) -> Position:
        return (self.epoch, self.id)

    def __repr__(self) -> str:
        return f"Row({self.epoch}, {self.id}, {self.channel!r})"


def plausible(message: str | None) -> bool:
    """Is `message` spliceable into a batch as is (a JSON object, or NULL)?"""
    return message is None or (message.startswith("{") and message.endswith("}"))


@dataclasses.dataclass(frozen=True)
class Limits:
    """At most `notifications` rows and about `max_bytes` bytes per frame or response.

    A single row larger than `max_bytes` still goes, alone.
    """

    notifications: int = BY_NAME["bus_batch_max_notifications"].default
    max_bytes: int = BY_NAME["bus_batch_max_bytes"].default

    @classmethod
    def from_config(cls, config) -> Limits:
        return cls(config.bus_batch_max_notifications, config.bus_batch_max_bytes)

    def pages(self, rows: Sequence[Row]) -> list[list[Row]]:
        """Cut `rows` (in order) into pages within the limits."""
        pages: list[list[Row]] = []
        page: list[Row] = []
        size = 2
        for row in rows:
            grown = size + len(row.blob) + 1
            if page and (len(page) >= self.notifications or grown > self.max_bytes):
                pages.append(page)
                page, grown = [], 2 + len(row.blob) + 1
            page.append(row)
            size = grown
        if page:
            pages.append(page)
        return pages


def encode(rows: Sequence[Row]) -> bytes:
    """The JSON array of `rows`, as sent on the wire."""
    return b"[" + b",".join(row.blob for row in rows) + b"]"


@dataclasses.dataclass
class CatchUp:
    """The replay a subscriber is owed: `channels` after `position` (None: after its `last`).

    `window`: only rows of the last backlog seconds (`last` 0). `adopt`: the first
    catch-up of the subscriber, which sets its floor.
    """

    channels: set[str]
    position: Position | None
    last: int = 0
    window: bool = False
    adopt: bool = False
    pages: int = 0           # pages delivered so far

    @classmethod
    def first(cls, channels: Iterable[str], last: int) -> CatchUp:
        return cls(set(channels), START if last <= 0 else None, max(last, 0), last <= 0, True)


@dataclasses.dataclass
class Replayed:
    """One page read by a replay: where it started as the database resolved it (`start`,
    `window`: the position of `last`, or the window of `last` 0), the deliverable `rows`
    in order, the position of the last row read (`end`, None if none, including rows
    skipped as malformed), and whether the replay has nothing more (`complete`)."""

    start: Position
    window: bool
    rows: list[Row]
    end: Position | None
    complete: bool


class Subscriber:
    """One subscription's delivery state; `mailbox` is opaque here."""

    __slots__ = ("key", "dbname", "mailbox", "channels", "floor", "delivered", "catchup")

    def __init__(self, key, dbname: str, mailbox):
        self.key = key
        self.dbname = dbname
        self.mailbox = mailbox
        self.channels: frozenset[str] = frozenset()   # live channels
        self.floor: Position = START                   # it has everything up to here
        self.delivered: Position = START               # the last row it was given (or its `last`)
        self.catchup: CatchUp | None = None

    def wants(self, rows: Sequence[Row]) -> Sequence[Row]:
        """The live `rows` (one channel's, in order) this subscriber has not had yet.

        Usually all of them, returned as is (the caller must not modify them).
        """
        floor_epoch, floor_id = self.floor
        first = rows[0] if rows else None
        if first is None or first.epoch > floor_epoch or (
                first.epoch == floor_epoch and first.id > floor_id):
            return rows
        return [row for row in rows if (row.epoch, row.id) > self.floor]

    def given(self, rows: Sequence[Row]) -> None:
        """Rows were put in its mailbox: move its cursor."""
        if rows:
            last = rows[-1].position
            if last > self.delivered:
                self.delivered = last

    def __repr__(self) -> str:
        return f"Subscriber({self.key!r}, {self.dbname})"


def start_catchup(sub: Subscriber, channels: frozenset[str], last: int) -> CatchUp | None:
    """A subscribe of `sub` to `channels`: which catch-up it needs now (None: none).

    The first subscribe adopts `last`; later ones only catch up added channels, from
    the last row delivered (Odoo 17+ ignores a later `last`). Channels dropped are
    forgotten at once, including from a pending catch-up.
    """
    sub.channels &= channels
    pending = sub.catchup
    if pending is not None:
        pending.channels &= channels
        pending.channels |= channels - sub.channels
        return pending
    added = set(channels - sub.channels)
    if sub.floor == START and sub.delivered == START:
        sub.catchup = CatchUp.first(added, last)
    elif added:
        # Nothing delivered yet and no `last` adopted: the window, as for `last` 0.
        sub.catchup = CatchUp(added, sub.delivered, window=sub.delivered == START)
    return sub.catchup


def finish_page(sub: Subscriber, catchup: CatchUp, page: Replayed, epoch: int,
                limits: Limits) -> list[Row]:
    """Apply one `page` of `catchup` read up to `epoch`; return the rows to deliver.

    What the byte limit cuts off the page is read again next time. When the catch-up
    is complete, its channels go live and the floor rises to the end of `epoch`, or to
    the start if that is later (a `last` handed out by a process ahead of this one).
    """
    pages = limits.pages(page.rows)
    rows = pages[0] if pages else []
    catchup.window = page.window
    if len(pages) > 1:
        catchup.position = rows[-1].position
    else:
        catchup.position = page.end or page.start
    if page.complete and len(pages) <= 1:
        if catchup.adopt and page.start[0] >= 0 and page.start > sub.delivered:
            sub.delivered = page.start       # channels added later catch up from `last`
        sub.catchup = None
        sub.channels |= catchup.channels
        sub.floor = max(sub.floor, page.start, catchup.position, after_epoch(epoch))
    return rows


def fan_out(subscribers_by_channel, rows: Sequence[Row]) -> dict[Subscriber, list[Row]]:
    """Group live `rows` (in stream order) by the subscribers of their channels."""
    by_channel: dict[str, list[Row]] = {}
    for row in rows:
        by_channel.setdefault(row.channel, []).append(row)
    wants: dict[Subscriber, list[Row]] = {}
    for channel, channel_rows in by_channel.items():
        for sub in subscribers_by_channel.get(channel, ()):
            mine = sub.wants(channel_rows)
            if not mine:
                continue
            had = wants.get(sub)
            if had is None:
                wants[sub] = mine           # shared, never modified: see below
            else:
                wants[sub] = sorted([*had, *mine], key=by_position)
    return wants


by_position = operator.attrgetter("epoch", "id")


def restart(subscribers: Iterable[Subscriber], epoch: int) -> None:
    """The stream restarted at `epoch` (a regression): old positions mean nothing now.

    Live subscribers take everything from `epoch` on; pending catch-ups replay the
    window, as for `last = 0`.
    """
    for sub in subscribers:
        sub.floor = START
        sub.delivered = (epoch - 1, MAX_ID)
        if sub.catchup is not None:
            sub.catchup.position, sub.catchup.window = START, True
