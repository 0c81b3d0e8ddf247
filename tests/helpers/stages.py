"""Real servers on loopback for the stage tests: TLS with certificates from a test CA
(trustme), an expired one, one for another name, one from an untrusted CA, TLS 1.0 only,
one that accepts and never speaks, an SMTP-like banner with STARTTLS, and one that sends
10 MB without a newline. Each runs on an event loop in a thread of its own, so tests of
`probe check` (a subprocess), of the daemon and of the engine in-process can all use it."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import struct
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
FLOOD_BYTES = 10 * 1024 * 1024
NOW = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


@dataclass
class Certs:
    """The test CA (whose file clients trust), an untrusted one, and server contexts."""

    dir: Path
    ca: trustme.CA = field(default_factory=trustme.CA)
    other_ca: trustme.CA = field(default_factory=trustme.CA)

    @property
    def ca_file(self) -> str:
        path = self.dir / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def context(self, kind: str = "valid") -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if kind == "expired":
            cert = self.ca.issue_cert(
                "localhost",
                "127.0.0.1",
                not_before=NOW - datetime.timedelta(days=30),
                not_after=NOW - datetime.timedelta(days=1),
            )
        elif kind == "wrong_name":
            cert = self.ca.issue_cert("other.invalid")
        elif kind == "untrusted":
            cert = self.other_ca.issue_cert("localhost", "127.0.0.1")
        else:
            cert = self.ca.issue_cert("localhost", "127.0.0.1")
        cert.configure_cert(ctx)
        if kind == "tls10":
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx.minimum_version = ssl.TLSVersion.TLSv1
                ctx.maximum_version = ssl.TLSVersion.TLSv1
        return ctx

    def leaf_not_after(self) -> datetime.datetime:
        """trustme's default notAfter for issued certificates."""
        from cryptography import x509

        cert = self.ca.issue_cert("localhost", "127.0.0.1")
        parsed = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
        return parsed.not_valid_after_utc


def tls10_possible() -> str | None:
    """None when this OpenSSL can still make a TLS 1.0 handshake; else why not."""
    if not ssl.HAS_TLSv1:
        return "this OpenSSL has no TLS 1.0"
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
    except (ssl.SSLError, ValueError) as exc:
        return f"this OpenSSL refuses TLS 1.0: {exc}"
    return None


class Servers:
    """An event loop in a thread and the servers on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._servers: list[asyncio.Server] = []
        self._held: list[asyncio.StreamWriter] = []

    def run(self, coro: Awaitable[Any]) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(10)

    def start(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> int:
        """A listener on 127.0.0.1 (a free port) with `handler` per connection: its port."""

        async def serve() -> int:
            extra: dict[str, Any] = {} if ssl_context is None else {"ssl_handshake_timeout": 30}
            server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context, **extra)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return int(self.run(serve()))

    def tls(self, ctx: ssl.SSLContext) -> int:
        """A TLS server that answers nothing after the handshake, and closes when the client
        does."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _until_closed(reader, writer)

        return self.start(handler, ctx)

    def silent(self) -> int:
        """Accepts and never speaks (a TLS client waits for the ServerHello that never
        comes: the handshake stalls)."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await _until_closed(reader, writer)

        return self.start(handler)

    def flood(self) -> int:
        """10 MB without a newline, then it holds the connection open."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            chunk = b"x" * 65536
            try:
                for _ in range(FLOOD_BYTES // len(chunk)):
                    writer.write(chunk)
                    await writer.drain()
            except (ConnectionError, OSError):
                writer.close()
                return
            await _until_closed(reader, writer)

        return self.start(handler)

    def smtp(self, ctx: ssl.SSLContext, offer: bool = True) -> int:
        """An SMTP-like server: banner, EHLO (with STARTTLS offered), STARTTLS upgrades."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(b"220-localhost ESMTP test\r\n220 ready\r\n")
                while line := await reader.readline():
                    verb = line.strip().upper()
                    if verb.startswith(b"EHLO"):
                        writer.write(b"250-localhost\r\n250-SIZE 1000\r\n")
                        writer.write(b"250 STARTTLS\r\n" if offer else b"250 HELP\r\n")
                    elif verb == b"STARTTLS" and offer:
                        writer.write(b"220 go ahead\r\n")
                        await writer.drain()
                        await writer.start_tls(ctx)
                        await _until_closed(reader, writer)
                        return
                    else:
                        writer.write(b"502 no\r\n")
                    await writer.drain()
            except (ConnectionError, OSError, ssl.SSLError):
                pass
            writer.close()

        return self.start(handler)

    def starttls(self, protocol: str, ctx: ssl.SSLContext) -> int:
        """An IMAP, POP3 or XMPP server as far as its STARTTLS: greeting, the upgrade
        command's answer, then TLS."""
        greeting, command, answer = {
            "imap": (b"* OK IMAP4rev1 ready\r\n", b"STARTTLS", b"a1 OK Begin TLS now\r\n"),
            "pop3": (b"+OK POP3 ready\r\n", b"STLS", b"+OK Begin TLS\r\n"),
            "xmpp": (
                b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' "
                b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
                b"<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'>"
                b"<required/></starttls></stream:features>",
                b"<starttls",
                b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>",
            ),
        }[protocol]

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                if protocol == "xmpp":
                    await reader.readuntil(b">")  # the client's stream header first
                    await reader.readuntil(b">")
                writer.write(greeting)
                seen = b""
                while command not in seen.upper() and command.upper() not in seen.upper():
                    chunk = await reader.read(4096)
                    if not chunk:
                        writer.close()
                        return
                    seen += chunk
                writer.write(answer)
                await writer.drain()
                await writer.start_tls(ctx)
                await _until_closed(reader, writer)
            except (ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
                writer.close()

        return self.start(handler)

    def banner(self, text: bytes, close: bool = False) -> int:
        """Writes `text`, then waits for the client to close (or closes, with `close`)."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(text)
            if close:
                await writer.drain()
                writer.close()
                return
            await _until_closed(reader, writer)

        return self.start(handler)

    def reset(self) -> int:
        """Resets the connection (SO_LINGER 0) once the client's first bytes arrive (a TLS
        client's ClientHello)."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

        return self.start(handler)

    def echo(self) -> int:
        """Sends back every line it reads."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    writer.write(line)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            writer.close()

        return self.start(handler)

    def close(self) -> None:
        async def stop() -> None:
            for server in self._servers:
                server.close()

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


async def _until_closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.read(65536):
            pass
    except (ConnectionError, OSError, ssl.SSLError):
        pass
    writer.close()


@contextmanager
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.close()
