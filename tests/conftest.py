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

# The suite runs on seven pytest-xdist workers (`-n 7 --dist loadgroup` in pyproject's addopts).
# Tests that look at time (rate, pacing, lag, latency, schedule slots, "promptly") or that use a
# fixed resource run one at a time in a lane of their own kind, so none of them ever shares the
# machine with another of that lane; everything else is independent (free ports, tmp_path,
# namespaces of its own; every iptables rule is inside a namespace the test made). Two lanes,
# side by side, each on one worker:
# - `@pytest.mark.serial` (a module: `pytestmark`): timing with tight margins (rate, pacing,
#   lag, schedule slots, promptness within a second);
# - `@pytest.mark.serial_long`: long windows (a write deadline, an alert's grace, a stalled
#   pipe, a mesh's intervals) whose margins are a second or more, so the other lane's tests
#   (mostly waiting: ~a fifth of a core on average) cannot eat them.
# `--strict-markers` makes a misspelt mark an error; a test marked for both lanes fails.
#
# Modules whose tests share module-scoped fixtures (a daemon) are marked `module_unit`: one unit
# each (but for their serial tests), so the fixture starts once a run. Split over the workers,
# interleaved with other modules, pytest tore such a fixture down at every change of module
# and started it again.
#
# Tests marked `slow` (most of a run's longest, ~8 s or more, mostly waiting) go out first
# among the rest on a fresh checkout, which has no times of an earlier run: a 30 s test that
# starts last, while the other workers have nothing left, is the run's end.
#
# The scheduler runs in the controller, which collects nothing and sees node ids only: each
# worker writes the scheduling unit of every marked test (and whether it is `slow`) to a file
# this process names (workers inherit the environment) before it reports its collection, and
# the scheduler reads it.
UNITS_FILE = "PROBE_TEST_UNITS"
if "PYTEST_XDIST_WORKER" not in os.environ:
    _units_dir = tempfile.mkdtemp(prefix="probe-test-units-")
    atexit.register(shutil.rmtree, _units_dir, True)
    os.environ[UNITS_FILE] = os.path.join(_units_dir, "units")


LANES = ("serial", "serial_long")  # marks whose tests run one at a time, a lane each


def lanes_of(item: pytest.Item) -> list[str]:
    """The serial lanes a test is marked for: one at most (pytest_runtest_setup fails it)."""
    return [lane for lane in LANES if item.get_closest_marker(lane)]


def unit_of(item: pytest.Item) -> str | None:
    """The scheduling unit of a marked test: its serial lane, or its module."""
    lanes = lanes_of(item)
    if lanes:
        return lanes[0]
    if item.get_closest_marker("module_unit"):
        return item.nodeid.split("::")[0]
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """An xdist_group mark reaches no scheduler (see below): the lanes' marks are the way.
    On a worker, hand the marked tests' units to the controller's scheduler."""
    stray = [i.nodeid for i in items if i.get_closest_marker("xdist_group")]
    if stray:
        raise pytest.UsageError(
            "xdist_group groups nothing here; mark the test @pytest.mark.serial: "
            + ", ".join(stray)
        )
    path = os.environ.get(UNITS_FILE)
    if path and hasattr(config, "workerinput"):
        marked = ((unit_of(i), i.nodeid, bool(i.get_closest_marker("slow"))) for i in items)
        lines = "".join(
            f"{unit or nodeid}\t{nodeid}\t{'slow' if slow else ''}\n"
            for unit, nodeid, slow in marked
            if unit or slow
        )
        part = f"{path}.{config.workerinput['workerid']}"
        with open(part, "w") as out:
            out.write(lines)
        os.replace(part, path)  # every worker collects the same tests: the same file


def _units() -> tuple[dict[str, str], frozenset[str]]:
    """node id → unit, for the marked tests (every other test is a unit of its own); and the
    node ids of the `slow` ones."""
    path = os.environ.get(UNITS_FILE)
    if not path or not os.path.exists(path):
        return {}, frozenset()
    with open(path) as lines:
        rows = [ln.split("\t") for ln in lines.read().splitlines()]
    return {nodeid: unit for unit, nodeid, _ in rows}, frozenset(n for _, n, slow in rows if slow)


SLOW = 10.0  # seconds a `slow` test counts for when no earlier run timed it


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup` with the units above, given to the scheduler by node id.
    (xdist's own xdist_group marks no longer reach it: pytest 9.2 ignores the nodeid suffix
    xdist 3.8 writes, so grouped tests were spread over both workers, pytest-xdist#1386.)
    The serial lanes go out first: they are the run's critical path (a worker each, one
    test at a time, while the others share the rest). The other units go out longest first by
    the last run's times (.pytest_cache; a `slow` test not timed yet counts SLOW), else
    largest first; a worker takes the next when it has two tests or fewer left."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    cache = getattr(config, "cache", None)  # None with -p no:cacheprovider
    last: dict[str, float] = cache.get(DURATIONS, {}) if cache else {}

    class Units(LoadScopeScheduling):  # type: ignore[misc]
        ordered = False
        units: dict[str, str] | None = None
        slow: frozenset[str] = frozenset()

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # first called once every worker has collected
                self.units, self.slow = _units()
            return self.units.get(nodeid, nodeid)

        def _weight(self, tests: dict[str, bool]) -> float:
            return sum(last.get(t, SLOW if t in self.slow else 0.0) for t in tests)

        def _assign_work_unit(self, node: Any) -> None:
            # Longest first, by the last run's durations and the `slow` marks (none known:
            # xdist's order, the units with most tests first), so a 30 s test does not start
            # last while the other workers have nothing left; the serial lanes before all.
            if not self.ordered:
                order = list(self.workqueue.items())
                order.sort(key=lambda u: -self._weight(u[1]))  # stable: ties keep their order
                order.sort(key=lambda u: u[0] not in LANES)
                self.workqueue.clear()
                self.workqueue.update(order)
                self.ordered = True
            super()._assign_work_unit(node)

    return Units(config, log)


# A worker about to run a test outside the serial lanes gives way on the CPU (nice 10, for
# it and the processes its tests start): the lanes are the run's critical path, and mostly
# wait on timers, sockets and daemons that then get the CPU when they need it.
YIELDING = 10


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A test marked for both lanes fails here, by name (an error raised while a worker
    # collects reaches the controller as an internal error that names no reason).
    lanes = lanes_of(item)
    if len(lanes) > 1:
        pytest.fail(f"marked for two lanes ({', '.join(lanes)}): one at most", pytrace=False)
    if not hasattr(item.config, "workerinput") or lanes:
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
