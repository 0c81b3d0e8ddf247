"""Flags people type from other tools (nmap, naabu, tcping): each gets one line saying what
probe uses instead, before argparse could read them as something else (`-sT` as `-s T`,
`-host` as `-h ost`, `-oX` as `-o X`)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NO_PING = "probe does not ping first: every target is probed; drop it"
_TIMING = "nmap's timing templates: use --rate N and -C N"
_TOP = "probe has no port-frequency table: give -p PORTS, or -p- for all 65535"
_VERBOSE = "probe has one verbosity level (-v: which core ran); --json shows every field"
_DETECT = "probe makes TCP connect attempts only (no service or OS detection); drop it"
_NC_ZERO = "nc's -z: probe always connects and sends nothing (zero-I/O); drop it"
_TCPING_T = "tcping's -t (keep going until stopped) is -c 0 here; -t SECONDS is the timeout"

FOREIGN: dict[str, str] = {
    "-n": "no DNS switch needed: names are resolved once per run; for tcping's -n N use -c N",
    "-w": "nc's and tcping's -w (timeout): use -t SECONDS",
    "-z": _NC_ZERO,
    "-q": "nc's -q: probe sends nothing and closes each connection at once; drop it",
    "-host": "naabu's -host: give targets directly: probe check HOST -p PORTS",
    "-list": "naabu's -list FILE: use -iL FILE or @FILE",
    "-l": "naabu's -l FILE: use -iL FILE or @FILE",
    "-rate": "use --rate N",
    "-json": "use --json",
    "-ports": "use -p PORTS",
    "-timeout": "use -t SECONDS",
    "-retries": "use --retries N",
    "-silent": "stdout holds only records with --json; the summary goes with human output",
    "-exclude-hosts": "use --exclude LIST",
    "-eh": "use --exclude LIST",
    "-top-ports": _TOP,
    "-tp": _TOP,
    "--top-ports": _TOP,
    "-F": _TOP,
    "--min-rate": "use --rate N (a steady rate)",
    "--max-rate": "use --rate N (a steady rate)",
    "--max-retries": "use --retries N",
    "--host-timeout": "use -t SECONDS (per attempt)",
    "--excludefile": "use --exclude-file FILE",
    "--reason": "every record says why: its outcome and error",
    "-iR": "probe never picks random targets",
    "-e": "use -s ADDR to bind a local address",
    "-vv": _VERBOSE,
    "-d": _VERBOSE,
    "-A": _DETECT,
    "-O": _DETECT,
    "-t0": "tcping's -t (repeat until stopped) is -c 0 here; -t is the timeout",
}

_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"-s[A-Za-z]+"),
        "nmap's scan types do not apply: probe always makes TCP "
        "connect attempts (nmap -sT); -s ADDR binds a source address",
    ),
    (re.compile(r"-[nuvw46]*z[nuvw46]*"), _NC_ZERO),  # nc -zv, -nvz, ...
    (re.compile(r"-P[A-Za-z0-9]*"), _NO_PING),
    (re.compile(r"-T([0-5]|[a-z]+)"), _TIMING),
    (
        re.compile(r"-o[XGNASJM]"),
        "nmap's output formats: use -o FILE for JSON records, or --format json|csv on stdout",
    ),
]

# probe's own options that take a value: the token after one is a value, never a flag.
VALUED = frozenset(
    {
        "-p", "-t", "-c", "-i", "-C", "-s", "-o", "-iL",
        "--ports", "--timeout", "--count", "--interval", "--concurrency", "--rate",
        "--retries", "--source", "--format", "--exclude", "--exclude-file", "--shard",
        "--workers", "--lag-limit",
    }
)  # fmt: skip


def foreign_flag(words: Iterable[str]) -> str | None:
    """The message for the first flag another tool's users type, or None."""
    skip = False
    listed = list(words)
    for i, word in enumerate(listed):
        if skip:
            skip = False
            continue
        if word == "--":
            return None
        if word in ("-t", "--timeout") and not _is_number(listed[i + 1 : i + 2]):
            given = f"got {listed[i + 1]!r}" if i + 1 < len(listed) else "got nothing"
            if word == "--timeout":  # tcping's -t is not what a long-option user meant
                return f"--timeout needs SECONDS, {given}"
            return f"-t needs SECONDS, {given}: {_TCPING_T}"
        if word in VALUED:
            skip = True
            continue
        hint = FOREIGN.get(word)
        if hint is None:
            hint = next((h for p, h in _PATTERNS if p.fullmatch(word)), None)
        if hint is not None:
            return f"unknown option {word}: {hint}"
    return None


def _is_number(words: list[str]) -> bool:
    """Is the next word (if any) meant as a number, as -t's value must be? (`1s` is: the
    parser then says what a value looks like; `127.0.0.1` is a target.)"""
    if not words:
        return False
    word = words[0]
    try:
        float(word)
    except ValueError:
        return word[:1] in tuple("0123456789.") and word.count(".") <= 1 and ":" not in word
    return True


def split_attached(words: Iterable[str]) -> list[str]:
    """`-iLfile` → `-iL file`: argparse would read it as `-i Lfile`."""
    out: list[str] = []
    for word in words:
        if word.startswith("-iL") and len(word) > 3:
            out.extend(["-iL", word[3:].removeprefix("=")])
        else:
            out.append(word)
    return out
