"""Linux's own USB/IP stub (``usbip-host``): bind devices to it and hand connections over.

The kernel then answers every URB itself, so this is the fastest way to share a device on
Linux. The sysfs protocol is the one ``usbip bind``/``unbind`` and ``usbipd`` use.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from usbwire.backends.base import KernelExport
from usbwire.errors import UsbwireError
from usbwire.protocol.constants import Speed
from usbwire.protocol.pdu import DeviceInfo, InterfaceInfo
from usbwire.sysfs import write as write_attribute

SYSFS = Path("/sys")
DRIVER = "usbip-host"
STATUS_AVAILABLE, STATUS_USED, STATUS_ERROR = 1, 2, 3


class BindError(UsbwireError):
    """A device could not be bound to or unbound from usbip-host."""


@dataclass(frozen=True, slots=True)
class LocalDevice:
    """A USB device of this machine, as sysfs describes it."""

    busid: str
    path: Path
    sysfs: Path

    def attribute(self, name: str, default: str = "") -> str:
        try:
            return (self.path / name).read_text().strip()
        except OSError:
            return default

    def number(self, name: str, base: int = 10) -> int:
        value = self.attribute(name, "0")
        try:
            return int(value, base)
        except ValueError:
            return 0

    @property
    def driver(self) -> str | None:
        link = self.path / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    @property
    def vid_pid(self) -> tuple[int, int]:
        return self.number("idVendor", 16), self.number("idProduct", 16)

    @property
    def is_hub(self) -> bool:
        return self.attribute("bDeviceClass") == "09"

    @property
    def on_vhci(self) -> bool:
        return on_vhci(self.path)

    @property
    def usbip_status(self) -> int | None:
        value = self.attribute("usbip_status")
        return int(value) if value.isdigit() else None

    def info(self) -> DeviceInfo:
        config = self.number("bConfigurationValue")
        interfaces = []
        for index in range(self.number("bNumInterfaces")):
            node = self.path / f"{self.busid}:{config}.{index}"
            values = []
            for name in ("bInterfaceClass", "bInterfaceSubClass", "bInterfaceProtocol"):
                try:
                    values.append(int((node / name).read_text().strip(), 16))
                except (OSError, ValueError):
                    values.append(0)
            interfaces.append(InterfaceInfo(*values))
        busnum, _, _ = self.busid.partition("-")
        return DeviceInfo(
            path=os.path.realpath(self.path),
            busid=self.busid,
            busnum=int(busnum) if busnum.isdigit() else 0,
            devnum=self.number("devnum"),
            speed=Speed.from_sysfs(self.attribute("speed")),
            idVendor=self.vid_pid[0],
            idProduct=self.vid_pid[1],
            bcdDevice=self.number("bcdDevice", 16),
            bDeviceClass=self.number("bDeviceClass", 16),
            bDeviceSubClass=self.number("bDeviceSubClass", 16),
            bDeviceProtocol=self.number("bDeviceProtocol", 16),
            bConfigurationValue=config,
            bNumConfigurations=self.number("bNumConfigurations"),
            bNumInterfaces=len(interfaces),
            interfaces=tuple(interfaces),
        )


def local_devices(sysfs: Path = SYSFS) -> list[LocalDevice]:
    """Every USB device (not interface, not root hub) of this machine."""
    base = sysfs / "bus/usb/devices"
    if not base.is_dir():
        return []
    devices = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        if ":" in entry.name or entry.name.startswith("usb"):
            continue
        devices.append(LocalDevice(entry.name, entry, sysfs))
    return devices


def find_local(busid: str, sysfs: Path = SYSFS) -> LocalDevice:
    for device in local_devices(sysfs):
        if device.busid == busid:
            return device
    raise BindError(f"device on busid {busid} does not exist")


def _driver_dir(sysfs: Path) -> Path:
    return sysfs / "bus/usb/drivers" / DRIVER


def _explain(error: OSError, what: str) -> BindError:
    if error.errno in (errno.EACCES, errno.EPERM):
        return BindError(f"{what}: permission denied (run as root)")
    return BindError(f"{what}: {os.strerror(error.errno or 0)}")


def bind(busid: str, sysfs: Path = SYSFS) -> None:
    """``usbip bind -b BUSID``: take the device from its driver and give it to usbip-host."""
    driver_dir = _driver_dir(sysfs)
    if not driver_dir.is_dir():
        raise BindError("usbip-host is not loaded (modprobe usbip-host)")
    device = find_local(busid, sysfs)
    if device.is_hub:
        raise BindError(f"{busid} is a hub: hubs cannot be exported")
    if device.on_vhci:
        raise BindError(f"{busid} is attached through vhci: it cannot be exported again")
    if device.driver == DRIVER:
        raise BindError(f"{busid} is already bound to {DRIVER}")
    current = device.driver
    try:
        if current is not None:
            write_attribute(sysfs / "bus/usb/drivers" / current / "unbind", busid)
        write_attribute(driver_dir / "match_busid", f"add {busid}")
        write_attribute(driver_dir / "bind", busid)
    except OSError as error:
        raise _explain(error, f"binding {busid}") from None


def unbind(busid: str, sysfs: Path = SYSFS) -> None:
    """``usbip unbind -b BUSID``: give the device back to its usual driver."""
    driver_dir = _driver_dir(sysfs)
    if not driver_dir.is_dir():
        raise BindError("usbip-host is not loaded (modprobe usbip-host)")
    device = find_local(busid, sysfs)
    if device.driver != DRIVER:
        raise BindError(f"{busid} is not bound to {DRIVER}")
    try:
        write_attribute(driver_dir / "unbind", busid)
        write_attribute(driver_dir / "match_busid", f"del {busid}")
        with contextlib.suppress(OSError):
            write_attribute(driver_dir / "rebind", busid)
    except OSError as error:
        raise _explain(error, f"unbinding {busid}") from None


def on_vhci(path: str | Path) -> bool:
    """Whether the device at sysfs ``path`` is one this machine imports (vhci's bus)."""
    return "vhci_hcd" in os.path.realpath(path)


def bound_devices(sysfs: Path = SYSFS) -> list[LocalDevice]:
    return [d for d in local_devices(sysfs) if d.driver == DRIVER]


class UsbipHostExport(KernelExport):
    """A device bound to usbip-host, exported by handing each import to the kernel."""

    def __init__(self, device: LocalDevice) -> None:
        self.device = device

    @property
    def info(self) -> DeviceInfo:
        return self.device.info()

    @property
    def available(self) -> bool:
        return self.device.usbip_status == STATUS_AVAILABLE

    def hand_over(self, fd: int) -> None:
        write_attribute(self.device.path / "usbip_sockfd", str(fd))

    def take_back(self) -> bool:
        if self.device.usbip_status != STATUS_USED:
            return False
        # -1 is the stub's "down": it shuts its connection down and becomes available again.
        write_attribute(self.device.path / "usbip_sockfd", "-1")
        return True

    @property
    def urbs_submitted(self) -> int:
        return self.device.number("urbnum")  # usbcore counts every URB the stub submits
