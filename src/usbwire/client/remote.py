"""Talk to a USB/IP server from Python: list its devices, import one."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from usbwire.errors import ImportRefused, RemoteProtocolError, UsbwireError
from usbwire.protocol.connection import ClientConnection
from usbwire.protocol.constants import DEFAULT_PORT, OpStatus
from usbwire.protocol.pdu import (
    NEED_DATA,
    ConnectionClosed,
    DeviceInfo,
    Event,
    OpRepDevlist,
    OpRepImport,
    OpReqDevlist,
    OpReqImport,
)

CONNECT_TIMEOUT = 10.0


class ServerUnreachable(UsbwireError):
    """The server's address could not be resolved or connected to."""


async def open_connection(
    host: str, port: int = DEFAULT_PORT, timeout: float = CONNECT_TIMEOUT
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except socket.gaierror as error:
        raise ServerUnreachable(f"cannot resolve {host}: {error.strerror}") from None
    except ConnectionRefusedError:
        raise ServerUnreachable(f"{host}:{port}: connection refused (is a server running?)") from None
    except TimeoutError:
        raise ServerUnreachable(f"{host}:{port}: no answer within {timeout:g} s") from None
    except OSError as error:
        raise ServerUnreachable(f"{host}:{port}: {error.strerror or error}") from None
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return reader, writer


async def read_event(conn: ClientConnection, reader: asyncio.StreamReader) -> Event:
    """The next event, reading from ``reader`` as needed; a close mid-way is an error."""
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            conn.receive_data(await reader.read(65536))
            continue
        if isinstance(event, ConnectionClosed):
            raise RemoteProtocolError(
                "the server closed the connection", field="state", value=conn.state.name
            )
        return event  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Imported:
    """A successful import: the open socket, its connection state and the device record."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connection: ClientConnection
    device: DeviceInfo


async def list_devices(
    host: str, port: int = DEFAULT_PORT, timeout: float = CONNECT_TIMEOUT
) -> list[DeviceInfo]:
    """OP_REQ_DEVLIST: the devices ``host`` exports."""
    reader, writer = await open_connection(host, port, timeout)
    try:
        conn = ClientConnection()
        writer.write(conn.send(OpReqDevlist()))
        reply = await asyncio.wait_for(read_event(conn, reader), timeout)
        assert isinstance(reply, OpRepDevlist)
        return list(reply.devices)
    finally:
        writer.close()


async def import_device(
    host: str, busid: str, port: int = DEFAULT_PORT, timeout: float = CONNECT_TIMEOUT
) -> Imported:
    """OP_REQ_IMPORT: the connection, now in the URB phase, and the device record."""
    reader, writer = await open_connection(host, port, timeout)
    try:
        conn = ClientConnection()
        writer.write(conn.send(OpReqImport(busid=busid)))
        reply = await asyncio.wait_for(read_event(conn, reader), timeout)
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
    except BaseException:
        writer.close()
        raise
    return Imported(reader, writer, conn, reply.device)
