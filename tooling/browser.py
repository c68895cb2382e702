"""Headless Chromium for the UI screenshots and the browser tests: Debian's `chromium` driven
through its `chromium-driver` with Selenium, nothing downloaded.

The flags are those a machine without a network (and without a screen) needs: no GPU and none of
Chromium's background connections; its sandbox stays on, unless we are root, where it cannot run.
"""

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver", "chromium-driver")
FLAGS = [
    "--headless=new",
    *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium's sandbox refuses root alone
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--hide-scrollbars",
]


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def missing() -> str | None:
    """Why no browser can run here (None when one can)."""
    if not _which(CHROMIUM):
        return "chromium is not installed (apt-get install chromium chromium-driver)"
    if not _which(DRIVER):
        return "chromedriver is not installed (apt-get install chromium-driver)"
    return None


@contextmanager
def chromium(
    width: int = 1600, height: int = 1000, extra_flags: list[str] | None = None
) -> Iterator[object]:
    """A Selenium WebDriver on headless Chromium, quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    reason = missing()
    if reason:
        raise RuntimeError(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM)
    for flag in [*FLAGS, f"--window-size={width},{height}", *(extra_flags or [])]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(_which(DRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll until `condition()` holds (a page rendered by JavaScript takes a while)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except Exception:  # the element is not there yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not appear within {timeout_s:g} s")
        time.sleep(0.5)


def page_text(driver: object) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text
