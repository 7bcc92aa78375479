"""An emulated CDC-ACM serial port (what Linux calls /dev/ttyACMn).

The host's writes come out of :meth:`Serial.read` on the server side and :meth:`Serial.write`
goes to the host. :class:`PtyBridge` connects the two to a pseudo-terminal, so any program on
the server (screen, minicom, a test) can talk to the remote host through a tty.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from dataclasses import dataclass

from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.requests import Recipient, RequestType, Setup
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed, TransferType

CDC_CLASS, CDC_DATA_CLASS = 0x02, 0x0A
ACM_SUBCLASS, AT_PROTOCOL = 0x02, 0x01
NOTIFY_EP, DATA_EP = 3, 2


class CdcRequest(enum.IntEnum):
    SET_LINE_CODING = 0x20
    GET_LINE_CODING = 0x21
    SET_CONTROL_LINE_STATE = 0x22
    SEND_BREAK = 0x23


SERIAL_STATE_NOTIFICATION = 0x20
DCD, DSR = 0x01, 0x02  # bits of the SERIAL_STATE notification's UART state
DTR, RTS = 0x01, 0x02  # bits of SET_CONTROL_LINE_STATE's wValue


@dataclass(frozen=True, slots=True)
class LineCoding:
    """CDC 1.2 table 17: rate, stop bits (0 = 1, 1 = 1.5, 2 = 2), parity, data bits."""

    baud: int = 115200
    stop_bits: int = 0
    parity: int = 0
    data_bits: int = 8

    def to_bytes(self) -> bytes:
        return struct.pack("<IBBB", self.baud, self.stop_bits, self.parity, self.data_bits)

    @classmethod
    def from_bytes(cls, raw: bytes) -> LineCoding:
        if len(raw) != 7:
            raise Stall("line coding is 7 bytes")
        return cls(*struct.unpack("<IBBB", raw))


def _functional(subtype: int, *body: int) -> bytes:
    return bytes([3 + len(body), 0x24, subtype, *body])


def _descriptor(max_packet: int) -> DeviceDescriptor:
    functional = b"".join(
        [
            _functional(0x00, 0x10, 0x01),  # header, CDC 1.10
            _functional(0x01, 0x00, 1),  # call management: none, data interface 1
            _functional(0x02, 0x02),  # ACM: line coding and serial state supported
            _functional(0x06, 0, 1),  # union: control 0, data 1
        ]
    )
    # Interface association so hosts group both interfaces into one function.
    association = bytes([8, 11, 0, 2, CDC_CLASS, ACM_SUBCLASS, AT_PROTOCOL, 0])
    control = Interface(
        number=0,
        interface_class=CDC_CLASS,
        interface_subclass=ACM_SUBCLASS,
        interface_protocol=AT_PROTOCOL,
        name="CDC ACM control",
        extra=functional,
        endpoints=(Endpoint(NOTIFY_EP, Direction.IN, TransferType.INTERRUPT, 16, interval=16),),
    )
    data = Interface(
        number=1,
        interface_class=CDC_DATA_CLASS,
        name="CDC ACM data",
        endpoints=(
            Endpoint(DATA_EP, Direction.OUT, TransferType.BULK, max_packet),
            Endpoint(DATA_EP, Direction.IN, TransferType.BULK, max_packet),
        ),
    )
    return DeviceDescriptor(
        vendor_id=0x1209,
        product_id=0x0005,
        device_class=0xEF,  # miscellaneous: the function is described by the association
        device_subclass=0x02,
        device_protocol=0x01,
        manufacturer="usbwire",
        product="Emulated serial port",
        serial="ACM0001",
        configurations=(Configuration(value=1, interfaces=(control, data), extra=association),),
    )


class Serial(Device):
    """A serial port whose far end is this Python object."""

    def __init__(self, speed: Speed = Speed.HIGH, buffer_size: int = 1 << 20) -> None:
        max_packet = {Speed.FULL: 64, Speed.HIGH: 512}.get(speed, 1024)
        super().__init__(_descriptor(max_packet), speed)
        self.line_coding = LineCoding()
        self.control_lines = 0
        self.buffer_size = buffer_size
        self._to_host = bytearray()
        self._from_host = bytearray()
        self._to_host_ready = asyncio.Event()
        self._from_host_ready = asyncio.Event()
        self._from_host_room = asyncio.Event()
        self._serial_state = 0
        self._notify = asyncio.Event()

    # -- the server side's end of the line ---------------------------------------------

    async def read(self, limit: int = 65536) -> bytes:
        """Bytes the host wrote; waits until there are some."""
        while not self._from_host:
            self._from_host_ready.clear()
            await self._from_host_ready.wait()
        chunk = bytes(self._from_host[:limit])
        del self._from_host[:limit]
        self._from_host_room.set()
        return chunk

    def write(self, data: bytes) -> None:
        """Queue bytes for the host to read."""
        self._to_host += data
        self._to_host_ready.set()

    @property
    def to_host_pending(self) -> int:
        return len(self._to_host)

    def set_serial_state(self, state: int) -> None:
        """Signal DCD/DSR (and the rest of CDC's UART state bits) to the host."""
        self._serial_state = state
        self._notify.set()

    # -- the USB side ---------------------------------------------------------------------

    async def handle_out(self, endpoint: Endpoint, data: bytes) -> None:
        # A full buffer NAKs the host, exactly like a real UART with flow control.
        while len(self._from_host) >= self.buffer_size:
            self._from_host_room.clear()
            await self._from_host_room.wait()
        self._from_host += data
        self._from_host_ready.set()

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        if endpoint.number == NOTIFY_EP:
            await self._notify.wait()
            self._notify.clear()
            # SERIAL_STATE: bmRequestType 0xA1, interface 0, 2 data bytes.
            return struct.pack("<BBHHHH", 0xA1, SERIAL_STATE_NOTIFICATION, 0, 0, 2, self._serial_state)[:length]
        while not self._to_host:
            self._to_host_ready.clear()
            await self._to_host_ready.wait()
        chunk = bytes(self._to_host[:length])
        del self._to_host[:length]
        return chunk

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type != RequestType.CLASS or setup.recipient != Recipient.INTERFACE:
            raise Stall(f"unsupported request {setup}")
        if setup.request == CdcRequest.SET_LINE_CODING:
            self.line_coding = LineCoding.from_bytes(data)
            return None
        if setup.request == CdcRequest.GET_LINE_CODING:
            return self.line_coding.to_bytes()
        if setup.request == CdcRequest.SET_CONTROL_LINE_STATE:
            self.control_lines = setup.value & (DTR | RTS)
            # A host raising DTR finds the other end present: report carrier and DSR.
            if self.control_lines & DTR:
                self.set_serial_state(DCD | DSR)
            return None
        if setup.request == CdcRequest.SEND_BREAK:
            return None
        raise Stall(f"unsupported CDC request {setup}")

    def reset(self) -> None:
        super().reset()
        self.control_lines = 0
