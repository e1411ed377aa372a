"""A headless Chromium for browser tests: the system's ``/usr/bin/chromium``
driven by ``/usr/bin/chromedriver`` through Selenium, nothing downloaded at
run time. Without them the tests are skipped with one line saying so, unless
``RATATOSKR_REQUIRE_BROWSER=1`` (CI), which makes that a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1280, 800)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (the dev extra has it)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is not installed"
    return None


@pytest.fixture
def chromium_driver(tmp_path: Path) -> Iterator[Any]:
    """A headless ``selenium.webdriver.Chrome``, 1280×800, with a fresh profile."""
    missing = _missing()
    if missing is not None:
        if os.environ.get("RATATOSKR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RATATOSKR_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(f"browser tests need Chromium and chromedriver: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        driver.set_window_size(*WINDOW)
        yield driver
    finally:
        driver.quit()
