"""The pipe stream under a reader that stops reading: a write never waits for it."""

from __future__ import annotations

import fcntl
import os
import threading

from probe.output.writer import PIPE_CHUNK, PipeStream

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def read_all(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_line_longer_than_pipe_buf_never_waits_for_a_reader_that_stopped() -> None:
    """A reader that stopped with 6,000 bytes of its pipe free (room enough for poll to say
    "writable"): a 10,000-byte line goes in as far as the pipe takes it at once and the
    rest waits here, instead of the write blocking until the reader reads. Once it reads,
    it gets every byte, in order."""
    r, w = os.pipe()
    try:
        size = fcntl.fcntl(w, F_GETPIPE_SZ)
        first = b"z" * (size - 6000)
        assert os.write(w, first) == len(first)
        stream = PipeStream(w)
        line = bytes(range(97, 123)) * 384 + b"\n"  # 9,985 bytes, one line
        assert len(line) > 2 * PIPE_CHUNK
        done = threading.Event()

        def write() -> None:
            stream.write(line)
            stream.flush()
            done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        returned = done.wait(5.0)
        got = read_all(r)  # (also what lets a blocked write return)
        writer.join(5.0)
        assert returned, "the write waited for the reader"
        stream.drain(5.0)
        got += read_all(r)
        assert got == first + line
    finally:
        os.close(r)
        os.close(w)
