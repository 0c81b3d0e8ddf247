"""The stage keys of the config: per target, in `[defaults]` and in `[modules.NAME]`, as
one `StageSpec` per target (or per module, for `/probe?module=NAME`).

Keys (the same in all three places):
  tls = true | false | { server_name, ca_file, insecure_skip_verify, cert_file, key_file,
        min_version }   (a table turns TLS on, or with `starttls` configures its handshake)
  send = "TEXT"  expect = "REGEX"          (send first, then expect)
  query_response = [{ expect, send, starttls }, ...]   (blackbox's steps)
  starttls = "smtp" | "imap" | "pop3" | "xmpp"
  reflect = true | false                   (read a `probe serve` answer after the connect)
and per target or in `[defaults]`: module = "NAME". A target's stages are, key by key, its
own, else its module's, else `[defaults]`'s; none of them at all is a plain connect.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..stages.build import build_spec, tls_options
from ..stages.spec import StageSpec

STAGE_KEYS = ("tls", "send", "expect", "query_response", "starttls", "reflect")
MODULE_KEY = "module"
MODULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
_PATH = re.compile(r"([A-Za-z_]+)(?:\[(\d+)\])?")

Path = tuple[str | int, ...]


class StageConfigError(ValueError):
    """A stage key that cannot be used: `at` is its key path, `problem` the message."""

    def __init__(self, at: Path, problem: str) -> None:
        super().__init__(problem)
        self.at = at
        self.problem = problem


def fresh_files() -> None:
    """A config load reads the TLS files again (a renewed CA or client certificate under the
    same path): the contexts made for the last load are forgotten. Within one load, targets
    with the same settings share one context."""
    tls = sys.modules.get("probe.stages.tls")
    if tls is not None:
        tls.client_context.cache_clear()


def stage_table(table: Mapping[str, Any]) -> dict[str, Any]:
    """The stage keys present in a target's, `[defaults]`' or a module's table."""
    return {k: table[k] for k in STAGE_KEYS if k in table}


def resolve(layers: Sequence[Mapping[str, Any]], at: Path) -> StageSpec | None:
    """The stages of the layers merged key by key (later wins), or None for none. `at`:
    the key path errors are reported under (the last layer that set the key is the one
    shown: the target's own table when it has the key)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(stage_table(layer))
    if not merged:
        return None
    tls = merged.get("tls", False)
    starttls = merged.get("starttls")
    if starttls is not None and not isinstance(starttls, str):
        raise StageConfigError((*at, "starttls"), "expected a string: smtp, imap, pop3, xmpp")
    options = None
    direct = False
    if isinstance(tls, bool):
        direct = tls
    elif isinstance(tls, Mapping):
        try:
            options = tls_options(tls)  # its messages start `tls.KEY:` or `tls:`
        except ValueError as exc:
            raise _located(at, str(exc)) from None
        direct = starttls is None
    else:
        raise StageConfigError((*at, "tls"), "expected true, false or a table of TLS settings")
    reflect = merged.get("reflect", False)
    if not isinstance(reflect, bool):
        raise StageConfigError((*at, "reflect"), "expected true or false")
    steps = merged.get("query_response", ())
    if not isinstance(steps, list | tuple):
        raise StageConfigError((*at, "query_response"), "expected an array of tables")
    try:
        return build_spec(
            tls=direct,
            options=options,
            send=merged.get("send"),
            expect=merged.get("expect"),
            starttls=starttls,
            steps=steps,
            reflect=reflect,
        )
    except ValueError as exc:
        raise _located(at, str(exc)) from None


def check_module_name(name: str, modules: Mapping[str, object], at: Path) -> str:
    """`module = NAME` must name a `[modules.NAME]` table."""
    if not isinstance(name, str):
        raise StageConfigError(at, "expected a string: the name of a [modules.NAME] table")
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=1)
        hint = f'; did you mean "{close[0]}"?' if close else ""
        known = ", ".join(sorted(modules)) or "none"
        raise StageConfigError(at, f"no [modules.{name}] table (modules: {known}){hint}")
    return name


def _located(at: Path, message: str) -> StageConfigError:
    """A builder's message `key[0].sub: problem` as the key path and the problem."""
    head, sep, problem = message.partition(": ")
    if not sep:
        return StageConfigError(at, message)
    path: list[str | int] = list(at)
    for part in head.split("."):
        m = _PATH.fullmatch(part)
        if m is None:
            return StageConfigError(at, message)
        path.append(m.group(1))
        if m.group(2) is not None:
            path.append(int(m.group(2)))
    return StageConfigError(tuple(path), problem)
