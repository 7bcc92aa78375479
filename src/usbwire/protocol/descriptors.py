"""Parse standard USB descriptors: what a client or passthrough backend needs to know.

A USB/IP PDU carries no transfer type, so whoever submits or answers URBs must know each
endpoint's type from the active configuration. This module turns GET_DESCRIPTOR answers
into that knowledge. (Building descriptors for emulated devices is ``usbwire.devices``'s
job.)
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from usbwire.errors import RemoteProtocolError
from usbwire.protocol.constants import Direction, TransferType

DEVICE_DESCRIPTOR = struct.Struct("<BBHBBBBHHHBBBB")
CONFIG_DESCRIPTOR = struct.Struct("<BBHBBBBB")
INTERFACE_DESCRIPTOR = struct.Struct("<BBBBBBBBB")
ENDPOINT_DESCRIPTOR = struct.Struct("<BBBBHB")


@dataclass(frozen=True, slots=True)
class DeviceDescriptor:
    bLength: int
    bDescriptorType: int
    bcdUSB: int
    bDeviceClass: int
    bDeviceSubClass: int
    bDeviceProtocol: int
    bMaxPacketSize0: int
    idVendor: int
    idProduct: int
    bcdDevice: int
    iManufacturer: int
    iProduct: int
    iSerialNumber: int
    bNumConfigurations: int

    @classmethod
    def parse(cls, raw: bytes) -> DeviceDescriptor:
        if len(raw) < DEVICE_DESCRIPTOR.size or raw[1] != 1:
            raise RemoteProtocolError(f"not a device descriptor: {raw.hex()}", field="descriptor", value=raw)
        return cls(*DEVICE_DESCRIPTOR.unpack_from(raw))


@dataclass(frozen=True, slots=True)
class EndpointDescriptor:
    bLength: int
    bDescriptorType: int
    bEndpointAddress: int
    bmAttributes: int
    wMaxPacketSize: int
    bInterval: int
    extra: bytes = b""
    # Audio class 1.0 endpoints are 9 bytes: these two follow bInterval.
    bRefresh: int = 0
    bSynchAddress: int = 0

    @property
    def number(self) -> int:
        return self.bEndpointAddress & 0x0F

    @property
    def direction(self) -> Direction:
        return Direction.IN if self.bEndpointAddress & 0x80 else Direction.OUT

    @property
    def transfer_type(self) -> TransferType:
        return TransferType(self.bmAttributes & 0x03)

    @property
    def max_packet_size(self) -> int:
        """Bytes per transaction (bits 10..0)."""
        return self.wMaxPacketSize & 0x7FF

    @property
    def transactions(self) -> int:
        """Transactions per microframe for high-bandwidth endpoints (bits 12..11, plus one)."""
        return ((self.wMaxPacketSize >> 11) & 0x3) + 1


@dataclass(frozen=True, slots=True)
class InterfaceDescriptor:
    bLength: int
    bDescriptorType: int
    bInterfaceNumber: int
    bAlternateSetting: int
    bNumEndpoints: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    iInterface: int
    endpoints: tuple[EndpointDescriptor, ...] = ()
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class ConfigurationDescriptor:
    bLength: int
    bDescriptorType: int
    wTotalLength: int
    bNumInterfaces: int
    bConfigurationValue: int
    iConfiguration: int
    bmAttributes: int
    bMaxPower: int
    interfaces: tuple[InterfaceDescriptor, ...] = ()
    extra: bytes = b""

    def alternates(self, number: int) -> list[InterfaceDescriptor]:
        return [i for i in self.interfaces if i.bInterfaceNumber == number]

    @classmethod
    def parse(cls, raw: bytes) -> ConfigurationDescriptor:
        if len(raw) < CONFIG_DESCRIPTOR.size or raw[1] != 2:
            raise RemoteProtocolError(
                f"not a configuration descriptor: {raw[:9].hex()}", field="descriptor", value=raw[:9]
            )
        header: tuple[Any, ...] = CONFIG_DESCRIPTOR.unpack_from(raw)
        total = min(header[2], len(raw))
        interfaces: list[_Building] = []
        extra = bytearray()
        offset = header[0]
        while offset + 2 <= total:
            length, kind = raw[offset], raw[offset + 1]
            if length < 2 or offset + length > total:
                raise RemoteProtocolError(
                    f"descriptor of length {length} at offset {offset} overruns {total} bytes",
                    field="bLength",
                    value=length,
                )
            chunk = raw[offset : offset + length]
            if kind == 4 and length >= INTERFACE_DESCRIPTOR.size:
                interfaces.append(_Building(INTERFACE_DESCRIPTOR.unpack_from(chunk)))
            elif kind == 5 and length >= ENDPOINT_DESCRIPTOR.size and interfaces:
                audio = (chunk[7], chunk[8]) if length >= 9 else (0, 0)
                interfaces[-1].endpoints.append((ENDPOINT_DESCRIPTOR.unpack_from(chunk) + audio, bytearray()))
            elif interfaces and interfaces[-1].endpoints:
                interfaces[-1].endpoints[-1][1].extend(chunk)
            elif interfaces:
                interfaces[-1].extra += chunk
            else:
                extra += chunk
            offset += length
        h = header
        return cls(
            h[0],
            h[1],
            h[2],
            h[3],
            h[4],
            h[5],
            h[6],
            h[7],
            interfaces=tuple(i.build() for i in interfaces),
            extra=bytes(extra),
        )


@dataclass
class _Building:
    fields: tuple[Any, ...]
    endpoints: list[tuple[tuple[Any, ...], bytearray]] = field(default_factory=list)
    extra: bytearray = field(default_factory=bytearray)

    def build(self) -> InterfaceDescriptor:
        endpoints = tuple(
            EndpointDescriptor(f[0], f[1], f[2], f[3], f[4], f[5], bytes(extra), f[6], f[7])
            for f, extra in self.endpoints
        )
        f = self.fields
        return InterfaceDescriptor(
            f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], endpoints=endpoints, extra=bytes(self.extra)
        )


@dataclass
class EndpointTable:
    """Endpoints of the active configuration and alternate settings, by (number, direction).

    Kept up to date by whoever sees SET_CONFIGURATION and SET_INTERFACE succeed.
    """

    configurations: dict[int, ConfigurationDescriptor] = field(default_factory=dict)
    active: ConfigurationDescriptor | None = None
    alternates: dict[int, int] = field(default_factory=dict)
    _endpoints: dict[tuple[int, Direction], EndpointDescriptor] = field(default_factory=dict)

    def add(self, config: ConfigurationDescriptor) -> None:
        self.configurations[config.bConfigurationValue] = config

    def set_configuration(self, value: int) -> None:
        self.active = self.configurations.get(value) if value else None
        self.alternates = {}
        self._rebuild()

    def set_interface(self, number: int, alternate: int) -> None:
        self.alternates[number] = alternate
        self._rebuild()

    def get(self, number: int, direction: Direction) -> EndpointDescriptor | None:
        return self._endpoints.get((number, direction))

    def transfer_type(self, number: int, direction: Direction) -> TransferType | None:
        if number == 0:
            return TransferType.CONTROL
        endpoint = self._endpoints.get((number, direction))
        return endpoint.transfer_type if endpoint else None

    def _rebuild(self) -> None:
        self._endpoints = {}
        if self.active is None:
            return
        for interface in self.active.interfaces:
            if interface.bAlternateSetting == self.alternates.get(interface.bInterfaceNumber, 0):
                for endpoint in interface.endpoints:
                    self._endpoints[endpoint.number, endpoint.direction] = endpoint
