"""Remake the dashboard's screenshots in docs/images/ (run by hand, not a test):

    python tests/browser/make_screenshots.py

Starts ``ratatoskr demo --web --bots 8``, lets the bots wander for a few
seconds, and saves the page at 1280 x 800 and at a phone's width (390 px),
with the system's Chromium (the same flags as the browser tests).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import CHROMEDRIVER, CHROMIUM, FLAGS

IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def main() -> None:
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ratatoskr_client",
            "demo",
            "--web",
            "--bots",
            "8",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert demo.stdout is not None
    match = re.match(r"dashboard: (\S+)", demo.stdout.readline())
    assert match
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_window_size(1280, 800)
            driver.get(match.group(1))
            time.sleep(8)  # (a picture, not a test: let the bots spread out)
            IMAGES.mkdir(exist_ok=True)
            driver.save_screenshot(str(IMAGES / "dashboard.png"))
            driver.set_window_size(390, 844)
            time.sleep(1)
            driver.save_screenshot(str(IMAGES / "dashboard-phone.png"))
        finally:
            driver.quit()
            demo.terminate()
            demo.wait()


if __name__ == "__main__":
    main()
