"""What HID keyboards and mice share: class requests, idle rate, report queue."""

from __future__ import annotations

import asyncio
import enum
import struct

from usbwire.devices.base import Device
from usbwire.devices.descriptors import DescriptorType, DeviceDescriptor, Endpoint
from usbwire.devices.requests import Recipient, RequestType, Setup
from usbwire.errors import Stall
from usbwire.protocol.constants import Direction, Speed


class HidRequest(enum.IntEnum):
    GET_REPORT = 0x01
    GET_IDLE = 0x02
    GET_PROTOCOL = 0x03
    SET_REPORT = 0x09
    SET_IDLE = 0x0A
    SET_PROTOCOL = 0x0B


class ReportType(enum.IntEnum):
    INPUT = 1
    OUTPUT = 2
    FEATURE = 3


def hid_descriptor(report_descriptor: bytes) -> bytes:
    """The HID class descriptor (HID 1.11) that sits between interface and endpoint."""
    return struct.pack(
        "<BBHBBBH", 9, DescriptorType.HID, 0x0111, 0, 1, DescriptorType.HID_REPORT, len(report_descriptor)
    )


class HidDevice(Device):
    """A single-interface HID device with one interrupt IN endpoint of input reports.

    Reports wait in a queue; each interrupt IN transfer takes the next one. With an idle
    rate set (SET_IDLE), an unchanged report is repeated every idle period, as the spec
    asks; with idle 0 (what Linux sets) an IN transfer waits until something changes.
    """

    report_descriptor: bytes = b""
    report_size: int = 8

    def __init__(self, descriptor: DeviceDescriptor, speed: Speed) -> None:
        super().__init__(descriptor, speed)
        self.protocol = 1  # report protocol until the host asks for boot
        self.idle_ms = 0
        self.current = bytes(self.report_size)
        self._reports: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4096)
        self._drained = asyncio.Event()
        self._drained.set()

    def queue_report(self, report: bytes) -> None:
        if len(report) != self.report_size:
            raise ValueError(f"a report is {self.report_size} bytes")
        self._reports.put_nowait(report)
        self._drained.clear()

    async def drained(self) -> None:
        """Wait until the host has read every queued report."""
        await self._drained.wait()

    @property
    def pending_reports(self) -> int:
        return self._reports.qsize()

    async def handle_in(self, endpoint: Endpoint, length: int) -> bytes:
        if self._reports.empty():
            self._drained.set()
            if self.idle_ms:
                try:
                    report = await asyncio.wait_for(self._reports.get(), self.idle_ms / 1000)
                except TimeoutError:
                    return self.current[:length]
            else:
                report = await self._reports.get()
        else:
            report = self._reports.get_nowait()
        self.current = report
        if self._reports.empty():
            self._drained.set()
        return report[:length]

    def descriptor_request(self, setup: Setup) -> bytes | None:
        if setup.recipient != Recipient.INTERFACE:
            return None
        kind = setup.value >> 8
        if kind == DescriptorType.HID_REPORT:
            return self.report_descriptor
        if kind == DescriptorType.HID:
            return hid_descriptor(self.report_descriptor)
        return None

    async def class_request(self, setup: Setup, data: bytes) -> bytes | None:
        if setup.type != RequestType.CLASS or setup.recipient != Recipient.INTERFACE:
            raise Stall(f"unsupported request {setup}")
        request = setup.request
        if request == HidRequest.GET_REPORT and setup.direction == Direction.IN:
            return self.get_report(setup.value >> 8, setup.value & 0xFF)
        if request == HidRequest.SET_REPORT and setup.direction == Direction.OUT:
            self.set_report(setup.value >> 8, setup.value & 0xFF, data)
            return None
        if request == HidRequest.GET_IDLE:
            return bytes([self.idle_ms // 4])
        if request == HidRequest.SET_IDLE:
            self.idle_ms = (setup.value >> 8) * 4
            return None
        if request == HidRequest.GET_PROTOCOL:
            return bytes([self.protocol])
        if request == HidRequest.SET_PROTOCOL:
            self.protocol = setup.value & 1
            return None
        raise Stall(f"unsupported HID request {setup}")

    def get_report(self, report_type: int, report_id: int) -> bytes:
        if report_type == ReportType.INPUT:
            return self.current
        raise Stall(f"no report of type {report_type}")

    def set_report(self, report_type: int, report_id: int, data: bytes) -> None:
        raise Stall(f"no report of type {report_type} to set")
