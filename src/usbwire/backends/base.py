"""The interface between the server and whatever answers URBs: emulated or real devices.

The server hands an :class:`Urb` to :meth:`ExportedDevice.submit` and writes back the
:class:`UrbResult`. Cancelling the ``submit`` coroutine (task cancellation) is how an UNLINK
reaches the device; a backend that talks to hardware cancels its transfer there.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from usbwire.protocol.connection import Completed
from usbwire.protocol.constants import Direction, TransferType
from usbwire.protocol.pdu import DeviceInfo, IsoPacket


@dataclass(slots=True)
class Urb:
    """One transfer request as a device sees it: no seqnum, no devid, no wire format."""

    ep: int
    direction: Direction
    transfer_type: TransferType
    length: int
    data: bytes = b""
    setup: bytes = bytes(8)
    flags: int = 0
    interval: int = 0
    start_frame: int = 0
    iso_packets: tuple[IsoPacket, ...] = ()


@dataclass(slots=True)
class UrbResult:
    """How a transfer ended. ``status`` is 0 or a negative Linux errno (-32 = stall)."""

    status: int = 0
    data: bytes = b""
    # For OUT transfers the bytes the device accepted; IN transfers use len(data).
    actual_length: int | None = None
    start_frame: int = 0
    iso_packets: tuple[IsoPacket, ...] = ()
    error_count: int = 0


class ExportedDevice(abc.ABC):
    """A device the server can list and hand to one client at a time."""

    # Whether complete_now may answer anything: the server opens its fast lane only for such
    # devices, as for any other every command would be read twice.
    completes_at_once: ClassVar[bool] = False

    @property
    @abc.abstractmethod
    def info(self) -> DeviceInfo:
        """The DEVLIST/IMPORT record, interfaces included."""

    @abc.abstractmethod
    def endpoint_type(self, ep: int, direction: Direction) -> TransferType | None:
        """The transfer type of an endpoint in the active configuration; None if absent."""

    async def open(self) -> None:
        """A client imported the device."""

    @abc.abstractmethod
    async def submit(self, urb: Urb) -> UrbResult:
        """Run one transfer to completion. Cancellation means UNLINK."""

    def complete_now(self, ep: int, direction: int, flags: int, length: int, setup: bytes, data: bytes) -> Completed:
        """The server's fast lane: a non-isochronous transfer that completes without waiting,
        as (status, actual_length, IN data), or None, having done nothing, for one that must
        go through :meth:`submit` (the default: every transfer does). Isochronous transfers
        are always declined."""
        return None

    async def reset(self) -> None:
        """Reset the device (SET_FEATURE(PORT_RESET) through the hub)."""

    async def close(self) -> None:
        """The import ended (detach, disconnect or error): flush and release."""

    @property
    def available(self) -> bool:
        """Whether an IMPORT may take the device now (beyond the server's own bookkeeping)."""
        return True


class KernelExport(ExportedDevice):
    """A device whose URBs the server's kernel answers (Linux ``usbip-host``).

    On IMPORT the server hands the connected socket over with :meth:`hand_over` *before*
    replying, and never reads from it again.
    """

    @abc.abstractmethod
    def hand_over(self, fd: int) -> None:
        """Give the socket ``fd`` to the kernel; raises OSError if it refuses."""

    @abc.abstractmethod
    def take_back(self) -> bool:
        """End the import the kernel serves, if there is one (its connection closes, the device
        stays exported); whether there was. Raises OSError if the kernel refuses."""

    @property
    @abc.abstractmethod
    def urbs_submitted(self) -> int:
        """URBs submitted to the device so far, by whoever imports it: the kernel's import is
        invisible to the server otherwise, and idle claims are judged by this."""

    def endpoint_type(self, ep: int, direction: Direction) -> TransferType | None:
        return None

    async def submit(self, urb: Urb) -> UrbResult:
        raise RuntimeError("the kernel answers this device's URBs")
