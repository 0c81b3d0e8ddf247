"""Records as CSV: a header row with the record's keys, then one row per attempt.

The columns are the JSON record's keys in the same order, from the JSON form itself (one
definition of the keys and of their rounding); null is an empty field. The stdlib writer
does the quoting, so a name with a comma or a quote stays one field.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import msgspec

from ..record import Outcome, Record
from .jsonl import record_json

_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _fields(record: Record) -> dict[str, Any]:
    return _decode(record_json(record))


COLUMNS: tuple[str, ...] = tuple(
    _fields(
        Record(
            started=0.0,
            target="",
            host="",
            port=1,
            address=None,
            family=None,
            local_address=None,
            local_port=None,
            outcome=Outcome.OPEN,
            error=None,
            latency_ms=0.0,
            rtt_ms=None,
            syn_retransmits=None,
            dns_ms=0.0,
            attempt=1,
        )
    )
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
        fields = _fields(record)
        return self._take(["" if fields.get(k) is None else fields[k] for k in COLUMNS])
