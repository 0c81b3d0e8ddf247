"""The status page end to end: a real `probe run`, real loopback targets (open, refused,
dropped by a full accept queue), and Chromium (headless, driven by selenium through Debian's
chromedriver) looking at it. Skipped, saying why, where no browser can be had.

Set PROBE_SCREENSHOT=PATH to also keep the screenshot (the README's is made that way:
PROBE_SCREENSHOT=tests/daemon/screenshots/status.png pytest tests/daemon/test_status_browser.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    RecordingListener,
    closed_port,
    config_toml,
    http_fetch,
    target_toml,
    wait_for,
)

EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture
def targets() -> Iterator[dict[str, Any]]:
    up = RecordingListener()
    dropped = FullQueueListener()
    held = {"up": up, "dropped": dropped}
    yield {
        "held": held,
        "config": [
            ("up", up.target, {"team": "net"}),
            ("refused", f"127.0.0.1:{closed_port()}", {"team": "net"}),
            ("dropped", dropped.target, {"team": "web"}),
            (EVIL, f"127.0.0.1:{closed_port()}", {"team": "<script>x</script>"}),
        ],
    }
    up.close()
    dropped.close()


@pytest.fixture
def daemon(tmp_path: Path, targets: dict[str, Any]) -> Iterator[Daemon]:
    log = tmp_path / "log"
    text = "".join(target_toml(*target) for target in targets["config"])
    d = Daemon.start(tmp_path, config_toml(log, text, interval=0.3), log)
    try:
        d.wait_event("listening")
        yield d
        assert d.stop(timeout=10) == 0, d.stderr
    finally:
        d.kill()


def test_page_and_api_headers(daemon: Daemon) -> None:
    """No browser needed: what the server promises the browser."""
    for path, ctype in (("/", "text/html"), ("/api/targets", "application/json"),
                        ("/static/status.js", "text/javascript"),
                        ("/static/status.css", "text/css")):  # fmt: skip
        status, headers, _ = http_fetch(daemon.port, path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(ctype), (path, headers)
        assert headers["X-Content-Type-Options"] == "nosniff"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
    status, _, body = http_fetch(daemon.port, "/api/targets?label=team")
    assert status == 400 and b"KEY:VALUE" in body

    def states() -> dict[str, Any] | None:
        data = json.loads(http_fetch(daemon.port, "/api/targets")[2])
        rows = {r["name"]: r for g in data["groups"] for r in g["rows"]}
        done = all(r["state"] != "unknown" for r in rows.values()) and rows["dropped"]["error"]
        return rows if done else None

    rows = wait_for("every target to have a state", states)
    assert rows["up"]["state"] == "up" and rows["up"]["rtt_ms"] is not None
    assert (rows["refused"]["state"], rows["refused"]["error"]) == ("down", "ECONNREFUSED")
    assert (rows["dropped"]["state"], rows["dropped"]["error"]) == ("down", "ETIMEDOUT")
    assert rows[EVIL]["labels"] == {"team": "<script>x</script>"}
    only_web = json.loads(http_fetch(daemon.port, "/api/targets?label=team:web")[2])
    assert [r["name"] for g in only_web["groups"] for r in g["rows"]] == ["dropped"]


def _browser() -> tuple[str, str] | str:
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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    found = _browser()
    if isinstance(found, str):
        pytest.skip(found)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
                 "--window-size=1500,520"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The driver is Debian's: selenium must not go looking for (or download) another.
    web = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield web
    finally:
        web.quit()


def _rows(web: Any) -> dict[str, dict[str, str]]:
    """Each row of the table as the browser shows it: name cell's first line → cells."""
    script = """
      const out = {};
      for (const tr of document.querySelectorAll("#targets tr.target")) {
        const td = tr.cells;
        out[td[0].firstChild.textContent] = {
          state: td[2].textContent, outcome: td[4].textContent, local: td[5].textContent,
          latency: td[6].textContent, changes: td[10].textContent, cls: tr.className,
          charts: tr.querySelectorAll("svg path").length};
      }
      return out;"""
    rows: dict[str, dict[str, str]] = web.execute_script(script)
    return rows


def test_status_page_in_a_browser(
    daemon: Daemon, targets: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    web = browser
    web.get(f"http://127.0.0.1:{daemon.port}/")
    web.execute_script("window.notReloaded = true;")

    def settled() -> dict[str, dict[str, str]] | None:
        rows = _rows(web)
        ok = (
            len(rows) == 4
            and rows["up"]["state"] == "up"
            and rows["refused"]["state"] == "down"
            and "ETIMEDOUT" in rows["dropped"]["outcome"]
            and rows[EVIL]["state"] == "down"
        )
        return rows if ok else None

    rows = wait_for("the page to show every target's state", settled)
    assert rows["up"]["outcome"] == "open"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", rows["up"]["local"])
    assert rows["up"]["latency"].endswith(" ms")
    assert rows["refused"]["outcome"] == "refused ECONNREFUSED"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", rows["refused"]["local"])
    assert rows["dropped"]["state"] == "down"
    assert re.fullmatch(r"127\.0\.0\.1:\d+", rows["dropped"]["local"])  # a timeout has one too
    assert "unknown→down ETIMEDOUT" in rows["dropped"]["changes"]
    assert all(r["charts"] == 3 for r in rows.values())

    # The escaping holds: the evil name is text, no <img> exists, no alert was raised.
    assert web.find_elements("tag name", "img") == []
    assert EVIL in web.find_element("id", "targets").text
    assert "<script>x</script>" in web.find_element("id", "filters").text
    with pytest.raises(NoAlertPresentException):
        _ = web.switch_to.alert.text

    shot = os.environ.get("PROBE_SCREENSHOT")
    web.save_screenshot(str(tmp_path / "status.png"))
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        web.save_screenshot(shot)

    # A target changes state: the page follows without a reload.
    targets["held"]["up"].close()

    def went_down() -> dict[str, dict[str, str]] | None:
        rows = _rows(web)
        up = rows.get("up")
        return rows if up and up["state"] == "down" else None

    rows = wait_for("the page to show the closed listener down", went_down)
    assert rows["up"]["outcome"] == "refused ECONNREFUSED"
    assert "up→down ECONNREFUSED" in rows["up"]["changes"]
    assert "state-down" in rows["up"]["cls"]
    assert web.execute_script("return window.notReloaded === true;")
    assert web.find_elements("tag name", "img") == []

    # Our page broke none of its own policy (an inline style or script would show here).
    logs = web.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e.get("message", "")], logs
