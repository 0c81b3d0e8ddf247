"""Records as CSV: a header row with the record's keys, then one row per attempt.

The columns are the JSON record's keys in the same order (`record.RECORD_KEYS`, held to
`record_json`'s by a test); each row's values come from the JSON form itself (one definition
of their rounding): null is an empty field, true and false as JSON writes them. A run with
stages after the connect adds every stage key (STAGE_COLUMNS), empty where that stage did not
run. The stdlib writer does the quoting, so a name with a comma or a quote stays one field.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from ..record import RECORD_KEYS, Record
from ..stages.result import StageResult
from .jsonl import record_json

_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _fields(record: Record) -> dict[str, Any]:
    return _decode(record_json(record))


COLUMNS: tuple[str, ...] = RECORD_KEYS


def _stage_columns() -> tuple[str, ...]:
    every = StageResult()
    every.tls_ms = every.expect_ms = 0.0
    every.reflected = True
    return tuple(every.fields())


STAGE_COLUMNS: tuple[str, ...] = _stage_columns()


class CsvRows:
    """Renders the header and the rows; each call returns whole lines as bytes. `stages`:
    the run has stages after the connect (their keys become columns too)."""

    def __init__(self, stages: bool = False) -> None:
        self.columns = COLUMNS + STAGE_COLUMNS if stages else COLUMNS
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, lineterminator="\n")

    def _take(self, row: list[object]) -> bytes:
        self._writer.writerow(row)
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()

    def header(self) -> bytes:
        return self._take(list(self.columns))

    def row(self, record: Record) -> bytes:
        fields = _fields(record)
        return self._take([_cell(fields.get(k)) for k in self.columns])


def _cell(value: object) -> object:
    """null is an empty field; true and false are written as JSON writes them."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value
