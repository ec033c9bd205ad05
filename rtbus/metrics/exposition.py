"""Snapshots → the Prometheus text exposition format (version 0.0.4).

Each sample is labelled with the process it comes from (``process="gevent-4242"``)
and its kind (``kind="gevent"``), a gevent worker's also with its number
(``worker="1"``, stable across respawns), plus the family's own label if it has one.
The per-process families carry no cross-process totals: they would be counted
twice by any ``sum()`` over the family. Aggregate them in PromQL, e.g.
``sum without (process, worker) (rate(rtbus_notifications_dispatched_total[5m]))``.
The few ``rtbus_server_*`` families (see `families.SERVER_TOTALS`) are those sums,
made here, one sample each labelled ``process="server",kind="server"``: the whole server's figure,
whichever process answered the scrape.
"""

from __future__ import annotations

import math

from rtbus.metrics.families import FAMILIES, SERVER_TOTALS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape_label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _labels(pairs) -> str:
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in pairs) + "}"


def render(snapshots: list[dict]) -> str:
    """The /metrics body for `snapshots` (see rtbus.metrics.snapshots), families in table order."""
    lines: list[str] = []
    for family in FAMILIES.values():
        samples = []
        for snapshot in snapshots:
            kind = snapshot.get("kind", "?")
            base = [("process", f"{kind}-{snapshot.get('pid', '?')}"), ("kind", kind)]
            if snapshot.get("worker") is not None:
                base.append(("worker", snapshot["worker"]))
            if family.name == "rtbus_process_start_time_seconds":
                value = snapshot.get("started")
            else:
                value = snapshot["metrics"].get(family.name)
            if value is None:
                continue
            samples.extend(_samples(family, base, value))
        if not samples:
            continue
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        lines.extend(samples)
    lines.extend(_server_totals(snapshots))
    return "\n".join(lines) + "\n"


def _server_totals(snapshots: list[dict]) -> list[str]:
    evented = [s for s in snapshots if s.get("kind") in ("gevent", "single")]
    if not evented:
        return []
    lines = []
    for family, source in SERVER_TOTALS.values():
        if source is None:
            value = len(evented)
        else:
            found = [s["metrics"].get(source) for s in evented]
            numbers = [v for v in found if isinstance(v, (int, float))]
            if not numbers:
                continue
            value = sum(numbers)
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type}")
        lines.append(f"{family.name}{_labels([('process', 'server'), ('kind', 'server')])} {_number(value)}")
    return lines


def _samples(family, base: list, value) -> list[str]:
    if family.type == "histogram":
        return _histogram(family.name, base, value)
    if isinstance(value, dict):
        label = family.label or "label"
        return [f"{family.name}{_labels([*base, (label, key)])} {_number(number)}"
                for key, number in sorted(value.items(), key=lambda item: _sort_key(item[0]))]
    return [f"{family.name}{_labels(base)} {_number(value)}"]


def _sort_key(key):
    text = str(key)
    return (0, int(text), "") if text.isdigit() else (1, 0, text)


def _histogram(name: str, base: list, snapshot: dict) -> list[str]:
    lines = []
    cumulative = 0
    counts = snapshot["counts"]
    for bound, count in zip(snapshot["buckets"], counts):
        cumulative += count
        lines.append(f"{name}_bucket{_labels([*base, ('le', _number(bound))])} {cumulative}")
    cumulative += counts[-1]
    lines.append(f"{name}_bucket{_labels([*base, ('le', '+Inf')])} {cumulative}")
    lines.append(f"{name}_sum{_labels(base)} {_number(snapshot['sum'])}")
    lines.append(f"{name}_count{_labels(base)} {_number(snapshot['count'])}")
    return lines
