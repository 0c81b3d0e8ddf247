"""A one-shot run of one share of a plan: on the native core when it can serve the share
exactly, on the Python engine (`engine_run`, asyncio) otherwise.

`run_share(plan, index, count, sinks)` runs one share of a plan in this process and returns
its typed result; one process is the case count = 1, a worker process one of count. The
engine's runner and the native core's human reader are imported only by the runs that use
them: a one-shot check of literal endpoints starts without asyncio.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..engine import native
from ..errors import LocalShortage, SinkClosed, SinkError
from .choice import choose
from .plan import Plan
from .result import ShareResult, Tally
from .share import Progress, share_options
from .sinks import Sinks

if TYPE_CHECKING:
    from ..output.writer import RecordWriter
    from .native_lines import HumanReader

NATIVE_MAX_TARGETS = 4096  # more addresses than this (a long file) stay on the Python engine


def run_share(
    plan: Plan, index: int, count: int, sinks: Sinks, progress: Progress | None = None
) -> ShareResult:
    """Run share `index` of `count` of the plan on an event loop of its own; records go to
    `sinks` as attempts finish. Errors and signals end up in the result, never raised."""
    choice = choose(plan, NATIVE_MAX_TARGETS)
    if choice.targets is not None:
        return _native_share(plan, index, count, sinks, choice.targets, progress)
    from .engine_run import run_engine_share  # asyncio, uvloop: only when the engine runs

    sinks.ready()
    return run_engine_share(plan, index, count, sinks, progress)


# -- the native core -------------------------------------------------------------------------


def _native_share(
    plan: Plan,
    index: int,
    count: int,
    sinks: Sinks,
    targets: list[native.NativeTarget],
    progress: Progress | None,
) -> ShareResult:
    """The whole share on the native core: JSON records straight to stdout's descriptor, or,
    for human output, through a pipe to a thread that tallies every record and renders the
    ones shown (the same lines and summary as the Python engine's)."""
    result = ShareResult()

    def on_signal(signum: int) -> None:
        result.stopped_by = result.stopped_by or signum

    human = plan.output.format == "human"
    reader: HumanReader | None = None
    started = time.monotonic()
    try:
        sinks.flush()
        if human:
            from .native_lines import HumanReader  # msgspec decoding: human output only

            listed = plan.output.list_mode
            tally = Tally(result, repeat=False, track_ports=not listed)
            reader = HumanReader(sinks, tally, every_line=listed)
        fd = sinks.out.fileno() if reader is None else reader.write_fd
        with native.stop_on_signals(on_signal) as stop_fd:
            done = native.sweep(
                fd, targets, share_options(plan, index, count), (index, count), stop_fd, progress
            )
    except (SinkClosed, BrokenPipeError, OSError) as exc:
        failure = reader.finish() if reader is not None else None
        result.error = failure or _write_failure(exc, sinks.out)
        return result
    failure = reader.finish() if reader is not None else None
    result.elapsed = time.monotonic() - started
    if reader is None:
        result.outcomes.update(done.outcomes)
    result.seen = result.targets = done.targets
    result.targets_without_open = done.targets_without_open
    if failure is not None:
        result.error = failure
    elif done.error:
        result.error = LocalShortage(done.error)
    lag = done.lag
    result.lag_p99_ms, result.lag_max_ms = lag.quantile_ms(0.99), lag.max_ms
    result.lag_samples = lag.samples
    return result


def _write_failure(exc: BaseException, out: RecordWriter) -> SinkError:
    """The core's write failed: the writer's own error (a regular file is cut back to whole
    lines, as the engine's writes are)."""
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, OSError):
        return out.failure(exc)
    return SinkError(f"cannot write records to {out.name}: {exc}")
