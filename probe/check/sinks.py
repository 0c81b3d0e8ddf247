"""Where a share's records go: the chosen form on standard output (human lines, JSON or
CSV), and the JSON records to `-o FILE` besides. `--open` keeps only open attempts here;
every record still reaches the tally before this point. The JSON and CSV encoders
(msgspec, csv) are imported by the runs that write them: human lines start without them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..output.human import RecordLines
from ..output.writer import RecordWriter
from ..record import OPEN, Record
from .plan import Output

if TYPE_CHECKING:
    from ..output.csv import CsvRows


def csv_rows(stages: bool = False) -> CsvRows:
    from ..output.csv import CsvRows

    return CsvRows(stages)


class Sinks:
    def __init__(
        self,
        output: Output,
        out: RecordWriter,
        json_out: RecordWriter | None = None,
        before_stdout: Callable[[], None] | None = None,
        stages: bool = False,  # stages after the connect: CSV has their columns
    ) -> None:
        self.output = output
        self.out = out
        self.json_out = json_out
        self.before_stdout = before_stdout
        self.lines = RecordLines(output.target_width)
        fmt = output.format
        self.csv = csv_rows(stages) if fmt == "csv" else None
        wants_json = fmt == "json" or json_out is not None
        # msgspec is imported at the first record: a worker whose share the native core
        # serves writes its JSON itself and never needs it
        self.json_line: Callable[[Record], bytes] = self._first_json if wants_json else _no_json
        self.live = output.list_mode  # a few endpoints: each line as it happens (tcping)

    def record(self, record: Record) -> None:
        opened = record.outcome == OPEN
        if self.output.open_only and not opened:
            return
        fmt = self.output.format
        if fmt == "human":
            if self.output.list_mode or opened:
                if self.before_stdout is not None:
                    self.before_stdout()
                self.out.msg(self.lines.line(record).encode())
        elif fmt == "json":
            self.out.msg(self.json_line(record))
        elif self.csv is not None:
            self.out.write_lines(self.csv.row(record))
        if self.json_out is not None:
            self.json_out.msg(self.json_line(record))
        if self.live:
            self.flush()

    def _first_json(self, record: Record) -> bytes:
        return self._load_json()(record)

    def _load_json(self) -> Callable[[Record], bytes]:
        """The one JSON form of a record (msgspec), from now on without the detour."""
        from ..output.jsonl import record_json

        self.json_line = record_json
        return record_json

    def ready(self) -> None:
        """Import the encoder now, before an engine starts: at its first record the import
        would stall the event loop with attempts in flight and inflate their latency."""
        if self.json_line == self._first_json:
            self._load_json()

    def full(self) -> bool:
        """An output's reader has too much unread: start no attempt until it reads."""
        return self.out.full() or (self.json_out is not None and self.json_out.full())

    def flush(self) -> None:
        self.out.flush()
        if self.json_out is not None:
            self.json_out.flush()


def _no_json(record: Record) -> bytes:
    raise AssertionError("no JSON output was planned")
