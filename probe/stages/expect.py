"""The send/expect stage: a dialogue with bounded reads.

An expect reads until a line matches its regex, as blackbox's `query_response` does. Every
read is bounded: by the byte limit of one expect (a server streaming megabytes without a
newline costs that many bytes and no more) and, in the runner, by the attempt's deadline.
Text that has not ended its line yet is tried too (XMPP answers have no newlines), but only
as it doubles in length, so a server dripping one byte at a time cannot make the matching
quadratic and hold the loop.
"""

from __future__ import annotations

import asyncio
import re

from .spec import MATCHED_MAX

TAIL_ALWAYS = 4096  # an unfinished line up to this long is tried after every read


class Dialogue:
    """One connection's reads and writes across the steps; what was read and not yet
    matched stays in `pending` for the next expect."""

    __slots__ = ("pending", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending = bytearray()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def expect(
        self, pattern: re.Pattern[str], limit: int, refuse: re.Pattern[str] | None = None
    ) -> tuple[str | None, bool]:
        """The first line (or unfinished line) that `pattern` matches, without its line end
        and truncated, and False; (None, False) when the peer closed or `limit` bytes were
        read first; (the line, True) when a whole line matched `refuse` first."""
        pending = self.pending
        read = 0
        tried = 0  # the unfinished line's length when it was last tried
        while True:
            while (end := pending.find(b"\n")) >= 0:
                line = pending[: end + 1].decode("latin-1").rstrip("\r\n")
                del pending[: end + 1]
                tried = 0
                if pattern.search(line):
                    return line[:MATCHED_MAX], False
                if refuse is not None and refuse.search(line):
                    return line[:MATCHED_MAX], True
            size = len(pending)
            if size and (size <= TAIL_ALWAYS or size >= 2 * tried):
                tried = size
                tail = pending.decode("latin-1")
                if pattern.search(tail):
                    pending.clear()
                    return tail[:MATCHED_MAX], False
                if refuse is not None and refuse.search(tail):
                    pending.clear()
                    return tail[:MATCHED_MAX], True
            if read >= limit:
                return None, False
            chunk = await self.reader.read(min(65536, limit - read))
            if not chunk:
                return None, False
            read += len(chunk)
            pending += chunk
