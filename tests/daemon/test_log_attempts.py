"""`[log] attempts` (which records the daemon logs) and `[engine] graceful_close`, from the
config file to what a real daemon writes."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    Daemon,
    RecordingListener,
    closed_port,
    config_toml,
    record,
    target_toml,
)

from probe.daemon.config import parse_config
from probe.daemon.engines import engine_options
from probe.daemon.runner import should_log
from probe.errors import ConfigError


def test_the_keys_are_accepted_and_checked() -> None:
    cfg = parse_config('[log]\nattempts = "changes"\n[engine]\ngraceful_close = true\n')
    assert cfg.log.attempts == "changes"
    assert cfg.engine.graceful_close is True
    assert engine_options(cfg, 10, None).graceful_close is True
    default = parse_config("")
    assert default.log.attempts == "all" and default.engine.graceful_close is False
    assert engine_options(default, 10, None).graceful_close is False
    with pytest.raises(ConfigError, match=r"log\.attempts: .*failures"):
        parse_config('[log]\nattempts = "some"\n')
    with pytest.raises(ConfigError, match=r"engine\.graceful_close: expected true or false"):
        parse_config('[engine]\ngraceful_close = "yes"\n')


def test_should_log() -> None:
    refused = record("refused", "ECONNREFUSED", 0.2, None)
    opened = record("open", None, 0.2, 0.1)
    assert should_log("all", opened, ("open", None))
    assert should_log("failures", refused, ("refused", "ECONNREFUSED"))
    assert not should_log("failures", opened, None)
    assert should_log("changes", refused, None)  # a path's first attempt
    assert not should_log("changes", refused, ("refused", "ECONNREFUSED"))
    assert should_log("changes", opened, ("refused", "ECONNREFUSED"))
    assert should_log("changes", refused, ("refused", "ECONNRESET"))  # another error


@pytest.mark.parametrize("mode", ["failures", "changes"])
def test_a_daemon_logs_fewer_records(
    mode: str, tmp_path: Path, daemons: list[Daemon], listener: RecordingListener
) -> None:
    """An open and a refused target, twenty attempts each: `failures` logs the refused
    ones only, `changes` the first of each; the state events and /metrics see them all."""
    log = tmp_path / "probe.log"
    targets = target_toml("web", listener.target) + target_toml(
        "shut", f"127.0.0.1:{closed_port()}"
    )
    text = config_toml(log, targets, interval=0.05).replace(
        "[log]\n", f'[log]\nattempts = "{mode}"\n'
    )
    d = Daemon.start(tmp_path, text, log)
    daemons.append(d)

    def attempts() -> dict[str, float] | None:
        _, s = d.metrics()
        got = {
            name: sum(v for (m, labels), v in s.items()
                      if m == "probe_attempts_total" and ("target", name) in labels)
            for name in ("web", "shut")
        }  # fmt: skip
        return got if min(got.values()) >= 20 else None

    counted = d.wait("20 attempts of each target", attempts, timeout=20)
    assert counted
    web, shut = d.records("web"), d.records("shut")
    if mode == "failures":
        assert web == [] and len(shut) >= 10
    else:
        assert len(web) == 1 and len(shut) == 1, (web, shut)
    states = {(ev["name"], ev["to"]) for ev in d.events("state")}
    assert states == {("web", "up"), ("shut", "down")}
    assert d.stop() == 0
