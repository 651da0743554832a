"""Headless Chromium driven by Selenium, for the tests of the pages a person sees (/ and /docs).

Debian's ``chromium`` and ``chromium-driver`` are used (``.ci/run`` installs them): Selenium's own
driver download cannot reach the internet here. Every host but 127.0.0.1 resolves to nothing, so
a page that needs a CDN shows it, and the performance log lists every request the page made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM = os.environ.get("STLIGHT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("STLIGHT_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
    # the network to any other host is gone: only the server under test answers
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


def unavailable() -> str | None:
    """Why no browser test can run here, or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (Path(path).is_file() or shutil.which(path)):
            return f"{path} not found (apt-get install {package}; .ci/run tries it)"
    return None


@contextmanager
def chromium(width: int = 1100, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium (empty profile) with its performance log on; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="stlight-chromium-")
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    # downloads land in the throw-away profile, where a test can read them (never in ~/Downloads)
    driver.download_dir = Path(profile) / "downloads"
    driver.download_dir.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(driver.download_dir)})
    driver.get_log("performance")  # drop the start-up tab's own requests
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def requested_urls(driver: Any) -> tuple[list[str], list[str]]:
    """Every URL the browser asked for since the last call (DevTools Network.requestWillBeSent),
    whether it loaded or failed; and, apart, those the page's Content-Security-Policy stopped
    inside the browser (they never reach the network)."""
    sent: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message.get("method") == "Network.loadingFailed" and params.get("blockedReason") == "csp":
            blocked.add(params["requestId"])
    return [u for r, u in sent.items() if r not in blocked], [u for r, u in sent.items() if r in blocked]


def foreign(urls: list[str], base: str) -> list[str]:
    """The URLs that went over the network anywhere but the server at ``base`` (data:, blob: and
    the browser's own chrome: pages never leave the machine)."""
    origin = urlsplit(base).netloc
    return [u for u in urls if urlsplit(u).scheme not in ("data", "blob", "chrome", "about") and urlsplit(u).netloc != origin]


def resize(driver: Any, width: int, height: int) -> None:
    """Make the page's viewport (not the window) ``width`` × ``height`` CSS pixels."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )


def full_page_png(driver: Any, width: int) -> bytes:
    """A screenshot of the whole page at ``width`` CSS pixels (taller than the window if need be)."""
    import base64

    resize(driver, width, 800)  # the page's height depends on its width: lay it out first
    height = int(driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)"))
    resize(driver, width, height)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    return base64.b64decode(shot["data"])
