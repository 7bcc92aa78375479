"""A vendor-class device whose bulk IN endpoint returns what its bulk OUT endpoint received.

The demo's first device and the test bed of the server and the benchmarks: data is checkable
end to end and the device costs next to nothing per transfer.
"""

from __future__ import annotations

import asyncio
from collections import deque

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
        # The OUT transfers' bytes as they came: an IN that asks for exactly one of them (the
        # usual case) gets that very object back, without a copy.
        self._chunks: deque[bytes] = deque()
        self._queued = 0  # bytes in _chunks
        self._control_buffer = b""
        # A transfer waiting for the other direction: an IN for data, an OUT for room.
        self._waiter: asyncio.Future[None] | None = None

    def out_now(self, endpoint: Endpoint, data: bytes) -> bool:
        if self._queued and self._queued + len(data) > self.capacity:
            return False
        if data:
            self._chunks.append(data)
            self._queued += len(data)
            if self._waiter is not None:
                self._wake()
        return True

    async def handle_out(self, endpoint: Endpoint, data: bytes) -> None:
        # A full device NAKs: the OUT transfer waits, which is backpressure for free.
        while not self.out_now(endpoint, data):
            await self._wait()

    def in_now(self, endpoint: Endpoint, length: int) -> bytes | None:
        chunks = self._chunks
        if not chunks:
            return None
        head = chunks.popleft()
        if len(head) > length:
            chunks.appendleft(head[length:])
            head = head[:length]
        elif len(head) < length and chunks:
            # The IN spans several OUT transfers: a stream, as far as the host can tell.
            parts = [head]
            wanted = length - len(head)
            while wanted and chunks:
                part = chunks.popleft()
                if len(part) > wanted:
                    chunks.appendleft(part[wanted:])
                    part = part[:wanted]
                parts.append(part)
                wanted -= len(part)
            head = b"".join(parts)
        self._queued -= len(head)
        if self._waiter is not None:
            self._wake()
        return head

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        while (chunk := self.in_now(endpoint, length)) is None:
            await self._wait()
        return chunk

    async def _wait(self) -> None:
        # The OUT and IN endpoints of one loopback never both wait: one of them has data or room.
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

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
            self._drop()

    def reset(self) -> None:
        super().reset()
        self._drop()

    def _drop(self) -> None:
        self._chunks.clear()
        self._queued = 0
        self._wake()  # an OUT waiting for room has it now
