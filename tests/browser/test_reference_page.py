"""The API reference, looked at in a browser at 1280 px: nothing is cut off
(no part of the page wider than the window; a table or signature that is too
wide scrolls by itself), the parameter tables' last column, the defaults, is
on screen, and the code is highlighted without a network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import docsite


@pytest.fixture(scope="module")
def site(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = docsite.site(pytestconfig, tmp_path_factory)  # mkdocs build --strict, once per run
    assert built.returncode == 0, built.stderr
    return built.site


@pytest.mark.slow
def test_the_reference_is_readable_at_1280_px(site: Path, chromium_driver: Any, tmp_path: Path):
    driver = chromium_driver
    driver.get((site / "reference" / "index.html").as_uri())
    width = driver.execute_script("return window.innerWidth")
    assert width <= 1280
    # Nothing makes the page itself scroll sideways.
    page_width = driver.execute_script("return document.documentElement.scrollWidth")
    assert page_width <= width, f"the page is {page_width} px wide in a {width} px window"
    # Every table's last column (the parameters' Default) and every signature
    # ends inside the main column: nothing runs under the table of contents
    # or off the window.
    layout = driver.execute_script(
        """
        const main = document.querySelector('[role=main]').getBoundingClientRect().right;
        const ends = [...document.querySelectorAll(
            '[role=main] td:last-child, [role=main] th:last-child, .doc-signature')]
            .map(e => e.getBoundingClientRect().right);
        const heads = [...document.querySelectorAll('[role=main] th')].map(e => e.textContent);
        return {main: main, widest: Math.max(...ends), count: ends.length,
                defaults: heads.filter(h => h.trim() === 'Default').length};
        """
    )
    assert layout["count"] > 100 and layout["defaults"] > 0, layout
    assert layout["widest"] <= layout["main"] + 1 <= width + 1, f"cut off: {layout}"
    # Highlighted at build time: Pygments' classes carry colours from a local stylesheet.
    colour = driver.execute_script(
        "const k = document.querySelector('.highlight .kn, .highlight .k');"
        "return k && getComputedStyle(k).color"
    )
    if colour is None:  # the reference has no code block with a keyword: the guide has
        driver.get((site / "guide" / "index.html").as_uri())
        colour = driver.execute_script(
            "return getComputedStyle(document.querySelector('.highlight .kn')).color"
        )
    assert colour == "rgb(0, 128, 0)", colour  # Pygments' default style: keywords #008000
    shot = tmp_path / "reference-1280.png"
    assert driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
