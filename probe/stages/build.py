"""A `StageSpec` from settings as a user writes them (the command line's flags, a config
table): each value checked here, once, with ValueError naming the setting that is wrong."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .spec import STARTTLS_PROTOCOLS, StageSpec, Step, TlsOptions, check_regex, decode_send
from .spec import tls_version as version_name

# The keys of a `tls` table ([targets.tls], [modules.NAME.tls]) and their meaning.
TLS_KEYS = (
    "server_name",
    "ca_file",
    "insecure_skip_verify",
    "cert_file",
    "key_file",
    "min_version",
)
STEP_KEYS = ("expect", "send", "starttls")


def tls_options(
    table: Mapping[str, Any], where: str = "tls", name: Callable[[str], str] | None = None
) -> TlsOptions:
    """`[....tls]`'s keys (TLS_KEYS) as TlsOptions; the files are opened now, so a bad path
    fails at load time and not at the first attempt. `name(key)`: how a message names a
    key (default `where.key`)."""
    named = name or (lambda key: f"{where}.{key}")
    for key in table:
        if key not in TLS_KEYS:
            raise ValueError(f"{named(key)}: unknown key (one of {', '.join(TLS_KEYS)})")
    text = {k: table.get(k) for k in TLS_KEYS if k != "insecure_skip_verify"}
    for key, value in text.items():
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{named(key)}: expected a string")
    insecure = table.get("insecure_skip_verify") or False
    if not isinstance(insecure, bool):
        raise ValueError(f"{named('insecure_skip_verify')}: expected true or false")
    minimum = text["min_version"]
    options = TlsOptions(
        server_name=text["server_name"] or None,
        ca_file=text["ca_file"],
        insecure_skip_verify=insecure,
        cert_file=text["cert_file"],
        key_file=text["key_file"],
        min_version=None if minimum is None else _named(named("min_version"), minimum),
    )
    if options != TlsOptions():
        from .tls import check_options  # ssl: only when TLS settings are given

        try:
            check_options(options)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return options


def build_spec(
    *,
    tls: bool = False,
    options: TlsOptions | None = None,
    send: str | None = None,
    expect: str | None = None,
    starttls: str | None = None,
    steps: Sequence[Mapping[str, Any]] = (),
    expect_limit: int | None = None,
    reflect: bool = False,
) -> StageSpec | None:
    """The stages, or None when there are none (a plain connect). `send` then `expect` are
    one exchange (send first); `steps` are blackbox `query_response` entries (expect, then
    send, then starttls)."""
    made: list[Step] = []
    if send is not None:
        made.append(Step(send=_send("send", send)))
    if expect is not None:
        made.append(Step(expect=_regex("expect", expect)))
    for i, step in enumerate(steps):
        made.append(_step(f"query_response[{i}]", step))
    if starttls is not None and starttls not in STARTTLS_PROTOCOLS:
        names = ", ".join(STARTTLS_PROTOCOLS)
        raise ValueError(f"starttls: unknown protocol {starttls!r} (one of {names})")
    if not tls and starttls is None and not made and not reflect:
        if options is not None and options != TlsOptions():
            raise ValueError("TLS settings without tls = true or starttls")
        return None
    spec = StageSpec(
        tls=tls, tls_options=options, starttls=starttls, steps=tuple(made), reflect=reflect
    )
    if expect_limit is not None:
        spec = spec.replace(expect_limit=expect_limit)
    return spec


def _step(where: str, table: Mapping[str, Any]) -> Step:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table of {', '.join(STEP_KEYS)}")
    for key in table:
        if key not in STEP_KEYS:
            raise ValueError(f"{where}.{key}: unknown key (one of {', '.join(STEP_KEYS)})")
    expect, send, starttls = table.get("expect"), table.get("send"), table.get("starttls", False)
    if not isinstance(starttls, bool):
        raise ValueError(f"{where}.starttls: expected true or false")
    return Step(
        expect=None if expect is None else _regex(f"{where}.expect", expect),
        send=None if send is None else _send(f"{where}.send", send),
        starttls=starttls,
    )


def _regex(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected a regular expression")
    try:
        return check_regex(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _send(where: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: expected text to send")
    return decode_send(value)


def _named(where: str, value: str) -> str:
    try:
        return version_name(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
