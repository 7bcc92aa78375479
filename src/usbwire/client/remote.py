"""Talk to a USB/IP server from Python: list its devices, import one."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from ssl import SSLContext, SSLError

from usbwire import auth
from usbwire.errors import AuthenticationFailed, ImportRefused, RemoteProtocolError, UsbwireError
from usbwire.protocol.connection import ClientConnection
from usbwire.protocol.constants import DEFAULT_PORT, OpStatus
from usbwire.protocol.pdu import (
    NEED_DATA,
    ConnectionClosed,
    DeviceInfo,
    Event,
    OpRepAuth,
    OpRepChallenge,
    OpRepDevlist,
    OpRepImport,
    OpReqAuth,
    OpReqChallenge,
    OpReqDevlist,
    OpReqImport,
)
from usbwire.streams import close_stream
from usbwire.tls import describe as describe_tls_error

CONNECT_TIMEOUT = 10.0


class ServerUnreachable(UsbwireError):
    """The server's address could not be resolved or connected to."""


# What a TLS client without the certificate a server requires sees: a close, no alert.
NO_CLIENT_CERTIFICATE = (
    "the server closed the TLS connection without answering (does it require a client certificate? "
    "give --cert and --key)"
)


def unreachable(error: OSError, host: str, port: int, timeout: float) -> ServerUnreachable:
    """One line for why connecting to ``host:port`` failed (TLS handshakes included)."""
    if isinstance(error, SSLError):
        return ServerUnreachable(f"{host}:{port}: {describe_tls_error(error)}")
    if isinstance(error, socket.gaierror):
        return ServerUnreachable(f"cannot resolve {host}: {error.strerror}")
    if isinstance(error, ConnectionRefusedError):
        return ServerUnreachable(f"{host}:{port}: connection refused (is a server running?)")
    if isinstance(error, TimeoutError):
        return ServerUnreachable(f"{host}:{port}: no answer within {timeout:g} s")
    return ServerUnreachable(f"{host}:{port}: {error.strerror or error}")


async def open_connection(
    host: str, port: int = DEFAULT_PORT, timeout: float = CONNECT_TIMEOUT, ssl: SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl, server_hostname=host if ssl else None), timeout
        )
    except OSError as error:
        raise unreachable(error, host, port, timeout) from None
    sock = writer.get_extra_info("socket")
    if sock is not None:  # None when a TLS server already dropped us after the handshake
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return reader, writer


async def read_event(conn: ClientConnection, reader: asyncio.StreamReader) -> Event:
    """The next event, reading from ``reader`` as needed; a close mid-way is an error."""
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            try:
                conn.receive_data(await reader.read(65536))
            except SSLError as error:
                # TLS 1.3 reports a refused client certificate on the first read...
                raise ServerUnreachable(describe_tls_error(error)) from None
            except ConnectionResetError:
                # ...or, when our request crossed the server's close, as a reset.
                raise RemoteProtocolError(
                    "the server reset the connection", field="state", value=conn.state.name
                ) from None
            continue
        if isinstance(event, ConnectionClosed):
            raise RemoteProtocolError("the server closed the connection", field="state", value=conn.state.name)
        return event  # type: ignore[return-value]


async def _reply(conn: ClientConnection, reader: asyncio.StreamReader, timeout: float, tls: bool) -> Event:
    try:
        return await asyncio.wait_for(read_event(conn, reader), timeout)
    except RemoteProtocolError as error:
        if tls and error.field == "state":
            raise ServerUnreachable(NO_CLIENT_CERTIFICATE) from None
        raise


@dataclass(frozen=True, slots=True)
class Imported:
    """A successful import: the open socket, its connection state and the device record."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connection: ClientConnection
    device: DeviceInfo


async def authenticate(
    conn: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, token: str, timeout: float
) -> None:
    """usbwire's challenge-response: prove we hold ``token`` without sending it."""
    writer.write(conn.send(OpReqChallenge()))
    try:
        challenge = await asyncio.wait_for(read_event(conn, reader), timeout)
    except RemoteProtocolError:
        raise AuthenticationFailed("the server does not speak usbwire's token authentication") from None
    assert isinstance(challenge, OpRepChallenge)
    mine = auth.nonce()
    writer.write(conn.send(OpReqAuth(nonce=mine, proof=auth.proof(token, challenge.nonce, mine))))
    verdict = await asyncio.wait_for(read_event(conn, reader), timeout)
    assert isinstance(verdict, OpRepAuth)
    if verdict.status != OpStatus.OK:
        raise AuthenticationFailed("the server refused the token")


async def list_devices(
    host: str,
    port: int = DEFAULT_PORT,
    timeout: float = CONNECT_TIMEOUT,
    ssl: SSLContext | None = None,
    token: str | None = None,
) -> list[DeviceInfo]:
    """OP_REQ_DEVLIST: the devices ``host`` exports (to us: a server may hide some)."""
    reader, writer = await open_connection(host, port, timeout, ssl)
    try:
        conn = ClientConnection()
        if token is not None:
            await authenticate(conn, reader, writer, token, timeout)
        writer.write(conn.send(OpReqDevlist()))
        reply = await _reply(conn, reader, timeout, ssl is not None)
        assert isinstance(reply, OpRepDevlist)
        return list(reply.devices)
    except TimeoutError as error:  # it took the connection and said nothing (not a USB/IP server?)
        raise unreachable(error, host, port, timeout) from None
    finally:
        await close_stream(writer)


async def import_device(
    host: str,
    busid: str,
    port: int = DEFAULT_PORT,
    timeout: float = CONNECT_TIMEOUT,
    ssl: SSLContext | None = None,
    token: str | None = None,
) -> Imported:
    """OP_REQ_IMPORT: the connection, now in the URB phase, and the device record."""
    reader, writer = await open_connection(host, port, timeout, ssl)
    try:
        conn = ClientConnection()
        if token is not None:
            await authenticate(conn, reader, writer, token, timeout)
        writer.write(conn.send(OpReqImport(busid=busid)))
        reply = await _reply(conn, reader, timeout, ssl is not None)
        assert isinstance(reply, OpRepImport)
        if reply.status != OpStatus.OK or reply.device is None:
            raise ImportRefused(busid, reply.status, reply.status.text)
        if reply.device.busid != busid:
            # usbip attach refuses this too: the server answered for another device.
            raise RemoteProtocolError(
                f"server answered for busid {reply.device.busid!r}",
                field="busid",
                value=reply.device.busid,
            )
    except TimeoutError as error:
        await close_stream(writer)
        raise unreachable(error, host, port, timeout) from None
    except BaseException:
        await close_stream(writer)
        raise
    return Imported(reader, writer, conn, reply.device)
