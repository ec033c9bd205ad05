"""One database's share of an ImDispatch cycle: its state, its catch-ups, the fan-out.

The dispatcher thread owns everything here. Reading happens through the dispatcher's
source (a rtbus.bus.source.Reader), the rules come from rtbus.bus.delivery; this module
puts pages in mailboxes, encoding each distinct page once for all the subscribers that want exactly those rows.
"""

from __future__ import annotations

from collections.abc import Callable

from rtbus.bus import delivery
from rtbus.bus.delivery import CatchUp, Limits, Replayed, Row, Subscriber

PAGE_WAIT_SECONDS = 0.02      # re-check of catch-ups waiting for their mailbox to drain

Page = tuple[Subscriber, CatchUp, Replayed]


class Database:
    """What the dispatcher knows of one served database."""

    def __init__(self, name: str):
        self.name = name
        self.where = f" in database {name}"
        self.epoch: int | None = None                  # None until the first link opens
        self.subscribers: dict[str, set[Subscriber]] = {}
        self.catchups: dict[Subscriber, CatchUp] = {}  # pending, in arrival order
        self.woken = False
        self.notified_at: float | None = None   # first NOTIFY since the last cycle (monotonic)
        self.stale = False          # a NOTIFY was skipped: rows lie above the cursor
        self.last_fetch = 0.0

    def register(self, channel: str, sub: Subscriber) -> None:
        self.subscribers.setdefault(channel, set()).add(sub)

    def unregister(self, channel: str, sub: Subscriber) -> None:
        subs = self.subscribers.get(channel)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self.subscribers[channel]

    def runnable_catchups(self) -> list[tuple[Subscriber, CatchUp]]:
        """Catch-ups to read now: first pages, and next pages whose mailbox drained."""
        return [(sub, catchup) for sub, catchup in self.catchups.items()
                if not catchup.pages or not len(sub.mailbox)]


def read_catchups(reader, db: Database, epoch: int, backlog: float, limits: Limits,
                  count_query: Callable[..., None]) -> list[Page]:
    """One replay page per runnable catch-up, up to `epoch`; identical replays read once."""
    pages = []
    shared: dict[tuple, Replayed] = {}
    for sub, catchup in db.runnable_catchups():
        if not catchup.channels:
            pages.append((sub, catchup, Replayed(
                catchup.position or delivery.START, catchup.window, [], None, True)))
            continue
        key = (catchup.position, catchup.last, catchup.window, frozenset(catchup.channels))
        page = shared.get(key)
        if page is None:
            page = shared[key] = reader.replay(catchup, epoch, catchup.channels, backlog,
                                               limits.notifications, db.where)
            count_query(len(page.rows), catchup=True)
        pages.append((sub, catchup, page))
    return pages


def finish_pages(db: Database, pages: list[Page], subscribers: dict, limits: Limits,
                 counters: dict) -> dict[Subscriber, list[Row]]:
    """Apply the pages read (see delivery.finish_page); return what to deliver to whom.

    A subscriber whose catch-up completes joins the live channels of `db`.
    """
    wants = {}
    for sub, catchup, page in pages:
        if subscribers.get(sub.key) is not sub or db.catchups.get(sub) is not catchup:
            continue          # unsubscribed meanwhile, or resubscribed
        rows = delivery.finish_page(sub, catchup, page, db.epoch, limits)
        catchup.pages += 1
        counters["catchup_pages"] += 1
        if sub.catchup is None:
            del db.catchups[sub]
            for channel in catchup.channels:
                db.register(channel, sub)
        if rows:
            wants[sub] = rows
    return wants


def deliver(wants: dict[Subscriber, list[Row]], limits: Limits, counters: dict,
            since: float | None = None) -> None:
    """Encode each distinct page once and put it in the mailboxes that want it.

    Rows beyond `limits` go in further batches. `since` is when the NOTIFY that woke
    this cycle arrived; it travels with every batch for the delivery latency (None: a
    cycle no NOTIFY triggered).
    """
    if not wants:
        return
    # The same rows for many subscribers: cut into pages and encoded once. fan_out
    # hands every subscriber of a channel the same list, so the list itself is looked
    # up first (kept alive in `by_list`, so that its id is not reused meanwhile) and its
    # ids only once per list.
    batches: dict[tuple[int, ...], list[tuple[bytes, list[int], list[Row]]]] = {}
    by_list: dict[int, tuple[list[Row], list[tuple[bytes, list[int], list[Row]]]]] = {}
    puts = delivered = 0     # booked once per call: the loop runs once per subscriber
    try:
        for sub, rows in wants.items():
            mailbox = sub.mailbox
            if mailbox.overflowed or mailbox.closed:
                continue           # the transport is closing it; it will unsubscribe
            known = by_list.get(id(rows))
            if known is not None:
                encoded = known[1]
            else:
                signature = tuple([row.id for row in rows])
                encoded = batches.get(signature)
                if encoded is None:
                    encoded = batches[signature] = [
                        (delivery.encode(page), [row.id for row in page], page)
                        for page in limits.pages(rows)]
                    counters["batches_encoded"] += len(encoded)
                by_list[id(rows)] = (rows, encoded)
            for batch, ids, page in encoded:
                if not mailbox.put(batch, ids, since):
                    if mailbox.overflowed:
                        counters["overflows"] += 1
                    break
                puts += 1
                delivered += len(ids)
                sub.given(page)
    finally:
        counters["mailbox_puts"] += puts
        counters["deliveries"] += delivered
