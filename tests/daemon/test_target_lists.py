"""Target lists outside the config: `targets_file` and `include`, read a line at a time with
per-line caps, checked like [[targets]] tables, reloaded on SIGHUP."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from helpers import Daemon, closed_port, config_toml, run_probe, target_toml

from probe.daemon import fleet
from probe.daemon.config import load_config
from probe.daemon.target_lists import MAX_LINE
from probe.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_list_and_globs_relative_to_the_config(tmp_path: Path) -> None:
    config = write(
        tmp_path / "etc" / "config.toml",
        'targets_file = "main.list"\ninclude = ["conf.d/*.list", "none/*.list"]\n'
        '[defaults]\ninterval = 5.0\n[[targets]]\naddress = "127.0.0.1:1"\nname = "inline"\n',
    )
    write(
        tmp_path / "etc" / "main.list",
        "# addresses alone, or JSON objects with the keys of a [[targets]] table\n"
        "127.0.0.1:80\n\n"
        + json.dumps(
            {"address": "127.0.0.1:81", "name": "db", "labels": {"team": "data"}, "interval": 2}
        )
        + "\n",
    )
    write(tmp_path / "etc" / "conf.d" / "b.list", "127.0.0.3:80\n")
    write(tmp_path / "etc" / "conf.d" / "a.list", "127.0.0.2:80\n")
    cfg = load_config(config)
    got = [(t.name, t.interval, dict(t.labels)) for t in cfg.targets]
    assert got == [
        ("inline", 5.0, {}),
        ("127.0.0.1:80", 5.0, {}),
        ("db", 2.0, {"team": "data"}),
        ("127.0.0.2:80", 5.0, {}),  # a glob's matches in sorted order
        ("127.0.0.3:80", 5.0, {}),
    ]


@pytest.mark.parametrize(
    ("line", "where", "problem"),
    [
        ('{"address": "127.0.0.1:80", "intervl": 3}', "line 2.intervl", "unknown key"),
        ('{"address": "127.0.0.1:80", "interval": 0}', "line 2.interval", ">= 0.001"),
        ('{"name": "x"}', "line 2.address", "required key is missing"),
        ('{"address": "127.0.0.1:80"', "line 2", "not a JSON object"),
        ("127.0.0.1:80 127.0.0.1:81", "line 2", "one target a line"),
        ("127.0.0.1:99999", "line 2.address", "port"),
        ("127.0.0.1:1", "line 2.name", 'duplicate target name "127.0.0.1:1"'),
    ],
)
def test_a_bad_line_is_named_by_file_and_line(
    tmp_path: Path, line: str, where: str, problem: str
) -> None:
    config = write(tmp_path / "config.toml", 'targets_file = "t.list"\n')
    write(tmp_path / "t.list", f"127.0.0.1:1\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert str(caught.value).startswith(f"{tmp_path / 't.list'}: {where}: "), str(caught.value)
    assert problem in str(caught.value)


def test_caps_are_per_line_not_per_list(tmp_path: Path) -> None:
    """A list far past the config's 1 MiB loads; one line past MAX_LINE does not, nor a
    line that is not UTF-8."""
    config = write(tmp_path / "config.toml", 'targets_file = "t.list"\n')
    lines = [f"127.0.{i // 250}.{i % 250 + 1}:{1000 + i % 7}" for i in range(60_000)]
    big = write(tmp_path / "t.list", "\n".join(lines) + "\n")
    assert big.stat().st_size > 1 << 20
    assert len(load_config(config).targets) == 60_000
    long_name = json.dumps({"address": "127.0.0.1:80", "name": "x" * MAX_LINE})
    write(tmp_path / "t.list", "127.0.0.1:81\n" + long_name + "\n")
    with pytest.raises(ConfigError, match=rf"t\.list: line 2: longer than {MAX_LINE} bytes"):
        load_config(config)
    (tmp_path / "t.list").write_bytes(b"127.0.0.1:81\n\xff\xfe:80\n")
    with pytest.raises(ConfigError, match=r"line 2: not valid UTF-8"):
        load_config(config)


def test_a_fifo_or_a_missing_list_is_refused_without_hanging(tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", 'targets_file = "t.list"\n')
    with pytest.raises(ConfigError, match=r"t\.list: cannot read: No such file"):
        load_config(config)
    os.mkfifo(tmp_path / "t.list")
    done: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(config, done), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading a FIFO hung"
    assert "not a regular file" in str(done[0])


def _catch(config: Path, into: list[BaseException]) -> None:
    try:
        load_config(config)
    except ConfigError as exc:
        into.append(exc)


def test_validate_counts_listed_targets_and_names_a_bad_line(tmp_path: Path) -> None:
    config = write(tmp_path / "config.toml", 'targets_file = "t.list"\n')
    write(tmp_path / "t.list", "127.0.0.1:80\n127.0.0.1:81\n")
    done = run_probe("validate", str(config))
    assert done.returncode == 0 and "2 targets" in done.stdout, done
    write(tmp_path / "t.list", "127.0.0.1:80\n{]\n")
    done = run_probe("validate", str(config))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done
    assert "t.list: line 2: not a JSON object" in done.stderr


def test_sighup_reads_the_lists_again(tmp_path: Path, daemons: list[Daemon]) -> None:
    log = tmp_path / "probe.log"
    listed = write(tmp_path / "t.list", f"127.0.0.1:{closed_port()}\n")
    text = 'targets_file = "t.list"\n' + config_toml(
        log, target_toml("inline", f"127.0.0.1:{closed_port()}"), interval=0.1
    )
    d = Daemon.start(tmp_path, text, log)
    daemons.append(d)
    assert d.wait_event("started")["targets"] == 2
    added = f"127.0.0.1:{closed_port()}"
    listed.write_text(listed.read_text() + json.dumps({"address": added, "name": "new"}) + "\n")
    d.send(signal.SIGHUP)
    reload = d.wait_event("reload", result="ok")
    assert (reload["added"], reload["kept"]) == (1, 2), reload
    d.wait_records("new", 2)
    listed.write_text("{not json\n")
    d.send(signal.SIGHUP)
    failed = d.wait_event("reload", result="failed")
    assert "t.list: line 1: not a JSON object" in failed["error"]
    assert d.stop() == 0


def test_a_shard_builds_only_its_share_and_checks_every_line(tmp_path: Path) -> None:
    """Given the shard (--shard, PROBE_SHARD or [cluster] shard), the listed targets of
    other shards are checked and their names counted, not built; inline ones all stay."""
    config = write(tmp_path / "config.toml", 'targets_file = "t.list"\n')
    names = [f"t{i}" for i in range(300)]
    lines = [
        json.dumps({"address": f"127.0.0.1:{1000 + i}", "name": n}) for i, n in enumerate(names)
    ]
    write(tmp_path / "t.list", "\n".join(lines) + "\n")
    shard = fleet.parse_shard("1/3")
    mine = [t.name for t in load_config(config, fleet.owner(shard)).targets]
    assert mine == [n for n in names if shard.owns(n)] and 50 < len(mine) < 150
    config.write_text('targets_file = "t.list"\n[cluster]\nshard = "1/3"\n')
    assert [t.name for t in load_config(config).targets] == mine
    # a bad line or a duplicate in another shard's share still stops this one
    other = next(n for n in names if not shard.owns(n))
    write(
        tmp_path / "t.list",
        "\n".join([*lines, json.dumps({"address": "127.0.0.1:1", "name": other})]),
    )
    with pytest.raises(ConfigError, match=rf'line 301.name: duplicate target name "{other}"'):
        load_config(config, fleet.owner(shard))
    write(
        tmp_path / "t.list",
        "\n".join([*lines, json.dumps({"address": "127.0.0.1:99999", "name": other + "x"})]),
    )
    with pytest.raises(ConfigError, match=r"line 301.address"):
        load_config(config, fleet.owner(shard))
