"""Runs a `StageSpec` on a connected socket, under the attempt's deadline.

The stages run as one task on the event loop: the TLS handshake through asyncio's
`start_tls` and every read through a stream reader, so a stage waits without holding the
loop. One deadline covers them all (blackbox's: the probe's timeout, counted from the
connect); when it passes, the stage that was running names the failure.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from functools import lru_cache

from ..engine.sockets import LINGER_RESET
from .expect import Dialogue
from .reflect import read_answer
from .result import (
    EXPECT_MISMATCH,
    EXPECT_TIMEOUT,
    NOT_A_RESPONDER,
    SEND_FAILED,
    TLS_HANDSHAKE,
    StageResult,
)
from .spec import StageSpec, Step
from .starttls import starttls_steps
from .tls import TlsFailure, handshake

_TIMED_OUT = {
    "tls": TLS_HANDSHAKE,
    "expect": EXPECT_TIMEOUT,
    "send": SEND_FAILED,
    "reflect": NOT_A_RESPONDER,
}
_FAILED = {"tls": TLS_HANDSHAKE, "reflect": NOT_A_RESPONDER}


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def steps_of(spec: StageSpec, host: str) -> tuple[Step, ...]:
    """The starttls protocol's dialogue (if any), then the spec's own steps."""
    if spec.starttls is None:
        return spec.steps
    return starttls_steps(spec.starttls, host) + spec.steps


async def run_stages(
    sock: socket.socket, spec: StageSpec, host: str, deadline: float, reset: bool = True
) -> StageResult:
    """Every stage of `spec` on `sock` (connected; this takes it over and closes it, with a
    reset unless `reset` is False) until `deadline` (loop time). Never raises for the
    peer's doing: a failed stage is the result's `error`."""
    result = StageResult()
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    writer: asyncio.StreamWriter | None = None
    # Named by the stage that would run first, so a reset or the deadline while the
    # transport is made blames that stage.
    stage = "reflect" if spec.reflect else "tls" if spec.tls else "expect"
    expect_t = 0.0
    try:
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(sock=sock, limit=spec.expect_limit)
            if spec.reflect:
                stage = "reflect"
                if not await read_answer(reader, sock.getsockname(), result):
                    return result
            if spec.tls:
                stage = "tls"
                await handshake(writer, spec.tls_options, host, result)
            talk = Dialogue(reader, writer)
            steps = steps_of(spec, host)
            if any(step.expect is not None or step.send is not None for step in steps):
                result.expect_ms = 0.0
            for step in steps:
                t0 = time.perf_counter()
                try:
                    if step.expect is not None:
                        stage = "expect"
                        refuse = None if step.refuse is None else _compiled(step.refuse)
                        line, refused = await talk.expect(
                            _compiled(step.expect), spec.expect_limit, refuse
                        )
                        result.matched = line
                        if line is None or refused:
                            result.error = EXPECT_MISMATCH
                            return result
                    if step.send is not None:
                        stage = "send"
                        try:
                            await talk.send(step.send)
                        except OSError:
                            result.error = SEND_FAILED
                            return result
                finally:
                    expect_t += time.perf_counter() - t0
                    if result.expect_ms is not None:
                        result.expect_ms = expect_t * 1000
                if step.starttls:
                    stage = "tls"
                    talk.pending.clear()  # plaintext read before TLS is not the server's answer
                    await handshake(writer, spec.tls_options, host, result)
    except TlsFailure as exc:
        result.error = exc.error
    except TimeoutError:
        result.error = _TIMED_OUT.get(stage, EXPECT_TIMEOUT)
    except OSError:
        result.error = _FAILED.get(stage, EXPECT_MISMATCH)
    finally:
        if writer is not None:
            writer.transport.abort()
        else:
            sock.close()
    return result
