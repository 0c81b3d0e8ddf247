#!/usr/bin/env python3
"""Per-record cost of the output path: `configure(writer, fmt)` then `write(record)`, the
way `probe check --json` writes each record (structlog, renderer, buffered writer), into
memory. Runs against whichever `probe` is imported, so two checkouts can be compared:

    .venv/bin/python tests/bench/encode.py
    cd OTHER && PYTHONPATH=. /path/to/.venv/bin/python /path/to/tests/bench/encode.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import time

import probe
from probe.output.log import configure
from probe.output.writer import RecordWriter
from probe.record import Outcome, Record

FIELDS = {
    "started": 1795514400.123456,
    "target": "127.0.0.1:40123",
    "host": "127.0.0.1",
    "port": 40123,
    "address": "127.0.0.1",
    "family": "ipv4",
    "local_address": "127.0.0.1",
    "local_port": 51234,
    "outcome": Outcome.REFUSED,
    "error": "ECONNREFUSED",
    "latency_ms": 0.08123,
    "rtt_ms": None,
    "syn_retransmits": 0,
    "dns_ms": 0.0,
    "attempt": 1,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--format", default="json")
    a = ap.parse_args()
    names = set(Record.__slots__)
    record = Record(**{k: v for k, v in FIELDS.items() if k in names})
    per: list[float] = []
    for _ in range(a.rounds):
        buffer = io.BytesIO()
        writer = RecordWriter(buffer)
        write = configure(writer, a.format)
        t0 = time.perf_counter()
        for _ in range(a.records):
            write(record)
        writer.flush()
        per.append((time.perf_counter() - t0) / a.records * 1e6)
    print(
        f"{probe.__file__}: {a.format}: median {statistics.median(per):.2f} us/record, "
        f"min {min(per):.2f} over {a.rounds} rounds of {a.records}"
    )


if __name__ == "__main__":
    main()
