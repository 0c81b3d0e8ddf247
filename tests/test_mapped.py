"""An IPv4-mapped IPv6 address has one text everywhere, the dotted one the kernel writes for
the local end (`::ffff:127.0.0.1`): in records, human lines and metric labels, on both
sweep cores and in the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import (
    Daemon,
    RecordingListener,
    config_toml,
    parse_records,
    run_probe,
    target_toml,
    with_label,
)

MAPPED = "::ffff:127.0.0.1"


@pytest.mark.parametrize("core", ["default", "python"])
def test_records_and_lines_write_the_mapped_address_dotted(
    listener: RecordingListener, core: str
) -> None:
    target = f"[{MAPPED}]:{listener.port}"
    # an exclusion that excludes nothing keeps the sweep on the Python engine
    extra = ["--exclude", "127.0.0.99"] if core == "python" else []
    proc = run_probe("check", target, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    (rec,) = parse_records(proc.stdout)
    assert (rec["address"], rec["local_address"]) == (MAPPED, MAPPED), rec
    human = run_probe("check", target, *extra)
    assert human.returncode == 0, human.stderr
    assert MAPPED in human.stdout and "7f00" not in human.stdout, human.stdout


def test_metric_labels_write_the_mapped_address_dotted(
    listener: RecordingListener, tmp_path: Path, daemons: list[Daemon]
) -> None:
    log = tmp_path / "probe.log"
    text = config_toml(log, target_toml("m", f"[{MAPPED}]:{listener.port}", addresses="all"))
    d = Daemon.start(tmp_path, text, log)
    daemons.append(d)
    d.wait_records("m", 1)
    _, samples = d.metrics()
    labels = with_label(samples, "probe_path_up", "target", "m")
    assert labels, samples
    assert {dict(k)["address"] for k in labels} == {MAPPED}
