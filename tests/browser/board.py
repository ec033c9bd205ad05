"""Helpers of the browser tests: opening the board, reading what a tab shows, and counting
the websockets the server holds."""

from __future__ import annotations

WAIT_MS = 20_000


def open_board(context, url: str):
    """Open the board at `url` in a new tab and wait until its bus is connected."""
    page = context.new_page()
    page.goto(url)
    wait_state(page, "connected")
    return page


def wait_state(page, state: str, timeout: int = WAIT_MS) -> None:
    """Wait until the tab's connection pill shows `state`."""
    page.wait_for_function("s => document.getElementById('conn').dataset.state === s", arg=state,
                           timeout=timeout)


def wait_shown(page, notification_id: int, timeout: int = WAIT_MS) -> None:
    """Wait until the tab's feed shows notification `notification_id`."""
    page.wait_for_selector(f"#feed li[data-id='{notification_id}']", timeout=timeout)


def shown_count(page, notification_id: int) -> int:
    return page.locator(f"#feed li[data-id='{notification_id}']").count()


def subscribed(page) -> str:
    return page.locator("#subscribed").inner_text()


def wait_subscribed(page, channel: str, timeout: int = WAIT_MS) -> None:
    """Wait until the worker's subscription (the union of the tabs' channels) holds `channel`."""
    page.wait_for_function("c => document.getElementById('subscribed').textContent.split(/\\s+/).includes(c)",
                           arg=channel, timeout=timeout)


def event_names(page) -> list[str]:
    return page.evaluate("window.rtbusDemo.events.map(e => e.name)")


def established_connections(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local port is `port` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":
                count += 1
    return count
