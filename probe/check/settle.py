"""What this machine allows a plan, found out once before it runs: the open-files limit
raised and -C fitted to it, -C fitted to a source port range, and the source address bound
once to see that it can be. Planning (`plan.build_plan`) stays pure; this is where a check's
set-up touches the system, and what it lowers is said here, once, on stderr."""

from __future__ import annotations

from ..engine.nofile import fit_concurrency
from ..errors import UsageError, report
from ..words import plural
from .plan import Plan


def settle(plan: Plan) -> Plan:
    """The plan as this machine can run it; UsageError when the source cannot be bound."""
    options = plan.options
    if options.source is not None:
        _bindable(options.source, options.source_ports)
    asked = options.concurrency
    concurrency, room = fit_concurrency(asked)
    if plan.concurrency_given and asked > concurrency:
        report(
            f"-C {asked} lowered to {concurrency}: the open-files limit leaves room for {room}",
            prefix="",
        )
    ports = options.source_ports
    if ports is not None and ports[1] - ports[0] + 1 < concurrency:
        lo, hi = ports
        size = hi - lo + 1
        report(
            f"-C {asked} lowered to {size}: the source range {lo}-{hi} has "
            f"{plural(size, 'port')} (one attempt per port)",
            prefix="",
        )
        concurrency = size
    if concurrency == asked:
        return plan
    return plan.replace(
        options=options.replace(concurrency=concurrency),
        workers=max(1, min(plan.workers, concurrency)),
    )


def _bindable(source: tuple[str, int], ports: tuple[int, int] | None) -> None:
    from ..engine import check_source  # -s only: it imports socket

    address, port = source
    host = f"[{address}]" if ":" in address else address
    text = address if port == 0 and ports is None else f"{host}:{port}"
    if ports is not None:
        text = f"{host}:{ports[0]}-{ports[1]}"
    try:
        check_source(source, ports)
    except OSError as exc:
        raise UsageError(f"-s {text}: cannot bind: {exc.strerror}") from None
