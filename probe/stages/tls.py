"""The TLS stage: a client context per `TlsOptions`, the handshake on the connection's
transport (asyncio's `start_tls`: OpenSSL works through memory BIOs, the loop never waits on
the socket), and what the session and the certificates say.

Failures are named as the attempt's `error`: a certificate that verified but for its
dates is CERT_EXPIRED, one for another name HOSTNAME_MISMATCH, any other verification
failure CERT_UNTRUSTED, and everything else about the handshake TLS_HANDSHAKE.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
import warnings
from typing import Any

from .result import CERT_EXPIRED, CERT_UNTRUSTED, HOSTNAME_MISMATCH, TLS_HANDSHAKE, StageResult
from .spec import TlsOptions

# OpenSSL's X509_V_ERR_* codes (x509_vfy.h) that name the reason for the record.
_DATES = {9, 10}  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
_NAME = {62, 63, 64}  # HOSTNAME_MISMATCH, EMAIL_MISMATCH, IP_ADDRESS_MISMATCH

# RFC 4514's short names for the attributes a certificate's names usually hold.
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "domainComponent": "DC",
    "streetAddress": "STREET",
}


class TlsFailure(Exception):
    """The handshake failed; `error` is the record's stage error name."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error


@functools.lru_cache(maxsize=64)
def client_context(options: TlsOptions) -> ssl.SSLContext:
    """One context per distinct options (loading a trust store costs milliseconds: never per
    attempt). Raises OSError or ssl.SSLError for files that cannot be used."""
    context = ssl.create_default_context(cafile=options.ca_file)
    if options.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.cert_file is not None:
        context.load_cert_chain(options.cert_file, options.key_file)
    if options.min_version is not None:
        version = ssl.TLSVersion[options.min_version.replace(".", "_")]
        if version < ssl.TLSVersion.TLSv1_2:
            # OpenSSL 3 refuses TLS 1.0 and 1.1 below security level 0; asking for them
            # is asking to be able to talk to such a server and report it.
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # deprecated versions, asked for by name
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
    return context


def check_options(options: TlsOptions) -> None:
    """ValueError naming the file or setting that cannot be used (config load, CLI)."""
    if options.key_file is not None and options.cert_file is None:
        raise ValueError("key_file needs cert_file")
    try:
        client_context(options)
    except (OSError, ssl.SSLError, ValueError, KeyError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
        files = [f for f in (options.ca_file, options.cert_file, options.key_file) if f]
        what = " / ".join(files) or "the TLS settings"
        raise ValueError(f"cannot use {what}: {reason}") from None


async def handshake(
    writer: asyncio.StreamWriter, options: TlsOptions, host: str, result: StageResult
) -> None:
    """TLS on the writer's connection; fills `result`'s TLS fields or raises TlsFailure."""
    context = client_context(options)
    name = options.server_name or host
    t0 = time.perf_counter()
    try:
        await writer.start_tls(context, server_hostname=name, ssl_handshake_timeout=3600)
    except ssl.SSLCertVerificationError as exc:
        code = exc.verify_code
        error = CERT_EXPIRED if code in _DATES else HOSTNAME_MISMATCH if code in _NAME else None
        raise TlsFailure(error or CERT_UNTRUSTED, exc.verify_message or str(exc)) from None
    except (ssl.SSLError, OSError, EOFError) as exc:
        raise TlsFailure(TLS_HANDSHAKE, str(exc)) from None
    finally:  # however it ended (a cancel at the deadline too): how long it took
        result.tls_ms = (time.perf_counter() - t0) * 1000
    describe(writer.get_extra_info("ssl_object"), result)


def describe(sslobj: Any, result: StageResult) -> None:
    """Version, cipher and the certificates' names and dates from an established session.
    blackbox's two expiries: the earliest notAfter of the certificates the server sent
    (probe_ssl_earliest_cert_expiry), and the earliest of the verified chain's
    (probe_ssl_last_chain_expiry_timestamp_seconds; none when verification was skipped)."""
    if sslobj is None:
        return
    result.tls_version = sslobj.version()
    cipher = sslobj.cipher()
    result.cipher = cipher[0] if cipher else None
    inner = getattr(sslobj, "_sslobj", None)  # the chains: public only from Python 3.13
    sent = _infos(inner, "get_unverified_chain")
    verified = _infos(inner, "get_verified_chain")
    if not sent:
        leaf = sslobj.getpeercert()
        sent = [leaf] if leaf else []
    if not sent:
        return
    leaf = sent[0]
    result.cert_subject = _name(leaf.get("subject", ()))
    result.cert_issuer = _name(leaf.get("issuer", ()))
    expiries = [_not_after(info) for info in sent]
    result.cert_not_after = min(e for e in expiries if e is not None) if any(expiries) else None
    chain = [e for e in (_not_after(info) for info in verified) if e is not None]
    result.chain_expiry = min(chain) if chain else None


def _infos(inner: Any, method: str) -> list[dict[str, Any]]:
    get = getattr(inner, method, None)
    if get is None:
        return []
    try:
        return [cert.get_info() for cert in get() or ()]
    except (ssl.SSLError, ValueError):
        return []


def _not_after(info: dict[str, Any]) -> float | None:
    text = info.get("notAfter")
    if not text:
        return None
    try:
        return float(ssl.cert_time_to_seconds(text))
    except ValueError:
        return None


def _name(rdns: Any) -> str | None:
    """A certificate name as RFC 4514 writes it (most significant last): `CN=x,O=y`."""
    parts = []
    for rdn in reversed(rdns or ()):
        parts.append("+".join(f"{_SHORT.get(k, k)}={_escape(v)}" for k, v in rdn))
    return ",".join(parts) or None


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out
