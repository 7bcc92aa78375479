"""Which real devices ``usbwire serve --export`` shares, and the sources that find them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from usbwire.backends.base import ExportedDevice
from usbwire.errors import UsbwireError
from usbwire.protocol.pdu import DeviceInfo
from usbwire.server.access import VID_PID, device_matches
from usbwire.server.registry import Registry

log = logging.getLogger("usbwire")

_BUSID = re.compile(r"^\d+-[\d.]+$")
# Seconds between looks for real devices plugged in or out: no udev events are relied on.
RESCAN_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class ExportRules:
    """An allow list: ``all``, busids (``1-2``, ``3-1.4``) and ``VID:PID`` pairs."""

    rules: tuple[str, ...]

    @classmethod
    def parse(cls, specs: Sequence[str]) -> ExportRules:
        for spec in specs:
            if spec != "all" and not VID_PID.match(spec) and not _BUSID.match(spec):
                raise UsbwireError(f"cannot export {spec!r}: give a busid (1-2), VID:PID (046d:c52b) or 'all'")
        return cls(tuple(specs))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def allows(self, info: DeviceInfo) -> bool:
        return any(rule == "all" or device_matches(rule, info) for rule in self.rules)


class RealDevices:
    """Keeps the registry in step with the real devices the rules allow."""

    def __init__(
        self, registry: Registry, rules: ExportRules, backend: str, rescan_interval: float = RESCAN_INTERVAL_S
    ) -> None:
        if not rescan_interval > 0:
            raise UsbwireError(f"the rescan interval must be more than 0 seconds, not {rescan_interval}")
        self.registry = registry
        self.rules = rules
        self.backend = backend
        self.rescan_interval = rescan_interval
        self._close: Callable[[], object] | None = None
        self._known: set[str] = set()

    def _added(self, export: ExportedDevice) -> None:
        if export.info.busid not in self.registry:
            self.registry.add(export)

    def _removed(self, busid: str) -> None:
        if busid in self.registry:
            self.registry.remove(busid)

    async def start(self) -> None:
        if self.backend == "libusb":
            try:
                from usbwire.backends.libusb import LibusbManager
            except ImportError:
                raise UsbwireError("the libusb backend needs python-libusb1 (pip install 'usbwire[libusb]')") from None
            manager = LibusbManager(
                lambda e: self.rules.allows(e.info), self._added, self._removed, self.rescan_interval
            )
            try:
                await manager.start()
            except Exception as error:
                raise UsbwireError(f"libusb cannot start: {error}") from None
            self._close = manager.close
        elif self.backend == "usbip-host":
            await self._look_at_usbip_host()
            task = asyncio.get_running_loop().create_task(self._follow_usbip_host())
            self._close = task.cancel
        else:
            raise UsbwireError(f"unknown backend {self.backend!r} (libusb or usbip-host)")

    async def _follow_usbip_host(self) -> None:
        while True:
            await asyncio.sleep(self.rescan_interval)
            await self._look_at_usbip_host()

    async def _look_at_usbip_host(self) -> None:
        from usbwire.backends.usbip_host import LocalDevice, UsbipHostExport, bound_devices

        def allowed() -> dict[str, LocalDevice]:
            return {d.busid: d for d in bound_devices() if self.rules.allows(d.info())}

        # In a thread: sysfs reads wait for a device's lock, which its hub holds while it
        # enumerates the device.
        bound = await asyncio.to_thread(allowed)
        for busid in [b for b in list(self._known) if b not in bound]:
            self._known.discard(busid)
            self._removed(busid)
        for busid, device in bound.items():
            if busid not in self._known:
                self._known.add(busid)
                self._added(UsbipHostExport(device))

    async def close(self) -> None:
        if self._close is not None:
            result = self._close()
            if asyncio.iscoroutine(result):
                with contextlib.suppress(Exception):
                    await result
