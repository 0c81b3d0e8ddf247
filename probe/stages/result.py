"""What the stages after a connect found: the record's added keys, and the stage error
names (a bounded vocabulary: they are `error` label values of `probe_errors_total`)."""

from __future__ import annotations

import time
from typing import Any, Final

from ..plain import Plain

# The attempt's `error` when a stage failed (its `outcome` is then `error`).
TLS_HANDSHAKE: Final = "TLS_HANDSHAKE"  # no TLS session: protocol, version, reset, timeout
CERT_EXPIRED: Final = "CERT_EXPIRED"  # the chain verified but for a date (expired, not yet valid)
CERT_UNTRUSTED: Final = "CERT_UNTRUSTED"  # no path to a trusted root (self-signed, unknown CA)
HOSTNAME_MISMATCH: Final = "HOSTNAME_MISMATCH"  # the certificate is not for the name checked
EXPECT_MISMATCH: Final = "EXPECT_MISMATCH"  # closed, or the byte limit read, without a match
EXPECT_TIMEOUT: Final = "EXPECT_TIMEOUT"  # the deadline passed while waiting for a match
SEND_FAILED: Final = "SEND_FAILED"  # the peer reset the connection before a send
NOT_A_RESPONDER: Final = "NOT_A_RESPONDER"  # reflect: no `probe serve` answer by the deadline
STAGE_ERRORS: Final = (
    TLS_HANDSHAKE,
    CERT_EXPIRED,
    CERT_UNTRUSTED,
    HOSTNAME_MISMATCH,
    EXPECT_MISMATCH,
    EXPECT_TIMEOUT,
    SEND_FAILED,
    NOT_A_RESPONDER,
)


class StageResult(Plain):
    """Each field None while its stage has not run (and then absent from the record)."""

    __slots__ = (
        "cert_issuer",
        "cert_not_after",
        "cert_subject",
        "chain_expiry",
        "cipher",
        "error",
        "expect_ms",
        "matched",
        "reflected",
        "seen_as",
        "seen_by",
        "tls_ms",
        "tls_version",
        "translated",
    )
    error: str | None  # one of STAGE_ERRORS; None: every stage passed
    tls_ms: float | None
    tls_version: str | None  # "TLSv1.3"
    cipher: str | None
    cert_not_after: float | None  # the earliest notAfter the server sent, Unix seconds
    chain_expiry: float | None  # the verified chain's earliest notAfter, Unix seconds
    cert_subject: str | None
    cert_issuer: str | None
    expect_ms: float | None
    matched: str | None
    reflected: bool | None  # True once the reflect stage ran (whatever it found)
    seen_as: str | None  # `ADDR:PORT`: the endpoint the responder saw
    translated: bool | None  # seen_as differs from the socket's own endpoint
    seen_by: str | None  # the responder's name

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, None)

    def fields(self) -> dict[str, Any]:
        """The record's added keys, in the contract's order; a stage that did not run adds
        none (cert_not_after as ISO 8601 UTC, whole seconds, as certificates hold it)."""
        out: dict[str, Any] = {}
        if self.tls_ms is not None:
            out["tls_ms"] = round(self.tls_ms, 3)
            out["tls_version"] = self.tls_version
            out["cipher"] = self.cipher
            out["cert_not_after"] = iso_utc(self.cert_not_after)
            out["cert_subject"] = self.cert_subject
            out["cert_issuer"] = self.cert_issuer
        if self.expect_ms is not None:
            out["expect_ms"] = round(self.expect_ms, 3)
            out["matched"] = self.matched
        if self.reflected:
            out["seen_as"] = self.seen_as
            out["translated"] = self.translated
            out["seen_by"] = self.seen_by
        return out

    def human(self, now: float | None = None) -> list[str]:
        """The human line's added columns: version, cipher, days to the earliest expiry,
        the handshake's time; the matched line and the dialogue's time."""
        parts: list[str] = []
        if self.tls_ms is not None:
            if self.tls_version is not None:
                parts += [self.tls_version, self.cipher or "?"]
            if self.cert_not_after is not None:
                days = (self.cert_not_after - (time.time() if now is None else now)) / 86400
                parts.append(f"expires in {days:.0f} days" if days >= 0 else "expired")
            parts.append(f"tls {self.tls_ms:.2f} ms")
        if self.expect_ms is not None:
            if self.matched is not None:
                parts.append(repr(self.matched))
            parts.append(f"expect {self.expect_ms:.2f} ms")
        if self.seen_as is not None:
            parts.append(f"seen as {self.seen_as}" + (", translated" if self.translated else ""))
        return parts


def iso_utc(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
