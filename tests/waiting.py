"""Bounded waits on observable state: the one place where the tests poll.

A test never sleeps a fixed time hoping the server got there. It waits, with a
bound, for something it can see: a value the server reports on ``/metrics``, a
log line, a process or socket state, the dispatcher's ``wait_applied``. The poll
interval below is the only pacing; every wait ends as soon as its condition holds.

`poll` has no pytest dependency (scripts such as db/netfault.py use it); the
others fail the test with a sentence naming what did not happen.
"""

from __future__ import annotations

import http.client
import re
import time

POLL_INTERVAL = 0.02     # seconds between two looks; short, since a look is cheap


def poll(predicate, timeout: float, interval: float = POLL_INTERVAL, sleep=time.sleep):
    """Call `predicate` until it returns a truthy value (returned) or `timeout` s pass (None).

    In-process tests of gevent code pass ``sleep=gevent.sleep``, so the loop runs meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        sleep(min(interval, remaining))


def wait_until(predicate, timeout: float, interval: float = POLL_INTERVAL, message: str = "condition",
               sleep=time.sleep):
    """`poll`, failing the test after `timeout` s; returns the predicate's truthy value."""
    value = poll(predicate, timeout, interval, sleep)
    if not value:
        import pytest

        pytest.fail(f"timed out after {timeout} s waiting for {message}")
    return value


# -- /metrics ------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-z_]+)\{([^}]*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_samples(text: str) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample; fails on a line that is not valid 0.0.4 text."""
    samples = []
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples.append((match.group(1), dict(_LABEL.findall(match.group(2))), float(match.group(3))))
    return samples


def values(samples, name: str, **labels) -> list[float]:
    """The values of the samples of `name` whose labels include `labels`."""
    return [value for sample, found, value in samples
            if sample == name and all(found.get(k) == v for k, v in labels.items())]


def scrape_text(port: int, timeout: float = 5.0) -> str:
    """The body of GET /metrics on 127.0.0.1:`port` (the answering process refreshes its own
    figures first, so a value read there is current for that process)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, f"/metrics answered {response.status}"
        return body.decode()
    finally:
        conn.close()


def metric(port: int, name: str, kinds: tuple[str, ...] = ("gevent", "single"), **labels: str) -> float:
    """The sum of family `name`'s samples from processes of `kinds` matching `labels`."""
    return sum(value for sample, found, value in parse_samples(scrape_text(port))
               if sample == name and found.get("kind") in kinds
               and all(found.get(k) == v for k, v in labels.items()))


def wait_metric(port: int, name: str, at_least: float, timeout: float = 10.0, **labels: str) -> float:
    """Wait until `metric(port, name, **labels)` reaches `at_least`; return its value."""
    def reached():
        value = metric(port, name, **labels)
        return (value,) if value >= at_least else None

    return wait_until(reached, timeout, message=f"{name} >= {at_least} on port {port}")[0]
