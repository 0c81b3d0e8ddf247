"""The daemon's parts keep their shape: `app.py` wires and runs (no aiohttp, every attribute
made in `__init__`, the engine reconfigured through its method), `/probe`'s query is parsed
in one place, and a reload's new timeout reaches new attempts.
"""

from __future__ import annotations

import ast
import signal
from pathlib import Path

import pytest
from helpers import (
    ROOT,
    Daemon,
    FullQueueListener,
    config_toml,
    http_get,
    start_in,
    target_toml,
)


def test_parse_probe_request() -> None:
    from probe.daemon.http import Answer, ProbeRequest, parse_probe

    got = parse_probe(
        {"target": "127.0.0.1:80", "timeout": "2.5", "debug": "true"},
        {"X-Prometheus-Scrape-Timeout-Seconds": "4"},
    )
    assert got == ProbeRequest("127.0.0.1:80", 2.5, True, 4.0)
    assert parse_probe({"target": "a:1"}, {}) == ProbeRequest("a:1")
    for query in (
        {},
        {"target": ""},
        {"target": "a:1", "timeout": "x"},
        {"target": "a:1", "timeout": "31"},
    ):
        bad = parse_probe(query, {})
        assert isinstance(bad, Answer) and bad.status == 400, query


def _daemon_class() -> ast.ClassDef:
    tree = ast.parse((ROOT / "probe" / "daemon" / "app.py").read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Daemon")


def test_app_does_not_import_aiohttp() -> None:
    tree = ast.parse((ROOT / "probe" / "daemon" / "app.py").read_text())
    imported = [
        alias.name if isinstance(node, ast.Import) else node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    ]
    assert not [name for name in imported if name.startswith("aiohttp")]


def test_every_daemon_attribute_is_created_in_init() -> None:
    created: set[str] = set()
    assigned: dict[str, set[str]] = {}
    for method in _daemon_class().body:
        if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(method):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign | ast.AugAssign)
                else []
            )
            for target in targets:
                for t in ast.walk(target):
                    if (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        if method.name == "__init__":
                            created.add(t.attr)
                        else:
                            assigned.setdefault(method.name, set()).add(t.attr)
    outside = {m: attrs - created for m, attrs in assigned.items() if attrs - created}
    assert outside == {}


def test_reload_reconfigures_the_engine_through_its_method() -> None:
    source = ast.unparse(_daemon_class())
    assert ".options = " not in source
    assert "reconfigure(" in source


@pytest.mark.serial
def test_reload_timeout_change_reaches_new_attempts(
    tmp_path: Path, daemons: list[Daemon], full_queue: FullQueueListener
) -> None:
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("t", full_queue.target), timeout=0.2, interval=1.0)
    d = start_in(tmp_path, text, log, daemons)
    d.wait_records("t", 1)
    port = d.port
    d.rewrite(config_toml(log, target_toml("t", full_queue.target), timeout=0.6, interval=1.0))
    d.send(signal.SIGHUP)
    d.wait_event("reload", result="ok")
    status, _, _ = http_get(port, f"/probe?target={full_queue.target}")  # the default timeout
    assert status == 200
    recs = d.wait_records(full_queue.target, 1)  # the /probe record, named by its target
    assert 550 <= recs[-1]["latency_ms"] < 1500
    assert d.stop(timeout=5) == 0
