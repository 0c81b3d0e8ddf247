"""Records as CSV: a header row with the record's keys, then one row per attempt.

The columns are the JSON record's keys in the same order; null is an empty field. The
stdlib writer does the quoting, so a name with a comma or a quote stays one field.
"""

from __future__ import annotations

import csv
import io

from ..record import Record

COLUMNS: tuple[str, ...] = tuple(
    Record(0.0, "", "", 1, None, None, None, None, "open", None, 0.0, None, 1).as_dict()  # type: ignore[arg-type]
)


class CsvRows:
    """Renders the header and the rows; each call returns whole lines as bytes."""

    def __init__(self) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def _take(self, row: list[object]) -> bytes:
        self._writer.writerow(row)
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()

    def header(self) -> bytes:
        return self._take(list(COLUMNS))

    def row(self, record: Record) -> bytes:
        fields = record.as_dict()
        return self._take(["" if fields.get(k) is None else fields[k] for k in COLUMNS])
