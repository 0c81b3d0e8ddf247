"""Fixtures shared by every test. The real-socket helpers behind them are in the package
helpers/ (importable from any test as `helpers`, see pytest's `pythonpath`)."""

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

# The suite runs on five pytest-xdist workers (`-n 5 --dist loadgroup` in pyproject's
# addopts). Tests that look at time (rate, pacing, lag, latency, schedule slots, "promptly")
# or that use a fixed resource are marked `@pytest.mark.serial` (a module: `pytestmark`):
# they run one after another on one worker, so none of them ever shares the machine with
# another of its kind; everything else is independent (free ports, tmp_path, namespaces of
# its own; every iptables rule is inside a namespace the test made). `--strict-markers`
# makes a misspelt mark an error.
#
# Modules whose tests share module-scoped fixtures (a daemon) are marked `module_unit`: one unit
# each (but for their serial tests), so the fixture starts once a run. Split over the workers,
# interleaved with other modules, pytest tore such a fixture down at every change of module
# and started it again.
#
# The scheduler runs in the controller, which collects nothing and sees node ids only: each
# worker writes the scheduling unit of every marked test to a file this process names
# (workers inherit the environment) before it reports its collection, and the scheduler
# reads it.
UNITS_FILE = "PROBE_TEST_UNITS"
if "PYTEST_XDIST_WORKER" not in os.environ:
    _units_dir = tempfile.mkdtemp(prefix="probe-test-units-")
    atexit.register(shutil.rmtree, _units_dir, True)
    os.environ[UNITS_FILE] = os.path.join(_units_dir, "units")


def unit_of(item: pytest.Item) -> str | None:
    """The scheduling unit of a marked test: the serial group, or its module."""
    if item.get_closest_marker("serial"):
        return "serial"
    if item.get_closest_marker("module_unit"):
        return item.nodeid.split("::")[0]
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An xdist_group mark reaches no scheduler (see below): `serial` is the one mark.
    On a worker, hand the marked tests' units to the controller's scheduler."""
    stray = [i.nodeid for i in items if i.get_closest_marker("xdist_group")]
    if stray:
        raise pytest.UsageError(
            "xdist_group groups nothing here; mark the test @pytest.mark.serial: "
            + ", ".join(stray)
        )
    path = os.environ.get(UNITS_FILE)
    if path and hasattr(config, "workerinput"):
        marked = ((unit_of(i), i.nodeid) for i in items)
        lines = "".join(f"{unit}\t{nodeid}\n" for unit, nodeid in marked if unit)
        part = f"{path}.{config.workerinput['workerid']}"
        with open(part, "w") as out:
            out.write(lines)
        os.replace(part, path)  # every worker collects the same tests: the same file


def _units() -> dict[str, str]:
    """node id → unit, for the marked tests (every other test is a unit of its own)."""
    path = os.environ.get(UNITS_FILE)
    if not path or not os.path.exists(path):
        return {}
    with open(path) as lines:
        return {
            nodeid: unit
            for unit, _, nodeid in (ln.partition("\t") for ln in lines.read().splitlines())
        }


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the units above, given to the scheduler by node id.
    (xdist's own xdist_group marks no longer reach it: pytest 9.2 ignores the nodeid suffix
    xdist 3.8 writes, so grouped tests were spread over both workers, pytest-xdist#1386.)
    The serial group goes out first: it is the run's critical path (one worker, one test
    at a time, while the others share the rest). The other units go out longest first by
    the last run's times (.pytest_cache), else largest first; a worker takes the next when
    it has two tests or fewer left."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    last: dict[str, float] = cache.get(DURATIONS, {}) if cache else {}

    class Units(LoadScopeScheduling):  # type: ignore[misc]
        ordered = False
        units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # first called once every worker has collected
                self.units = _units()
            return self.units.get(nodeid, nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            # Longest first, by the last run's durations (none known: xdist's order, the
            # units with most tests first), so a 30 s test does not start last while the
            # other workers have nothing left; the serial group before everything.
            if not self.ordered:
                order = list(self.workqueue.items())
                if last:
                    order.sort(key=lambda u: -sum(last.get(t, 0.0) for t in u[1]))
                order.sort(key=lambda u: u[0] != "serial")  # stable: the rest keep their order
                self.workqueue.clear()
                self.workqueue.update(order)
                self.ordered = True
            super()._assign_work_unit(node)

    return Units(config, log)


# A worker about to run a test outside the serial group gives way on the CPU (nice 10, for
# it and the processes its tests start): the serial group is the run's critical path, and
# mostly waits on timers, sockets and daemons that then get the CPU when they need it.
YIELDING = 10


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if not hasattr(item.config, "workerinput") or item.get_closest_marker("serial"):
        return
    if os.getpriority(os.PRIO_PROCESS, 0) < YIELDING:
        os.setpriority(os.PRIO_PROCESS, 0, YIELDING)  # for good: raising it back takes root


DURATIONS = "probe-suite/durations"
_took: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _took[report.nodeid] = _took.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Each test's time (setup + call + teardown), kept for the next run's order."""
    cache = getattr(session.config, "cache", None)
    if cache is None or hasattr(session.config, "workerinput") or not _took:
        return
    cache.set(DURATIONS, {**cache.get(DURATIONS, {}), **_took})


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
