"""The command line: a thin shell that parses, validates, and hands over to the engine.

Every mistake a user can type ends as exit 2 and one line on stderr naming the bad token;
nothing here prints a traceback. Heavy modules are imported inside the commands, so
`probe check host:port` starts quickly.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from .errors import EXIT_OK, EXIT_SIGNAL_BASE, ProbeError, fail, report


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def _number(kind: Callable[[str], float], test: Callable[[float], bool], what: str):  # type: ignore[no-untyped-def]
    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value != value or not test(value):  # NaN fails every test
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    convert.__name__ = what
    return convert


seconds = _number(float, lambda v: 0 < v <= 86400, "seconds > 0 (at most 86400)")
pause = _number(float, lambda v: 0 <= v <= 86400, "seconds >= 0 (at most 86400)")
positive = _number(int, lambda v: 1 <= v <= 10_000_000, "a whole number >= 1")
count_arg = _number(int, lambda v: 1 <= v <= 1_000_000_000, "a whole number >= 1")
retries_arg = _number(int, lambda v: 0 <= v <= 100, "a whole number 0-100")
rate_arg = _number(float, lambda v: 0 < v <= 10_000_000, "attempts per second > 0")


class _Version(argparse.Action):
    """`probe VERSION (core: native|python)`: which sweep core this install runs."""

    def __init__(self, option_strings: list[str], dest: str, **kw: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from . import __version__
        from .engine.native import CORE

        print(f"probe {__version__} (core: {CORE})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="probe",
        description="TCP connect probes that show the local "
        "endpoint the kernel assigned to every attempt.",
    )
    parser.add_argument("-V", "--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = sub.add_parser(
        "check",
        help="probe targets once (or -c times) and exit",
        description="Probe TARGETs: HOST:PORTS, [IPV6]:PORTS, HOST (with "
        "-p), @FILE (one per line), or - (standard input).",
    )
    check.add_argument("targets", nargs="*", metavar="TARGET")
    check.add_argument(
        "-p",
        "--ports",
        metavar="PORTS",
        help="ports for targets given without one: 22,80,8000-8100",
    )
    check.add_argument(
        "-t",
        "--timeout",
        type=seconds,
        default=1.0,
        metavar="SECONDS",
        help="give up on one attempt after this long (default 1.0)",
    )
    check.add_argument(
        "-c",
        "--count",
        type=count_arg,
        default=1,
        metavar="N",
        help="attempts per target (default 1)",
    )
    check.add_argument(
        "-i",
        "--interval",
        type=pause,
        default=1.0,
        metavar="SECONDS",
        help="pause between attempts to the same target (default 1.0)",
    )
    check.add_argument(
        "-C",
        "--concurrency",
        type=positive,
        metavar="N",
        help="most attempts in flight (default 1000, never above the open-files limit)",
    )
    check.add_argument(
        "--rate",
        type=rate_arg,
        metavar="N",
        help="most new attempts per second (default unlimited)",
    )
    check.add_argument(
        "--retries",
        type=retries_arg,
        default=0,
        metavar="N",
        help="extra attempts after a timeout (default 0)",
    )
    check.add_argument(
        "-s",
        "--source",
        metavar="ADDR[:PORT]",
        help="bind to this local address (and port) before connecting",
    )
    fam = check.add_mutually_exclusive_group()
    fam.add_argument(
        "-4", dest="family", action="store_const", const=4, help="use only IPv4 addresses of a name"
    )
    fam.add_argument(
        "-6", dest="family", action="store_const", const=6, help="use only IPv6 addresses of a name"
    )
    check.add_argument(
        "--json", action="store_true", help="one JSON record per attempt on stdout, nothing else"
    )
    check.add_argument(
        "--workers",
        type=positive,
        metavar="N",
        help="worker processes for large runs, each with its own event loop (default: the "
        "usable CPUs; runs of a few attempts and runs reading standard input use one)",
    )
    check.add_argument(
        "--graceful-close",
        action="store_true",
        help="close open connections with FIN instead of RST (leaves TIME_WAIT sockets behind)",
    )
    check.add_argument(
        "--histogram",
        action="store_true",
        help="with -c: each target's open latencies in buckets after its summary (psping -h)",
    )
    check.set_defaults(func=cmd_check)

    run = sub.add_parser(
        "run",
        help="probe the config's targets on their schedule until SIGTERM",
        description="The daemon: probes every target of the config on its schedule, writes "
        "a record per attempt to the log, serves /metrics, /healthz and /probe. SIGHUP "
        "reloads the config and reopens the log file; SIGTERM or SIGINT drain and exit 0.",
    )
    run.add_argument("--config", default="config.toml", metavar="PATH",
                     help="the config file (default config.toml)")  # fmt: skip
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser("validate", help="check a config file and exit")
    validate.add_argument("path", nargs="?", default="config.toml", metavar="PATH")
    validate.set_defaults(func=cmd_validate)

    deploy = sub.add_parser(
        "deploy",
        help="list the shipped deployment files, or print one",
        description="Without NAME, list the deployment files shipped with probe (systemd "
        "unit, container file, alert rules, dashboard, Kubernetes examples); with NAME, "
        "write that file to standard output.",
    )
    deploy.add_argument("name", nargs="?", metavar="NAME")
    deploy.set_defaults(func=cmd_deploy)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from .daemon.config import load_config, resolved_targets

    config = load_config(args.path)
    print(f"{args.path}: valid, {len(resolved_targets(config))} targets")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon.app import run_daemon

    return run_daemon(args.config)


def cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import command

    return command(args.name)


def cmd_check(args: argparse.Namespace) -> int:
    from .check.command import CheckCommand

    return CheckCommand(args).run()


# Options that take a value. Because -4 and -6 exist, argparse would read `-t -1` as two
# options; joining the pair makes it report the bad value instead.
_VALUED = {
    "-p",
    "-t",
    "-c",
    "-i",
    "-C",
    "-s",
    "--ports",
    "--timeout",
    "--count",
    "--interval",
    "--concurrency",
    "--rate",
    "--retries",
    "--source",
}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def _join_negative_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if token in _VALUED and nxt[:1] == "-" and nxt[1:2].isdigit():
            out.append(f"{token}={nxt}" if token.startswith("--") else f"{token}{nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    words = _join_negative_values(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if words[:1] == ["check"]:
        # Targets may stand on both sides of options, as with nmap and tcping.
        args = _subparser(parser, "check").parse_intermixed_args(words[1:])
    else:
        args = parser.parse_args(words)
    try:
        code: int = args.func(args)
    except ProbeError as exc:  # the one edge where an error becomes a line and an exit code
        report(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_SIGNAL_BASE + signal.SIGINT
    return code
