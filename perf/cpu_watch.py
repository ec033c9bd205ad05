"""Per-process CPU of a benchmark's parts, sampled from /proc in a background thread.

The perf scripts start a PostgreSQL cluster, one or more rtbus nodes, perhaps nginx, and
the rtbus-bench client; `CpuWatch` samples the CPU seconds of each part every
`interval` seconds (each gevent worker on its own, the rest of a node together, the whole
PostgreSQL cluster including backends that have exited, nginx, the bench) and gives the
share of a core each used between two moments, so a report can say which part was the
saturated one. Read-only; it asserts nothing.
"""

from __future__ import annotations

import os
import threading
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """utime + stime of `pid` (and of its exited, waited-for children); 0 when gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid and fields[0] != b"Z":
                found.append(int(entry))
    return sorted(found)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


class CpuWatch:
    """Samples groups of processes: `add_node(label, master_pid)`, `add_tree(label, pid)`,
    `add_process(label, pid)`; `start()`, then `usage(since, until)` -> {label: % of a core}."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.nodes: dict[str, int] = {}
        self.trees: dict[str, int] = {}
        self.processes: dict[str, int] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add_node(self, label: str, master: int) -> None:
        """An rtbus master: each ``rtbus: gevent N`` child is `label`/gevent N, the master
        and its other children together `label`/rest."""
        self.nodes[label] = master

    def add_tree(self, label: str, pid: int) -> None:
        """`pid` and every descendant, exited ones included (PostgreSQL, nginx)."""
        self.trees[label] = pid

    def add_process(self, label: str, pid: int) -> None:
        self.processes[label] = pid

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.sample()))
            self._stop.wait(self.interval)

    def sample(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for label, master in self.nodes.items():
            rest = cpu_seconds(master)
            for child in children(master):
                name = title(child)
                if name.startswith("rtbus: gevent"):
                    found[f"{label}/gevent {name.split()[-1]}"] = cpu_seconds(child)
                else:
                    rest += cpu_seconds(child, with_children=True)
            found[f"{label}/rest"] = rest
        for label, pid in self.trees.items():
            found[label] = cpu_seconds(pid, with_children=True) + sum(
                cpu_seconds(child) for child in descendants(pid))
        for label, pid in self.processes.items():
            found[label] = cpu_seconds(pid)
        return found

    def usage(self, since: float, until: float) -> dict[str, float]:
        """% of one core each group used between the samples nearest `since` and `until`."""
        if len(self.samples) < 2:
            return {}
        first = min(self.samples, key=lambda s: abs(s[0] - since))
        last = min(self.samples, key=lambda s: abs(s[0] - until))
        span = last[0] - first[0]
        if span <= 0:
            return {}
        return {label: round(100.0 * (value - first[1].get(label, 0.0)) / span, 1)
                for label, value in sorted(last[1].items())}


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
