"""Which devices are exported, and which connection holds each one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Protocol

from usbwire.backends.base import ExportedDevice, KernelExport
from usbwire.protocol.constants import OpStatus
from usbwire.protocol.pdu import DeviceInfo

log = logging.getLogger("usbwire.server")


class Holder(Protocol):
    """A connection that imported a device; told when the device goes away under it."""

    def device_removed(self) -> None: ...

    def evict(self, reason: str) -> None: ...


# Told of every export added (True) or removed (False), after the change.
Listener = Callable[[ExportedDevice, bool], None]


class Registry:
    """Exports by busid; a device is held by at most one importing connection."""

    def __init__(self) -> None:
        self._exports: dict[str, ExportedDevice] = {}
        self._holders: dict[str, Holder] = {}
        # busid -> set once the holder that is closing the device (a disk syncing) releases it
        self._letting_go: dict[str, asyncio.Event] = {}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _tell(self, device: ExportedDevice, added: bool) -> None:
        for listener in list(self._listeners):
            listener(device, added)

    def add(self, device: ExportedDevice) -> None:
        busid = device.info.busid
        if busid in self._exports:
            raise ValueError(f"busid {busid} is already exported")
        self._exports[busid] = device
        log.info("exporting %s (%04x:%04x)", busid, device.info.idVendor, device.info.idProduct)
        self._tell(device, True)

    def remove(self, busid: str) -> ExportedDevice:
        """Stop exporting; the connection holding the device (if any) is closed."""
        device = self._exports.pop(busid)
        holder = self._holders.pop(busid, None)
        self._released(busid)
        if holder is not None:
            holder.device_removed()
        log.info("no longer exporting %s", busid)
        self._tell(device, False)
        return device

    def __contains__(self, busid: str) -> bool:
        return busid in self._exports

    def __iter__(self) -> Iterator[ExportedDevice]:
        return iter(list(self._exports.values()))

    def get(self, busid: str) -> ExportedDevice | None:
        return self._exports.get(busid)

    def holder(self, busid: str) -> Holder | None:
        return self._holders.get(busid)

    def available(self) -> list[DeviceInfo]:
        """What DEVLIST shows: like usbipd, devices in use are left out."""
        return [d.info for busid, d in self._exports.items() if busid not in self._holders and d.available]

    def claim(self, busid: str, holder: Holder) -> ExportedDevice | OpStatus:
        device = self._exports.get(busid)
        if device is None:
            return OpStatus.NODEV
        if busid in self._holders or not device.available:
            return OpStatus.DEV_BUSY
        self._holders[busid] = holder
        return device

    def evict(self, busid: str, reason: str) -> bool:
        """End the import of ``busid``, if any: close the connection holding it, or have the
        kernel end one it serves; the device stays exported."""
        holder = self._holders.get(busid)
        if holder is not None:
            holder.evict(reason)
            return True
        device = self._exports.get(busid)
        if not isinstance(device, KernelExport):
            return False
        try:
            taken = device.take_back()
        except OSError as error:
            log.warning("%s: the kernel did not end its import (%s): %s", busid, reason, error.strerror or error)
            return False
        if taken:
            log.info("%s: the kernel's import ended: %s", busid, reason)
        return taken

    def release(self, busid: str, holder: Holder) -> None:
        if self._holders.get(busid) is holder:
            del self._holders[busid]
            self._released(busid)

    def letting_go(self, busid: str, holder: Holder) -> None:
        """``holder``'s import has ended and it is closing the device: until it calls
        :meth:`release`, :meth:`until_released` has an importer wait rather than be refused."""
        if self._holders.get(busid) is holder:
            self._letting_go.setdefault(busid, asyncio.Event())

    def being_let_go(self, busid: str) -> bool:
        return busid in self._letting_go

    async def until_released(self, busid: str) -> None:
        """Return once the device a holder is letting go of is released (or unexported)."""
        event = self._letting_go.get(busid)
        if event is not None:
            await event.wait()

    def _released(self, busid: str) -> None:
        event = self._letting_go.pop(busid, None)
        if event is not None:
            event.set()
