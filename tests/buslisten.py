"""Watch NOTIFY imbus from the outside, the way a dispatcher would."""

from __future__ import annotations

import select
import time

import orjson


class ImbusListener:
    """A raw LISTEN imbus connection on one database of a cluster."""

    def __init__(self, cluster, dbname: str = "postgres"):
        self.conn = cluster.connect(dbname)
        self.conn.autocommit = True
        with self.conn.cursor() as cr:
            cr.execute("LISTEN imbus")
        self.payloads: list[list] = []

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[list]:
        """Wait until `count` payloads arrived in total; return all decoded payloads."""
        deadline = time.monotonic() + timeout
        while len(self.payloads) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if select.select([self.conn], [], [], remaining)[0]:
                self.conn.poll()
                while self.conn.notifies:
                    self.payloads.append(orjson.loads(self.conn.notifies.pop(0).payload))
        return self.payloads

    def close(self) -> None:
        self.conn.close()
