"""The suite's one way to publish from outside the server, as an application does."""

from __future__ import annotations

from rtbus.bus.publish import Notifier, Publisher


class Publish:
    """``publish(channel, type="n", payload=None, count=1) -> [ids]`` into one database.

    Uses the Python API as an application would: rows before commit, NOTIFY
    imbus on the `postgres` database after. `one(...)` returns the single id.
    The one publishing helper of the suite (every publish fixture is one of these).
    """

    def __init__(self, cluster, dbname: str):
        self.dbname = dbname
        self.conn = cluster.connect(dbname)
        self.publisher = Publisher(Notifier(imbus_db_name="postgres"))

    def __call__(self, channel, notification_type: str = "n", payload=None, count: int = 1) -> list[int]:
        return self.publisher.publish(self.conn, self.dbname, [(channel, notification_type, payload)] * count)

    def one(self, channel, notification_type: str = "n", payload=None) -> int:
        (notification_id,) = self(channel, notification_type, payload)
        return notification_id

    def close(self) -> None:
        self.publisher.notifier.close()
        self.conn.close()
