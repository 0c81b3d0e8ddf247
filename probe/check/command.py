"""`probe check`: run a plan's shares in this process or in N workers (the same code), merge
their typed results, write the summary, pick the exit code.

`check` → one share here, or `workers.run_workers` forking one per share → `run.run_share`
(one share, on the core `choice` picks) → the native core or `engine_run.run_on_python`.

Exit status: 0 every target had an open attempt; 1 some target had none; 2 bad usage or
input; 128 + signal when SIGINT/SIGTERM stopped the run; 141 when standard output's reader
left. An endpoint whose every address is excluded is not a target: it is never probed, it
does not count for the exit status, and the summary counts it as excluded; a run whose
every endpoint is excluded is a usage error (exit 2), so an exclusion list that swallows
the input is never mistaken for success.
"""

from __future__ import annotations

import os
import time

from ..errors import (
    EXIT_NO_OPEN,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_SIGNAL_BASE,
    EXIT_USAGE,
    SinkClosed,
    SinkError,
    report,
)
from ..output.writer import OUTPUT_DRAIN, RecordWriter, stdout_writer
from ..words import plural
from .plan import Plan
from .progress import ProgressLine
from .report import interrupted_line, summary
from .result import ShareResult
from .run import run_share
from .settle import settle
from .share import Progress
from .sinks import Sinks, csv_rows

RATE_START = 0.25  # seconds from now to --rate's first slot, when workers share it


def check(plan: Plan) -> int:
    """Run the plan as this machine allows it; the exit code."""
    plan = settle(plan)
    out = stdout_writer(stall=False)  # a slow reader holds the run, never loses records
    json_out = _json_file(plan)
    output = plan.output
    bar = ProgressLine(enabled=output.format == "human" and not output.list_mode)
    if output.verbose:
        from .choice import choose

        report(choose(plan).line(), prefix="")
    if plan.workers > 1:
        # Every share paces on one grid from here; ahead, so workers just forked (late, on a
        # busy machine) are ready for their first slot instead of skipping it.
        plan = plan.replace(rate_epoch=time.monotonic() + RATE_START)
    total = ShareResult()
    try:
        stages = plan.stages is not None
        if output.format == "csv":
            out.write_lines(csv_rows(stages).header())
        if plan.workers == 1:
            sinks = Sinks(output, out, json_out, bar.before_stdout, stages)
            total = run_share(plan, 0, 1, sinks, bar.update)
        else:
            outs = [out] if json_out is None else [out, json_out]

            def body(
                index: int, count: int, writers: list[RecordWriter], progress: Progress
            ) -> ShareResult:
                file_out = writers[1] if len(writers) > 1 else None
                sinks = Sinks(output, writers[0], file_out, stages=stages)
                return run_share(plan, index, count, sinks, progress)

            from .workers import run_workers  # worker processes: only a run that forks them

            total = run_workers(plan.workers, body, outs, bar.update, bar.before_stdout)
    except SinkError as exc:  # the CSV header could not be written
        total.error = exc
    finally:
        bar.erase()
    return _finish(plan, total, out, json_out)


def _json_file(plan: Plan) -> RecordWriter | None:
    path = plan.output.json_file
    if path is None:
        return None
    try:
        return RecordWriter(open(path, "wb", buffering=1 << 16), path)
    except OSError as exc:
        raise SinkError(f"-o {path}: cannot open: {exc.strerror}") from None


def _finish(
    plan: Plan, total: ShareResult, out: RecordWriter, json_out: RecordWriter | None
) -> int:
    """The summary (human output, no error), flushed outputs, one error line, the exit code."""
    error = total.error
    message: str | None = None
    code = EXIT_OK
    if isinstance(error, SinkClosed):
        return _quiet_pipe()
    if error is not None:
        message, code = str(error), error.exit_code
    elif total.workers_died:
        worker = plural(total.workers_died, "worker process", "worker processes")
        message = f"{worker} died without a result"
        code = EXIT_USAGE
    elif total.stopped_by:
        code = EXIT_SIGNAL_BASE + total.stopped_by
    elif total.seen == 0:
        message, code = "no targets in the input", EXIT_USAGE
    elif total.targets == 0 and total.excluded:
        message = f"every target is excluded ({total.excluded} by --exclude/--exclude-file)"
        code = EXIT_USAGE
    elif total.targets_without_open:
        code = EXIT_NO_OPEN
    try:
        if plan.output.format == "human" and message is None:
            for line in summary(plan, total):
                out.msg(line.encode())
        drain = OUTPUT_DRAIN if total.stopped_by else None  # a stopped run waits no longer
        for writer in (out, json_out):
            if writer is not None:
                writer.close(drain)
    except SinkClosed:
        return _quiet_pipe()
    except SinkError as exc:
        message, code = message or str(exc), EXIT_USAGE
    if message is not None:
        report(message)
    elif total.stopped_by and plan.count != 0 and plan.output.format != "human":
        # stdout holds records only: the interruption is said where a person reads it
        report(interrupted_line(plan, total).removeprefix("interrupted: "), prefix="interrupted")
    if total.stopped_by and error is None:
        return EXIT_SIGNAL_BASE + total.stopped_by
    return code


def _quiet_pipe() -> int:
    """stdout's reader left (`| head -1`): no message, and a quiet interpreter exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return EXIT_PIPE
