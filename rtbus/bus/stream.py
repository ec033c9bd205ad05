"""The SQL of the bus stream (migration 0006): one wake-up's read, and replays.

Thin wrappers that turn the rows of rtbus_bus_stream_next() and rtbus_bus_replay()
into rtbus.bus.delivery values. `cur` is a psycopg2 cursor; errors are psycopg2's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rtbus.bus.delivery import CatchUp, Replayed, Row, plausible

_logger = logging.getLogger(__name__)

_NEXT_SQL = ("SELECT epoch, id, channel, message, recent, regressed"
             " FROM rtbus_bus_stream_next(%s, %s)")
_REPLAY_SQL = ("SELECT epoch, id, channel, message, recent"
               " FROM rtbus_bus_replay(%s, %s, %s, %s, %s, %s, %s)")


def read_next(cur, after: int | None, backlog: float, where: str = ""
              ) -> tuple[int, list[Row], bool]:
    """One wake-up: (newest epoch, rows of the epochs after `after` in order, regressed).

    `after` None: only record an epoch (a process starting, or a peek). `where` names
    the database in the log lines.
    """
    cur.execute(_NEXT_SQL, (after, backlog))
    fetched = cur.fetchall()
    epoch, regressed = fetched[0][0], fetched[0][5]
    rows = [Row(e, row_id, channel, message, recent)
            for e, row_id, channel, message, recent, _ in fetched[1:]
            if _plausible(row_id, message, where)]
    rows.sort(key=lambda row: (row.epoch, row.id))
    return epoch, rows, regressed


def replay(cur, catchup: CatchUp, epoch: int, channels: Sequence[str], backlog: float,
           limit: int, where: str = "") -> Replayed:
    """One page of `catchup` on `channels` (encoded), up to `epoch`, at most `limit` rows."""
    position = catchup.position
    cur.execute(_REPLAY_SQL, (None if position is None else position[0],
                              catchup.last if position is None else position[1],
                              catchup.window, epoch, sorted(channels), backlog, limit))
    fetched = cur.fetchall()
    if not fetched:
        # The epoch is gone (a regression meanwhile): nothing now, the window next time.
        return Replayed((-1, 0), True, [], None, False)
    start_epoch, start_id, _, _, window = fetched[0]
    body = fetched[1:]
    rows = [Row(e, row_id, channel, message, recent)
            for e, row_id, channel, message, recent in body
            if _plausible(row_id, message, where)]
    end = (body[-1][0], body[-1][1]) if body else None
    return Replayed((start_epoch, start_id), window, rows, end, len(body) < limit)


def _plausible(row_id: int, message: str | None, where: str) -> bool:
    # Messages are spliced into batches without decoding; a row written by hand that
    # is not a JSON object would corrupt every batch it is part of.
    if plausible(message):
        return True
    _logger.warning("bus_bus row %d%s is not a JSON object: skipped", row_id, where)
    return False
