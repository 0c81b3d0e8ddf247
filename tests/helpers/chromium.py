"""Headless Chromium through Debian's chromedriver, for the tests that look at a page.

Everything it writes stays under the test's directory: its profile (`--user-data-dir`), and
what Chromium keeps outside any profile (crash reports under $XDG_CONFIG_HOME, dconf's
cache under $XDG_RUNTIME_DIR) through a home of its own, so a test run leaves nothing in
the user's home."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--disable-sync")  # fmt: skip


def find_chromium() -> tuple[str, str] | str:
    """(chromium, chromedriver), or why they cannot be had."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    chromium = next((p for n in ("chromium", "chromium-browser") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        return "no chromium and chromedriver (Debian: apt-get install chromium chromium-driver)"
    return chromium, driver


def home_of(where: Path) -> Path:
    """The home Chromium is given by `start_chromium(where, ...)`."""
    return where / "home"


def chromium_env(home: Path) -> dict[str, str]:
    """The environment of chromedriver and so of Chromium: `home` for HOME and the XDG
    directories."""
    runtime = home / "run"
    runtime.mkdir(parents=True, exist_ok=True)
    runtime.chmod(0o700)  # what a runtime directory must be
    return {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_RUNTIME_DIR": str(runtime),
    }


def start_chromium(where: Path, chromium: str, driver: str, window: str) -> Any:
    """A WebDriver (quit it when done) whose Chromium keeps its files under `where`;
    `window` is "WIDTH,HEIGHT"."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*FLAGS, f"--user-data-dir={where / 'profile'}", f"--window-size={window}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is Debian's: selenium must not go looking for (or download) another.
    service = Service(driver, env=chromium_env(home_of(where)))
    return webdriver.Chrome(options=options, service=service)
