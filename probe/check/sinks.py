"""Where a share's records go: the chosen form on standard output (human lines, JSON or
CSV), and the JSON records to `-o FILE` besides. `--open` keeps only open attempts here;
every record still reaches the tally before this point."""

from __future__ import annotations

from collections.abc import Callable

from ..output.csv import CsvRows
from ..output.human import RecordLines
from ..output.jsonl import record_json
from ..output.writer import RecordWriter
from ..record import OPEN, Record
from .plan import Output

json_line = record_json  # the one JSON form of a record


class Sinks:
    def __init__(
        self,
        output: Output,
        out: RecordWriter,
        json_out: RecordWriter | None = None,
        before_stdout: Callable[[], None] | None = None,
    ) -> None:
        self.output = output
        self.out = out
        self.json_out = json_out
        self.before_stdout = before_stdout
        self.lines = RecordLines(output.target_width)
        self.csv = CsvRows()
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
            self.out.msg(json_line(record))
        else:
            self.out.write_lines(self.csv.row(record))
        if self.json_out is not None:
            self.json_out.msg(json_line(record))
        if self.live:
            self.flush()

    def flush(self) -> None:
        self.out.flush()
        if self.json_out is not None:
            self.json_out.flush()
