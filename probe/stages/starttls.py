"""`starttls = "PROTO"`: the protocol's own upgrade dialogue as send/expect steps, the last
of which begins TLS. Each step waits for its reply, then sends (blackbox's order). The
replies are each protocol's success lines: RFC 3207 (SMTP), RFC 3501 (IMAP), RFC 2595
(POP3), RFC 6120 (XMPP); a refusal of the upgrade (SMTP 4xx/5xx, IMAP NO/BAD, POP3 -ERR,
XMPP <failure>) ends the wait at once, as a mismatch."""

from __future__ import annotations

from .spec import STARTTLS_PROTOCOLS, Step


def starttls_steps(protocol: str, host: str) -> tuple[Step, ...]:
    """The steps for `protocol` (one of STARTTLS_PROTOCOLS) to a server named `host`."""
    if protocol == "smtp":
        return (
            Step(expect=r"^220 ", send=b"EHLO probe\r\n"),  # a greeting's last line: "220 "
            Step(expect=r"^250 ", send=b"STARTTLS\r\n"),  # the EHLO reply's last line
            Step(expect=r"^220", starttls=True, refuse=r"^[45]\d\d"),
        )
    if protocol == "imap":
        return (
            Step(expect=r"^\* OK", send=b"a1 STARTTLS\r\n"),
            Step(expect=r"^a1 OK", starttls=True, refuse=r"^a1 (NO|BAD)"),
        )
    if protocol == "pop3":
        return (
            Step(expect=r"^\+OK", send=b"STLS\r\n"),
            Step(expect=r"^\+OK", starttls=True, refuse=r"^-ERR"),
        )
    if protocol == "xmpp":
        stream = (
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
            "xmlns:stream='http://etherx.jabber.org/streams' "
            f"to='{host}' version='1.0'>"
        ).encode()
        return (
            Step(send=stream),
            Step(expect=r"<starttls", send=b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
            Step(expect=r"<proceed", starttls=True, refuse=r"<failure"),
        )
    names = ", ".join(STARTTLS_PROTOCOLS)
    raise ValueError(f"unknown starttls protocol {protocol!r} (one of {names})")
