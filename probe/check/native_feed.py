"""A plan's targets as the native core takes them: streamed in batches while it runs.

The core calls the feed when it needs more targets. A CIDR or octet range goes in as one
range (the core makes its addresses); an address or a name goes in with its addresses
(a name resolved here, once per run, on a thread of its own so the core's loop keeps
running); a name that does not resolve goes in with its error (one record per endpoint).
Standard input and FIFOs are read on a thread. When nothing is at hand the feed answers
an empty batch and wakes the core through a pipe once something is: memory stays flat
whatever the input's size.
"""

from __future__ import annotations

import contextlib
import os
import time
from _socket import AF_INET, AF_INET6, inet_pton
from collections.abc import Callable, Iterator
from typing import Any

from ..address import ResolveError, literal
from ..syntax import Target, iter_targets, shard_of
from .plan import Excluded, Plan

BATCH = 64  # targets per batch: a file's parse stalls the core's loop a fraction of a ms
NAMES_KEPT = 4096  # answers kept per run (the Python engine's resolver cache)

Item = tuple[Any, ...]
_WAIT: Any = object()  # nothing at hand: the core waits for the wake pipe
_END: Any = object()


class Feed:
    """Called by the core: the next batch, [] (wait for `wake_fd`), or None (the end).
    An input error ends the feed; it is kept in `error` for the caller."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.error: BaseException | None = None
        self.dropped = 0  # endpoints --shard gave to other machines
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self._names: dict[str, tuple[Item, ...] | str] = {}
        self._v4_ok = plan.family != AF_INET6
        self._batches = self._run()

    @property
    def wake_fd(self) -> int:
        return self._read

    def __call__(self) -> list[Item] | None:
        return next(self._batches, None)

    def close(self) -> None:
        self._closed = True
        os.close(self._read)
        os.close(self._write)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full: the core has wake-ups pending anyway
            os.write(self._write, b"\0")

    def _run(self) -> Iterator[list[Item]]:
        batch: list[Item] = []
        try:
            for target in self._targets():
                if target is _WAIT:
                    yield batch
                    batch = []
                    continue
                for item in self._items(target):
                    if item is _WAIT:
                        yield batch
                        batch = []
                        continue
                    batch.append(item)
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        except Exception as exc:  # a bad line: what came before it is still probed
            self.error = exc
        if batch:
            yield batch

    def _targets(self) -> Iterator[Any]:
        targets = iter_targets(self.plan.tokens, self.plan.default_ports)
        if not self.plan.blocking_input:
            yield from targets
            return
        import queue  # standard input or a FIFO only: start-up

        got: queue.SimpleQueue[Any] = queue.SimpleQueue()
        _on_thread(self._read_all, targets, got, name="probe-input")
        while True:
            try:
                target, exc = got.get_nowait()
            except queue.Empty:
                yield _WAIT
                continue
            if exc is not None:
                raise exc
            if target is _END:
                return
            yield target

    def _read_all(self, targets: Iterator[Target], got: Any) -> None:
        """On a thread: the targets of standard input or a FIFO, as they come."""
        try:
            for target in targets:
                got.put((target, None))
                self._wake()
                if self._closed:
                    return
        except Exception as exc:
            got.put((None, exc))
        else:
            got.put((_END, None))
        self._wake()

    def _items(self, target: Target) -> Iterator[Item]:
        """What the core takes for a target; under --shard, endpoint by endpoint."""
        spec = self.plan.shard
        if spec is not None:
            yield from self._sharded(target, spec)
            return
        addresses = target.addresses
        family = self.plan.family
        if addresses is not None and (not family or _family(addresses.version) == family):
            if addresses.version == 4:
                yield ("R", target.bracketed, target.ports, addresses.segments)
            else:
                ((lo, hi),) = addresses.segments
                yield ("R6", target.bracketed, target.ports, _b16(lo), _b16(hi))
            return
        for host in target.hosts():
            yield from self._host(host, target.bracketed, target.ports)

    def _sharded(self, target: Target, spec: tuple[int, int]) -> Iterator[Item]:
        """--shard I/N: the endpoints of this machine's share, one item each (the share of
        an endpoint depends on its name only, so no range survives it)."""
        index, count = spec
        for host in target.hosts():
            first = True
            for lo, hi in target.ports:
                for port in range(lo, hi + 1):
                    if shard_of(target.label(port, host), count) != index:
                        self.dropped += 1
                        continue
                    for item in self._host(host, target.bracketed, ((port, port),)):
                        if item is not _WAIT and not first:
                            item = (*item[:5], 0, item[6])  # dns_ms: the first one only
                        yield item
                    first = False

    def _host(self, host: str, bracketed: bool, ports: Any) -> Iterator[Item]:
        """An address or a name, with its addresses (a name: looked up on a thread)."""
        if self._v4_ok and _is_ipv4(host):  # the common line: its text is already the one
            yield ("A", host, bracketed, ((host, 0),), ports, 0, None)
            return
        try:
            address = literal(host, self.plan.family)
        except ResolveError as exc:
            yield ("A", host, bracketed, (), ports, 0, exc.code)
            return
        if address is not None:
            yield ("A", host, bracketed, ((address.ip, address.scope_id),), ports, 0, None)
            return
        kept = self._names.get(host)
        began = time.perf_counter()
        if kept is None:
            box: list[tuple[Item, ...] | str] = []
            _on_thread(self._lookup, host, box, name="probe-lookup")
            while not box:
                yield _WAIT
            kept = box[0]
            if len(self._names) >= NAMES_KEPT:
                self._names.pop(next(iter(self._names)))
            self._names[host] = kept
        found = kept
        dns_k = round((time.perf_counter() - began) * 1e6)  # ms, in thousandths
        if isinstance(found, str):
            yield ("A", host, bracketed, (), ports, dns_k, found)
        else:
            yield ("A", host, bracketed, found, ports, dns_k, None)

    def _lookup(self, host: str, box: list[tuple[Item, ...] | str]) -> None:
        from ..resolve import lookup  # a name in the input: getaddrinfo, as the engine's

        try:
            box.append(tuple((a.ip, a.scope_id) for a in lookup(host, self.plan.family)))
        except ResolveError as exc:
            box.append(exc.code)
        self._wake()


def exclusion_spans(exclude: Excluded | None) -> tuple[Any, ...] | None:
    """Every --exclude and --exclude-file as the core searches them: IPv4 intervals, IPv6
    intervals (16-byte bounds) and scattered IPv4 octet ranges."""
    if exclude is None:
        return None
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    patterns: list[Any] = []
    for part in exclude.parts:
        spans, scattered = part.spans()
        v4.extend(spans[4])
        v6.extend(spans[6])
        patterns.extend(p.segments for p in scattered if p.version == 4)
    return (_merged(v4), [(_b16(lo), _b16(hi)) for lo, hi in _merged(v6)], patterns)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _b16(value: int) -> bytes:
    return value.to_bytes(16, "big")


def _family(version: int) -> int:
    return AF_INET if version == 4 else AF_INET6


def _is_ipv4(host: str) -> bool:
    """A dotted-quad IPv4 address as ipaddress writes it (inet_pton takes no other form:
    no leading zeros, no shorthand)."""
    try:
        inet_pton(AF_INET, host)
    except OSError:
        return False
    return True


def _on_thread(work: Callable[..., None], *args: Any, name: str) -> None:
    """A daemon thread: a read or lookup that never returns must not keep the process."""
    import threading  # names and standard input only: start-up

    threading.Thread(target=work, args=args, name=name, daemon=True).start()
