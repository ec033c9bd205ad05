"""The board as a person sees it: two people, messages published from the page, a presence
change, and a screenshot saved in test-artifacts/ for a human to look at."""

from __future__ import annotations

import os

import pytest

from board import open_board, wait_shown
from conftest import ARTIFACTS

pytestmark = pytest.mark.timeout(120)


def send_from_page(page, text: str) -> None:
    page.fill("#publish-text", text)
    page.click("#publish-button")
    page.wait_for_function("t => [...document.querySelectorAll('#feed .note .body')]"
                           ".some(n => n.textContent.includes(t))", arg=text)


def test_the_board_with_two_people_talking(browser, context, board_server, publish):
    ada = open_board(context, board_server.base_url)
    other_context = browser.new_context(viewport={"width": 1360, "height": 900})
    try:
        other = open_board(other_context, board_server.base_url)
        other_name = other.locator("#me-name").inner_text()
        # The first tab hears of the newcomer (demo/joined) and of their presence.
        ada.wait_for_function("n => [...document.querySelectorAll('#people .person')]"
                              ".some(p => p.textContent.includes(n) && p.dataset.status === 'online')",
                              arg=other_name)
        send_from_page(ada, "Deploy of 19.0-2 is rolling out, one node at a time.")
        send_from_page(other, "Watching the dashboards. Latency is flat so far.")
        other.locator(".chip[data-channel='demo.builds']").click()
        ada.locator(".chip[data-channel='demo.builds']").click()
        ada.wait_for_function("() => document.getElementById('subscribed').textContent.includes('demo.builds')")
        build = publish("demo.builds", "demo/message", {
            "channel": "demo.builds", "text": "main #1287 passed: 612 tests in 3 min 41 s",
            "from": {"name": "CI", "color": "#0f766e"}})
        wait_shown(ada, build)
        other.click("#away")
        ada.wait_for_function("n => [...document.querySelectorAll('#people .person')]"
                              ".some(p => p.textContent.includes(n) && p.dataset.status === 'away')",
                              arg=other_name)
        assert ada.locator("#feed .note .type.presence").count() >= 1
        assert ada.locator("#conn").get_attribute("data-state") == "connected"

        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, "board.png")
        ada.screenshot(path=path, full_page=True)
        assert os.path.getsize(path) > 10_000
    finally:
        other_context.close()
