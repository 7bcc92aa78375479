"""A vendor-class device whose bulk IN endpoint returns what its bulk OUT endpoint received.

The demo's first device and the test bed of the server and the benchmarks: data is checkable
end to end and the device costs next to nothing per transfer.
"""

from __future__ import annotations

import asyncio

from usbwire.devices.base import Device
from usbwire.devices.descriptors import Configuration, DeviceDescriptor, Endpoint, Interface
from usbwire.devices.requests import RequestType, Setup
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed, TransferType

VENDOR_ID = 0x1209  # pid.codes
PRODUCT_ID = 0x0001  # pid.codes test PID
BULK_OUT = 0x01
BULK_IN = 0x81

# Vendor requests: stash bytes on the control pipe, read them back.
REQUEST_WRITE = 0x01
REQUEST_READ = 0x02


def _descriptor(max_packet: int) -> DeviceDescriptor:
    interface = Interface(
        number=0,
        interface_class=0xFF,
        name="Loopback",
        endpoints=(
            Endpoint(1, Direction.OUT, TransferType.BULK, max_packet),
            Endpoint(1, Direction.IN, TransferType.BULK, max_packet),
        ),
    )
    return DeviceDescriptor(
        vendor_id=VENDOR_ID,
        product_id=PRODUCT_ID,
        manufacturer="usbwire",
        product="Bulk loopback",
        serial="LOOP0001",
        configurations=(Configuration(value=1, interfaces=(interface,), name="Loopback"),),
    )


class Loopback(Device):
    """Bulk OUT bytes come back on bulk IN, in order; IN waits while nothing is queued."""

    def __init__(self, speed: Speed = Speed.HIGH, capacity: int = 4 * 1024 * 1024) -> None:
        max_packet = {Speed.FULL: 64, Speed.HIGH: 512}.get(speed, 1024)
        super().__init__(_descriptor(max_packet), speed)
        self.capacity = capacity
        self._queued = bytearray()
        self._control_buffer = b""
        self._filled = asyncio.Event()
        self._drained = asyncio.Event()

    def out_now(self, endpoint: Endpoint, data: bytes) -> bool:
        if self._queued and len(self._queued) + len(data) > self.capacity:
            return False
        self._queued += data
        self._filled.set()
        return True

    async def handle_out(self, endpoint: Endpoint, data: bytes) -> None:
        # A full device NAKs: the OUT transfer waits, which is backpressure for free.
        while not self.out_now(endpoint, data):
            self._drained.clear()
            await self._drained.wait()

    def in_now(self, endpoint: Endpoint, length: int) -> bytes | None:
        if not self._queued:
            return None
        with memoryview(self._queued) as queued:
            chunk = bytes(queued[:length])  # one copy, where a slice of the bytearray makes two
        del self._queued[:length]
        self._drained.set()
        return chunk

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        while (chunk := self.in_now(endpoint, length)) is None:
            self._filled.clear()
            await self._filled.wait()
        return chunk

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type != RequestType.VENDOR:
            raise Stall(f"unsupported request {setup}")
        if setup.request == REQUEST_WRITE and setup.direction == Direction.OUT:
            self._control_buffer = data
            return None
        if setup.request == REQUEST_READ and setup.direction == Direction.IN:
            return self._control_buffer
        raise Stall(f"unsupported vendor request {setup}")

    def on_clear_halt(self, endpoint: Endpoint) -> None:
        if endpoint.direction == Direction.IN:
            self._queued.clear()

    def reset(self) -> None:
        super().reset()
        self._queued.clear()
