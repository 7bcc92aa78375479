"""Exports an emulated :class:`~usbwire.devices.Device` through the backend interface."""

from __future__ import annotations

import logging

from usbwire.backends.base import ExportedDevice, Urb, UrbResult
from usbwire.devices.base import Device, endpoint_type
from usbwire.devices.requests import Setup
from usbwire.errors import Stall
from usbwire.protocol.connection import Completed
from usbwire.protocol.constants import Direction, Errno, Speed, TransferType, UrbFlag
from usbwire.protocol.pdu import DeviceInfo, InterfaceInfo

_EPIPE = UrbResult(status=-Errno.EPIPE)
_STALLED = (-Errno.EPIPE, 0, b"")
_FAILED = (-Errno.EPROTO, 0, b"")
_BABBLE = (-Errno.EOVERFLOW, 0, b"")
# Enum members the per-URB paths use, as module globals: looking one up on its class costs
# ~70 ns on Python 3.11, several times a URB.
_CONTROL, _ISOCHRONOUS = TransferType.CONTROL, TransferType.ISOCHRONOUS
_OUT, _SHORT_NOT_OK = Direction.OUT, UrbFlag.SHORT_NOT_OK

log = logging.getLogger("usbwire.server")


class EmulatedExport(ExportedDevice):
    """An emulated device as the server sees it, at a fixed bus position."""

    completes_at_once = True

    def __init__(self, device: Device, busid: str, busnum: int = 1, devnum: int = 2) -> None:
        self.device = device
        self.busid = busid
        self.busnum = busnum
        self.devnum = devnum

    @property
    def info(self) -> DeviceInfo:
        d = self.device.descriptor
        # Like a device just bound to usbip-host: listed with its first configuration's
        # interfaces so clients can see what it is.
        config = self.device.configuration or d.configurations[0]
        interfaces = tuple(
            InterfaceInfo(i.interface_class, i.interface_subclass, i.interface_protocol)
            for number in config.interface_numbers
            for i in config.alternates(number)[:1]
        )
        return DeviceInfo(
            path=f"/sys/devices/platform/usbwire/usb{self.busnum}/{self.busid}",
            busid=self.busid,
            busnum=self.busnum,
            devnum=self.devnum,
            speed=Speed(min(self.device.speed, Speed.SUPER)),
            idVendor=d.vendor_id,
            idProduct=d.product_id,
            bcdDevice=d.bcd_device,
            bDeviceClass=d.device_class,
            bDeviceSubClass=d.device_subclass,
            bDeviceProtocol=d.device_protocol,
            bConfigurationValue=self.device.configuration.value if self.device.configuration else 0,
            bNumConfigurations=len(d.configurations),
            bNumInterfaces=len(interfaces),
            interfaces=interfaces,
        )

    def endpoint_type(self, ep: int, direction: Direction) -> TransferType | None:
        return endpoint_type(self.device, ep, direction)

    async def open(self) -> None:
        self.device.reset()

    async def submit(self, urb: Urb) -> UrbResult:
        try:
            if urb.transfer_type == _CONTROL:
                data = await self.device.control(Setup.from_bytes(urb.setup), urb.data)
            else:
                endpoint = self.device.endpoint(urb.ep, urb.direction)
                if endpoint is None:
                    return _EPIPE
                if endpoint.transfer == _ISOCHRONOUS:
                    done = await self.device.isochronous(endpoint, urb.data, urb.iso_packets)
                    return UrbResult(
                        data=done.data,
                        start_frame=done.start_frame,
                        iso_packets=done.packets,
                        error_count=done.error_count,
                    )
                data = await self.device.transfer(endpoint, urb.data, urb.length)
        except Stall:
            return _EPIPE
        if urb.direction == _OUT:
            return UrbResult(actual_length=urb.length)
        if len(data) < urb.length and urb.flags & _SHORT_NOT_OK:
            return UrbResult(status=-Errno.EREMOTEIO, data=data)
        return UrbResult(data=data)

    def complete_now(self, ep: int, direction: int, flags: int, length: int, setup: bytes, data: bytes) -> Completed:
        device = self.device
        try:
            if ep == 0:
                answer = device.control_now(setup, data)
            else:
                answer = device.transfer_now(ep | direction << 7, data, length)
        except Stall:
            return _STALLED
        except Exception as error:
            # A bug in the device fails its URB, as in submit(); the connection lives on.
            log.error("device %s failed a URB on endpoint %d: %r", self.busid, ep, error)
            return _FAILED
        if answer is None:
            return None
        if not direction:
            return 0, length, b""
        actual = len(answer)
        if actual < length:
            if flags & _SHORT_NOT_OK:
                return -Errno.EREMOTEIO, actual, answer
        elif actual > length:
            return _BABBLE  # a device answering more than was asked
        return 0, actual, answer

    async def reset(self) -> None:
        self.device.reset()

    async def close(self) -> None:
        await self.device.close()
        self.device.reset()
