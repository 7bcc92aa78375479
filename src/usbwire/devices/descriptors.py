"""USB descriptors built from Python objects, never packed by hand in a device.

A device declares a :class:`DeviceDescriptor` tree (configurations, interfaces with their
alternate settings, endpoints). The builder derives every computed field (``bLength``,
``wTotalLength``, ``bNumInterfaces``, ``bNumEndpoints``, string indices) so a declaration
cannot disagree with itself.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from usbwire.protocol.constants import Direction, Speed, TransferType


class DescriptorType(enum.IntEnum):
    DEVICE = 1
    CONFIGURATION = 2
    STRING = 3
    INTERFACE = 4
    ENDPOINT = 5
    DEVICE_QUALIFIER = 6
    OTHER_SPEED_CONFIGURATION = 7
    INTERFACE_ASSOCIATION = 11
    BOS = 15
    DEVICE_CAPABILITY = 16
    HID = 0x21
    HID_REPORT = 0x22
    CS_INTERFACE = 0x24
    CS_ENDPOINT = 0x25
    SS_ENDPOINT_COMPANION = 48


LANGID_EN_US = 0x0409


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An endpoint descriptor; ``extra`` holds class-specific descriptors that follow it."""

    number: int
    direction: Direction
    transfer: TransferType
    max_packet_size: int
    interval: int = 0
    # wMaxPacketSize bits 12..11: additional transactions per microframe (high-bandwidth).
    additional_transactions: int = 0
    extra: bytes = b""
    # SuperSpeed endpoint companion: bMaxBurst and bmAttributes.
    max_burst: int = 0
    ss_attributes: int = 0
    sync_attributes: int = 0
    # Audio class 1.0 endpoints are 9 bytes long: bRefresh and bSynchAddress follow bInterval.
    audio: bool = False
    refresh: int = 0
    synch_address: int = 0

    @property
    def address(self) -> int:
        return self.number | (0x80 if self.direction == Direction.IN else 0)

    def to_bytes(self, speed: Speed) -> bytes:
        packet = self.max_packet_size | (self.additional_transactions << 11)
        attributes = int(self.transfer) | self.sync_attributes
        if self.audio:
            out = struct.pack(
                "<BBBBHBBB", 9, DescriptorType.ENDPOINT, self.address, attributes, packet, self.interval,
                self.refresh, self.synch_address,
            )  # fmt: skip
        else:
            out = struct.pack("<BBBBHB", 7, DescriptorType.ENDPOINT, self.address, attributes, packet, self.interval)
        if speed >= Speed.SUPER:
            out += struct.pack(
                "<BBBBH",
                6,
                DescriptorType.SS_ENDPOINT_COMPANION,
                self.max_burst,
                self.ss_attributes,
                self.max_packet_size * (self.max_burst + 1) if self.transfer in _PERIODIC else 0,
            )
        return out + self.extra


_PERIODIC = (TransferType.INTERRUPT, TransferType.ISOCHRONOUS)


@dataclass(frozen=True, slots=True)
class Interface:
    """One alternate setting of an interface, with the class descriptors before its endpoints."""

    number: int
    interface_class: int
    interface_subclass: int = 0
    interface_protocol: int = 0
    alternate: int = 0
    endpoints: tuple[Endpoint, ...] = ()
    name: str | None = None
    extra: bytes = b""


@dataclass(frozen=True, slots=True)
class Configuration:
    value: int
    interfaces: tuple[Interface, ...]
    max_power_ma: int = 100
    self_powered: bool = False
    remote_wakeup: bool = False
    name: str | None = None
    # Descriptors placed before the first interface (e.g. an interface association).
    extra: bytes = b""

    @property
    def interface_numbers(self) -> list[int]:
        return sorted({i.number for i in self.interfaces})

    def alternates(self, number: int) -> list[Interface]:
        return [i for i in self.interfaces if i.number == number]


@dataclass(frozen=True, slots=True)
class DeviceDescriptor:
    vendor_id: int
    product_id: int
    configurations: tuple[Configuration, ...]
    device_class: int = 0
    device_subclass: int = 0
    device_protocol: int = 0
    bcd_device: int = 0x0100
    manufacturer: str | None = None
    product: str | None = None
    serial: str | None = None
    max_packet_size0: int = 64


@dataclass(slots=True)
class DescriptorSet:
    """The bytes a device answers GET_DESCRIPTOR with, built once from its declaration."""

    declaration: DeviceDescriptor
    speed: Speed
    strings: list[str] = field(default_factory=list)
    # Built once: descriptors do not change while a device exists.
    _cache: dict[str, bytes] = field(default_factory=dict)

    def string_index(self, text: str | None) -> int:
        if text is None:
            return 0
        if text not in self.strings:
            self.strings.append(text)
        return self.strings.index(text) + 1

    def device(self) -> bytes:
        cached = self._cache.get("device")
        if cached is None:
            cached = self._cache["device"] = self._device()
        return cached

    def _device(self) -> bytes:
        d = self.declaration
        bcd_usb = {Speed.SUPER: 0x0320, Speed.SUPER_PLUS: 0x0320}.get(self.speed, 0x0200)
        ep0 = 9 if self.speed >= Speed.SUPER else d.max_packet_size0  # SuperSpeed: 2**9 = 512
        return struct.pack(
            "<BBHBBBBHHHBBBB",
            18,
            DescriptorType.DEVICE,
            bcd_usb,
            d.device_class,
            d.device_subclass,
            d.device_protocol,
            ep0,
            d.vendor_id,
            d.product_id,
            d.bcd_device,
            self.string_index(d.manufacturer),
            self.string_index(d.product),
            self.string_index(d.serial),
            len(d.configurations),
        )

    def configuration(self, index: int) -> bytes:
        key = f"configuration{index}"
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = self._configuration(index)
        return cached

    def _configuration(self, index: int) -> bytes:
        config = self.declaration.configurations[index]
        body = bytearray(config.extra)
        for interface in config.interfaces:
            body += struct.pack(
                "<BBBBBBBBB",
                9,
                DescriptorType.INTERFACE,
                interface.number,
                interface.alternate,
                len(interface.endpoints),
                interface.interface_class,
                interface.interface_subclass,
                interface.interface_protocol,
                self.string_index(interface.name),
            )
            body += interface.extra
            for endpoint in interface.endpoints:
                body += endpoint.to_bytes(self.speed)
        attributes = 0x80 | (0x40 if config.self_powered else 0) | (0x20 if config.remote_wakeup else 0)
        unit = 8 if self.speed >= Speed.SUPER else 2
        header = struct.pack(
            "<BBHBBBBB",
            9,
            DescriptorType.CONFIGURATION,
            9 + len(body),
            len(config.interface_numbers),
            config.value,
            self.string_index(config.name),
            attributes,
            min(255, config.max_power_ma // unit),
        )
        return header + bytes(body)

    def string(self, index: int) -> bytes | None:
        if index == 0:
            return struct.pack("<BBH", 4, DescriptorType.STRING, LANGID_EN_US)
        self.all_strings()
        if index > len(self.strings):
            return None
        encoded = self.strings[index - 1].encode("utf-16-le")
        return bytes([2 + len(encoded), DescriptorType.STRING]) + encoded

    def all_strings(self) -> None:
        """Assign every string its index (they are numbered in first-use order)."""
        self.device()
        for i in range(len(self.declaration.configurations)):
            self.configuration(i)

    def device_qualifier(self) -> bytes | None:
        # Only a high-speed capable device that is not SuperSpeed answers it.
        if self.speed != Speed.HIGH:
            return None
        d = self.declaration
        return struct.pack(
            "<BBHBBBBBB",
            10,
            DescriptorType.DEVICE_QUALIFIER,
            0x0200,
            d.device_class,
            d.device_subclass,
            d.device_protocol,
            d.max_packet_size0,
            len(d.configurations),
            0,
        )

    def bos(self) -> bytes | None:
        if self.speed < Speed.SUPER:
            return None
        usb2_ext = struct.pack("<BBBI", 7, DescriptorType.DEVICE_CAPABILITY, 2, 0x02)
        # SuperSpeed USB capability: speeds supported FS|HS|SS, functionality from FS.
        superspeed = struct.pack("<BBBBHBBH", 10, DescriptorType.DEVICE_CAPABILITY, 3, 0, 0x0E, 1, 10, 256)
        caps = usb2_ext + superspeed
        return struct.pack("<BBHB", 5, DescriptorType.BOS, 5 + len(caps), 2) + caps
