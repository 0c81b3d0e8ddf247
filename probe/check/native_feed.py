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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..address import ResolveError, literal
from ..syntax import (
    Exclusions,
    PortRanges,
    Target,
    TargetError,
    bounded_lines,
    iter_targets,
    read_targets,
    shard_of,
)
from ..syntax.files import open_file
from .plan import Plan

BATCH = 64  # targets per batch: a file's parse stalls the core's loop a fraction of a ms
NAMES_KEPT = 4096  # answers kept per run (the Python engine's resolver cache)

Item = tuple[Any, ...]
_WAIT: Any = object()  # nothing at hand: the core waits for the wake pipe
_END: Any = object()


class Feed:
    """Called by the core: the next batch, [] (wait for `wake_fd`), or None (the end).
    An input error ends the feed; it is kept in `error` for the caller."""

    def __init__(self, plan: Plan, index: int = 0, count: int = 1) -> None:
        self.plan = plan
        self.index, self.count = index, count  # this worker's share
        self.error: BaseException | None = None
        self.dropped = 0  # endpoints --shard gave to other machines, of every worker's
        self.dropped_own = 0  # and of the lines only this worker reads
        self._whole = False  # the target at hand is this worker's alone
        self._mine = True
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closed = False
        self._threads = False  # a thread of ours was started
        self._names: dict[str, tuple[Item, ...] | str] = {}
        self._v4_ok = plan.family != AF_INET6
        self._batches = self._run()

    @property
    def wake_fd(self) -> int:
        return self._read

    def __call__(self) -> list[Item] | None:
        return next(self._batches, None)

    def close(self) -> None:
        """After the sweep. With a thread of ours started (a lookup, a read of standard
        input), the pipe stays open: the thread may still wake it, and a closed descriptor's
        number may by then be another file's."""
        self._closed = True
        if not self._threads:
            os.close(self._read)
            os.close(self._write)

    def _wake(self) -> None:
        if self._closed:
            return
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
        plan = self.plan
        targets = iter_targets(plan.tokens, plan.default_ports)
        if not plan.blocking_input and self.count > 1:
            yield from self._shared(plan.tokens, plan.default_ports)
            return
        if not plan.blocking_input:
            yield from targets
            return
        import queue  # standard input or a FIFO only: start-up

        got: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads = True
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

    def _shared(self, tokens: Iterable[str], default_ports: PortRanges | None) -> Iterator[Target]:
        """Targets for one of several workers: the command line's all (the core interleaves
        their endpoints), but a file's lines taken in turn, each worker its own lines whole:
        a line of another worker's that is an address alone is not parsed here at all (the
        rest are, so every worker stops at the same bad line)."""
        for token in tokens:
            if not token.startswith("@"):
                self._whole = False
                yield from iter_targets([token], default_ports)
                continue
            path = token[1:]
            with open_file(path) as handle:
                lines = self._turns(bounded_lines(handle, path), default_ports is not None)
                try:
                    for target in read_targets(lines, path, default_ports):
                        if self._mine:
                            self._whole = True
                            yield target
                except UnicodeDecodeError:
                    raise TargetError(f"{path}: not UTF-8 text") from None

    def _turns(self, lines: Iterable[str], bare_is_valid: bool) -> Iterator[str]:
        """The lines, another worker's address-alone lines blanked (valid as they are)."""
        index, count = self.index, self.count
        for number, line in enumerate(lines):
            self._mine = number % count == index
            if not self._mine and bare_is_valid and _is_ipv4(line.split("#", 1)[0].strip()):
                yield "\n"
                continue
            yield line

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
                yield ("R", target.bracketed, target.ports, addresses.segments, self._whole)
            else:
                ((lo, hi),) = addresses.segments
                yield ("R6", target.bracketed, target.ports, _b16(lo), _b16(hi), self._whole)
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
                        if self._whole:
                            self.dropped_own += 1
                        else:
                            self.dropped += 1
                        continue
                    for item in self._host(host, target.bracketed, ((port, port),)):
                        if item is not _WAIT and not first:
                            item = (*item[:5], 0, *item[6:])  # dns_ms: the first one only
                        yield item
                    first = False

    def _host(self, host: str, bracketed: bool, ports: Any) -> Iterator[Item]:
        """An address or a name, with its addresses (a name: looked up on a thread)."""
        if self._v4_ok and _is_ipv4(host):  # the common line: its text is already the one
            yield ("A", host, bracketed, ((host, 0),), ports, 0, None, self._whole)
            return
        try:
            address = literal(host, self.plan.family)
        except ResolveError as exc:
            yield ("A", host, bracketed, (), ports, 0, exc.code, self._whole)
            return
        if address is not None:
            ip = ((address.ip, address.scope_id),)
            yield ("A", host, bracketed, ip, ports, 0, None, self._whole)
            return
        kept = self._names.get(host)
        began = time.perf_counter()
        if kept is None:
            box: list[tuple[Item, ...] | str] = []
            self._threads = True
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
            yield ("A", host, bracketed, (), ports, dns_k, found, self._whole)
        else:
            yield ("A", host, bracketed, found, ports, dns_k, None, self._whole)

    def _lookup(self, host: str, box: list[tuple[Item, ...] | str]) -> None:
        from ..resolve import lookup  # a name in the input: getaddrinfo, as the engine's

        try:
            box.append(tuple((a.ip, a.scope_id) for a in lookup(host, self.plan.family)))
        except ResolveError as exc:
            box.append(exc.code)
        self._wake()


def exclusion_spans(exclude: Exclusions | None) -> tuple[Any, ...] | None:
    """--exclude and --exclude-file as the core searches them: IPv4 intervals, IPv6
    intervals (16-byte bounds) and scattered IPv4 octet ranges."""
    if exclude is None:
        return None
    spans, scattered = exclude.spans()
    v6 = [(_b16(lo), _b16(hi)) for lo, hi in spans[6]]
    return (spans[4], v6, [p.segments for p in scattered if p.version == 4])


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
