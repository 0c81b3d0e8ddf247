"""`probe check`: validate the command line up front, run the check, report, pick the exit code."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import socket
import stat
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import Any, BinaryIO

from .. import loop as event_loop
from ..engine import Engine, EngineOptions, LocalShortage, check_source, native
from ..engine.lag import LagMonitor
from ..engine.limits import fit_concurrency
from ..errors import (
    EXIT_NO_OPEN,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_USAGE,
    SinkClosed,
    SinkError,
    TargetError,
    UsageError,
    report,
)
from ..output.log import configure
from ..output.writer import RecordWriter, stdout_writer
from ..record import OPEN, Record
from ..resolve import Resolver
from ..targets import (
    Endpoint,
    PortRanges,
    expand,
    iter_targets,
    parse_ports,
    parse_source,
    parse_target,
    shard,
)
from .inputs import expand_async, threaded
from .report import LIST_LIMIT, HumanReport
from .run import CheckResult, run_check
from .workers import run_workers, usable_cpus

FLUSH_EVERY = 0.2  # seconds: records reach a pipe promptly without a write per record
PROGRESS_EVERY = 1.0
NATIVE_MAX_TARGETS = 4096  # more addresses than this (a long file) stay on the Python engine
# Options the native core does not implement: with any of them the Python engine runs.
NATIVE_UNSUPPORTED = ("exclude", "exclude_file", "open", "output", "source_range")


class CheckCommand:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.default_ports = self._ports(args.ports)
        if not args.targets:
            raise UsageError("no targets: give HOST:PORTS, [IPV6]:PORTS, HOST with -p, @FILE or -")
        self.blocking_input = False  # standard input, a FIFO: read on a thread, by one process
        self.list_mode = self._preflight(args.targets)
        self.family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(args.family or 0, 0)
        self.source = self._source(args.source)
        self.concurrency = self._concurrency(args.concurrency)
        self.options = EngineOptions(
            timeout=args.timeout,
            concurrency=self.concurrency,
            rate=args.rate,
            retries=args.retries,
            source=self.source,
            graceful_close=args.graceful_close,
        )
        self.workers = self._workers(args.workers)
        self.shard: tuple[int, int] | None = None  # (index, count) inside a worker process
        self.progress: Callable[[int, int], None] | None = None  # a worker's progress report
        self.summary = True  # a worker leaves the summary and errors to the parent
        self.result: CheckResult | None = None
        self.outcomes: Counter[str] = Counter()
        self.lag: LagMonitor | native.Lag | None = None  # the engine's, for the summary
        self.stopped_by = 0  # the signal that stopped the run (SIGINT → exit 130)
        self.error: str | None = None
        self.code = EXIT_OK

    @staticmethod
    def _ports(text: str | None) -> PortRanges | None:
        if text is None:
            return None
        try:
            return parse_ports(text)
        except TargetError as exc:
            raise UsageError(f"-p {text!r}: {exc}") from None

    def _preflight(self, tokens: list[str]) -> bool:
        """Check what can be checked before the first attempt; True when few enough attempts
        that each gets its own line."""
        total = 0
        literal_only = True
        for token in tokens:
            if token == "-":
                literal_only = False
                self.blocking_input = True
            elif token.startswith("@"):
                literal_only = False
                path = token[1:]
                if not path:
                    raise UsageError("missing file name after '@'")
                # Checked without opening: opening and closing a FIFO would end its writer.
                try:
                    mode = os.stat(path).st_mode
                    if stat.S_ISDIR(mode):
                        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
                    if not os.access(path, os.R_OK):
                        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
                except OSError as exc:
                    raise UsageError(f"cannot read target file {path!r}: {exc.strerror}") from None
                if not stat.S_ISREG(mode):
                    self.blocking_input = True  # a FIFO or device: one reader, may block
            else:
                try:
                    total += parse_target(token, self.default_ports).count()
                except TargetError as exc:
                    raise UsageError(str(exc)) from None
        return literal_only and total * self.args.count <= LIST_LIMIT

    def _source(self, text: str | None) -> tuple[str, int] | None:
        if text is None:
            return None
        try:
            address, port = parse_source(text)
        except TargetError as exc:
            raise UsageError(f"-s: {exc}") from None
        fam = socket.AF_INET6 if ":" in address else socket.AF_INET
        if self.family and self.family != fam:
            raise UsageError(f"-s {text}: source address family does not match -4/-6")
        self.family = fam  # a source address decides the family of every attempt
        try:
            check_source((address, port))
        except OSError as exc:
            raise UsageError(f"-s {text}: cannot bind: {exc.strerror}") from None
        return address, port

    def _workers(self, requested: int | None) -> int:
        """Worker processes: one per usable CPU for sweeps. A few attempts gain nothing from
        them, and standard input can be read by one process only."""
        wanted = usable_cpus() if requested is None else requested
        if self.list_mode or self.blocking_input:
            return 1
        return max(1, min(wanted, self.concurrency))

    @staticmethod
    def _concurrency(requested: int | None) -> int:
        concurrency, room = fit_concurrency(requested)
        if requested is not None and requested > concurrency:
            report(
                f"-C {requested} lowered to {concurrency}: the open-files limit "
                f"leaves room for {room}",
                prefix="",
            )
        return concurrency

    # -- running ------------------------------------------------------------------------------

    def run(self) -> int:
        if self.workers > 1:
            return self._run_workers()
        return self._run(stdout_writer())

    def _run_workers(self) -> int:
        """Fork one worker per share of the sweep; merge their lines; sum their results."""
        out = stdout_writer()
        n = self.workers
        self.options = replace(
            self.options,
            concurrency=-(-self.options.concurrency // n),
            rate=None if self.options.rate is None else self.options.rate / n,
        )
        started = time.monotonic()
        bar = _Progress(started) if not self.args.json and sys.stderr.isatty() else None
        merged = run_workers(n, self._worker, out, bar.show if bar else None)
        if bar is not None:
            bar.clear()
        if merged.pipe_closed:
            return _quiet_pipe()
        results = merged.results
        self.stopped_by = merged.stopped_by or max((r["stopped_by"] for r in results), default=0)
        errors = [r["error"] for r in results if r["error"]] + [merged.sink_error or ""]
        self.error = next((e for e in errors if e), None)
        if len(results) < n and not self.stopped_by and not self.error:
            self.error = "a worker process died"
        targets = sum(r["targets"] for r in results)
        without_open = sum(r["targets_without_open"] for r in results)
        if self.error:
            self.code = EXIT_USAGE
        elif targets == 0 and not self.stopped_by:
            self.error, self.code = "no targets in the input", EXIT_USAGE
        elif without_open:
            self.code = EXIT_NO_OPEN
        summary: list[str] = []
        if not self.args.json and not self.error:
            report = HumanReport(lambda _: None, False, self.args.count)
            for r in results:
                report.outcomes.update(r["outcomes"])
            lags = [r["lag"] for r in results if r["lag"]]
            lag = (max(p for p, _ in lags), max(m for _, m in lags)) if lags else None
            summary = report.summary(time.monotonic() - started, lag)
        return self._close(out, summary)

    def _worker(
        self, index: int, count: int, stream: BinaryIO, progress: Callable[[int, int], None]
    ) -> dict[str, Any]:
        """A worker's whole run: its shard, records to its pipe, the result for the parent."""
        self.shard = (index, count)
        self.progress = progress
        self.summary = False
        self._run(RecordWriter(stream))
        result = self.result
        return {
            "stopped_by": self.stopped_by,
            "error": self.error,
            "targets": result.targets if result else 0,
            "targets_without_open": result.targets_without_open if result else 0,
            "outcomes": dict(self.outcomes),
            "lag": [self.lag.quantile_ms(0.99), self.lag.max_ms] if self.lag else None,
        }

    def _run(self, writer: RecordWriter) -> int:
        targets = self._native_targets()
        if targets is not None:
            return self._run_native(writer, targets)
        fmt = "json" if self.args.json else "human"
        write_record = configure(writer, fmt)
        report = (
            None
            if self.args.json
            else HumanReport(write_record, self.list_mode, self.args.count, self.args.histogram)
        )
        on_record = write_record if report is None else report.record
        if report is not None and self.list_mode:
            on_record = self._flushing(on_record, writer)
        counted = self.outcomes
        inner = on_record

        def count_record(record: Record) -> None:
            counted[record.outcome] += 1
            inner(record)

        started = time.monotonic()
        try:
            self.result = event_loop.run(self._main(count_record, writer, report, started))
        except KeyboardInterrupt:  # a SIGINT before the loop took over the signal
            self.stopped_by = signal.SIGINT
        except SinkClosed:
            return _quiet_pipe()
        summary: list[str] = []
        if report is not None and self.summary and not self.error:  # on SIGINT too
            lag = (self.lag.quantile_ms(0.99), self.lag.max_ms) if self.lag else None
            summary = report.summary(time.monotonic() - started, lag)
        return self._close(writer, summary)

    def _native_targets(self) -> list[native.NativeTarget] | None:
        """The targets as the native core takes them, when it can serve the whole run: JSON
        records or a sweep's human output (open ports and a summary), one attempt per
        endpoint, IP literals (addresses, CIDRs, octet ranges) on the command line or in a
        small regular file. Anything else runs on the Python engine (a line per attempt for
        a few targets, repeat mode, names), as do options the native core does not know."""
        args = self.args
        if not native.available() or args.count != 1 or self.blocking_input:
            return None
        if not args.json and self.list_mode:
            return None
        if any(getattr(args, name, None) for name in NATIVE_UNSUPPORTED):
            return None
        if not native.supports(self.options):
            return None
        try:
            return native.plan(
                iter_targets(args.targets, self.default_ports), self.family, NATIVE_MAX_TARGETS
            )
        except TargetError:
            return None  # the Python engine reports it where it meets it, as it always has

    def _run_native(self, writer: RecordWriter, targets: list[native.NativeTarget]) -> int:
        """The whole share on the native core: records go straight to the writer's fd."""

        def on_signal(signum: int) -> None:
            self.stopped_by = self.stopped_by or signum

        human = not self.args.json
        progress = self.progress
        bar = None
        if progress is None and human and sys.stderr.isatty():
            bar = _Progress(time.monotonic())  # the line _Ticker draws on the Python engine
            progress = bar.show
        started = time.monotonic()
        try:
            writer.flush()
            with native.stop_on_signals(on_signal) as stop_fd:
                done = native.sweep(
                    writer.fileno(),
                    targets,
                    self.options,
                    self.shard or (0, 1),
                    stop_fd,
                    progress,
                    human=human,
                )
        except SinkClosed:
            return _quiet_pipe()
        except BrokenPipeError:
            return _quiet_pipe()
        except OSError as exc:
            self.error = f"cannot write records to {writer.name}: {exc.strerror or exc}"
            self.code = EXIT_USAGE
            return self._close(writer, [])
        finally:
            if bar is not None:
                bar.clear()
        self.lag = done.lag
        self.outcomes.update(done.outcomes)
        self.result = CheckResult(
            outcomes=Counter(done.outcomes),
            targets=done.targets,
            targets_without_open=done.targets_without_open,
        )
        if done.error:
            self.error, self.code = done.error, EXIT_USAGE
        elif done.targets == 0 and not self.stopped_by:
            self.error, self.code = "no targets in the input", EXIT_USAGE
        elif done.targets_without_open:
            self.code = EXIT_NO_OPEN
        summary: list[str] = []
        if human and self.summary and not self.error:  # on SIGINT too, as on the Python engine
            report = HumanReport(lambda _: None, False, 1)
            report.outcomes.update(done.outcomes)
            lag = (done.lag.quantile_ms(0.99), done.lag.max_ms)
            summary = report.summary(time.monotonic() - started, lag)
        return self._close(writer, summary)

    def _close(self, writer: RecordWriter, summary: list[str]) -> int:
        """Write the summary, flush and close; report an error (unless a worker: the parent
        does); the exit code."""
        try:
            for line in summary:
                writer.msg(line.encode())
            writer.close()
        except SinkClosed:
            return _quiet_pipe()
        except SinkError as exc:
            self.error, self.code = self.error or str(exc), EXIT_USAGE
        if self.error and self.summary:
            report(self.error)
        return 128 + self.stopped_by if self.stopped_by else self.code

    @staticmethod
    def _flushing(
        inner: Callable[[Record], None], writer: RecordWriter
    ) -> Callable[[Record], None]:
        def write(record: Record) -> None:
            inner(record)
            writer.flush()

        return write

    def _endpoints(self) -> Iterator[Endpoint] | AsyncIterator[Endpoint]:
        targets = iter_targets(self.args.targets, self.default_ports)
        if self.blocking_input:
            return expand_async(threaded(targets))
        if self.shard is None:
            return expand(targets)
        return shard(targets, *self.shard)

    async def _main(
        self,
        on_record: Callable[[Record], None],
        writer: RecordWriter,
        report: HumanReport | None,
        started: float,
    ) -> CheckResult | None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGINT, self._interrupt, task, signal.SIGINT)
        engine = Engine(self.options)
        loop.add_signal_handler(signal.SIGTERM, self._interrupt, task, signal.SIGTERM)
        self.lag = engine.lag
        ticker = _Ticker(loop, engine, writer, report, started, self.progress, self.outcomes)
        result = None
        try:
            result = await run_check(
                self._endpoints(),
                engine,
                Resolver(self.family),
                on_record,
                count=self.args.count,
                interval=self.args.interval,
            )
            if result.targets == 0:
                self.error, self.code = "no targets in the input", EXIT_USAGE
            elif result.targets_without_open:
                self.code = EXIT_NO_OPEN
        except asyncio.CancelledError:
            self.stopped_by = self.stopped_by or signal.SIGINT
        except TargetError as exc:  # a bad line in @FILE or stdin, met mid-run
            self.error, self.code = str(exc), EXIT_USAGE
        except SinkClosed:
            raise  # handled outside the loop: stop quietly
        except (SinkError, LocalShortage) as exc:
            self.error, self.code = str(exc), EXIT_USAGE
        finally:
            ticker.stop()
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)
        return result

    def _interrupt(self, task: asyncio.Task[object], signum: int) -> None:
        """SIGINT or SIGTERM: stop, keep every finished record whole, exit 128 + signal."""
        self.stopped_by = self.stopped_by or signum
        task.cancel()


class _Ticker:
    """Flushes records on a timer and draws the progress line when stderr is a terminal."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        engine: Engine,
        writer: RecordWriter,
        report: HumanReport | None,
        started: float,
        worker_progress: Callable[[int, int], None] | None = None,
        outcomes: Counter[str] | None = None,
    ) -> None:
        self.worker_progress = worker_progress
        self.outcomes = outcomes
        self.loop = loop
        self.engine = engine
        self.writer = writer
        self.report = report if report is not None and not report.list_mode else None
        self.tty = sys.stderr.isatty()
        self.started = started
        self.last_progress = started
        self.drew = False
        self.handle = loop.call_later(FLUSH_EVERY, self.tick)

    def tick(self) -> None:
        try:
            self.writer.flush()
        except SinkError as exc:
            self.engine.abort(exc)
            return
        now = time.monotonic()
        if self.worker_progress is not None and self.outcomes is not None:
            self.worker_progress(sum(self.outcomes.values()), self.outcomes[OPEN])
        if self.report is not None and self.tty and now - self.last_progress >= PROGRESS_EVERY:
            self.last_progress = now
            sys.stderr.write("\r" + self.report.progress(now - self.started) + "\033[K")
            sys.stderr.flush()
            self.drew = True
        self.handle = self.loop.call_later(FLUSH_EVERY, self.tick)

    def stop(self) -> None:
        self.handle.cancel()
        if self.drew:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


class _Progress:
    """The parent's progress line on stderr, from the workers' counts."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.last = started
        self.drew = False

    def show(self, attempts: int, opened: int) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        rate = attempts / (now - self.started)
        sys.stderr.write(f"\r{attempts} attempts, {opened} open, {rate:.0f}/s\033[K")
        sys.stderr.flush()
        self.drew = True

    def clear(self) -> None:
        if self.drew:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def _quiet_pipe() -> int:
    """stdout's reader left (`| head -1`): no message, and a quiet interpreter exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return EXIT_PIPE
