"""Headless Chromium for the dashboard tests (Debian `chromium` + `chromium-driver`).

Selenium is always handed the explicit driver path, so Selenium Manager never downloads
anything; the browser gets a fresh profile and the flags that keep it off the network
(no sync, no component updates, no background requests).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
)


def chromium_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a throwaway profile, quit and cleaned up on exit."""
    profile = Path(tempfile.mkdtemp(prefix="fraudstream-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(
    driver: webdriver.Chrome,
    condition: Callable[[webdriver.Chrome], Any],
    timeout: float = 20.0,
    message: str = "",
) -> Any:
    """Poll `condition(driver)` until it returns something truthy; raise TimeoutException after `timeout`."""
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message)


def screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """Save the whole page, beyond the viewport, without resizing the window (which would re-layout it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 4000), "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
