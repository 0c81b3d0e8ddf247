"""The command line: a thin shell that parses, validates, and hands over to the engine.

Every mistake a user can type ends as exit 2 and one line on stderr naming the bad token;
nothing here prints a traceback. Heavy modules are imported inside the commands, so
`probe check host:port` starts quickly.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import EXIT_OK, EXIT_SIGNAL_BASE, EXIT_USAGE, ProbeError, fail, report
from .limits import MAX_INTERVAL, MAX_TIMEOUT
from .words import plural

if TYPE_CHECKING:
    from .check.plan import Format
    from .stages.spec import StageSpec


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


seconds = _number(float, lambda v: 0 < v <= MAX_TIMEOUT, f"seconds > 0 (at most {MAX_TIMEOUT:.0f})")
pause = _number(
    float, lambda v: 0 <= v <= MAX_INTERVAL, f"seconds >= 0 (at most {MAX_INTERVAL:.0f})"
)
positive = _number(int, lambda v: 1 <= v <= 10_000_000, "a whole number >= 1")
count_arg = _number(
    int, lambda v: 0 <= v <= 1_000_000_000, "a whole number >= 0 (0: until interrupted)"
)
retries_arg = _number(int, lambda v: 0 <= v <= 100, "a whole number 0-100")
rate_arg = _number(float, lambda v: 0 < v <= 10_000_000, "attempts per second > 0")
serve_rate = _number(float, lambda v: 0 <= v <= 1_000_000, "connections per second >= 0")
lag_arg = _number(float, lambda v: 0 <= v <= 60_000, "milliseconds >= 0 (0: no limit)")


def version_line() -> str:
    """`probe VERSION (core: native|python)`: the version from the installed package's
    metadata (the source tree's own `__version__` when it is not installed), and which
    sweep core this install runs."""
    from importlib import metadata

    from . import __version__
    from .engine.native import CORE

    try:
        version = metadata.version("probe")
    except metadata.PackageNotFoundError:
        version = __version__
    return f"probe {version} (core: {CORE})"


def _shard(text: str):  # type: ignore[no-untyped-def]  # argparse type for run --shard
    from .daemon.fleet import shard_arg

    return shard_arg(text)


class _Version(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        sys.stdout.write(version_line() + "\n")
        sys.stdout.flush()
        raise SystemExit(EXIT_OK)


CHECK_EPILOG = """\
examples:
  probe check 127.0.0.1:22                     one attempt, one line
  probe check localhost 8080 -c 0              tcping: every attempt until Ctrl-C, then a summary
  probe check 127.0.0.1 -p- --open             nmap -sT -p-: the open ports, the rest summarised
  probe check 127.0.0.0/30 -p 22,80 --exclude 127.0.0.2
  probe check -iL hosts.txt -p 443 --rate 200 -o records.jsonl
  some-command | probe check - --json          targets on standard input, JSON records out

exit status:
  0    every target had at least one open attempt
  1    some target had none
  2    bad usage or bad input (one line on stderr names it)
  130  interrupted by SIGINT (143: SIGTERM); the summary is still printed
  141  standard output closed by its reader
"""


# `probe check`'s options, one row each (flags, then add_argument's keywords), in --help order;
# -4 and -6 (dest "family") go into a group of their own: one of them at most.
CHECK_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("-p", "--ports"), dict(metavar="PORTS",
        help="ports for targets given without one: 22,80,8000-8100, service names (ssh,https); "
        "-p- for 1-65535")),
    (("-t", "--timeout"), dict(type=seconds, default=1.0, metavar="SECONDS",
        help="give up on one attempt after this long (default 1.0)")),
    (("-c", "--count"), dict(type=count_arg, default=1, metavar="N",
        help="attempts per target (default 1; 0: until interrupted, like tcping)")),
    (("-i", "--interval"), dict(type=pause, metavar="SECONDS",
        help="pause between attempts to the same target (default 1.0)")),
    (("-C", "--concurrency"), dict(type=positive, metavar="N",
        help="most attempts in flight (default 1000, never above the open-files limit)")),
    (("--rate",), dict(type=rate_arg, metavar="N",
        help="new attempts per second, paced evenly (default unlimited)")),
    (("--retries",), dict(type=retries_arg, default=0, metavar="N",
        help="extra attempts after a timeout (default 0)")),
    (("-s", "--source"), dict(metavar="ADDR[:PORT]",
        help="bind to this local address (and port) before connecting; ADDR:LO-HI confines "
        "the local port to a range")),
    (("-4",), dict(dest="family", action="store_const", const=4,
        help="use only IPv4 addresses of a name")),
    (("-6",), dict(dest="family", action="store_const", const=6,
        help="use only IPv6 addresses of a name")),
    (("--format",), dict(choices=("human", "json", "csv"), default=None,
        help="records on stdout: human lines (default), JSON lines, or CSV with a header row")),
    (("--json",), dict(action="store_true",
        help="same as --format json: one JSON record per attempt on stdout, nothing else")),
    (("-o",), dict(metavar="FILE", dest="json_file",
        help="also write the JSON records to FILE (stdout keeps the chosen form); -o - "
        "writes them to stdout, as --json")),
    (("--open",), dict(action="store_true", dest="open_only",
        help="write and show only open attempts (the others still count for the summary "
        "and the exit status)")),
    (("-iL",), dict(action="append", default=[], dest="input_lists", metavar="FILE",
        help="read targets from FILE (same as @FILE)")),
    (("--exclude",), dict(action="append", default=[], metavar="LIST",
        help="addresses, CIDRs and ranges never probed, comma-separated (also after a "
        "name resolves)")),
    (("--exclude-file",), dict(action="append", default=[], dest="exclude_files",
        metavar="FILE", help="exclusions from FILE, one or more per line, # comments")),
    (("--shard",), dict(metavar="I/N",
        help="probe only share I of N (0-based) of the endpoints, by a stable hash")),
    (("--workers",), dict(type=positive, metavar="N",
        help="worker processes for large runs, each with its own event loop (default: the "
        "usable CPUs; runs of a few endpoints and runs reading standard input use one)")),
    (("--lag-limit",), dict(type=lag_arg, default=2.0, metavar="MS",
        help="event loop lag that makes the engine hold concurrency down (default 2; "
        "0: never)")),
    (("--graceful-close",), dict(action="store_true",
        help="close open connections with FIN instead of RST (leaves TIME_WAIT sockets "
        "behind)")),
    (("--reflect",), dict(action="store_true",
        help="after the connect, read a `probe serve` answer: the endpoint the far side saw "
        "(seen_as) and whether it differs from the local one (translated)")),
    (("--histogram",), dict(action="store_true",
        help="with -c: each target's open latencies in buckets after its summary (psping -h)")),
    (("--tls",), dict(action="store_true",
        help="a TLS handshake after the connect (SNI and the name checked: the target's "
        "host); the record gains its version, cipher and certificate")),
    (("--tls-server-name",), dict(metavar="NAME",
        help="with --tls/--starttls: the name sent (SNI) and checked instead of the host")),
    (("--tls-ca-file",), dict(metavar="PATH",
        help="with --tls/--starttls: trust these CA certificates instead of the system's")),
    (("--tls-insecure",), dict(action="store_true",
        help="with --tls/--starttls: do not verify the certificate (still reported)")),
    (("--tls-cert-file",), dict(metavar="PATH",
        help="with --tls/--starttls: a client certificate (PEM; the key too, or --tls-key-file)")),
    (("--tls-key-file",), dict(metavar="PATH",
        help="with --tls-cert-file: its private key (PEM)")),
    (("--tls-min-version",), dict(metavar="VERSION",
        help="with --tls/--starttls: the lowest version accepted: TLS10, TLS11, TLS12 "
        "(default), TLS13")),
    (("--send",), dict(metavar="DATA",
        help="after the connect (and TLS), send DATA (escapes \\r \\n \\t \\0 \\xHH; "
        "nothing appended)")),
    (("--expect",), dict(metavar="REGEX",
        help="after the connect (and --send), read until a line matches REGEX (64 KiB at "
        "most, within -t); no match makes the attempt an error")),
    (("--starttls",), dict(choices=("smtp", "imap", "pop3", "xmpp"),
        help="the protocol's STARTTLS dialogue after the connect, then a TLS handshake")),
    (("-v", "--verbose"), dict(action="store_true",
        help="say on stderr which core runs the sweep (native or python) and why not the "
        "native one")),
    (("-V", "--version"), dict(action=_Version)),
)  # fmt: skip


def _columns() -> int:
    """The terminal's width by shutil.get_terminal_size's rule ($COLUMNS, else the terminal
    of standard output, else 80), without importing shutil (with zlib, bz2 and lzma)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    stdout = sys.__stdout__
    if columns <= 0 and stdout is not None:
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _CheckHelp(argparse.RawDescriptionHelpFormatter):
    """argparse formats `probe check`'s usage line in every parse (for its error messages),
    and its formatter asks shutil for the width: ~3 ms of every check. The same width here."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


# `probe check`'s own parser, as a sub-parser of `probe` and standing alone.
CHECK_PARSER: dict[str, Any] = dict(
    description="Probe TARGETs: HOST:PORTS, [IPV6]:PORTS, HOST (with -p), CIDR[:PORTS] "
    "(127.0.0.0/30, [::1]/128:22), octet ranges (127.0.0.1-3), @FILE (one per line), "
    "or - (standard input). `HOST PORT` is taken as HOST:PORT.",
    epilog=CHECK_EPILOG,
    formatter_class=_CheckHelp,
    allow_abbrev=False,
)


def _add_check_arguments(check: argparse.ArgumentParser) -> argparse.ArgumentParser:
    check.add_argument("targets", nargs="*", metavar="TARGET")
    family = check.add_mutually_exclusive_group()
    for flags, spec in CHECK_OPTIONS:
        (family if spec.get("dest") == "family" else check).add_argument(*flags, **spec)
    check.set_defaults(func=cmd_check)
    return check


def check_parser() -> argparse.ArgumentParser:
    """`probe check`'s parser alone, the same as `build_parser()`'s sub-parser: a check
    does not pay for building the other commands' parsers."""
    return _add_check_arguments(_Parser(prog="probe check", **CHECK_PARSER))


def build_parser() -> argparse.ArgumentParser:
    # `probe serve`'s defaults: imported here, not on `probe check`'s path
    from .serve.limits import DEFAULT_MAX_CONNECTIONS, DEFAULT_RATE, DEFAULT_WRITE_TIMEOUT

    parser = _Parser(
        prog="probe",
        description="TCP connect probes that show the local "
        "endpoint the kernel assigned to every attempt.",
        epilog="probe check --help lists the probe options, with examples and exit codes.",
        allow_abbrev=False,
    )
    parser.add_argument("-V", "--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_check_arguments(
        sub.add_parser("check", help="probe targets once (or -c times) and exit", **CHECK_PARSER)
    )

    run = sub.add_parser(
        "run",
        help="probe the config's targets on their schedule until SIGTERM",
        description="The daemon: probes every target of the config on its schedule, writes "
        "a record per attempt to the log, serves /metrics, /healthz and /probe. SIGHUP "
        "reloads the config and reopens the log file; SIGTERM or SIGINT drain and exit 0.",
    )
    run.add_argument("--config", default="config.toml", metavar="PATH",
                     help="the config file (default config.toml)")  # fmt: skip
    run.add_argument("--shard", type=_shard, metavar="I/N",
                     help="keep only share I of N (0-based) of the config's targets, by a "
                     "stable hash of each target's name; overrides PROBE_SHARD and "
                     "[cluster] shard")  # fmt: skip
    run.set_defaults(func=cmd_run)

    validate = sub.add_parser(
        "validate",
        help="check a config file and exit",
        description="Read a config file as `probe run` would (every key, value and target) "
        "without probing anything: exit 0 and a line with its target count when it is "
        "valid, exit 2 and one line naming the key and the problem when it is not.",
    )
    validate.add_argument("path", nargs="?", default="config.toml", metavar="PATH",
                          help="the config file (default config.toml)")  # fmt: skip
    validate.set_defaults(func=cmd_validate)

    serve = sub.add_parser(
        "serve",
        help="answer every connection with the endpoint it came from, and close",
        description="The responder for `probe check --reflect` and the mesh: for every "
        "accepted connection, one `accept` record on standard output and one JSON line to "
        'the client ({"seen":"ADDR:PORT","by":"NAME","at":...}), then close. Without '
        "ADDR:PORT, port 7070 on every address. SIGTERM or SIGINT stop it (exit 0).",
    )
    serve.add_argument("listen", nargs="*", metavar="ADDR:PORT",
                       help="where to listen (port 0: the kernel picks)")  # fmt: skip
    serve.add_argument("--name", metavar="NAME",
                       help="the name in every answer (default: the host name)")  # fmt: skip
    serve.add_argument("--max-connections", type=positive, default=DEFAULT_MAX_CONNECTIONS,
                       metavar="N", help="connections open at once; more are reset "
                       f"(default {DEFAULT_MAX_CONNECTIONS})")  # fmt: skip
    serve.add_argument("--rate", type=serve_rate, default=DEFAULT_RATE, metavar="N",
                       help="new connections per second from one source address, bursts "
                       f"of twice that; more are reset (default {DEFAULT_RATE:g}; 0: no "
                       "limit)")  # fmt: skip
    serve.add_argument("--timeout", type=seconds, default=DEFAULT_WRITE_TIMEOUT,
                       metavar="SECONDS", help="write deadline for an answer (default "
                       f"{DEFAULT_WRITE_TIMEOUT:g})")  # fmt: skip
    serve.add_argument("--format", choices=("json", "console"), default="json",
                       help="the records' form on standard output (default json)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    deploy = sub.add_parser(
        "deploy",
        help="list the shipped deployment files, or print one",
        description="Without NAME, list the deployment files shipped with probe (systemd "
        "unit, container file, alert rules, dashboard, Kubernetes examples); with NAME, "
        "write that file to standard output.",
    )
    deploy.add_argument("name", nargs="?", metavar="NAME")
    deploy.set_defaults(func=cmd_deploy)

    completion = sub.add_parser(
        "completion",
        help="print a shell's completion script",
        description="Write the completion script for SHELL to standard output, e.g. "
        "`probe completion bash > ~/.local/share/bash-completion/completions/probe`; zsh: "
        "into a directory of $fpath as _probe; fish: ~/.config/fish/completions/probe.fish.",
    )
    completion.add_argument("shell", choices=("bash", "zsh", "fish"), metavar="SHELL",
                            help="bash, zsh or fish")  # fmt: skip
    completion.set_defaults(func=cmd_completion)

    manual = sub.add_parser(
        "man",
        help="print the manual page, probe(1)",
        description="Write probe(1) in roff to standard output: `probe man | man -l -` reads "
        "it, `probe man > ~/.local/share/man/man1/probe.1` installs it for `man probe`.",
    )
    manual.set_defaults(func=cmd_man)
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from .daemon.config import load_config, resolved_targets

    config = load_config(args.path)
    count = len(resolved_targets(config))
    print(f"{args.path}: valid, {plural(count, 'target')}")
    if not count:
        sys.stdout.flush()
        report(no_targets_warning(args.path), prefix="warning")
    return EXIT_OK


def no_targets_warning(path: str) -> str:
    return f"{path} has no targets: probe run would probe nothing on its own"


def cmd_run(args: argparse.Namespace) -> int:
    from .daemon.app import run_daemon

    return run_daemon(args.config, args.shard)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve.command import run_serve
    from .serve.limits import ServeLimits

    limits = ServeLimits(args.max_connections, args.rate, args.timeout)
    return run_serve(args.listen, args.name, limits, args.format)


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    sys.stdout.write(script(args.shell))
    return EXIT_OK


def cmd_man(args: argparse.Namespace) -> int:
    from .manpage import manpage

    sys.stdout.write(manpage())
    return EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import command

    return command(args.name)


def _format(args: argparse.Namespace) -> Format:
    """`--format`, with `--json` as its alias (the two may not disagree)."""
    if args.json and args.format not in (None, "json"):
        fail(f"--json and --format {args.format} disagree: give one of them")
    fmt: Format = args.format or ("json" if args.json else "human")
    return fmt


def _ignored(args: argparse.Namespace) -> None:
    """Options that would change nothing are refused, never silently dropped."""
    if args.count == 1:
        if args.histogram:
            fail("--histogram needs -c N or -c 0: one attempt per target has no distribution")
        if args.interval is not None:
            fail(f"-i {args.interval:g} needs -c N or -c 0: it is the pause between attempts")


def _records_file(args: argparse.Namespace, fmt: Format) -> tuple[Format, str | None]:
    """`-o -`: the JSON records on standard output, as --json."""
    if args.json_file != "-":
        return fmt, args.json_file
    if args.format not in (None, "json"):
        fail(f"-o - and --format {args.format} disagree: standard output takes one form")
    return "json", None


def cmd_check(args: argparse.Namespace) -> int:
    from .check.command import check
    from .check.plan import build_plan

    _ignored(args)
    fmt, json_file = _records_file(args, _format(args))
    plan = build_plan(
        args.targets,
        ports=args.ports,
        timeout=args.timeout,
        count=args.count,
        interval=1.0 if args.interval is None else args.interval,
        concurrency=args.concurrency,
        rate=args.rate,
        retries=args.retries,
        source=args.source,
        family=args.family,
        fmt=fmt,
        workers=args.workers,
        graceful_close=args.graceful_close,
        exclude=args.exclude,
        exclude_files=args.exclude_files,
        input_lists=args.input_lists,
        open_only=args.open_only,
        json_file=json_file,
        shard=args.shard,
        lag_limit_ms=args.lag_limit,
        histogram=args.histogram,
        stages=_stages(args),
        verbose=args.verbose,
    )
    return check(plan)


def _stages(args: argparse.Namespace) -> StageSpec | None:
    """`--tls`, `--send`, `--expect`, `--starttls` and the TLS settings as stages, or None
    (a plain connect). Bad values: one line naming the flag, exit 2."""
    if not (
        args.tls or args.send or args.expect or args.starttls or args.reflect or _tls_flags(args)
    ):
        return None
    if _tls_flags(args) and not (args.tls or args.starttls):
        fail("the --tls-* settings need --tls or --starttls")
    from .stages.build import build_spec, tls_options

    def flag(key: str) -> str:
        return (
            "--tls-insecure" if key == "insecure_skip_verify" else "--tls-" + key.replace("_", "-")
        )

    try:
        options = tls_options(
            {
                "server_name": args.tls_server_name,
                "ca_file": args.tls_ca_file,
                "insecure_skip_verify": args.tls_insecure,
                "cert_file": args.tls_cert_file,
                "key_file": args.tls_key_file,
                "min_version": args.tls_min_version,
            },
            where="--tls",
            name=flag,
        )
        return build_spec(
            tls=args.tls,
            options=options,
            send=args.send,
            expect=args.expect,
            starttls=args.starttls,
            reflect=args.reflect,
        )
    except ValueError as exc:
        text = str(exc)
        fail(text if text.startswith("--") else f"--{text}")


def _tls_flags(args: argparse.Namespace) -> bool:
    return any(
        getattr(args, f"tls_{name}") not in (None, False)
        for name in ("server_name", "ca_file", "insecure", "cert_file", "key_file", "min_version")
    )


# Because -4 and -6 exist, argparse would read `-t -1` as two options; joining the pair
# makes it report the bad value instead.
def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    found: argparse.ArgumentParser = _subparsers(parser).choices[name]
    return found


def _join_negative_values(argv: Sequence[str], valued: frozenset[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if token in valued and nxt[:1] == "-" and nxt[1:2].isdigit():
            out.append(f"{token}={nxt}" if token.startswith("--") else f"{token}{nxt}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from .check.habits import VALUED, foreign_flag, split_attached

    words = _join_negative_values(sys.argv[1:] if argv is None else argv, VALUED)
    if not words:  # `probe` alone: what it does and its commands
        sys.stderr.write(build_parser().format_help())
        return EXIT_USAGE
    if words[:1] == ["check"]:
        rest = split_attached(words[1:])
        habit = foreign_flag(rest)
        if habit is not None:
            fail(habit)
        # Targets may stand on both sides of options, as with nmap and tcping; after `--`,
        # every word is a target.
        after: list[str] = []
        if "--" in rest:
            cut = rest.index("--")
            rest, after = rest[:cut], rest[cut + 1 :]
        args = check_parser().parse_intermixed_args(rest)
        args.targets = [*args.targets, *after]
    else:
        parser = build_parser()
        if not words[0].startswith("-"):
            _known_command(parser, words[0])
        args = parser.parse_args(words)
    try:
        code: int = args.func(args)
    except ProbeError as exc:  # the one edge where an error becomes a line and an exit code
        report(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_SIGNAL_BASE + signal.SIGINT
    return code


def _known_command(parser: argparse.ArgumentParser, word: str) -> None:
    """A mistyped command gets the nearest one (`probe chekc`: did you mean check?)."""
    commands = list(_subparsers(parser).choices)
    if word in commands:
        return
    import difflib

    near = difflib.get_close_matches(word, commands, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}? " if near else ""
    fail(f"unknown command {word!r}: {hint}(commands: {', '.join(commands)})")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise KeyError("no commands")


def console() -> NoReturn:
    """The `probe` console script. After `probe check`, every record is written and every
    writer closed; what the interpreter's teardown would still do is free modules and objects
    one by one, which the kernel does at once: 5 ms after one endpoint, 60 to 90 ms after a large
    sweep on a loaded machine. So a check ends with `os._exit` once stdout and stderr are
    flushed; the daemon and the other commands exit the usual way."""
    try:
        code = main()
    except KeyboardInterrupt:  # a SIGINT before a command took the signal over: no traceback
        code = EXIT_SIGNAL_BASE + signal.SIGINT
    if sys.argv[1:2] == ["check"]:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):  # let the usual exit say what it can
            sys.exit(code)
        os._exit(code)
    sys.exit(code)
