"""Drive an imported device from Python: control, bulk, interrupt and iso transfers.

Many transfers may be in flight at once; each is one CMD_SUBMIT matched to its RET_SUBMIT by
seqnum. A transfer whose caller gives up (timeout or task cancellation) is UNLINKed, as the
kernel's vhci does, and the caller gets the exception only once the server has answered, so
the endpoint is never left with a transfer the caller believes is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from ssl import SSLContext

from usbwire.client.remote import Imported, import_device
from usbwire.errors import DeviceGone, ProtocolError, TransferError
from usbwire.protocol.codec import unpack_iso_data
from usbwire.protocol.constants import DEFAULT_PORT, Direction, Speed, TransferType, UrbFlag
from usbwire.protocol.descriptors import ConfigurationDescriptor, DeviceDescriptor, EndpointTable
from usbwire.protocol.pdu import (
    NEED_DATA,
    CmdSubmit,
    CmdUnlink,
    ConnectionClosed,
    IsoPacket,
    RetSubmit,
    RetUnlink,
)
from usbwire.streams import close_stream

log = logging.getLogger("usbwire.client")

GET_DESCRIPTOR, SET_CONFIGURATION, SET_INTERFACE, CLEAR_FEATURE = 6, 9, 11, 1
# How long the server gets to answer an UNLINK before we give up on the connection.
UNLINK_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class IsoResult:
    """An isochronous transfer: per-packet results and the data at each packet's offset."""

    data: bytes
    packets: tuple[IsoPacket, ...]
    start_frame: int
    error_count: int


class _Unlinked(Exception):
    """The server confirmed our UNLINK: the transfer was cancelled."""


class RemoteDevice:
    """One imported device. Build it with :func:`connect` (or :func:`open_device`)."""

    def __init__(self, imported: Imported) -> None:
        self.info = imported.device
        self._reader = imported.reader
        self._writer = imported.writer
        self._conn = imported.connection
        self._seqnum = 0
        self._pending: dict[int, asyncio.Future[RetSubmit]] = {}
        self._unlinks: dict[int, int] = {}  # CMD_UNLINK seqnum -> target seqnum
        self._closed: str | None = None
        self._receiver: asyncio.Task[None] | None = None
        self.endpoints = EndpointTable()
        self.device_descriptor: DeviceDescriptor | None = None

    @property
    def speed(self) -> Speed:
        return self.info.speed

    async def start(self) -> None:
        """Start receiving and read the device's descriptors."""
        self._receiver = asyncio.get_running_loop().create_task(self._receive())
        raw = await self.control_transfer(0x80, GET_DESCRIPTOR, 0x0100, 0, 18)
        assert isinstance(raw, bytes)
        self.device_descriptor = DeviceDescriptor.parse(raw)
        for index in range(self.device_descriptor.bNumConfigurations):
            self.endpoints.add(await self.configuration_descriptor(index))
        self.endpoints.set_configuration(self.info.bConfigurationValue)

    async def configuration_descriptor(self, index: int) -> ConfigurationDescriptor:
        head = await self.control_transfer(0x80, GET_DESCRIPTOR, 0x0200 | index, 0, 9)
        assert isinstance(head, bytes)
        total = struct.unpack_from("<H", head, 2)[0] if len(head) >= 4 else 9
        raw = await self.control_transfer(0x80, GET_DESCRIPTOR, 0x0200 | index, 0, total)
        assert isinstance(raw, bytes)
        return ConfigurationDescriptor.parse(raw)

    async def string(self, index: int, langid: int = 0x0409) -> str:
        raw = await self.control_transfer(0x80, GET_DESCRIPTOR, 0x0300 | index, langid, 255)
        assert isinstance(raw, bytes)
        return raw[2 : raw[0]].decode("utf-16-le", errors="replace") if raw else ""

    async def close(self) -> None:
        self._fail_all("closed")
        await close_stream(self._writer)
        if self._receiver is not None:
            self._receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._receiver

    # -- transfers ------------------------------------------------------------------------

    async def control_transfer(
        self,
        request_type: int,
        request: int,
        value: int,
        index: int,
        data_or_length: bytes | int = 0,
        timeout: float | None = None,
    ) -> bytes | int:
        """One control transfer on endpoint 0: IN returns the bytes, OUT the count written."""
        direction = Direction.IN if request_type & 0x80 else Direction.OUT
        data, length = _split(direction, data_or_length)
        setup = struct.pack("<BBHHH", request_type, request, value, index, length)
        ret = await self.submit(ep=0, direction=direction, length=length, data=data, setup=setup, timeout=timeout)
        _raise_for(ret)
        if request_type == 0x00 and request == SET_CONFIGURATION:
            self.endpoints.set_configuration(value & 0xFF)
        elif request_type == 0x01 and request == SET_INTERFACE:
            self.endpoints.set_interface(index & 0xFF, value & 0xFF)
        return ret.data if direction == Direction.IN else ret.actual_length

    async def set_configuration(self, value: int) -> None:
        await self.control_transfer(0x00, SET_CONFIGURATION, value, 0)

    async def set_interface(self, interface: int, alternate: int) -> None:
        await self.control_transfer(0x01, SET_INTERFACE, alternate, interface)

    async def clear_halt(self, endpoint: int) -> None:
        await self.control_transfer(0x02, CLEAR_FEATURE, 0, endpoint)

    async def bulk_transfer(
        self,
        endpoint: int,
        data_or_length: bytes | int,
        timeout: float | None = None,
        *,
        zero_packet: bool = False,
    ) -> bytes | int:
        return await self._transfer(endpoint, data_or_length, timeout, TransferType.BULK, zero_packet)

    async def interrupt_transfer(
        self, endpoint: int, data_or_length: bytes | int, timeout: float | None = None
    ) -> bytes | int:
        return await self._transfer(endpoint, data_or_length, timeout, TransferType.INTERRUPT, False)

    async def _transfer(
        self, endpoint: int, data_or_length: bytes | int, timeout: float | None, kind: TransferType, zlp: bool
    ) -> bytes | int:
        direction = Direction.IN if endpoint & 0x80 else Direction.OUT
        number = endpoint & 0x0F
        descriptor = self.endpoints.get(number, direction)
        if descriptor is None or descriptor.transfer_type != kind:
            raise TransferError(-32, f"endpoint 0x{endpoint:02x} is not a {kind.name.lower()} endpoint now")
        data, length = _split(direction, data_or_length)
        flags = UrbFlag.ZERO_PACKET if zlp and direction == Direction.OUT else 0
        ret = await self.submit(
            ep=number,
            direction=direction,
            length=length,
            data=data,
            flags=flags,
            interval=self._interval(descriptor.bInterval, kind),
            timeout=timeout,
        )
        _raise_for(ret)
        return ret.data if direction == Direction.IN else ret.actual_length

    async def iso_transfer(
        self, endpoint: int, packets: Sequence[int] | Sequence[bytes], timeout: float | None = None
    ) -> IsoResult:
        """IN: ``packets`` are the packet lengths; OUT: the packets' bytes."""
        direction = Direction.IN if endpoint & 0x80 else Direction.OUT
        number = endpoint & 0x0F
        descriptor = self.endpoints.get(number, direction)
        if descriptor is None or descriptor.transfer_type != TransferType.ISOCHRONOUS:
            raise TransferError(-32, f"endpoint 0x{endpoint:02x} is not an isochronous endpoint now")
        lengths = [p if isinstance(p, int) else len(p) for p in packets]
        offsets = [sum(lengths[:i]) for i in range(len(lengths))]
        data = b"" if direction == Direction.IN else b"".join(p for p in packets if isinstance(p, bytes))
        iso = tuple(IsoPacket(offset, length) for offset, length in zip(offsets, lengths, strict=True))
        ret = await self.submit(
            ep=number,
            direction=direction,
            length=sum(lengths),
            data=data,
            flags=UrbFlag.ISO_ASAP,
            interval=self._interval(descriptor.bInterval, TransferType.ISOCHRONOUS),
            iso_packets=iso,
            timeout=timeout,
        )
        if ret.status and not ret.iso_packets:
            _raise_for(ret)
        spread = unpack_iso_data(ret.data, ret.iso_packets, sum(lengths)) if direction == Direction.IN else b""
        return IsoResult(bytes(spread), ret.iso_packets, ret.start_frame, ret.error_count)

    def _interval(self, b_interval: int, kind: TransferType) -> int:
        # What the Linux USB core puts in urb->interval: frames at full/low speed,
        # microframes (2**(bInterval-1)) at high speed and above, and always >= 1.
        if kind == TransferType.INTERRUPT and self.speed < Speed.HIGH:
            return max(1, b_interval)
        return 1 << max(0, min(b_interval, 16) - 1)

    async def submit(
        self,
        *,
        ep: int,
        direction: Direction,
        length: int = 0,
        data: bytes = b"",
        setup: bytes = bytes(8),
        flags: int = 0,
        interval: int = 0,
        iso_packets: tuple[IsoPacket, ...] = (),
        timeout: float | None = None,
    ) -> RetSubmit:
        """One raw URB; returns its RET_SUBMIT. Timeout or cancellation UNLINKs it."""
        if self._closed:
            raise DeviceGone(self._closed)
        seqnum = self._next_seqnum()
        if direction == Direction.IN:
            flags |= UrbFlag.DIR_IN
        cmd = CmdSubmit(
            seqnum=seqnum,
            devid=self.info.devid,
            direction=direction,
            ep=ep,
            transfer_flags=int(flags),
            transfer_buffer_length=length,
            number_of_packets=len(iso_packets),
            interval=interval,
            setup=setup,
            data=data,
            iso_packets=iso_packets,
        )
        future: asyncio.Future[RetSubmit] = asyncio.get_running_loop().create_future()
        self._pending[seqnum] = future
        self._writer.write(self._conn.send(cmd))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (TimeoutError, asyncio.CancelledError):
            await self._unlink(seqnum, future)
            raise

    async def _unlink(self, target: int, future: asyncio.Future[RetSubmit]) -> None:
        if future.done() or self._closed:
            return
        seqnum = self._next_seqnum()
        self._unlinks[seqnum] = target
        self._writer.write(self._conn.send(CmdUnlink(seqnum=seqnum, devid=self.info.devid, unlink_seqnum=target)))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(future), UNLINK_GRACE)

    def _next_seqnum(self) -> int:
        # Unique among outstanding requests; like vhci, wrap and never use 0.
        self._seqnum = self._seqnum % 0xFFFF_FFFF + 1
        return self._seqnum

    async def _receive(self) -> None:
        conn = self._conn
        try:
            while True:
                event = conn.next_event()
                if event is NEED_DATA:
                    conn.receive_data(await self._reader.read(262144))
                    continue
                if isinstance(event, ConnectionClosed):
                    self._fail_all("the server closed the connection")
                    return
                if isinstance(event, RetSubmit):
                    future = self._pending.pop(event.seqnum, None)
                    if future is not None and not future.done():
                        future.set_result(event)
                elif isinstance(event, RetUnlink):
                    target = self._unlinks.pop(event.seqnum, None)
                    future = self._pending.pop(target, None) if target is not None and event.status else None
                    if future is not None and not future.done():
                        future.set_exception(_Unlinked())
        except ProtocolError as error:
            log.warning("%s: protocol error from the server: %s", self.info.busid, error)
            self._fail_all(f"protocol error: {error}")
            self._writer.close()
        except (ConnectionError, OSError) as error:
            self._fail_all(str(error))

    def _fail_all(self, reason: str) -> None:
        self._closed = self._closed or reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(DeviceGone(reason))
        self._pending.clear()


def _split(direction: Direction, data_or_length: bytes | int) -> tuple[bytes, int]:
    if direction == Direction.IN:
        if not isinstance(data_or_length, int):
            raise TypeError("an IN transfer takes a length")
        return b"", data_or_length
    if isinstance(data_or_length, int):
        if data_or_length:
            raise TypeError("an OUT transfer takes bytes")
        return b"", 0  # a zero-length OUT: no data stage
    return bytes(data_or_length), len(data_or_length)


def _raise_for(ret: RetSubmit) -> None:
    if ret.status:
        raise TransferError(ret.status)


async def open_device(
    host: str,
    busid: str,
    *,
    port: int = DEFAULT_PORT,
    timeout: float = 10.0,
    ssl: SSLContext | None = None,
    token: str | None = None,
) -> RemoteDevice:
    """Import ``busid`` from ``host`` and read its descriptors; close it when done."""
    device = RemoteDevice(await import_device(host, busid, port, timeout, ssl, token))
    try:
        await asyncio.wait_for(device.start(), timeout)
    except BaseException:
        await device.close()
        raise
    return device


@contextlib.asynccontextmanager
async def connect(
    host: str,
    busid: str,
    *,
    port: int = DEFAULT_PORT,
    timeout: float = 10.0,
    ssl: SSLContext | None = None,
    token: str | None = None,
) -> AsyncIterator[RemoteDevice]:
    """``async with connect(host, busid) as device:`` a device imported for the block."""
    device = await open_device(host, busid, port=port, timeout=timeout, ssl=ssl, token=token)
    try:
        yield device
    finally:
        await device.close()
