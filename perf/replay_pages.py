"""Benchmark: what one catch-up page costs in PostgreSQL, by backlog size and schema.

Starts a throwaway PostgreSQL cluster (rtbus.db.cluster, fsync off) in a temporary
directory, and for each schema (migrations up to 0006, and the shipped ones) and each
backlog size inserts that many 1.2 kB rows on one channel, records an epoch, then reads
the whole backlog the way a catching-up client does: `rtbus_bus_replay` pages of
--limit rows, each continuing from the last row of the previous one. Prints the first
page's time and the whole read's time. The rows are placed once per page: a page whose
cost grows with the backlog behind it makes a catch-up quadratic.

    .venv/bin/python perf/replay_pages.py --rows 1000,10000,30000

Prints numbers only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rtbus.db import schema  # noqa: E402
from rtbus.db.cluster import Cluster  # noqa: E402

CHANNEL = '["perf","room"]'
PAYLOAD = '{"type":"n","payload":"' + "x" * 1200 + '"}'


def read_backlog(conn, limit: int) -> tuple[float, float, int]:
    """(first page s, whole read s, rows read) after the first row."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(epoch) FROM rtbus_bus_stream")
        epoch = cur.fetchone()[0]
        cur.execute("SELECT min(id) FROM bus_bus")
        last, position, pages, first, rows = cur.fetchone()[0], None, 0, None, 0
        started = time.perf_counter()
        while True:
            cur.execute("SELECT epoch, id FROM rtbus_bus_replay(%s, %s, false, %s, %s, 50, %s)",
                        (None if position is None else position[0], last, epoch, [CHANNEL], limit))
            page = cur.fetchall()[1:]
            if first is None:
                first = time.perf_counter() - started
            rows += len(page)
            if len(page) < limit:
                return first, time.perf_counter() - started, rows
            position = page[-1]
            last = position[1]


def measure(cluster: Cluster, migrations, count: int, limit: int) -> tuple[float, float, int]:
    name = f"perf_{len(migrations)}_{count}"
    cluster.create_database(name, template="template0")
    conn = cluster.connect(name)
    try:
        schema.upgrade(conn, available=migrations)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT epoch FROM rtbus_bus_stream_next(NULL, 50)")
            cur.execute("INSERT INTO bus_bus (channel, message) SELECT %s, %s FROM generate_series(1, %s)",
                        (CHANNEL, PAYLOAD, count))
            cur.execute("SELECT max(epoch) FROM rtbus_bus_stream_next(0, 50)")
            cur.execute("ANALYZE bus_bus")
        return read_backlog(conn, limit)
    finally:
        conn.close()
        cluster.drop_database(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000,10000,30000", help="backlog sizes, comma-separated")
    parser.add_argument("--limit", type=int, default=1000, help="rows per page (bus_batch_max_notifications)")
    args = parser.parse_args()
    shipped = schema.migrations()
    schemas = [("0006", shipped[:6]), (f"{shipped[-1].version:04d}", shipped)]
    with tempfile.TemporaryDirectory(prefix="rtbus-perf-") as base:
        os.chmod(base, 0o755)
        cluster = Cluster(os.path.join(base, "data"), fast=True)
        cluster.init()
        cluster.start()
        try:
            print(f"{'schema':>6} {'rows':>7} {'first page':>11} {'all pages':>10} {'read':>7}")
            for count in (int(n) for n in args.rows.split(",")):
                for label, migrations in schemas:
                    first, whole, rows = measure(cluster, migrations, count, args.limit)
                    print(f"{label:>6} {count:>7} {first * 1000:>9.1f} ms {whole:>8.2f} s {rows:>7}")
        finally:
            cluster.destroy()


if __name__ == "__main__":
    main()
