"""``rtbus-server status``: every process of a running deployment, from its runtime directory.

The master writes its view of the children (pid, kind, age, requests served,
resident memory, the request in progress) into its snapshot every two seconds;
this reads it, so it needs no signal, socket or privilege beyond reading the
directory, and works while the workers are all busy.
"""

from __future__ import annotations

import time

from rtbus.errors import StartupError
from rtbus.metrics import snapshots

_COLUMNS = ("KIND", "PID", "AGE", "REQUESTS", "RSS", "SERVING")


def read(directory: str) -> dict:
    """The live master's (or single process's) snapshot in `directory`; StartupError if none."""
    for snapshot in snapshots.read_all(directory):
        if snapshot.get("kind") in ("master", "single"):
            return snapshot
    raise StartupError(f"rtbus is not running here: no live master in the runtime directory "
                       f"{directory} (check runtime_dir and http_port)")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_bytes(value) -> str:
    if not value:
        return "-"
    return f"{value / (1 << 20):.1f} MiB"


def render(snapshot: dict, now: float | None = None) -> str:
    """The status table of `snapshot` (as written by the master or a single process)."""
    now = time.time() if now is None else now
    since_written = max(now - snapshot.get("written", now), 0.0)
    kind, pid = snapshot["kind"], snapshot["pid"]
    uptime = now - snapshot["started"] if snapshot.get("started") else None
    metrics = snapshot.get("metrics", {})
    rows = [(kind, pid, format_duration(uptime), "-",
             format_bytes(metrics.get("rtbus_process_resident_memory_bytes")), "")]
    if kind == "master":
        head = (f"rtbus master {pid}: up {format_duration(uptime)}, generation "
                f"{snapshot.get('generation', 0)}, HTTP on {snapshot.get('http')} "
                f"({snapshot.get('workers_wanted')} workers wanted), longpolling on "
                f"{snapshot.get('longpolling')}")
        if snapshot.get("stopping"):
            head += ", STOPPING"
        children = snapshot.get("children", [])
        several = sum(1 for child in children if child["kind"] == "gevent") > 1
        for child in children:
            # Several gevent workers are told apart by their number (their metrics label).
            name = f"gevent {child.get('slot', 0)}" if several and child["kind"] == "gevent" else child["kind"]
            rows.append((name, child["pid"], format_duration(child["age"] + since_written),
                         str(child.get("requests", 0)), format_bytes(child.get("rss")),
                         child.get("request") or ""))
    else:
        head = f"rtbus single process {pid}: up {format_duration(uptime)}, serving every route"
    lines = [head, f"(snapshot written {since_written:.1f} s ago)", ""]
    table = [_COLUMNS, *[tuple(str(cell) for cell in row) for row in rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(_COLUMNS))]
    for row in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)
