"""The process-wide bound on memory held by partially received websocket messages.

Each connection already refuses a message above `websocket_max_message_size`. That alone
lets a few thousand connections that each send most of a large message, then stall, hold
gigabytes. Every ServerProtocol of a process therefore charges what it holds between two
reads (the unread part of a frame, the fragments of a message in progress, an inflater
while a compressed message is received) to one `ReceiveBudget`; a connection that cannot
get its share is closed with 1013 and the others keep theirs.

Used from one event loop (the evented process's), so it takes no lock.
"""

from __future__ import annotations


class ReceiveBudget:
    """`limit` bytes shared by every connection of a process; 0 means no limit.

    `used` is what is held now, `peak` the most ever held, `refusals` how many
    reservations were refused.
    """

    __slots__ = ("limit", "used", "peak", "refusals")

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refusals = 0

    def reserve(self, amount: int) -> bool:
        """Take `amount` more bytes; False (nothing taken) when that would pass the limit."""
        used = self.used + amount
        if self.limit and used > self.limit:
            self.refusals += 1
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def release(self, amount: int) -> None:
        """Give back `amount` bytes taken by `reserve`."""
        self.used -= amount
