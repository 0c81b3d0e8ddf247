"""Shell completion scripts (bash, zsh, fish), generated from the command line's own parser
by shtab. Imported by `probe completion` only: no other command pays for it."""

from __future__ import annotations


def script(shell: str) -> str:
    import shtab

    from .cli import build_parser

    text: str = shtab.complete(build_parser(), shell)
    return text
