"""Human output from the native core: its JSON records read back on a thread, every one
tallied, and rendered as the Python engine would render them (a sweep: the open ones; a
list of a few endpoints: every one, as it comes)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import SinkError
from ..record import OPEN, Outcome, Record
from .result import Tally
from .sinks import Sinks

if TYPE_CHECKING:
    from collections.abc import Callable


def _sweep_decoder() -> Callable[[bytes], Any]:
    """A sweep's every record, decoded by msgspec into only what the tally needs (imported
    here: a list's few records are read with `json`, which imports in a tenth of the time)."""
    import msgspec

    class Sweep(msgspec.Struct):
        host: str
        address: str | None
        port: int
        outcome: str

    return msgspec.json.Decoder(Sweep).decode


def _record(line: bytes) -> Record:
    """A record back from the core's JSON line (the ones that get a human line)."""
    fields = json.loads(line)
    stamp = fields.pop("timestamp")
    del fields["event"]
    fields["outcome"] = Outcome(fields["outcome"])
    started = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return Record(started=started, **fields)


class HumanReader:
    """Reads the core's JSON records from a pipe on a thread of its own (the core runs
    without the GIL): every record to the tally, the open ones (`every_line`: every one)
    to the human sinks."""

    def __init__(self, sinks: Sinks, tally: Tally, every_line: bool = False) -> None:
        self.sinks = sinks
        self.tally = tally
        self.every_line = every_line
        read_fd, self.write_fd = os.pipe()
        self.stream = os.fdopen(read_fd, "rb", buffering=1 << 16)
        self.failure: SinkError | None = None
        self.thread = threading.Thread(target=self._run, name="probe-native-records")
        self.thread.start()

    def _run(self) -> None:
        add, write = self.tally.add_port, self.sinks.record
        try:
            if self.every_line:
                for line in self.stream:
                    record = _record(line)
                    self.tally.add(record)
                    write(record)  # the sinks flush each line (list mode is live)
                return
            light = _sweep_decoder()
            for line in self.stream:
                rec = light(line)
                add(rec.outcome, rec.host, rec.address, rec.port)
                if rec.outcome == OPEN:
                    write(_record(line))
                    self.sinks.flush()
        except SinkError as exc:
            self.failure = exc
        finally:
            self.stream.close()  # a writer still going gets EPIPE and stops

    def finish(self) -> SinkError | None:
        """After the sweep: end of input for the thread; wait for it."""
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        self.thread.join()
        return self.failure
