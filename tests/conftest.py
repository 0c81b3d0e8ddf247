"""Fixtures shared by every test. The real-socket helpers behind them are in helpers.py
(importable from any test as `helpers`, see pytest's `pythonpath`)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import (
    Daemon,
    FullQueueListener,
    Netns,
    RecordingListener,
    can_netns,
    has_ipv6_loopback,
)
from hypothesis import settings

# Cached bytecode for the tests' own processes: with PYTHONDONTWRITEBYTECODE set (as on this
# machine) every `probe` subprocess (~500 a run) compiled the package from source again and
# each xdist worker re-rewrote every test module's asserts (~3 s of CPU each). The caches are
# .gitignored; the workers and every subprocess inherit this environment.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# A daemon started by a test keeps its durable store under a directory of this run, never in
# the user's ~/.local/state (helpers.Daemon gives each one its own test directory).
if "STATE_DIRECTORY" not in os.environ and "XDG_STATE_HOME" not in os.environ:
    os.environ["XDG_STATE_HOME"] = _state = tempfile.mkdtemp(prefix="probe-test-state-")
    atexit.register(shutil.rmtree, _state, True)  # the workers inherit it; this process ends last

# CI explores the same examples every run, so a red build always reproduces; locally,
# hypothesis keeps searching new ones. No per-example deadline: it is a timing assertion
# (200 ms) that a loaded 2-core machine fails now and then (424 ms seen with 4 workers and a
# second session beside them); the properties are what these tests check.
settings.register_profile("probe", deadline=None)
settings.register_profile("ci", parent=settings.get_profile("probe"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "probe")

# The suite runs on three pytest-xdist workers (`-n 3 --dist loadgroup` in pyproject's
# addopts). Tests that look at time (rate, pacing, lag, latency, schedule slots, "promptly")
# or that use a fixed resource share one group: they run one after another on one worker, so
# none of them ever shares the machine with another of its kind; everything else is
# independent (free ports, tmp_path, namespaces of its own; every iptables rule is inside a
# namespace the test made). Whole modules here, or "module::test" for single tests.
SERIAL = {
    "tests/check/test_rate.py",
    "tests/daemon/test_hostile.py",
    "tests/serve/test_serve_hostile.py",
    "tests/mesh/test_mesh_netns.py",
    "tests/mesh/test_daemon_serve.py::test_a_hostile_client_leaves_the_schedule_alone",
    "tests/daemon/test_resilience.py",
    "tests/daemon/test_prometheus.py",
    "tests/daemon/test_daemon.py::test_fixed_rate_schedule_without_drift",
    "tests/daemon/test_daemon.py::test_about_ten_attempts_in_two_seconds",
    # the other readers of the module-scoped daemon those two time: it starts once, here
    "tests/daemon/test_daemon.py::test_every_log_line_is_json_and_records_have_the_contract_keys",
    "tests/daemon/test_daemon.py::test_open_records_local_endpoint_is_what_the_listener_saw",
    "tests/daemon/test_daemon.py::test_refused_records_have_a_local_port",
    "tests/daemon/test_daemon.py::test_state_events",
    "tests/daemon/test_daemon.py::test_metrics_endpoint",
    "tests/daemon/test_daemon.py::test_healthz",
    "tests/daemon/test_daemon.py::test_probe_open_target",
    "tests/daemon/test_daemon.py::test_probe_closed_target",
    "tests/daemon/test_daemon.py::test_probe_bad_target_is_400",
    "tests/daemon/test_daemon.py::test_probe_outside_allow_is_403_and_connects_nowhere",
    "tests/daemon/test_daemon.py::test_probe_localhost_resolves_inside_allow",
    "tests/daemon/test_daemon.py::test_reload_changing_the_interval_replaces_the_schedule",
    "tests/daemon/test_daemon.py::test_the_shipped_config_runs",  # 127.0.0.1:9464
    "tests/daemon/test_metrics.py::test_probe_timeout_is_the_smaller_of_query_and_scrape_header",
    "tests/daemon/test_schedule.py::test_10k_jobs_pop_at_most_a_few_per_millisecond",
    "tests/engine/test_engine.py::test_rate_paces_attempts",
    "tests/engine/test_engine.py::test_rate_is_at_most_n_in_any_second",
    "tests/engine/test_engine.py::test_rate_is_delivered_above_the_timer_resolution",
    "tests/engine/test_engine.py::test_per_attempt_timeouts_expire_in_deadline_order",
    "tests/engine/test_engine.py::test_loop_lag_holds_concurrency_down",
    "tests/engine/test_native.py::test_rate_is_never_exceeded",
    "tests/engine/test_native.py::test_stop_fd_ends_a_sweep_of_timeouts_promptly",
    "tests/engine/test_native.py::test_signal_stops_probe_check_promptly",
    "tests/check/test_cli.py::test_human_repeat_summary",
    "tests/check/test_plan.py::test_rate_is_shared_and_interleaved",
    "tests/test_faults.py::test_daemon_sockets_stay_within_concurrency_then_sigterm_drains",
    "tests/test_failure_table.py::test_a_failed_re_resolution_keeps_the_last_good_address",
    "tests/test_failure_table.py::test_a_stall_skips_slots_and_does_not_make_them_up",
}


# Modules with a module-scoped daemon: one unit each (but for their SERIAL tests), so the
# daemon starts once a run. Split over both workers, interleaved with other modules, pytest
# tore such a fixture down at every change of module and started it again.
ONE_UNIT = {
    "tests/daemon/test_metrics.py",
    "tests/deploy/test_deploy.py",
    "tests/test_fuzz.py",
}


def is_serial(nodeid: str) -> bool:
    if nodeid.rfind("@") > nodeid.rfind("]"):  # an older pytest: xdist's group suffix
        nodeid = nodeid[: nodeid.rfind("@")]
    return nodeid.split("::")[0] in SERIAL or nodeid.split("[")[0] in SERIAL


def unit(nodeid: str) -> str:
    """The scheduling unit of a test: the serial group, its module, or itself."""
    if is_serial(nodeid):
        return "serial"
    module = nodeid.split("::")[0]
    return module if module in ONE_UNIT else nodeid


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """An xdist_group mark alone groups nothing (see below): SERIAL is the one list."""
    stray = [
        i.nodeid for i in items if i.get_closest_marker("xdist_group") and not is_serial(i.nodeid)
    ]
    if stray:
        raise pytest.UsageError(
            "marked xdist_group but missing from SERIAL in tests/conftest.py, the list the "
            "scheduler reads: " + ", ".join(stray)
        )


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the units above, given to the scheduler by node id.
    (xdist_group marks no longer reach it: pytest 9.2 ignores the nodeid suffix xdist 3.8
    writes, so grouped tests were spread over both workers, pytest-xdist#1386.) Units go out
    longest first by the last run's times (.pytest_cache), else largest first; a worker takes
    the next when it has two tests or fewer left."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    last: dict[str, float] = config.cache.get(DURATIONS, {}) if config.cache else {}

    class Units(LoadScopeScheduling):  # type: ignore[misc]
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return unit(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # Longest first, by the last run's durations (none known: collection order), so
            # a 30 s test does not start last while the other worker has nothing left.
            if not self.ordered and last:
                order = sorted(
                    self.workqueue.items(), key=lambda u: -sum(last.get(t, 0.0) for t in u[1])
                )
                self.workqueue.clear()
                self.workqueue.update(order)
                self.ordered = True
            super()._assign_work_unit(node)

    return Units(config, log)


DURATIONS = "probe-suite/durations"
_took: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _took[report.nodeid] = _took.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each test's time (setup + call + teardown), kept for the next run's order."""
    config = session.config
    if config.cache is None or hasattr(config, "workerinput") or not _took:
        return
    config.cache.set(DURATIONS, {**config.cache.get(DURATIONS, {}), **_took})


def _listening(host: str) -> Iterator[RecordingListener]:
    lst = RecordingListener(host)
    yield lst
    lst.close()


@pytest.fixture(autouse=True)
def _own_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Each test's daemons start from an empty default store: a target restored from another
    test's run (a name like "web" is common) would start with that test's state."""
    if "STATE_DIRECTORY" not in os.environ:
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state-home")))


@pytest.fixture
def listener() -> Iterator[RecordingListener]:
    yield from _listening("127.0.0.1")


@pytest.fixture
def listener6() -> Iterator[RecordingListener]:
    if not has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    yield from _listening("::1")


@pytest.fixture
def full_queue() -> Iterator[FullQueueListener]:
    lst = FullQueueListener()
    yield lst
    lst.close()


@pytest.fixture
def netns() -> Iterator[Netns]:
    reason = can_netns()
    if reason:
        pytest.skip(reason)
    ns = Netns()
    yield ns
    ns.delete()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test started; any still running at the end are killed (by their pid)."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill()
