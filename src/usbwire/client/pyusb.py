"""A pyusb backend: existing pyusb code drives devices of a USB/IP server unchanged.

    import usb.core
    from usbwire.client.pyusb import get_backend

    device = usb.core.find(idVendor=0x1209, backend=get_backend("server", busid="1-1"))

Reading a device's descriptors needs an import, so every device this backend enumerates is
imported (held by this process) until :meth:`UsbipBackend.close`; give ``busid`` to touch
only the device you want.
"""

from __future__ import annotations

import array
from dataclasses import dataclass, field
from typing import Any

import usb.backend
import usb.core

from usbwire.client.remote import list_devices
from usbwire.client.service_loop import run_sync
from usbwire.client.sync import SyncDevice
from usbwire.errors import TransferError
from usbwire.protocol.constants import DEFAULT_PORT
from usbwire.protocol.descriptors import ConfigurationDescriptor

_ERRNO_TO_PYUSB = {-110: 110, -32: 32, -19: 19, -75: 75}


@dataclass
class _Device:
    """What enumerate_devices yields: one exported device, imported on first use."""

    host: str
    port: int
    busid: str
    busnum: int
    devnum: int
    connection: SyncDevice | None = None
    configurations: dict[int, ConfigurationDescriptor] = field(default_factory=dict)

    def open(self) -> SyncDevice:
        if self.connection is None:
            self.connection = SyncDevice.connect(self.host, self.busid, port=self.port)
        return self.connection

    def configuration(self, index: int) -> ConfigurationDescriptor:
        if index not in self.configurations:
            self.configurations[index] = self.open().configuration_descriptor(index)
        return self.configurations[index]


@dataclass
class _Descriptor:
    """An object with descriptor fields as attributes, as pyusb wants them."""

    fields: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None


def _fields(descriptor: object, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(descriptor, name) for name in names}


_DEVICE_FIELDS = (
    "bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass", "bDeviceProtocol",
    "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice", "iManufacturer", "iProduct",
    "iSerialNumber", "bNumConfigurations",
)  # fmt: skip
_CONFIG_FIELDS = (
    "bLength", "bDescriptorType", "wTotalLength", "bNumInterfaces", "bConfigurationValue",
    "iConfiguration", "bmAttributes", "bMaxPower",
)  # fmt: skip
_INTERFACE_FIELDS = (
    "bLength", "bDescriptorType", "bInterfaceNumber", "bAlternateSetting", "bNumEndpoints",
    "bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol", "iInterface",
)  # fmt: skip
_ENDPOINT_FIELDS = (
    "bLength",
    "bDescriptorType",
    "bEndpointAddress",
    "bmAttributes",
    "wMaxPacketSize",
    "bInterval",
)


class UsbipBackend(usb.backend.IBackend):  # type: ignore[misc]
    """pyusb's backend interface over USB/IP imports."""

    def __init__(self, host: str, port: int = DEFAULT_PORT, busid: str | None = None) -> None:
        self.host = host
        self.port = port
        self.busid = busid
        self._devices: dict[str, _Device] = {}

    def close(self) -> None:
        """Give every imported device back to the server."""
        for device in self._devices.values():
            if device.connection is not None:
                device.connection.close()
                device.connection = None

    def enumerate_devices(self) -> list[_Device]:
        for info in run_sync(list_devices(self.host, self.port)):
            if self.busid is None or info.busid == self.busid:
                self._devices.setdefault(
                    info.busid, _Device(self.host, self.port, info.busid, info.busnum, info.devnum)
                )
        return [d for busid, d in self._devices.items() if self.busid is None or busid == self.busid]

    def get_device_descriptor(self, dev: _Device) -> _Descriptor:
        connection = dev.open()
        fields = _fields(connection.device_descriptor, _DEVICE_FIELDS)
        fields.update(
            bus=dev.busnum,
            address=dev.devnum,
            port_number=None,
            port_numbers=None,
            speed=int(connection.info.speed),
        )
        return _Descriptor(fields)

    def get_configuration_descriptor(self, dev: _Device, config: int) -> _Descriptor:
        descriptor = dev.configuration(config)
        return _Descriptor({**_fields(descriptor, _CONFIG_FIELDS), "extra_descriptors": list(descriptor.extra)})

    def _interface(self, dev: _Device, intf: int, alt: int, config: int) -> Any:
        descriptor = dev.configuration(config)
        numbers = sorted({i.bInterfaceNumber for i in descriptor.interfaces})
        try:
            return descriptor.alternates(numbers[intf])[alt]
        except IndexError:
            raise IndexError("invalid interface or alternate setting index") from None

    def get_interface_descriptor(self, dev: _Device, intf: int, alt: int, config: int) -> _Descriptor:
        interface = self._interface(dev, intf, alt, config)
        return _Descriptor({**_fields(interface, _INTERFACE_FIELDS), "extra_descriptors": list(interface.extra)})

    def get_endpoint_descriptor(self, dev: _Device, ep: int, intf: int, alt: int, config: int) -> _Descriptor:
        endpoint = self._interface(dev, intf, alt, config).endpoints[ep]
        fields = _fields(endpoint, _ENDPOINT_FIELDS)
        # Audio-class endpoints are 9 bytes long; the two extra fields are 0 elsewhere.
        fields.update(bRefresh=0, bSynchAddress=0, extra_descriptors=list(endpoint.extra))
        return _Descriptor(fields)

    def open_device(self, dev: _Device) -> SyncDevice:
        return dev.open()

    def close_device(self, dev_handle: SyncDevice) -> None:
        """Keep the import: pyusb closes handles freely and reopens them."""

    def set_configuration(self, dev_handle: SyncDevice, config_value: int) -> None:
        _call(dev_handle.set_configuration, config_value)

    def get_configuration(self, dev_handle: SyncDevice) -> int:
        data = _call(dev_handle.control_transfer, 0x80, 8, 0, 0, 1)
        assert isinstance(data, bytes)
        return data[0]

    def set_interface_altsetting(self, dev_handle: SyncDevice, intf: int, altsetting: int) -> None:
        _call(dev_handle.set_interface, intf, altsetting)

    def claim_interface(self, dev_handle: SyncDevice, intf: int) -> None:
        """Importing the device already gave this process all of it."""

    def release_interface(self, dev_handle: SyncDevice, intf: int) -> None:
        """See claim_interface."""

    def bulk_write(self, dev_handle: SyncDevice, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        return int(_call(dev_handle.bulk_transfer, ep, data.tobytes(), _seconds(timeout)))

    def bulk_read(self, dev_handle: SyncDevice, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return _read_into(buff, _call(dev_handle.bulk_transfer, ep, len(buff) * buff.itemsize, _seconds(timeout)))

    def intr_write(self, dev_handle: SyncDevice, ep: int, intf: int, data: array.array[int], timeout: int) -> int:
        return int(_call(dev_handle.interrupt_transfer, ep, data.tobytes(), _seconds(timeout)))

    def intr_read(self, dev_handle: SyncDevice, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return _read_into(buff, _call(dev_handle.interrupt_transfer, ep, len(buff) * buff.itemsize, _seconds(timeout)))

    def ctrl_transfer(
        self,
        dev_handle: SyncDevice,
        bmRequestType: int,  # noqa: N803 - pyusb's parameter names
        bRequest: int,  # noqa: N803
        wValue: int,  # noqa: N803
        wIndex: int,  # noqa: N803
        data: array.array[int],
        timeout: int,
    ) -> int:
        if bmRequestType & 0x80:
            result = _call(
                dev_handle.control_transfer,
                bmRequestType, bRequest, wValue, wIndex, len(data) * data.itemsize, _seconds(timeout),
            )  # fmt: skip
            return _read_into(data, result)
        return int(
            _call(
                dev_handle.control_transfer,
                bmRequestType,
                bRequest,
                wValue,
                wIndex,
                data.tobytes(),
                _seconds(timeout),
            )
        )

    def clear_halt(self, dev_handle: SyncDevice, ep: int) -> None:
        _call(dev_handle.clear_halt, ep)

    def reset_device(self, dev_handle: SyncDevice) -> None:
        """vhci does not forward a port reset either; the server resets on the next import."""


def _seconds(timeout_ms: int) -> float | None:
    return timeout_ms / 1000 if timeout_ms else None


def _read_into(buff: array.array[int], result: bytes | int) -> int:
    assert isinstance(result, bytes)
    view = memoryview(buff).cast("B")
    view[: len(result)] = result
    return len(result)


def _call(function: Any, *args: Any) -> Any:
    try:
        return function(*args)
    except TimeoutError:
        raise usb.core.USBTimeoutError("Operation timed out", 110, 110) from None
    except TransferError as error:
        errno = _ERRNO_TO_PYUSB.get(error.status, -error.status)
        raise usb.core.USBError(str(error), errno, errno) from None


def get_backend(host: str, port: int = DEFAULT_PORT, busid: str | None = None) -> UsbipBackend:
    """A pyusb backend for the devices ``host`` exports (only ``busid`` when given)."""
    return UsbipBackend(host, port, busid)
