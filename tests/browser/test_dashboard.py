"""The dashboard in a real browser: ``ratatoskr demo --web`` (the embedded
relay, six bots) and headless Chromium on the address it prints.

What a newcomer sees: the bots appear, their cursors move, one disconnected
from the page leaves the page and the other clients' presence. A screenshot
of each step is saved under the test's ``tmp_path``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ratatoskr_client.sync import RatatoskrClient

WAIT = 10.0
DEMO_DOCS = ("design-doc", "roadmap", "standup-notes", "launch-plan")


@pytest.fixture
def demo() -> Iterator[str]:
    """``ratatoskr demo --web --bots 6`` running; yields the address it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ratatoskr_client", "demo", "--web", "--bots", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"dashboard: (http://\S+/admin/#token=\S+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(driver: Any, condition: Any, what: str, timeout: float = WAIT) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        raise AssertionError(f"timed out waiting for {what}") from None


def peer_rows(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#peers tr')].map(r => r.dataset.peer)"
    )


def cursors(driver: Any) -> dict[str, list[float]]:
    """Peer id -> the cursor the page draws for it (in any document)."""
    found: dict[str, list[float]] = {}
    for raw in driver.execute_script(
        "return [...document.querySelectorAll('article.doc canvas')].map(c => c.dataset.cursors)"
    ):
        for peer, xy in json.loads(raw).items():
            found[f"{peer}"] = xy
    return found


@pytest.mark.slow
def test_demo_bots_cursors_and_disconnect(chromium_driver: Any, demo: str, tmp_path: Path):
    driver = chromium_driver
    url = demo.partition("#token=")[0]

    # The page asks for the token when it has none; a wrong one is refused.
    driver.get(url)
    form = wait_for(
        driver,
        lambda d: d.find_element("id", "login").is_displayed() and d.find_element("id", "login"),
        "the sign-in form",
    )
    driver.find_element("id", "token").send_keys("wrong-token")
    form.submit()
    wait_for(driver, lambda d: "refused" in d.find_element("id", "login-error").text, "the refusal")

    # The address the demo prints signs in (the token moves to session storage
    # and leaves the address bar).
    driver.get(demo)
    started = time.monotonic()
    wait_for(driver, lambda d: len(peer_rows(d)) == 6, "6 peers on the page")
    assert "#token" not in driver.current_url
    first = wait_for(driver, lambda d: cursors(d) or False, "a cursor drawn")
    wait_for(
        driver,
        lambda d: any(p in first and xy != first[p] for p, xy in cursors(d).items()),
        "a cursor that moves",
    )
    took = time.monotonic() - started
    print(f"6 peers and a moving cursor {took:.2f} s after the page opened")
    assert took < 10  # (about 0.6 s on an idle machine; generous for a loaded one)
    driver.save_screenshot(str(tmp_path / "dashboard.png"))

    # Another client watches the documents; disconnecting a bot that is present
    # where it watches removes the bot from the page and from its presence.
    host = url.removesuffix("/admin/")
    with RatatoskrClient(host, token="demo-viewer") as watcher:
        for doc in DEMO_DOCS:
            watcher.enter_document(doc)
        wait_for(driver, lambda d: len(peer_rows(d)) == 7, "the watcher on the page")

        def a_bot_with_the_watcher(_: Any) -> tuple[str, str] | None:
            for doc in DEMO_DOCS:
                for peer in watcher.presence(doc):
                    if peer.peer_id != watcher.me.peer_id:
                        return doc, peer.peer_id
            return None

        doc, victim = wait_for(driver, a_bot_with_the_watcher, "a bot in a watched document")
        button = driver.find_element(
            "css selector", f'button[data-action=disconnect][data-peer="{victim}"]'
        )
        button.click()
        wait_for(
            driver, lambda d: victim not in peer_rows(d), "the disconnected bot leaving the page"
        )
        wait_for(
            driver,
            lambda d: all(p.peer_id != victim for p in watcher.presence(doc)),
            "the disconnected bot leaving the watcher's presence",
        )
        assert len(peer_rows(driver)) == 6  # five bots and the watcher: it did not come back
        assert (
            driver.find_elements("css selector", f'article.doc .chip[data-peer="{victim}"]') == []
        )
        driver.save_screenshot(str(tmp_path / "dashboard-after-disconnect.png"))

    # A phone's width: one column, still readable.
    driver.set_window_size(390, 844)
    wait_for(
        driver,
        lambda d: d.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        ),
        "no horizontal scrolling at 390 px",
    )
    driver.save_screenshot(str(tmp_path / "dashboard-phone.png"))
