"""One share of a plan: on the native core when it can serve the share exactly, on the
Python engine (`engine_run.run_on_python`, asyncio) otherwise.

`run_share(plan, index, count, sinks)` runs one share of a plan in this process and returns
its typed result; one process is the case count = 1, a worker process one of count. The
engine's runner and the native core's human reader are imported only by the runs that use
them: a one-shot check of literal endpoints starts without asyncio.
"""

from __future__ import annotations

import errno
import time
from typing import TYPE_CHECKING

from ..engine import native
from ..errors import (
    EXIT_SIGNAL_BASE,
    LocalShortage,
    ProbeError,
    SinkClosed,
    SinkError,
    TargetError,
)
from .choice import choose
from .plan import Plan
from .result import ShareResult, Tally
from .share import Progress, share_options
from .sinks import Sinks

if TYPE_CHECKING:
    from ..output.writer import RecordWriter
    from .native_lines import HumanReader


def run_share(
    plan: Plan, index: int, count: int, sinks: Sinks, progress: Progress | None = None
) -> ShareResult:
    """Run share `index` of `count` of the plan on an event loop of its own; records go to
    `sinks` as attempts finish. Errors and signals end up in the result, never raised."""
    if choose(plan).core == "native":
        return _run_on_native(plan, index, count, sinks, progress)
    from .engine_run import run_on_python  # asyncio, uvloop: only when the engine runs

    sinks.ready()
    return run_on_python(plan, index, count, sinks, progress)


# -- the native core -------------------------------------------------------------------------


def _run_on_native(
    plan: Plan, index: int, count: int, sinks: Sinks, progress: Progress | None
) -> ShareResult:
    """The whole share on the native core, its targets fed in as it runs: JSON records
    straight to stdout's descriptor (and -o FILE's), or, for human output, through a pipe
    to a thread that tallies every record and renders the ones shown (the same lines and
    summary as the Python engine's)."""
    from .native_feed import Feed, exclusion_spans

    result = ShareResult()

    def on_signal(signum: int) -> None:
        result.stopped_by = result.stopped_by or signum

    output = plan.output
    human = output.format == "human"
    reader: HumanReader | None = None
    feed = Feed(plan, index, count)
    started = time.monotonic()
    try:
        sinks.flush()
        with native.stop_on_signals(on_signal) as stop_fd:
            if human:
                from .native_lines import HumanReader  # msgspec decoding: human output only

                listed = output.list_mode
                tally = Tally(result, repeat=False, track_ports=not listed)
                # every record reaches the reader, for the tally; it shows (and --open keeps)
                # what the Python engine would, on stdout only: -o FILE is written by the core
                lines = Sinks(output, sinks.out, None, sinks.before_stdout)
                reader = HumanReader(lines, tally, every_line=listed, stop_fd=stop_fd)
                progress = reader.beside(progress)
            fd = sinks.out.fileno() if reader is None else reader.write_fd
            file_fd = -1 if sinks.json_out is None else sinks.json_out.fileno()
            done = native.sweep(
                fd,
                feed,
                share_options(plan, index, count),
                (index, count),
                stop_fd,
                progress,
                wake_fd=feed.wake_fd,
                file_fd=file_fd,
                open_only=(output.open_only and not human, output.open_only),
                exclude=exclusion_spans(plan.exclude),
                csv=output.format == "csv",
            )
    except (SinkClosed, BrokenPipeError, OSError) as exc:
        failure = reader.finish() if reader is not None else None
        result.error = failure or _write_failure(exc, sinks.out)
        if result.stopped_by and isinstance(exc, OSError) and exc.errno == errno.EAGAIN:
            # a stopped run whose reader did not take the rest: the signal's status, as the
            # Python engine's writer gives after its drain (the message still says it)
            result.error.exit_code = EXIT_SIGNAL_BASE + result.stopped_by
        return result
    finally:
        feed.close()
    failure = reader.finish() if reader is not None else None
    result.elapsed = time.monotonic() - started
    if reader is None:
        result.outcomes.update(done.outcomes)
    result.targets = done.targets
    # every worker's feed drops the shared targets' endpoints; its own lines' only it
    result.seen = done.seen + feed.dropped_own + (feed.dropped if index == 0 else 0)
    result.excluded = done.excluded
    result.targets_without_open = done.targets_without_open
    if failure is not None:
        result.error = failure
    elif feed.error is not None:
        result.error = _input_failure(feed.error)
    elif done.error:
        result.error = LocalShortage(done.error)
    result.note_lag(done.lag)
    return result


def _input_failure(exc: BaseException) -> ProbeError:
    """A bad line of a file or of standard input ended the feed: the run's error."""
    if isinstance(exc, ProbeError):
        return exc
    if isinstance(exc, OSError):
        return TargetError(f"cannot read targets: {exc.strerror or exc}")
    raise exc


def _write_failure(exc: BaseException, out: RecordWriter) -> SinkError:
    """The core's write failed: the writer's own error (a regular file is cut back to whole
    lines, as the engine's writes are)."""
    if isinstance(exc, SinkError):
        return exc
    if isinstance(exc, OSError):
        return out.failure(exc)
    return SinkError(f"cannot write records to {out.name}: {exc}")
