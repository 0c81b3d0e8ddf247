"""What to do after the connect: plain, picklable data, without asyncio or ssl.

The CLI's plan, the daemon's config and `/probe?module=` all build a `StageSpec`; the
runner (`probe.stages.runner`) executes it on a connected socket. Kept free of heavy
imports so that a `probe check` without stages pays nothing for them.
"""

from __future__ import annotations

from ..plain import Frozen

# blackbox_exporter's expect reads lines with Go's bufio.Scanner, whose longest line is
# 64 KiB: the same bound here, on the bytes read while one expect waits for its match.
EXPECT_BYTE_LIMIT = 64 * 1024
MATCHED_MAX = 128  # characters of the matched line kept in the record

# min_version: blackbox's (Go's) names and OpenSSL's, both accepted.
TLS_VERSIONS = {
    "TLS10": "TLSv1",
    "TLS11": "TLSv1.1",
    "TLS12": "TLSv1.2",
    "TLS13": "TLSv1.3",
    "TLSv1": "TLSv1",
    "TLSv1.0": "TLSv1",
    "TLSv1.1": "TLSv1.1",
    "TLSv1.2": "TLSv1.2",
    "TLSv1.3": "TLSv1.3",
}

STARTTLS_PROTOCOLS = ("smtp", "imap", "pop3", "xmpp")


class TlsOptions(Frozen):
    """blackbox's `tls_config`: how to make and check the handshake."""

    __slots__ = (
        "ca_file",
        "cert_file",
        "insecure_skip_verify",
        "key_file",
        "min_version",
        "server_name",
    )
    server_name: str | None  # SNI and the name checked; None: the target's host
    ca_file: str | None  # None: the system's trust store
    insecure_skip_verify: bool
    cert_file: str | None  # a client certificate (and its key)
    key_file: str | None
    min_version: str | None  # an OpenSSL name from TLS_VERSIONS' values; None: TLSv1.2

    def __init__(
        self,
        server_name: str | None = None,
        ca_file: str | None = None,
        insecure_skip_verify: bool = False,
        cert_file: str | None = None,
        key_file: str | None = None,
        min_version: str | None = None,
    ) -> None:
        self._set(locals())


class Step(Frozen):
    """One of blackbox's `query_response` entries: wait for `expect` (a regex matched
    against each line read), then write `send`, then begin TLS if `starttls`."""

    __slots__ = ("expect", "refuse", "send", "starttls")
    expect: str | None
    send: bytes | None
    starttls: bool
    # A line matching this before `expect` does ends the wait at once, as a mismatch (a
    # protocol's refusal: SMTP's 502 to STARTTLS). The STARTTLS dialogues' own.
    refuse: str | None

    def __init__(
        self,
        expect: str | None = None,
        send: bytes | None = None,
        starttls: bool = False,
        refuse: str | None = None,
    ) -> None:
        self._set(locals())


class StageSpec(Frozen):
    """Every stage of one attempt, in blackbox's order: `tls` right after the connect,
    then the `starttls` protocol's dialogue (TLS begins at its end), then the steps
    (send/expect; a step may itself begin TLS, as blackbox's `starttls: true`)."""

    __slots__ = ("expect_limit", "reflect", "starttls", "steps", "tls", "tls_options")
    reflect: bool  # read a `probe serve` answer right after the connect (before any TLS)
    tls: bool  # a handshake right after the connect
    tls_options: TlsOptions  # for that handshake and for any starttls
    starttls: str | None  # one of STARTTLS_PROTOCOLS
    steps: tuple[Step, ...]
    expect_limit: int  # bytes one expect may read before it gives up

    def __init__(
        self,
        tls: bool = False,
        tls_options: TlsOptions | None = None,
        starttls: str | None = None,
        steps: tuple[Step, ...] = (),
        expect_limit: int = EXPECT_BYTE_LIMIT,
        reflect: bool = False,
    ) -> None:
        tls_options = tls_options if tls_options is not None else TlsOptions()
        self._set(locals())

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.starttls is not None or any(s.starttls for s in self.steps)


def decode_send(text: str) -> bytes:
    """`send` text to bytes: the escapes `\\r`, `\\n`, `\\t`, `\\0`, `\\xHH` and `\\\\` are
    decoded, the rest is UTF-8. Nothing is appended: `PING\\r\\n` sends exactly that."""
    import re

    out = bytearray()
    for part in re.split(_ESCAPE, text):
        if part.startswith("\\") and len(part) > 1:
            out += _ESCAPES.get(part) or bytes([int(part[2:], 16)])
        else:
            out += part.encode("utf-8")
    return bytes(out)


_ESCAPE = r"(\\(?:x[0-9a-fA-F]{2}|[rnt0\\]))"
_ESCAPES = {"\\r": b"\r", "\\n": b"\n", "\\t": b"\t", "\\0": b"\0", "\\\\": b"\\"}


def check_regex(text: str) -> str:
    """The regex, if it compiles; else ValueError naming the problem."""
    import re

    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"bad regex {text!r}: {exc}") from None
    return text


def tls_version(text: str) -> str:
    """A min_version name (`TLS12`, `TLSv1.2`) as OpenSSL's; ValueError listing the names."""
    try:
        return TLS_VERSIONS[text]
    except KeyError:
        names = ", ".join(("TLS10", "TLS11", "TLS12", "TLS13"))
        raise ValueError(f"unknown TLS version {text!r} (one of {names})") from None
