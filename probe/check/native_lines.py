"""Human output from the native core: its JSON records read back on a thread, every one
tallied, and rendered as the Python engine would render them (a sweep: the open ones; a
list of a few endpoints: every one, as it comes).

A slow reader of the human lines holds the sweep as it holds the JSON path's: while more
than the writer's BACKLOG_MAX waits for it, the thread reads no more records, the core's
pipe fills, and the core starts nothing new until the reader takes some."""

from __future__ import annotations

import contextlib
import json
import os
import select
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..errors import SinkError
from ..record import OPEN, Outcome, Record
from .result import Tally
from .sinks import Sinks

if TYPE_CHECKING:
    from collections.abc import Callable

    from .share import Progress

ROOM_WAIT = 0.1  # seconds between two looks at a stop while the reader is waited for


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

    def __init__(
        self, sinks: Sinks, tally: Tally, every_line: bool = False, stop_fd: int = -1
    ) -> None:
        """`stop_fd`: readable once the run is stopped (`native.stop_on_signals`): from
        then on the reader is no longer waited for (the writer's drain limit applies)."""
        self.sinks = sinks
        self.tally = tally
        self.every_line = every_line
        read_fd, self.write_fd = os.pipe()
        self.stream = os.fdopen(read_fd, "rb", buffering=1 << 16)
        self.failure: SinkError | None = None
        # held while a line is written: a progress line drawn between its erase and the
        # line, from the core's thread, would run into it on a shared terminal
        self.writing = threading.Lock()
        self.ending = threading.Event()  # the sweep is over: what is left is read at once
        self.stop = select.poll()
        if stop_fd >= 0:
            self.stop.register(stop_fd, select.POLLIN)
        self.thread = threading.Thread(target=self._run, name="probe-native-records")
        self.thread.start()

    def _run(self) -> None:
        add, write = self.tally.add_port, self.sinks.record
        try:
            if self.every_line:
                for line in self.stream:
                    record = _record(line)
                    self.tally.add(record)
                    with self.writing:
                        write(record)  # the sinks flush each line (list mode is live)
                    self._room()
                return
            light = _sweep_decoder()
            for line in self.stream:
                rec = light(line)
                add(rec.outcome, rec.host, rec.address, rec.port)
                if rec.outcome == OPEN:
                    with self.writing:
                        write(_record(line))
                        self.sinks.flush()
                    self._room()
        except SinkError as exc:
            self.failure = exc
        finally:
            self.stream.close()  # a writer still going gets EPIPE and stops

    def beside(self, progress: Progress | None) -> Progress | None:
        """`progress` drawn only while no line is being written; a draw that would wait is
        skipped (the core calls again within 0.2 s), so the core is never held by it."""
        if progress is None:
            return None
        draw = progress

        def progress_beside(attempts: int, opened: int) -> None:
            if self.writing.acquire(blocking=False):
                try:
                    draw(attempts, opened)
                finally:
                    self.writing.release()

        return progress_beside

    def _room(self) -> None:
        """While the reader of the human lines has too much unread, read no further: the
        core, its pipe full, starts nothing new. Not after a stop or the sweep's end."""
        out = self.sinks.out
        while out.full() and not self.ending.is_set() and not self.stop.poll(0):
            out.wait_room(ROOM_WAIT)

    def finish(self) -> SinkError | None:
        """After the sweep: end of input for the thread; wait for it."""
        self.ending.set()
        with contextlib.suppress(OSError):
            os.close(self.write_fd)
        self.thread.join()
        return self.failure
