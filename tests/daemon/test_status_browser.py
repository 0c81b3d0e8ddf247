"""The status page end to end: a real `probe run`, real loopback targets (open, refused,
dropped by a full accept queue), and Chromium (headless, driven by selenium through Debian's
chromedriver) looking at it. Skipped, saying why, where no browser can be had.

Set PROBE_SCREENSHOTS=DIR to also keep the screenshots, wide, narrow (390 px) and dark, and
the detail page's (docs/status-page.md shows them; they are made that way:
PROBE_SCREENSHOTS=tests/daemon/screenshots pytest -n 0 tests/daemon/test_status_browser.py).
"""

from __future__ import annotations

import json
import os
import re
import time
import xml.etree.ElementTree as ET
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    RecordingListener,
    closed_port,
    config_toml,
    find_chromium,
    home_of,
    http_fetch,
    start_chromium,
    target_toml,
    wait_for,
)

from probe.daemon.store import Change, Minute, Seen, open_store

pytestmark = pytest.mark.module_unit  # its module-scoped fixtures start once a run

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
                        ("/static/target.js", "text/javascript"),
                        ("/static/status.css", "text/css"), ("/target/up", "text/html"),
                        ("/target/" + quote(EVIL, safe=""), "text/html"),
                        ("/badge/up.svg", "image/svg+xml")):  # fmt: skip
        status, headers, _ = http_fetch(daemon.port, path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(ctype), (path, headers)
        assert headers["X-Content-Type-Options"] == "nosniff"
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
    status, _, body = http_fetch(daemon.port, "/api/targets?label=team")
    assert status == 400 and b"KEY:VALUE" in body
    for missing in ("/target/nothing", "/target/" + quote("<b>x</b>", safe=""),
                    "/badge/nothing.svg", "/badge/up.png"):  # fmt: skip
        status, _, body = http_fetch(daemon.port, missing)
        assert status == 404 and b"<b>x" not in body, missing
    # The XSS name is text in its page and in its badge (XML: the name is one text node).
    _, _, body = http_fetch(daemon.port, "/target/" + quote(EVIL, safe=""))
    assert b"<img" not in body and b"&lt;img src=x onerror=alert(1)&gt;" in body
    _, _, body = http_fetch(daemon.port, "/badge/" + quote(EVIL, safe="") + ".svg")
    svg = ET.fromstring(body)
    assert EVIL in "".join(svg.itertext()) and b"<img" not in body

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


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium for the module's tests (it takes seconds to start)."""
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    where = tmp_path_factory.mktemp("chromium")
    web = start_chromium(where, *found, window="1400,700")
    web.first_size = web.get_window_size()
    try:
        yield web
    finally:
        web.quit()
    # What it keeps outside its profile (crash reports) went to its home, not the user's.
    assert (home_of(where) / ".config" / "chromium").is_dir()


@pytest.fixture
def browser(chromium: Any) -> Any:
    """The module's Chromium as a test finds it fresh: a blank page, the window of its
    start, light, the console read."""
    chromium.get("about:blank")
    if chromium.get_window_size() != chromium.first_size:
        chromium.set_window_size(chromium.first_size["width"], chromium.first_size["height"])
    chromium.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    chromium.get_log("browser")
    return chromium


def _rows(web: Any) -> dict[str, dict[str, str]]:
    """Each row of the table as the browser shows it: name link's text → cells."""
    script = """
      const out = {};
      const text = (tr, cls) => tr.querySelector("td." + cls).textContent;
      for (const tr of document.querySelectorAll("#targets tr.target")) {
        out[tr.querySelector("td.name a").textContent] = {
          state: text(tr, "state"), outcome: text(tr, "outcome"), local: text(tr, "local"),
          latency: text(tr, "latency"), changes: text(tr, "changes"), cls: tr.className,
          charts: tr.querySelectorAll("svg.chart path").length,
          href: tr.querySelector("td.name a").getAttribute("href")};
      }
      return out;"""
    rows: dict[str, dict[str, str]] = web.execute_script(script)
    return rows


def _shot(web: Any, tmp_path: Path, name: str) -> None:
    web.save_screenshot(str(tmp_path / name))
    keep = os.environ.get("PROBE_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        web.save_screenshot(str(Path(keep) / name))


def _polls(web: Any) -> int:
    return int(web.execute_script("return Number(document.body.dataset.polls || 0);"))


def _after_polls(web: Any, n: int) -> None:
    """Wait until the page has taken `n` more answers from /api/targets."""
    start = _polls(web)
    wait_for(f"{n} refreshes", lambda: _polls(web) >= start + n, timeout=30)


@pytest.mark.slow  # ~12 s
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

    _shot(web, tmp_path, "status-wide.png")
    width = web.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert width[0] <= width[1], width  # 1400 px: no sideways scroll either
    lines = web.execute_script("""
      return Array.from(document.querySelectorAll("#targets td.name a")).map(a =>
        a.getClientRects().length);""")
    assert lines == [1, 1, 1, 1], lines  # no name wraps, let alone inside a word

    # A selection in the local endpoint (which changes with every attempt), and focus on a
    # link, survive three refreshes: the cell is left alone while it is selected.
    selected = web.execute_script("""
      const td = Array.from(document.querySelectorAll("#targets tr.target"))
        .find(tr => tr.dataset.name === "refused").querySelector("td.local");
      const range = document.createRange();
      range.selectNodeContents(td);
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      document.querySelector('#targets tr[data-name="up"] td.name a').focus();
      return sel.toString();""")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", selected)
    _after_polls(web, 3)
    assert web.execute_script("return window.getSelection().toString();") == selected
    assert web.execute_script("return document.activeElement.closest('tr').dataset.name;") == "up"
    web.execute_script("window.getSelection().removeAllRanges();")
    wait_for(
        "the endpoint to move on once let go", lambda: _rows(web)["refused"]["local"] != selected
    )
    assert rows["up"]["href"] == "/target/up" and _rows(web)[EVIL]["href"] == "/target/" + quote(
        EVIL, safe=""
    )

    # A target changes state: the page follows without a reload.
    targets["held"]["up"].close()

    def went_down() -> dict[str, dict[str, str]] | None:
        rows = _rows(web)
        up = rows.get("up")
        return rows if up and up["state"] == "down" else None

    rows = wait_for("the page to show the closed listener down", went_down)
    announced = wait_for(
        "the change announced",
        lambda: "up is down" in (t := web.find_element("id", "announce").text) and t,
    )
    assert "ECONNREFUSED" in announced
    assert web.find_element("id", "announce").get_attribute("aria-live") == "polite"
    assert rows["up"]["outcome"] == "refused ECONNREFUSED"
    assert "up→down ECONNREFUSED" in rows["up"]["changes"]
    assert "state-down" in rows["up"]["cls"]
    assert web.execute_script("return window.notReloaded === true;")
    assert web.find_elements("tag name", "img") == []

    # Our page broke none of its own policy (an inline style or script would show here).
    logs = web.get_log("browser")
    assert not [e for e in logs if "Content Security Policy" in e.get("message", "")], logs


def test_narrow_and_dark(daemon: Daemon, browser: Any, tmp_path: Path) -> None:
    """At 390 px the page has no horizontal scroll, shows name, state, since and outcome,
    and the rest on a tap; with a dark colour-scheme preference the page is dark."""
    web = browser
    web.set_window_size(390, 844)
    web.get(f"http://127.0.0.1:{daemon.port}/")
    wait_for("every state", lambda: all(r["state"] != "unknown" for r in _rows(web).values())
             and len(_rows(web)) == 4)  # fmt: skip
    _after_polls(web, 1)
    width = web.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert width[1] <= 400 and width[0] <= width[1], width
    shown = web.execute_script("""
      const tr = document.querySelector('#targets tr[data-name="dropped"]');
      const seen = cls => getComputedStyle(tr.querySelector("td." + cls)).display !== "none";
      return ["name", "state", "since", "outcome", "local", "chart"].map(seen);""")
    assert shown == [True, True, True, True, False, False]
    row = web.find_element("css selector", '#targets tr[data-name="dropped"] button.more')
    row.click()
    opened = web.execute_script("""
      const tr = document.querySelector('#targets tr[data-name="dropped"]');
      return [getComputedStyle(tr.querySelector("td.local")).display,
              tr.querySelector("button.more").getAttribute("aria-expanded")];""")
    assert opened == ["block", "true"]
    width = web.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert width[0] <= width[1], width
    # No name breaks inside a word: each name's link is one line high.
    lines = web.execute_script("""
      return Array.from(document.querySelectorAll("#targets td.name a")).map(a =>
        [a.textContent, a.getClientRects().length]);""")
    assert all(n == 1 for _, n in lines), lines
    _shot(web, tmp_path, "status-narrow.png")
    # The scroll position survives three refreshes too (a short window: the page scrolls).
    web.set_window_size(390, 420)
    scrolled = web.execute_script(
        "window.scrollTo(0, 150); return [window.scrollY, document.documentElement.scrollHeight,"
        " window.innerHeight];"
    )
    assert scrolled[0] == 150, scrolled
    _after_polls(web, 3)
    assert web.execute_script("return window.scrollY;") == 150

    light = web.execute_script("return getComputedStyle(document.body).backgroundColor;")
    dark_scheme = {"features": [{"name": "prefers-color-scheme", "value": "dark"}]}
    web.execute_cdp_cmd("Emulation.setEmulatedMedia", dark_scheme)
    dark = web.execute_script("return getComputedStyle(document.body).backgroundColor;")
    assert light == "rgb(255, 255, 255)" and dark == "rgb(21, 23, 26)", (light, dark)
    web.set_window_size(1400, 700)
    _shot(web, tmp_path, "status-dark.png")


def seed(directory: Path, name: str, now: float) -> int:
    """24 hours of one-minute history for `name` (an outage in the middle), its changes and
    attempts, written through the store as the daemon would have. Returns the attempts."""
    store = open_store(directory, 90, lambda *a, **k: None)
    assert store is not None
    start = int(now // 60) - 24 * 60
    total = 0
    for m in range(start, int(now // 60)):
        down = (m - start) // 60 in (6, 7)  # two hours down, 18 h ago
        failures = 6 if down else (1 if m % 97 == 0 else 0)
        counts = [6 - failures, failures, 0, 0, 0]
        latency = 2.0 + (m % 60) / 10
        p50, top = (latency, latency * 3) if failures < 6 else (None, None)
        store.put(Minute(name, m, array("H", counts).tobytes(), 6, failures, p50, top))
        total += 6
    down_at, up_at = (start + 360) * 60.0, (start + 480) * 60.0
    store.put(Change(name, down_at, "up", "down", "ECONNREFUSED", False, down_at))
    store.put(Change(name, up_at, "down", "up", None, True, up_at))
    for k in range(5):
        store.put(Seen(name, now - 100 + k, "open", None, "127.0.0.1", 40000 + k, 2.5, 1.0))
    store.close()
    return total


def test_detail_page_shows_24_hours_that_survive_a_restart(
    tmp_path: Path, browser: Any, targets: dict[str, Any]
) -> None:
    web = browser
    up = targets["held"]["up"]
    seeded = seed(tmp_path / "state", "seeded", time.time())
    text = target_toml("seeded", up.target) + target_toml(EVIL, f"127.0.0.1:{closed_port()}")

    def start(run: int) -> Daemon:
        log = tmp_path / f"log{run}"
        # The page lists the last 20 attempts: the daemon's own, over both runs on a loaded
        # machine, must leave the newest seeded ones among them.
        d = Daemon.start(tmp_path, config_toml(log, text, interval=5.0), log)
        d.wait_event("listening")
        return d

    def day_caption() -> str:
        caption: str = web.find_element("css selector", "#span-1 figcaption").text
        return caption

    for run in (1, 2):
        d = start(run)
        try:
            d.wait_event("restored")
            web.get(f"http://127.0.0.1:{d.port}/target/seeded")
            caption = day_caption()
            got = int(re.search(r"(\d+) attempts", caption).group(1))  # type: ignore[union-attr]
            # The columns keep to quarter hours: the oldest up to 15 minutes fall out of the
            # window; the daemon's own newest minutes add to it.
            assert seeded - 6 * 16 <= got <= seeded + 6 * 20, caption
            assert re.search(r"(\d+) failed", caption).group(1) != "0"  # type: ignore[union-attr]
            cols = web.find_elements("css selector", "#span-1 g.col")
            assert 90 <= len(cols) <= 97, len(cols)  # 96 quarter hours
            assert web.find_elements("css selector", "#span-1 rect.fail")
            changes = web.find_element("css selector", "section[aria-labelledby=chg]").text
            assert "up → down ECONNREFUSED" in changes and "down → up" in changes
            attempts = web.find_element("css selector", "section[aria-labelledby=att]").text
            assert "127.0.0.1:40004" in attempts
            # The page's one scale is written on the axes.
            ticks = {t.text for t in web.find_elements("css selector", "#span-1 text.tick")}
            assert "0 ms" in ticks and any(t.endswith(" ms") and t != "0 ms" for t in ticks)
            # Keyboard: Tab reaches the chart, the arrow keys walk its columns.
            from selenium.webdriver.common.keys import Keys

            chart = web.find_element("css selector", "#span-1 svg.history")
            chart.send_keys(Keys.END)
            last = web.find_element("id", "readout-1").text
            chart.send_keys(Keys.ARROW_LEFT)
            before = web.find_element("id", "readout-1").text
            assert last and before and last != before and "attempts" in before
            if run == 1:
                _shot(web, tmp_path, "target.png")
            # The XSS name is text on its page too.
            web.get(f"http://127.0.0.1:{d.port}/target/{quote(EVIL, safe='')}")
            assert web.find_element("css selector", "h1").text == EVIL
            assert web.find_elements("tag name", "img") == []
            logs = web.get_log("browser")
            assert not [e for e in logs if "Content Security Policy" in e.get("message", "")]
        finally:
            assert d.stop(timeout=10) == 0, d.stderr
