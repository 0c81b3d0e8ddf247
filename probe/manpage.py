"""probe(1), generated from the command line's own parser by argparse-manpage, so the manual
cannot drift from `--help`. Imported by `probe man` only: no other command pays for it."""

from __future__ import annotations

import os

DESCRIPTION = "TCP connect probes that show the local endpoint of every attempt"


def manpage() -> str:
    """The roff source of probe(1): every command and option, then `probe check`'s examples
    and exit status."""
    from argparse_manpage.manpage import Manpage

    from .cli import CHECK_EPILOG, build_parser, version_line

    # argparse wraps usage lines to the terminal; man fills them itself.
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"
    try:
        page = Manpage(build_parser())
        page.source = version_line().split(" (", 1)[0]
        page.manual = "User Commands"
        page.description = DESCRIPTION
        text = str(page)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved
    return (
        text.rstrip("\n") + "\n" + _verbatim("PROBE CHECK EXAMPLES AND EXIT STATUS", CHECK_EPILOG)
    )


def _verbatim(title: str, text: str) -> str:
    """A section of preformatted lines (no filling, no adjusting), escaped for roff."""
    lines = [f'.SH "{title}"', ".nf"]
    for line in text.rstrip("\n").splitlines():
        line = line.replace("\\", "\\e").replace("-", "\\-")
        lines.append("\\&" + line if line.startswith((".", "'")) else line)
    lines.append(".fi")
    return "\n".join(lines) + "\n"
