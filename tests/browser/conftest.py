"""A headless Chromium for the tests that need a real browser (the dashboard).

``chromium_driver`` is a Selenium ``webdriver.Chrome`` driving Debian's
``chromium`` through its ``chromedriver`` (nothing is downloaded at run time),
headless, in a fresh profile under the test's ``tmp_path``, with the flags
that keep it off the network (this machine's network is closed, and a
browser that tries Google's hosts waits for them), at 1280 x 800.

- Chromium, chromedriver or Selenium missing: the test is skipped with one
  line saying which.
- ``RATATOSKR_REQUIRE_BROWSER=1`` (CI, see ``.ci/run``): a missing browser
  fails instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REQUIRED = "RATATOSKR_REQUIRE_BROWSER"
CHROMIUM = os.environ.get("RATATOSKR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RATATOSKR_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,800",
)


def _missing() -> str | None:
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
            return f"{what} not found at {path} (apt install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def chromium_driver(tmp_path: Path) -> Iterator[Any]:
    """A headless ``selenium.webdriver.Chrome`` on the system's Chromium, 1280 x 800."""
    missing = _missing()
    if missing is not None:
        if os.environ.get(REQUIRED) == "1":
            pytest.fail(f"{REQUIRED}=1 but {missing}")
        pytest.skip(f"no browser: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_window_size(1280, 800)
        yield driver
    finally:
        driver.quit()
