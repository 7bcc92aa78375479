"""The SETUP packet and the numbers of USB chapter 9 standard requests."""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

from usbwire.protocol.constants import Direction

_SETUP = struct.Struct("<BBHHH")


class RequestType(enum.IntEnum):
    STANDARD = 0
    CLASS = 1
    VENDOR = 2


class Recipient(enum.IntEnum):
    DEVICE = 0
    INTERFACE = 1
    ENDPOINT = 2
    OTHER = 3


class StandardRequest(enum.IntEnum):
    GET_STATUS = 0
    CLEAR_FEATURE = 1
    SET_FEATURE = 3
    SET_ADDRESS = 5
    GET_DESCRIPTOR = 6
    SET_DESCRIPTOR = 7
    GET_CONFIGURATION = 8
    SET_CONFIGURATION = 9
    GET_INTERFACE = 10
    SET_INTERFACE = 11
    SYNCH_FRAME = 12


class Feature(enum.IntEnum):
    ENDPOINT_HALT = 0
    DEVICE_REMOTE_WAKEUP = 1


class Setup(NamedTuple):
    """A decoded SETUP packet (its 16-bit fields are little-endian on the wire)."""

    request_type: int
    request: int
    value: int
    index: int  # type: ignore[assignment]
    length: int

    @classmethod
    def from_bytes(cls, raw: bytes) -> Setup:
        return tuple.__new__(cls, _SETUP.unpack(raw))  # _make, one call shorter (every control URB)

    def to_bytes(self) -> bytes:
        return _SETUP.pack(*self)

    @property
    def direction(self) -> Direction:
        return Direction.IN if self.request_type & 0x80 else Direction.OUT

    @property
    def type(self) -> int:
        """A RequestType value (compared as plain ints: this runs for every control URB)."""
        return (self.request_type >> 5) & 3

    @property
    def recipient(self) -> int:
        """A Recipient value."""
        return self.request_type & 0x1F

    def __str__(self) -> str:
        return (
            f"bmRequestType=0x{self.request_type:02x} bRequest={self.request} "
            f"wValue=0x{self.value:04x} wIndex=0x{self.index:04x} wLength={self.length}"
        )
